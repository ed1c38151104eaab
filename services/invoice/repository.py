"""SQL for the invoice service's schema. Every query is scoped to one merchant."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from contracts.debtor import Debtor, UnreachableFlags
from services.invoice.domain import Invoice, PaymentPlan, SchemeStepState
from services.runtime.db import Connection


@dataclass(frozen=True)
class SchemeVersion:
    key: str
    version: int
    steps: list[dict[str, Any]]

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


@dataclass(frozen=True)
class DebtorRecord:
    code: str
    guid: uuid.UUID
    data: dict[str, Any]
    unreachable: dict[str, bool]


Key = tuple[str, str]  # (website_key, invoice number / debtor code / scheme key)
EventRow = tuple[str, str, int, UUID, datetime, str, dict[str, str]]


@dataclass
class InvoiceBatch:
    """What a batch read up front, and what its handlers changed."""

    locked: set[Key] = field(default_factory=set)
    invoices: dict[Key, Invoice | None] = field(default_factory=dict)
    parked: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)
    parked_loaded: set[Key] = field(default_factory=set)
    schemes: dict[Key, SchemeVersion | None] = field(default_factory=dict)
    debtors: dict[Key, DebtorRecord] = field(default_factory=dict)
    debtors_loaded: set[Key] = field(default_factory=set)
    dirty: dict[Key, Invoice] = field(default_factory=dict)
    debtor_writes: dict[Key, DebtorRecord] = field(default_factory=dict)
    events: list[EventRow] = field(default_factory=list)

    @property
    def has_writes(self) -> bool:
        return bool(self.dirty or self.debtor_writes or self.events)


async def flush(conn: Connection, batch: InvoiceBatch) -> None:
    """Write what the batch's handlers changed so far (one statement per table)."""
    if batch.debtor_writes:
        records = list(batch.debtor_writes.items())
        await conn.execute(
            "INSERT INTO debtors (website_key, debtor_code, debtor_guid, data)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::jsonb[])"
            " ON CONFLICT (website_key, debtor_code)"
            " DO UPDATE SET data = EXCLUDED.data, updated_at = now()",
            [k[0] for k, _ in records],
            [k[1] for k, _ in records],
            [r.guid for _, r in records],
            [r.data for _, r in records],
        )
        batch.debtor_writes.clear()
    if batch.dirty:
        invoices = list(batch.dirty.values())
        await conn.execute(
            "INSERT INTO invoices (website_key, invoice_number, invoice_key, status, debtor_code,"
            " plan_dossier, state, updated_at)"
            " SELECT w, n, k, s, d, p, j::jsonb, now() FROM unnest($1::text[], $2::text[],"
            " $3::text[], $4::smallint[], $5::text[], $6::text[], $7::text[])"
            " AS u(w, n, k, s, d, p, j)"
            " ON CONFLICT (website_key, invoice_number) DO UPDATE SET status = EXCLUDED.status,"
            " debtor_code = EXCLUDED.debtor_code, plan_dossier = EXCLUDED.plan_dossier,"
            " state = EXCLUDED.state, updated_at = now()",
            [i.website_key for i in invoices],
            [i.invoice_number for i in invoices],
            [i.invoice_key for i in invoices],
            [int(i.status) for i in invoices],
            [i.debtor_code for i in invoices],
            [i.plan_dossier for i in invoices],
            [i.model_dump_json() for i in invoices],
        )
        batch.dirty.clear()
    if batch.events:
        rows = batch.events
        await conn.execute(
            "INSERT INTO invoice_events (website_key, invoice_number, sequence, message_id,"
            " occurred_at, event, parameters) SELECT * FROM unnest($1::text[], $2::text[],"
            " $3::int[], $4::uuid[], $5::timestamptz[], $6::text[], $7::jsonb[])",
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
            [r[4] for r in rows],
            [r[5] for r in rows],
            [r[6] for r in rows],
        )
        batch.events = []


