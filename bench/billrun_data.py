"""The rows of a bill run of n subscriptions, in the shape the services write them, and
their bulk load (binary COPY) into the subscription service's and the scheduler's tables.

The rows are not written by hand: `Recorder` stands in for a connection, and the
services' own code runs against it for one subscription: the subscription service's
`create_subscription` handler (what it inserts, and the `ScheduleTimer` of its bill-run
timer it emits), then the scheduler's `TimerRepository.upsert` of that timer as the
scheduler stores it (after a round trip through JSON). The recorded `INSERT` statements
give the tables and columns, the recorded arguments the values; columns a migration adds
come along by themselves. That subscription is built with sentinels in its numbers
(`Templates`), so row `i` is the template with the sentinels replaced, fresh ids and its
request hash computed anew: a few microseconds instead of ~120 µs of pydantic per
subscription. `Templates.verify` builds sample rows the slow way and compares.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime
from typing import Any

import asyncpg

from contracts import topics
from contracts.envelope import new_envelope, parse_envelope
from contracts.results import CommandAccepted
from contracts.scheduler import ScheduleTimer
from contracts.subscription import CreateSubscription, RunBilling
from contracts.topics import TopicNames
from services.runtime.consumer import HandlerContext
from services.scheduler.handlers import _dumps as scheduler_dumps
from services.scheduler.repository import Timer, TimerRepository
from services.subscription import handlers as subscription_handlers
from services.subscription.batch import SubscriptionBatchHooks

#: Stands for the subscription's number (8 digits) in a template.
NUMBER = "QQQQQQQQ"
#: Stands for the merchant's website key.
MERCHANT = "WWWWWWWWWWWW"
#: Rows per COPY call (a million rows are streamed in chunks of this many).
CHUNK = 20_000

Tables = dict[str, tuple[list[str], list[tuple[Any, ...]]]]

_INSERT = re.compile(r"^\s*INSERT INTO (\w+) \(([^)]*)\)\s*VALUES \(([^)]*)\)", re.S)


def website_key(i: int, merchants: int) -> str:
    return f"bench-shop-{i % merchants:03d}"


def subscription_key(i: int) -> str:
    return f"SUB-{i:08d}"


def index_of(invoice_number: str) -> int | None:
    """The subscription number of a period invoice `SUB-00000042-1` (None otherwise)."""
    if not invoice_number.startswith("SUB-"):
        return None
    number = invoice_number[4:].partition("-")[0]
    return int(number) if number.isdigit() else None


def create_payload(number: str, start: date, scheme_key: str) -> dict[str, Any]:
    """A CreateSubscription: a person debtor with contacts, monthly in advance from
    `start`, two plans (9.99 x 1 and 2.50 x 3, 21 % VAT: 21.13 a month)."""
    code = f"D-{number}"
    return {
        "subscription_key": f"SUB-{number}",
        "debtor": {
            "code": code,
            "person": {"first_name": "Anna", "last_name": "de Vries", "culture": "nl-NL"},
            "email": f"{code.lower()}@example.test",
            "phone": {"mobile": "+31612345678"},
            "address": {
                "street": "Dorpsstraat",
                "house_number": "12",
                "postal_code": "1234 AB",
                "city": "Utrecht",
                "country": "NL",
            },
        },
        "currency": "EUR",
        "scheme_key": scheme_key,
        "interval": {"unit": "month", "count": 1},
        "billing_timing": "advance",
        "start_date": start.isoformat(),
        "rate_plans": [
            {
                "product_code": "BASIC",
                "description": "Basic plan",
                "unit_price": "9.99",
                "vat_percentage": "21",
                "start_date": start.isoformat(),
            },
            {
                "product_code": "SEATS",
                "description": "Extra seats",
                "unit_price": "2.50",
                "quantity": "3",
                "vat_percentage": "21",
                "start_date": start.isoformat(),
            },
        ],
    }


class Recorder:
    """A connection that records what it is asked to write (and has nothing to read)."""

    def __init__(self) -> None:
        self.inserts: list[tuple[str, list[str], list[tuple[Any, ...]]]] = []

    def _record(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        match = _INSERT.match(sql)
        if match is None:
            return  # a DELETE before the plans are written, a lock: nothing to load
        table, columns, values = match.groups()
        params = [p.strip().split("::")[0] for p in values.split(",")]
        if params != [f"${k}" for k in range(1, len(params) + 1)]:
            raise ValueError(f"cannot map the values of {sql!r} to its columns")
        self.inserts.append((table, [c.strip() for c in columns.split(",")], rows))

    async def execute(self, sql: str, *args: Any) -> str:
        self._record(sql, [args])
        return "INSERT 0 1"

    async def executemany(self, sql: str, rows: Any) -> None:
        self._record(sql, [tuple(row) for row in rows])

    async def fetchrow(self, sql: str, *args: Any) -> None:
        return None

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return []

    async def fetchval(self, sql: str, *args: Any) -> None:
        return None

    def tables(self) -> Tables:
        out: Tables = {}
        for table, columns, rows in self.inserts:
            if table in out:
                raise ValueError(f"{table} written twice")
            out[table] = (columns, rows)
        return out


@dataclass(frozen=True)
class Built:
    """One subscription as the services store it: table -> (columns, rows)."""

    subscription: Tables
    timers: Tables
    command_json: str
    #: The random ids in its rows (the CreateSubscription's, the RunBilling's).
    ids: tuple[str, ...]


async def build_one(number: str, merchant: str, start: date, scheme_key: str) -> Built:
    """Subscription `number` built the slow way: `CreateSubscription` through the
    subscription service's handler, its `ScheduleTimer` through the scheduler's storage."""
    cmd = CreateSubscription.model_validate(create_payload(number, start, scheme_key))
    created = new_envelope(
        cmd, website_key=merchant, occurred_at=datetime.combine(start, dtime(0), tzinfo=UTC)
    )
    recorder = Recorder()
    # The consumer's batch hooks around the handler, as for a batch of one message.
    hooks = SubscriptionBatchHooks()
    batch = await hooks.begin(recorder, [created])  # type: ignore[arg-type]
    ctx = HandlerContext(
        conn=recorder,  # type: ignore[arg-type]
        envelope=created,
        service="subscription",
        topics=TopicNames(""),
        outbox=[],
        batch=batch,
    )
    await subscription_handlers.create_subscription(ctx, cmd)
    await hooks.finish(recorder, batch)  # type: ignore[arg-type]
    if ctx.result is None or not isinstance(ctx.result.payload, CommandAccepted):
        raise RuntimeError(f"the bench's CreateSubscription was not accepted: {ctx.result}")
    scheduled = [m for m in ctx.outbox if m.topic == topics.SCHEDULER_COMMANDS]
    if len(scheduled) != 1:
        raise RuntimeError(f"expected one ScheduleTimer, got {scheduled}")
    # The scheduler receives it as JSON and stores the parsed message (handlers.py).
    received = parse_envelope(scheduled[0].value, {ScheduleTimer.TYPE}).payload
    if not isinstance(received, ScheduleTimer) or received.message["type"] != RunBilling.TYPE:
        raise RuntimeError(f"expected a ScheduleTimer of a RunBilling, got {received}")
    timers = Recorder()
    await TimerRepository(timers).upsert(  # type: ignore[arg-type]
        Timer(
            merchant,
            received.timer_id,
            received.due_at,
            received.topic,
            received.key,
            scheduler_dumps(received.message),
        )
    )
    return Built(
        recorder.tables(),
        timers.tables(),
        cmd.model_dump_json(),
        (str(created.message_id), str(received.message["message_id"])),
    )


def _jsonable(value: Any) -> Any:
    """A value as COPY takes it: jsonb as text (no codec on the loading connection)."""
    return json.dumps(value) if isinstance(value, dict | list) else value


def _as_copied(tables: Tables) -> Tables:
    return {
        t: (c, [tuple(_jsonable(v) for v in r) for r in rows]) for t, (c, rows) in tables.items()
    }


class Templates:
    """Rows of subscription `i` from one subscription built with sentinels."""

    def __init__(self, built: Built, merchants: int, start: date, scheme_key: str) -> None:
        self.merchants = merchants
        self.start = start
        self.scheme_key = scheme_key
        self.command_json = built.command_json
        self.template_hash = hashlib.sha256(built.command_json.encode()).hexdigest()
        self.ids = built.ids
        #: The subscription service's tables, in the order it writes them.
        self.tables = _as_copied(built.subscription)
        #: The scheduler's.
        self.timer_tables = _as_copied(built.timers)

    @classmethod
    async def make(cls, merchants: int, start: date, scheme_key: str) -> Templates:
        built = await build_one(NUMBER, MERCHANT, start, scheme_key)
        return cls(built, merchants, start, scheme_key)

    @property
    def due_at(self) -> datetime:
        """When the bill-run timers are due (the same for all: one start date)."""
        due: datetime = self.timer_tables["timers"][1][0][2]
        return due

    def rows(self, tables: Tables, table: str, i: int) -> list[tuple[Any, ...]]:
        """`table`'s rows of subscription `i` (fresh ids in each call)."""
        number = f"{i:08d}"
        merchant = website_key(i, self.merchants)
        fresh: dict[str, str] = {}

        def fill(value: Any) -> Any:
            if not isinstance(value, str):
                return value
            if value == self.template_hash:
                command = self.command_json.replace(NUMBER, number).replace(NUMBER.lower(), number)
                return hashlib.sha256(command.encode()).hexdigest()
            value = (
                value.replace(NUMBER, number)
                .replace(NUMBER.lower(), number)
                .replace(MERCHANT, merchant)
            )
            for sentinel in self.ids:
                if sentinel in value:
                    if sentinel not in fresh:
                        fresh[sentinel] = str(uuid.uuid4())
                    value = value.replace(sentinel, fresh[sentinel])
            return value

        return [tuple(map(fill, row)) for row in tables[table][1]]

    def all_rows(self, tables: Tables, i: int) -> dict[str, list[tuple[Any, ...]]]:
        return {table: self.rows(tables, table, i) for table in tables}

    async def verify(self, samples: list[int]) -> None:
        """Rows from the templates are the rows the services' code makes (ids aside)."""
        for i in samples:
            built = await build_one(
                f"{i:08d}", website_key(i, self.merchants), self.start, self.scheme_key
            )
            real = Templates(built, self.merchants, self.start, self.scheme_key)
            for mine, theirs in (
                (self.all_rows(self.tables, i), {t: r for t, (_, r) in real.tables.items()}),
                (
                    self.all_rows(self.timer_tables, i),
                    {t: r for t, (_, r) in real.timer_tables.items()},
                ),
            ):
                if _normal(mine) != _normal(theirs):
                    raise AssertionError(
                        f"templated rows of subscription {i} differ:\n{mine}\n{theirs}"
                    )


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _normal(tables: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """Rows with JSON text parsed (key order, spacing) and every uuid masked: the ids are
    random per row, the rest must be the same."""

    def norm(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value[:1] in "{[":
            value = json.dumps(json.loads(value), sort_keys=True)
        return _UUID.sub("<id>", value)

    return {t: [tuple(map(norm, r)) for r in rows] for t, rows in tables.items()}


def _chunks(rows: Iterator[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def copy_rows(
    conn: asyncpg.Connection,
    schema: str,
    table: str,
    columns: list[str],
    rows: Iterator[tuple[Any, ...]],
) -> int:
    """Binary COPY of `rows` into `schema.table` in chunks (inside the caller's
    transaction, if any); how many rows."""
    total = 0
    for chunk in _chunks(rows):
        await conn.copy_records_to_table(table, schema_name=schema, columns=columns, records=chunk)
        total += len(chunk)
    return total


@dataclass
class LoadFigures:
    rows: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "seconds": round(self.seconds, 2),
            "rows_per_s": round(self.rows / self.seconds) if self.seconds else None,
        }


async def load_subscriptions(
    database_url: str, schema: str, templates: Templates, n: int
) -> dict[str, LoadFigures]:
    """Every subscription's rows, table by table in the order the service writes them,
    one transaction."""
    figures: dict[str, LoadFigures] = {}
    conn = await asyncpg.connect(database_url)  # no jsonb codec: COPY takes the text
    try:
        async with conn.transaction():
            for table, (columns, _) in templates.tables.items():
                started = time.monotonic()
                rows = (row for i in range(n) for row in templates.rows(templates.tables, table, i))
                count = await copy_rows(conn, schema, table, columns, rows)
                figures[table] = LoadFigures(count, time.monotonic() - started)
    finally:
        await conn.close()
    return figures


async def load_timers(
    database_url: str, schema: str, templates: Templates, n: int
) -> tuple[LoadFigures, float]:
    """Every subscription's bill-run timer, one transaction; (figures, commit wall time)."""
    conn = await asyncpg.connect(database_url)
    try:
        started = time.monotonic()
        count = 0
        async with conn.transaction():
            for table, (columns, _) in templates.timer_tables.items():
                rows = (
                    row
                    for i in range(n)
                    for row in templates.rows(templates.timer_tables, table, i)
                )
                count += await copy_rows(conn, schema, table, columns, rows)
        committed = time.time()
        return LoadFigures(count, time.monotonic() - started), committed
    finally:
        await conn.close()
