"""SQL for the invoice service's schema. Every query names its merchants: a repository's
one merchant, or a batch's several at once (`InvoiceBatch`)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from asyncpg import Record

from contracts.debtor import Debtor, UnreachableFlags
from services.invoice.domain import Invoice, PaymentPlan, RecollectionState, SchemeStepState
from services.invoice.domain.merchant import MerchantSettings
from services.runtime.db import Connection
from services.runtime.repository import Key, MerchantRepository


@dataclass(frozen=True)
class SchemeVersion:
    key: str
    version: int
    steps: list[dict[str, Any]]
    #: SEPA recollection (contracts.invoice.Recollection as JSON), None when off.
    recollection: dict[str, Any] | None = None

    @functools.cached_property
    def step_states(self) -> list[SchemeStepState]:
        return [
            SchemeStepState.model_validate(
                {
                    **s,
                    "admin_cost": None if s.get("admin_cost") is None else str(s["admin_cost"]),
                    "threshold_amount": None
                    if s.get("threshold_amount") is None
                    else str(s["threshold_amount"]),
                }
            )
            for s in self.steps
        ]

    @functools.cached_property
    def recollection_state(self) -> RecollectionState | None:
        if self.recollection is None:
            return None
        return RecollectionState.model_validate(self.recollection)


@dataclass(frozen=True)
class DebtorRecord:
    code: str
    guid: uuid.UUID
    data: dict[str, Any]
    unreachable: dict[str, bool]


EventRow = tuple[str, str, int, UUID, datetime, str, dict[str, str]]
T = TypeVar("T")


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as the column arrays a set-based statement `unnest`s."""
    return [list(column) for column in zip(*rows, strict=True)]


#: Set-based reads: $1 the websites, $2 the names; each row names its key.
_INVOICES = (
    "SELECT i.website_key, i.invoice_number, i.state FROM invoices i"
    " JOIN unnest($1::text[], $2::text[]) AS k(site, number)"
    " ON i.website_key = k.site AND i.invoice_number = k.number"
    " ORDER BY i.website_key, i.invoice_number FOR UPDATE OF i"
)
_SCHEMES = (
    "SELECT DISTINCT ON (k.site, k.scheme) k.site, k.scheme, s.version, s.steps,"
    " s.recollection"
    " FROM unnest($1::text[], $2::text[]) AS k(site, scheme)"
    " JOIN schemes s ON s.scheme_key = k.scheme AND s.website_key IN (k.site, '')"
    " ORDER BY k.site, k.scheme, s.website_key DESC, s.version DESC"
)
_DEBTORS = (
    "SELECT d.website_key, d.debtor_code, d.debtor_guid, d.data, d.unreachable"
    " FROM debtors d JOIN unnest($1::text[], $2::text[]) AS k(site, code)"
    " ON d.website_key = k.site AND d.debtor_code = k.code"
)
_MERCHANTS = (
    "SELECT website_key, settings FROM merchant_settings WHERE website_key = ANY($1::text[])"
)
_PARKED = (
    "SELECT t.website_key, t.invoice_number, t.transaction FROM early_transactions t"
    " JOIN unnest($1::text[], $2::text[]) AS k(site, number)"
    " ON t.website_key = k.site AND t.invoice_number = k.number"
    " ORDER BY t.website_key, t.invoice_number, t.occurred_at, t.message_id FOR UPDATE OF t"
)


#: Set-based writes: one array per column.
_DELETE_PARKED = (
    "DELETE FROM early_transactions t USING unnest($1::text[], $2::text[]) AS k(site, number)"
    " WHERE t.website_key = k.site AND t.invoice_number = k.number"
)
_WRITE_DEBTORS = (
    "INSERT INTO debtors (website_key, debtor_code, debtor_guid, data)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::jsonb[])"
    " ON CONFLICT (website_key, debtor_code)"
    " DO UPDATE SET data = EXCLUDED.data, updated_at = now()"
)
_WRITE_INVOICES = (
    "INSERT INTO invoices (website_key, invoice_number, invoice_key, status,"
    " debtor_code, plan_dossier, state, updated_at)"
    " SELECT w, n, k, s, d, p, j::jsonb, now() FROM unnest($1::text[], $2::text[],"
    " $3::text[], $4::smallint[], $5::text[], $6::text[], $7::text[])"
    " AS u(w, n, k, s, d, p, j)"
    " ON CONFLICT (website_key, invoice_number) DO UPDATE SET status ="
    " EXCLUDED.status, debtor_code = EXCLUDED.debtor_code, plan_dossier ="
    " EXCLUDED.plan_dossier, state = EXCLUDED.state, updated_at = now()"
)
_WRITE_EVENTS = (
    "INSERT INTO invoice_events (website_key, invoice_number, sequence, message_id,"
    " occurred_at, event, parameters) SELECT * FROM unnest($1::text[], $2::text[],"
    " $3::int[], $4::uuid[], $5::timestamptz[], $6::text[], $7::jsonb[])"
)
_WRITE_PARKED = (
    "INSERT INTO early_transactions (website_key, invoice_number, message_id,"
    " occurred_at, transaction) SELECT * FROM unnest($1::text[], $2::text[],"
    " $3::uuid[], $4::timestamptz[], $5::jsonb[]) ON CONFLICT DO NOTHING"
)


