"""SQL for the collection service's schema. Every query is scoped to one merchant."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from contracts.collection import CaseEnvironment, CaseState, ConditionAction
from services.collection.domain import Case, Condition, Configuration
from services.runtime.db import Connection


@dataclass(frozen=True)
class StoredCase:
    """A case as stored: what the domain reads, and the rest (`data`) as given."""

    case: Case
    request_hash: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class StoredDocument:
    name: str
    content_type: str
    content_base64: str


class CollectionRepository:
    """Loads and saves one merchant's configurations, cases and documents."""

    def __init__(self, conn: Connection, website_key: str) -> None:
        self.conn = conn
        self.website_key = website_key

    # --- configurations ---

    async def configurations(self) -> list[Configuration]:
        rows = await self.conn.fetch(
            "SELECT configuration_key, agency_code, conditions, priority, is_default,"
            " open_cases_for_chargebacks FROM configurations WHERE website_key = $1",
            self.website_key,
        )
        return [
            Configuration(
                key=row["configuration_key"],
                agency_code=row["agency_code"],
                conditions=tuple(
                    Condition(Decimal(c["min_amount"]), ConditionAction(c["action"]))
                    for c in row["conditions"]
                ),
                priority=row["priority"],
                is_default=row["is_default"],
                open_cases_for_chargebacks=row["open_cases_for_chargebacks"],
            )
            for row in rows
        ]

    async def upsert_configuration(self, config: Configuration) -> None:
        if config.is_default:  # one default per merchant: this one now
            await self.conn.execute(
                "UPDATE configurations SET is_default = false"
                " WHERE website_key = $1 AND configuration_key <> $2 AND is_default",
                self.website_key,
                config.key,
            )
        await self.conn.execute(
            "INSERT INTO configurations (website_key, configuration_key, agency_code, conditions,"
            " priority, is_default, open_cases_for_chargebacks)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (website_key, configuration_key) DO UPDATE SET"
            " agency_code = EXCLUDED.agency_code, conditions = EXCLUDED.conditions,"
            " priority = EXCLUDED.priority, is_default = EXCLUDED.is_default,"
            " open_cases_for_chargebacks = EXCLUDED.open_cases_for_chargebacks,"
            " updated_at = now()",
            self.website_key,
            config.key,
            config.agency_code,
            [
                {"min_amount": str(c.min_amount), "action": c.action.value}
                for c in config.conditions
            ],
            config.priority,
            config.is_default,
            config.open_cases_for_chargebacks,
        )

    # --- cases ---

    async def lock_key(self, case_key: str) -> None:
        """Serialize work on a case key that may not exist yet."""
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", f"case:{self.website_key}:{case_key}"
        )

    async def get(self, case_key: str) -> StoredCase | None:
        """The case, its row locked for this transaction."""
        row = await self.conn.fetchrow(
            "SELECT * FROM cases WHERE website_key = $1 AND case_key = $2 FOR UPDATE",
            self.website_key,
            case_key,
        )
        if row is None:
            return None
        references = await self.conn.fetch(
            "SELECT reference FROM collection_references WHERE website_key = $1 AND case_key = $2",
            self.website_key,
            case_key,
        )
        return StoredCase(
            case=Case(
                key=row["case_key"],
                state=CaseState(row["state"]),
                currency=row["currency"],
                amount=row["amount"],
                invoice_number=row["invoice_number"],
                environment=CaseEnvironment(row["environment"]),
                configuration_key=row["configuration_key"],
                agency_code=row["agency_code"],
                agency_reference=row["agency_reference"],
                collected_amount=row["collected_amount"],
                collection_references=frozenset(r["reference"] for r in references),
                transferred=row["transferred"],
            ),
            request_hash=row["request_hash"],
            data=row["data"],
        )

    async def open_case_keys(self, invoice_number: str) -> list[str]:
        """The cases of an invoice that are not over yet."""
        rows = await self.conn.fetch(
            "SELECT case_key FROM cases WHERE website_key = $1 AND invoice_number = $2"
            " AND state NOT IN ('failed', 'closed') ORDER BY case_key",
            self.website_key,
            invoice_number,
        )
        return [row["case_key"] for row in rows]

    async def insert(self, stored: StoredCase) -> bool:
        """A new case; False when the key exists (nothing written)."""
        c = stored.case
        inserted = await self.conn.fetchval(
            "INSERT INTO cases (website_key, case_key, state, invoice_number, environment,"
            " request_hash, currency, amount, configuration_key, agency_code, data)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            " ON CONFLICT (website_key, case_key) DO NOTHING RETURNING true",
            self.website_key,
            c.key,
            c.state.value,
            c.invoice_number,
            c.environment.value,
            stored.request_hash,
            c.currency,
            c.amount,
            c.configuration_key,
            c.agency_code,
            stored.data,
        )
        return bool(inserted)

    async def save(self, before: Case, after: Case) -> None:
        await self.conn.execute(
            "UPDATE cases SET state = $3, configuration_key = $4, agency_code = $5,"
            " agency_reference = $6, collected_amount = $7, transferred = $8, updated_at = now()"
            " WHERE website_key = $1 AND case_key = $2",
            self.website_key,
            after.key,
            after.state.value,
            after.configuration_key,
            after.agency_code,
            after.agency_reference,
            after.collected_amount,
            after.transferred,
        )
        new = after.collection_references - before.collection_references
        if new:
            await self.conn.executemany(
                "INSERT INTO collection_references (website_key, case_key, reference)"
                " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                [(self.website_key, after.key, reference) for reference in sorted(new)],
            )

    # --- documents ---

    async def document_usage(self, case_key: str) -> tuple[int, int]:
        """How many documents the case has and their bytes together."""
        row = await self.conn.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(length(content)), 0) AS bytes FROM documents"
            " WHERE website_key = $1 AND case_key = $2",
            self.website_key,
            case_key,
        )
        assert row is not None
        return int(row["n"]), int(row["bytes"])

    async def add_document(
        self, case_key: str, position: int, name: str, content_type: str, content: bytes
    ) -> None:
        await self.conn.execute(
            "INSERT INTO documents (website_key, case_key, position, name, content_type, content)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            self.website_key,
            case_key,
            position,
            name,
            content_type,
            content,
        )

    async def documents(self, case_key: str) -> list[StoredDocument]:
        rows = await self.conn.fetch(
            "SELECT name, content_type, content FROM documents"
            " WHERE website_key = $1 AND case_key = $2 ORDER BY position",
            self.website_key,
            case_key,
        )
        return [
            StoredDocument(
                row["name"], row["content_type"], base64.b64encode(row["content"]).decode()
            )
            for row in rows
        ]

    async def document_names(self, case_key: str) -> list[str]:
        rows = await self.conn.fetch(
            "SELECT name FROM documents WHERE website_key = $1 AND case_key = $2 ORDER BY position",
            self.website_key,
            case_key,
        )
        return [row["name"] for row in rows]