class InvoiceRepository:
    """Loads and saves one merchant's invoices, debtors, schemes and plans."""

    def __init__(
        self, conn: Connection, website_key: str, batch: InvoiceBatch | None = None
    ) -> None:
        self.conn = conn
        self.website_key = website_key
        #: Rows read for the whole batch and writes kept until its end (see batch.py).
        self.batch = batch

    def _key(self, name: str) -> Key:
        return (self.website_key, name)

    async def flush(self) -> None:
        """Write what the batch kept, before a query that must see it."""
        if self.batch is not None and self.batch.has_writes:
            await flush(self.conn, self.batch)

    # --- invoices ---

    async def lock_number(self, invoice_number: str) -> None:
        """Serialize work on an invoice number that may not exist yet (creation against
        an early transaction), for the rest of this transaction."""
        if self.batch is not None and self._key(invoice_number) in self.batch.locked:
            return
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", f"{self.website_key}:{invoice_number}"
        )

    async def get(self, invoice_number: str) -> Invoice | None:
        """The invoice, locked for this transaction."""
        key = self._key(invoice_number)
        if self.batch is not None and key in self.batch.invoices:
            return self.batch.invoices[key]
        state = await self.conn.fetchval(
            "SELECT state FROM invoices WHERE website_key = $1 AND invoice_number = $2 FOR UPDATE",
            self.website_key,
            invoice_number,
        )
        invoice = Invoice.model_validate(state) if state is not None else None
        if self.batch is not None:
            self.batch.invoices[key] = invoice
        return invoice

    async def get_many(self, numbers: list[str]) -> list[Invoice]:
        """Several invoices, locked in number order (a fixed order avoids deadlocks)."""
        if self.batch is not None:
            found = [await self.get(number) for number in sorted(set(numbers))]
            return [invoice for invoice in found if invoice is not None]
        rows = await self.conn.fetch(
            "SELECT state FROM invoices WHERE website_key = $1 AND invoice_number = ANY($2)"
            " ORDER BY invoice_number FOR UPDATE",
            self.website_key,
            numbers,
        )
        return [Invoice.model_validate(row["state"]) for row in rows]

    async def save(self, invoice: Invoice) -> None:
        """Keep the change for the batch's end, or write it now (the same statement)."""
        key = self._key(invoice.invoice_number)
        if self.batch is not None:
            self.batch.invoices[key] = self.batch.dirty[key] = invoice
            return
        await flush(self.conn, InvoiceBatch(dirty={key: invoice}))

    async def log_events(
        self, rows: list[tuple[str, int, uuid.UUID, datetime, str, dict[str, str]]]
    ) -> None:
        events = [(self.website_key, *row) for row in rows]
        if self.batch is not None:
            self.batch.events.extend(events)
        elif events:
            await flush(self.conn, InvoiceBatch(events=events))

    # --- early transactions ---

    async def park_transaction(
        self,
        invoice_number: str,
        message_id: uuid.UUID,
        occurred_at: datetime,
        transaction: dict[str, Any],
    ) -> None:
        await self.conn.execute(
            "INSERT INTO early_transactions (website_key, invoice_number, message_id, occurred_at,"
            " transaction) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            self.website_key,
            invoice_number,
            message_id,
            occurred_at,
            transaction,
        )

    async def take_parked(self, invoice_number: str) -> list[dict[str, Any]]:
        key = self._key(invoice_number)
        if self.batch is not None and key in self.batch.parked_loaded:
            self.batch.parked_loaded.discard(key)
            return self.batch.parked.pop(key, [])
        rows = await self.conn.fetch(
            "DELETE FROM early_transactions WHERE website_key = $1 AND invoice_number = $2"
            " RETURNING transaction, occurred_at",
            self.website_key,
            invoice_number,
        )
        return [row["transaction"] for row in sorted(rows, key=lambda r: r["occurred_at"])]

    # --- debtors ---

    async def upsert_debtor(
        self, debtor: Debtor, unreachable: UnreachableFlags | None = None
    ) -> DebtorRecord:
        """Store the debtor's details; the unreachable flags change only when given."""
        data = debtor.model_dump(mode="json", exclude_none=True)
        key = self._key(debtor.code)
        if self.batch is not None and unreachable is None and key in self.batch.debtors_loaded:
            known = self.batch.debtors.get(key)
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
        if self.batch is not None:
            self.batch.debtors[key] = record
            self.batch.debtors_loaded.add(key)
        return record

    async def debtor(self, code: str | None) -> DebtorRecord | None:
        if code is None:
            return None
        if self.batch is not None and self._key(code) in self.batch.debtors_loaded:
            return self.batch.debtors.get(self._key(code))
        row = await self.conn.fetchrow(
            "SELECT debtor_code, debtor_guid, data, unreachable FROM debtors"
            " WHERE website_key = $1 AND debtor_code = $2",
            self.website_key,
            code,
        )
        if row is None:
            return None
        return DebtorRecord(row["debtor_code"], row["debtor_guid"], row["data"], row["unreachable"])

    # --- schemes ---

    async def scheme(self, scheme_key: str) -> SchemeVersion | None:
        """The latest version of the merchant's scheme, else of the built-in one."""
        if self.batch is not None and self._key(scheme_key) in self.batch.schemes:
            return self.batch.schemes[self._key(scheme_key)]
        row = await self.conn.fetchrow(
            "SELECT scheme_key, version, steps FROM schemes WHERE scheme_key = $2"
            " AND website_key IN ($1, '') ORDER BY website_key DESC, version DESC LIMIT 1",
            self.website_key,
            scheme_key,
        )
        if row is None:
            return None
        return SchemeVersion(row["scheme_key"], row["version"], row["steps"])

    async def add_scheme_version(
        self, scheme_key: str, name: str, steps: list[dict[str, Any]]
    ) -> int:
        """Store a new version of the merchant's scheme; returns its number."""
        if self.batch is not None:
            self.batch.schemes.pop(self._key(scheme_key), None)
        version: int = await self.conn.fetchval(
            "INSERT INTO schemes (website_key, scheme_key, version, name, steps)"
            " SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4 FROM schemes"
            " WHERE website_key = $1 AND scheme_key = $2 RETURNING version",
            self.website_key,
            scheme_key,
            name,
            steps,
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
