"""SQL for the invoice service's schema. Every query is scoped to one merchant."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from contracts.debtor import Debtor, UnreachableFlags
from services.invoice.domain import Invoice, PaymentPlan, SchemeStepState
from services.runtime.db import Connection


@dataclass(frozen=True)
class SchemeVersion:
    key: str
    version: int
    steps: list[dict[str, Any]]

    @property
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


def _dump(model: Invoice | PaymentPlan) -> str:
    return model.model_dump_json()


class InvoiceRepository:
    """Loads and saves one merchant's invoices, debtors, schemes and plans."""

    def __init__(self, conn: Connection, website_key: str) -> None:
        self.conn = conn
        self.website_key = website_key

    # --- invoices ---

    async def lock_number(self, invoice_number: str) -> None:
        """Serialize work on an invoice number that may not exist yet (creation against
        an early transaction), for the rest of this transaction."""
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", f"{self.website_key}:{invoice_number}"
        )

    async def get(self, invoice_number: str) -> Invoice | None:
        """The invoice, locked for this transaction."""
        state = await self.conn.fetchval(
            "SELECT state FROM invoices WHERE website_key = $1 AND invoice_number = $2 FOR UPDATE",
            self.website_key,
            invoice_number,
        )
        return Invoice.model_validate(state) if state is not None else None

    async def get_many(self, numbers: list[str]) -> list[Invoice]:
        """Several invoices, locked in number order (a fixed order avoids deadlocks)."""
        rows = await self.conn.fetch(
            "SELECT state FROM invoices WHERE website_key = $1 AND invoice_number = ANY($2)"
            " ORDER BY invoice_number FOR UPDATE",
            self.website_key,
            numbers,
        )
        return [Invoice.model_validate(row["state"]) for row in rows]

    async def save(self, invoice: Invoice) -> None:
        await self.conn.execute(
            "INSERT INTO invoices (website_key, invoice_number, invoice_key, status, debtor_code,"
            " plan_dossier, state, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, now())"
            " ON CONFLICT (website_key, invoice_number) DO UPDATE SET status = EXCLUDED.status,"
            " debtor_code = EXCLUDED.debtor_code, plan_dossier = EXCLUDED.plan_dossier,"
            " state = EXCLUDED.state, updated_at = now()",
            self.website_key,
            invoice.invoice_number,
            invoice.invoice_key,
            int(invoice.status),
            invoice.debtor_code,
            invoice.plan_dossier,
            _dump(invoice),
        )

    async def log_events(
        self, rows: list[tuple[str, int, uuid.UUID, datetime, str, dict[str, str]]]
    ) -> None:
        if rows:
            await self.conn.executemany(
                "INSERT INTO invoice_events (website_key, invoice_number, sequence, message_id,"
                " occurred_at, event, parameters) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                [(self.website_key, *row) for row in rows],
            )

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
        return DebtorRecord(debtor.code, row["debtor_guid"], data, row["unreachable"])

    async def debtor(self, code: str | None) -> DebtorRecord | None:
        if code is None:
            return None
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
            _dump(plan),
        )