async def early_transaction_count(conn: Connection, cap: int) -> int:
    """Payments parked because their invoice does not exist yet (counted up to `cap`)."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM early_transactions LIMIT $1) AS e", cap
    )
    return count


def _invoice(row: Record) -> tuple[Key, Invoice]:
    return (row["website_key"], row["invoice_number"]), Invoice.model_validate(row["state"])


def _scheme(row: Record) -> tuple[Key, SchemeVersion]:
    return (row["site"], row["scheme"]), SchemeVersion(
        row["scheme"], row["version"], row["steps"], row["recollection"]
    )


def _debtor(row: Record) -> tuple[Key, DebtorRecord]:
    record = DebtorRecord(row["debtor_code"], row["debtor_guid"], row["data"], row["unreachable"])
    return (row["website_key"], record.code), record


async def _read_missing(
    conn: Connection,
    held: dict[Key, T | None],
    keys: Iterable[Key],
    query: str,
    entry: Callable[[Record], tuple[Key, T]],
) -> None:
    """Read the keys `held` lacks with `query`, in one round trip; a key without a row is
    held as None."""
    # Not `set(keys) - held.keys()`: that copies every key held, for each handler's
    # read of its one key (quadratic in the batch).
    new = sorted({key for key in keys if key not in held})
    if not new:
        return
    held.update(dict.fromkeys(new))
    held.update(entry(row) for row in await conn.fetch(query, *_columns(new)))


@dataclass
class InvoiceBatch:
    """The unit of work of one consumed batch (or of one replayed message): the rows read
    and locked so far, and the writes kept until `flush`.

    Every read goes through it: a key it holds costs nothing, the others are read in one
    query for all of them (so a batch reads up front for all its messages, batch.py, and
    a handler's own reads are the same queries for one key). A key is present once read,
    with None when the row does not exist.
    """

    locked: set[Key] = field(default_factory=set)
    invoices: dict[Key, Invoice | None] = field(default_factory=dict)
    #: Early transactions of invoices about to be created, oldest first (emptied once
    #: taken: the rows are deleted at `flush`).
    parked: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)
    unparked: set[Key] = field(default_factory=set)
    schemes: dict[Key, SchemeVersion | None] = field(default_factory=dict)
    debtors: dict[Key, DebtorRecord | None] = field(default_factory=dict)
    #: Each merchant's settings (the defaults for a merchant that set none).
    merchants: dict[str, MerchantSettings] = field(default_factory=dict)
    dirty: dict[Key, Invoice] = field(default_factory=dict)
    debtor_writes: dict[Key, DebtorRecord] = field(default_factory=dict)
    events: list[EventRow] = field(default_factory=list)
    #: Early transactions to keep: (website, number, message id, occurred at, transaction).
    parking: list[tuple[str, str, UUID, datetime, dict[str, Any]]] = field(default_factory=list)

    async def lock(self, conn: Connection, keys: Iterable[Key]) -> None:
        """Serialize work on invoice numbers that may not exist yet (creation against an
        early transaction) until the transaction ends: one sorted sweep, no deadlocks."""
        new = sorted(set(keys) - self.locked)
        if not new:
            return
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(k))"
            " FROM (SELECT k FROM unnest($1::text[]) AS k ORDER BY k) AS sorted",
            [f"{site}:{number}" for site, number in new],
        )
        self.locked.update(new)

    async def load_invoices(self, conn: Connection, keys: Iterable[Key]) -> None:
        """Read the invoices not read yet, locked FOR UPDATE in key order."""
        await _read_missing(conn, self.invoices, keys, _INVOICES, _invoice)

    async def load_parked(self, conn: Connection, keys: Iterable[Key]) -> None:
        """Read the early transactions of invoice numbers not read yet, rows locked."""
        new = sorted({key for key in keys if key not in self.parked})
        if not new:
            return
        for key in new:
            self.parked[key] = []
        for row in await conn.fetch(_PARKED, *_columns(new)):
            self.parked[(row["website_key"], row["invoice_number"])].append(row["transaction"])

    async def load_schemes(self, conn: Connection, keys: Iterable[Key]) -> None:
        """Read the latest version of each scheme: the merchant's, else the built-in."""
        await _read_missing(conn, self.schemes, keys, _SCHEMES, _scheme)

    async def load_debtors(self, conn: Connection, keys: Iterable[Key]) -> None:
        await _read_missing(conn, self.debtors, keys, _DEBTORS, _debtor)

    async def load_merchants(self, conn: Connection, websites: Iterable[str]) -> None:
        """Read the settings of the merchants not read yet, in one query."""
        new = sorted({site for site in websites if site not in self.merchants})
        if not new:
            return
        self.merchants.update(dict.fromkeys(new, MerchantSettings()))
        for row in await conn.fetch(_MERCHANTS, new):
            self.merchants[row["website_key"]] = MerchantSettings.model_validate(row["settings"])

    async def flush(self, conn: Connection) -> None:
        """Write what the handlers changed so far: one statement per table."""
        writes = (
            (_DELETE_PARKED, sorted(self.unparked)),
            (
                _WRITE_DEBTORS,
                [(*key, r.guid, r.data) for key, r in self.debtor_writes.items()],
            ),
            (
                _WRITE_INVOICES,
                [
                    (
                        i.website_key,
                        i.invoice_number,
                        i.invoice_key,
                        int(i.status),
                        i.debtor_code,
                        i.plan_dossier,
                        i.model_dump_json(),
                    )
                    for i in self.dirty.values()
                ],
            ),
            (_WRITE_EVENTS, self.events),
            (_WRITE_PARKED, self.parking),
        )
        for statement, rows in writes:
            if rows:
                await conn.execute(statement, *_columns(rows))
        self.unparked.clear()
        self.debtor_writes.clear()
        self.dirty.clear()
        self.events = []
        self.parking = []


class InvoiceRepository(MerchantRepository[InvoiceBatch]):
    """Loads and saves one merchant's invoices, debtors, schemes and plans, through the
    batch's `InvoiceBatch`: reads of what it holds cost nothing, writes wait for its
    `flush` (the consumer's `BatchHooks.finish`, batch.py)."""

    # --- invoices ---

    async def lock_number(self, invoice_number: str) -> None:
        """Serialize work on an invoice number that may not exist yet (creation against
        an early transaction), for the rest of this transaction."""
        await self.batch.lock(self.conn, [self._key(invoice_number)])

    async def get(self, invoice_number: str) -> Invoice | None:
        """The invoice, locked for this transaction, in its merchant's time zone."""
        key = self._key(invoice_number)
        await self.batch.load_invoices(self.conn, [key])
        invoice = self.batch.invoices[key]
        return await self._in_merchant_zone(invoice) if invoice is not None else None

    async def get_many(self, numbers: list[str]) -> list[Invoice]:
        """Several invoices, in number order (locked in that order: no deadlocks), in
        their merchant's time zone."""
        keys = sorted({self._key(number) for number in numbers})
        await self.batch.load_invoices(self.conn, keys)
        return [
            await self._in_merchant_zone(invoice)
            for key in keys
            if (invoice := self.batch.invoices[key]) is not None
        ]

    async def _in_merchant_zone(self, invoice: Invoice) -> Invoice:
        """The invoice with the merchant's current time zone: the domain plans its next
        step in it (a setting changed since its last change takes effect now)."""
        time_zone = (await self.merchant_settings()).time_zone
        if invoice.time_zone != time_zone:
            invoice = invoice.model_copy(update={"time_zone": time_zone})
            self.batch.invoices[self._key(invoice.invoice_number)] = invoice
        return invoice

    async def save(self, invoice: Invoice) -> None:
        """Keep the change; the batch writes it at its end."""
        key = self._key(invoice.invoice_number)
        self.batch.invoices[key] = self.batch.dirty[key] = invoice

    async def log_events(
        self, rows: list[tuple[str, int, uuid.UUID, datetime, str, dict[str, str]]]
    ) -> None:
        self.batch.events.extend((self.website_key, *row) for row in rows)

    # --- merchant settings ---

    async def merchant_settings(self) -> MerchantSettings:
        """The merchant's settings; the defaults when it never set any."""
        await self.batch.load_merchants(self.conn, [self.website_key])
        return self.batch.merchants[self.website_key]

    async def save_merchant_settings(self, settings: MerchantSettings) -> None:
        await self.conn.execute(
            "INSERT INTO merchant_settings (website_key, settings) VALUES ($1, $2::text::jsonb)"
            " ON CONFLICT (website_key) DO UPDATE SET settings = EXCLUDED.settings,"
            " updated_at = now()",
            self.website_key,
            settings.model_dump_json(),
        )
        self.batch.merchants[self.website_key] = settings

    # --- early transactions ---

    async def park_transaction(
        self,
        invoice_number: str,
        message_id: uuid.UUID,
        occurred_at: datetime,
        transaction: dict[str, Any],
    ) -> None:
        """Keep a transaction until its invoice is created; the batch writes it."""
        self.batch.parking.append(
            (self.website_key, invoice_number, message_id, occurred_at, transaction)
        )

    async def take_parked(self, invoice_number: str) -> list[dict[str, Any]]:
        """The invoice number's early transactions, oldest first, taken (once)."""
        key = self._key(invoice_number)
        await self.batch.load_parked(self.conn, [key])
        taken, self.batch.parked[key] = self.batch.parked[key], []
        if taken:
            self.batch.unparked.add(key)
        return taken

    # --- debtors ---

    async def upsert_debtor(
        self, debtor: Debtor, unreachable: UnreachableFlags | None = None
    ) -> DebtorRecord:
        """Store the debtor's details; the unreachable flags change only when given. A
        debtor the batch has read is kept for its end; otherwise written now, which
        gives a new debtor its guid for good."""
        data = debtor.model_dump(mode="json", exclude_none=True)
        key = self._key(debtor.code)
        if unreachable is None and key in self.batch.debtors:
            known = self.batch.debtors[key]
            record = DebtorRecord(
                debtor.code,
                known.guid if known else uuid.uuid4(),
                data,
                known.unreachable if known else {},
            )
            self.batch.debtors[key] = self.batch.debtor_writes[key] = record
            return record
        await self.flush()
        flags = None if unreachable is None else unreachable.model_dump(mode="json")
        row = await self.conn.fetchrow(
            "INSERT INTO debtors (website_key, debtor_code, debtor_guid, data, unreachable)"
            " VALUES ($1, $2, $3, $4, coalesce($5::jsonb, '{}'::jsonb))"
            " ON CONFLICT (website_key, debtor_code) DO UPDATE SET data = EXCLUDED.data,"
            " unreachable = coalesce($5::jsonb, debtors.unreachable), updated_at = now()"
            " RETURNING debtor_guid, unreachable",
            self.website_key,
            debtor.code,
            uuid.uuid4(),
            data,
            flags,
        )
        assert row is not None
        record = DebtorRecord(debtor.code, row["debtor_guid"], data, row["unreachable"])
        self.batch.debtors[key] = record
        return record

    async def debtor(self, code: str | None) -> DebtorRecord | None:
        if code is None:
            return None
        key = self._key(code)
        await self.batch.load_debtors(self.conn, [key])
        return self.batch.debtors[key]

    # --- schemes ---

    async def scheme(self, scheme_key: str) -> SchemeVersion | None:
        """The latest version of the merchant's scheme, else of the built-in one."""
        key = self._key(scheme_key)
        await self.batch.load_schemes(self.conn, [key])
        return self.batch.schemes[key]

    async def add_scheme_version(
        self,
        scheme_key: str,
        name: str,
        steps: list[dict[str, Any]],
        recollection: dict[str, Any] | None = None,
    ) -> int:
        """Store a new version of the merchant's scheme; returns its number."""
        self.batch.schemes.pop(self._key(scheme_key), None)
        version: int = await self.conn.fetchval(
            "INSERT INTO schemes (website_key, scheme_key, version, name, steps, recollection)"
            " SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4, $5 FROM schemes"
            " WHERE website_key = $1 AND scheme_key = $2 RETURNING version",
            self.website_key,
            scheme_key,
            name,
            steps,
            recollection,
        )
        return version

    # --- payment plans ---

    async def plan(self, dossier: str) -> PaymentPlan | None:
        state = await self.conn.fetchval(
            "SELECT state FROM payment_plans WHERE website_key = $1 AND dossier_number = $2"
            " FOR UPDATE",
            self.website_key,
            dossier,
        )
        return PaymentPlan.model_validate(state) if state is not None else None

    async def save_plan(self, plan: PaymentPlan) -> None:
        await self.conn.execute(
            "INSERT INTO payment_plans (website_key, dossier_number, state)"
            " VALUES ($1, $2, $3::text::jsonb) ON CONFLICT (website_key, dossier_number)"
            " DO UPDATE SET state = EXCLUDED.state",
            self.website_key,
            plan.dossier_number,
            plan.model_dump_json(),
        )
