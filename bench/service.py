"""The bench service: the smallest useful service on the runtime.

`bench.BenchRecord` (a command) → one `bench_state` row (all of a batch's in one
statement) and one `bench.BenchRecorded` event. The type names carry a `bench.` prefix so
they can never collide with a platform message type. The command carries the wall time it
was produced at (`sent_at`) and the event echoes it, so the load generator can measure
end-to-end latency per message.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from bench.inprocess import Probe
from contracts.envelope import Command, Envelope, Event, Money, new_envelope, register
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import ConsumerSpec, HandlerContext, HandlerSpec
from services.runtime.db import Connection

#: Base topic names (a per-run prefix goes in front).
COMMAND_TOPIC = "bench.commands"
EVENT_TOPIC = "bench.events"
MIGRATIONS = Path(__file__).parent / "migrations"
WEBSITE_KEY = "bench-shop"
#: Filler so a command body has a realistic size (~450 bytes as JSON).
NOTE = "x" * 120


class BenchRecord(Command):
    TYPE: ClassVar[str] = "bench.BenchRecord"

    account: str = Field(min_length=1)
    seq: int
    amount: Money
    sent_at: float
    note: str = ""


class BenchRecorded(Event):
    TYPE: ClassVar[str] = "bench.BenchRecorded"

    account: str
    seq: int
    amount: Money
    sent_at: float


register(BenchRecord, BenchRecorded)


def account_of(seq: int, keys: int) -> str:
    return f"acct-{seq % keys:04d}"


def command_body(seq: int, keys: int) -> tuple[str, bytes]:
    """(Kafka key, enveloped BenchRecord) stamped with the current wall time."""
    now = time.time()
    account = account_of(seq, keys)
    command = BenchRecord(account=account, seq=seq, amount="12.34", sent_at=now, note=NOTE)
    envelope = new_envelope(
        command, website_key=WEBSITE_KEY, occurred_at=datetime.fromtimestamp(now, UTC)
    )
    return account, envelope.to_json()


#: The batch's state rows in one statement, as `bench.raw` writes them.
STATE_INSERT = (
    "INSERT INTO bench_state (account, seq, amount, message_id)"
    " SELECT * FROM unnest($1::text[], $2::bigint[], $3::numeric[], $4::uuid[])"
)

#: A state row: account, seq, amount, message_id.
StateRow = tuple[str, int, Decimal, uuid.UUID]


class StateRows:
    """The bench consumer's `BatchHooks`: handlers keep their state rows, `finish` writes
    them in one statement, as a service on the runtime does for throughput (the invoice
    service's services/invoice/batch.py) and as `bench.raw` does. A replayed message is a
    batch of its own: one row, one statement."""

    async def begin(self, conn: Connection, envelopes: Sequence[Envelope[Any]]) -> list[StateRow]:
        return []

    async def finish(self, conn: Connection, rows: list[StateRow]) -> None:
        if rows:
            await conn.execute(STATE_INSERT, *(list(column) for column in zip(*rows, strict=True)))


async def record(ctx: HandlerContext, cmd: BenchRecord) -> None:
    Probe.mark()
    ctx.batch_state(list).append((cmd.account, cmd.seq, cmd.amount, ctx.envelope.message_id))
    ctx.emit(
        EVENT_TOPIC,
        cmd.account,
        BenchRecorded(account=cmd.account, seq=cmd.seq, amount=cmd.amount, sent_at=cmd.sent_at),
    )


def definition(schema: str, *, answers: bool = False) -> ServiceDefinition:
    """The bench service on `schema`. `answers=False` skips the CommandAccepted result
    (and its command_results row), so its I/O is exactly inbox + state + one outbox row."""
    handlers: dict[str, Any] = {BenchRecord.TYPE: HandlerSpec(record, answers=answers)}
    return ServiceDefinition(
        name="bench",
        schema=schema,
        migrations=MIGRATIONS,
        consumers=[
            ConsumerSpec(
                name="commands", topic=COMMAND_TOPIC, handlers=handlers, batch_hooks=StateRows()
            )
        ],
    )
