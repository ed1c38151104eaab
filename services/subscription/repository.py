"""SQL for the subscription service's schema. Every query is scoped to one merchant.

A subscription is one `subscriptions` row (status, the request fingerprint and the
non-plan state as JSON), its rate plans as `rate_plan_versions` rows, and one
`billed_periods` row per billed period, unique per period.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from contracts.subscription import (
    BillingInterval,
    BillingTiming,
    IntervalUnit,
    SubscriptionStatus,
)
from services.runtime.db import Connection
from services.runtime.repository import Key, MerchantRepository
from services.subscription.domain import BillingState, PlanVersion, next_billing_date

_COLUMNS = "status, request_hash, state, initial_transaction, payment_method, mandate_reference"


@dataclass(frozen=True)
class Subscription:
    """A subscription as stored: its billing state and what invoices need besides."""

    status: SubscriptionStatus
    request_hash: str
    billing: BillingState
    #: The debtor as given (`Debtor` in JSON form): every period invoice carries it.
    debtor: dict[str, Any]
    scheme_key: str
    #: CreateCombinedSubscription's transaction (`Transaction` in JSON form, with the
    #: status it has reached); it counts on the first period's invoice.
    initial_transaction: dict[str, Any] | None = None
    #: Of the successful initial transaction: the method and the mandate that collects
    #: each new invoice.
    payment_method: str | None = None
    mandate_reference: str | None = None

    @property
    def initial_transaction_key(self) -> str | None:
        return (
            None
            if self.initial_transaction is None
            else self.initial_transaction["transaction_key"]
        )

    @property
    def key(self) -> str:
        return self.billing.subscription_key


def _state_json(sub: Subscription) -> dict[str, Any]:
    b = sub.billing
    return {
        "currency": b.currency,
        "interval": {"unit": b.interval.unit.value, "count": b.interval.count},
        "timing": b.timing.value,
        "start_date": b.start_date.isoformat(),
        "end_date": b.end_date.isoformat() if b.end_date else None,
        "billing_day": b.billing_day,
        "payment_term_days": b.payment_term_days,
        "next_period_index": b.next_period_index,
        "debtor": sub.debtor,
        "scheme_key": sub.scheme_key,
    }


def _subscription(key: str, row: Any, plans: tuple[PlanVersion, ...]) -> Subscription:
    s = row["state"]
    return Subscription(
        status=SubscriptionStatus(row["status"]),
        request_hash=row["request_hash"],
        debtor=s["debtor"],
        scheme_key=s["scheme_key"],
        initial_transaction=row["initial_transaction"],
        payment_method=row["payment_method"],
        mandate_reference=row["mandate_reference"],
        billing=BillingState(
            subscription_key=key,
            currency=s["currency"],
            interval=BillingInterval.model_construct(
                unit=IntervalUnit(s["interval"]["unit"]), count=s["interval"]["count"]
            ),
            timing=BillingTiming(s["timing"]),
            start_date=date.fromisoformat(s["start_date"]),
            end_date=date.fromisoformat(s["end_date"]) if s["end_date"] else None,
            billing_day=s["billing_day"],
            payment_term_days=s["payment_term_days"],
            plans=plans,
            next_period_index=s["next_period_index"],
        ),
    )


_PLAN_COLUMNS = (
    "product_code, description, unit_price, quantity, vat_percentage, start_date, end_date,"
    " effective_from_period, billed_from_period"
)


class DuplicateBilling(Exception):
    """The table refused billed periods the batch did not know to be billed (a write
    past the row lock): the batch is rolled back, and read again when it is replayed."""


def _row(website_key: str, sub: Subscription) -> tuple[Any, ...]:
    """The subscriptions row's columns, in the order insert and update name them."""
    return (
        website_key,
        sub.key,
        sub.status.value,
        sub.request_hash,
        _state_json(sub),
        sub.initial_transaction_key,
        sub.initial_transaction,
        sub.payment_method,
        sub.mandate_reference,
        next_billing_date(sub.billing) if sub.status == SubscriptionStatus.ACTIVE else None,
    )


def _prefixed(columns: str, table: str) -> str:
    return ", ".join(f"{table}.{column}" for column in columns.split(", "))


@dataclass
class SubscriptionBatch:
    """The unit of work of one consumed batch (or of one replayed message): the
    subscriptions read so far (rows locked), and the writes its handlers kept until
    `flush`. A key is present once read, with None when the subscription does not exist.
    """

    subs: dict[Key, Subscription | None] = field(default_factory=dict)
    #: Periods the `billed_periods` table holds from each subscription's next period on
    #: (normally none: the table's word over the row's, after a restore or a hand edit).
    billed_ahead: dict[Key, set[int]] = field(default_factory=dict)
    #: Subscriptions saved without plan changes, written at the end (or before a query
    #: that must see them).
    dirty: dict[Key, Subscription] = field(default_factory=dict)
    #: billed_periods rows to insert.
    billed: list[tuple[Any, ...]] = field(default_factory=list)

    async def load(self, conn: Connection, keys: Iterable[Key]) -> None:
        """Read the subscriptions not read yet, rows locked FOR UPDATE in key order, with
        their plans: two queries for the lot."""
        # Not `set(keys) - self.subs.keys()`: that copies every key held, for each
        # handler's read of its one key (quadratic in the batch).
        new = sorted({key for key in keys if key not in self.subs})
        if not new:
            return
        self.subs.update(dict.fromkeys(new))
        sites, names = [k[0] for k in new], [k[1] for k in new]
        rows = await conn.fetch(
            f"SELECT s.website_key, s.subscription_key, {_prefixed(_COLUMNS, 's')},"
            " array(SELECT b.period_index FROM billed_periods b"
            " WHERE b.website_key = s.website_key AND b.subscription_key = s.subscription_key"
            " AND b.period_index >= (s.state->>'next_period_index')::int) AS billed_ahead"
            " FROM subscriptions s JOIN unnest($1::text[], $2::text[]) AS k(site, name)"
            " ON s.website_key = k.site AND s.subscription_key = k.name"
            " ORDER BY s.website_key, s.subscription_key FOR UPDATE OF s",
            sites,
            names,
        )
        plans = await conn.fetch(
            f"SELECT p.website_key, p.subscription_key, {_prefixed(_PLAN_COLUMNS, 'p')}"
            " FROM rate_plan_versions p JOIN unnest($1::text[], $2::text[]) AS k(site, name)"
            " ON p.website_key = k.site AND p.subscription_key = k.name"
            " ORDER BY p.website_key, p.subscription_key, p.position, p.effective_from_period",
            sites,
            names,
        )
        versions: dict[Key, list[PlanVersion]] = {}
        for plan in plans:
            values = dict(plan)
            key = (values.pop("website_key"), values.pop("subscription_key"))
            versions.setdefault(key, []).append(PlanVersion(**values))
        for row in rows:
            key = (row["website_key"], row["subscription_key"])
            self.subs[key] = _subscription(key[1], row, tuple(versions.get(key, ())))
            self.billed_ahead[key] = set(row["billed_ahead"])

    async def flush(self, conn: Connection) -> None:
        """Write what the handlers kept: one statement per table."""
        if self.dirty:
            rows = [_row(key[0], sub) for key, sub in self.dirty.items()]
            await conn.execute(
                "UPDATE subscriptions s SET status = u.status, request_hash = u.request_hash,"
                " state = u.state::jsonb, initial_transaction_key = u.tx_key,"
                " initial_transaction = u.tx::jsonb, payment_method = u.method,"
                " mandate_reference = u.mandate, next_billing_date = u.next_date,"
                " updated_at = now()"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
                " $6::text[], $7::text[], $8::text[], $9::text[], $10::date[])"
                " AS u(site, name, status, request_hash, state, tx_key, tx, method, mandate,"
                " next_date)"
                " WHERE s.website_key = u.site AND s.subscription_key = u.name",
                *(
                    [
                        json.dumps(row[i]) if i in (4, 6) and row[i] is not None else row[i]
                        for row in rows
                    ]
                    for i in range(10)
                ),
            )
            self.dirty.clear()
        if self.billed:
            rows = self.billed
            inserted = await conn.fetchval(
                "WITH new AS (INSERT INTO billed_periods (website_key, subscription_key,"
                " period_index, invoice_number, message_id, amount_debit, amount_vat,"
                " billed_at) SELECT * FROM unnest($1::text[], $2::text[], $3::int[],"
                " $4::text[], $5::uuid[], $6::numeric[], $7::numeric[], $8::timestamptz[])"
                " ON CONFLICT (website_key, subscription_key, period_index) DO NOTHING"
                " RETURNING 1) SELECT count(*) FROM new",
                *([row[i] for row in rows] for i in range(8)),
            )
            self.billed = []
            if inserted != len(rows):
                raise DuplicateBilling(
                    f"{len(rows) - inserted} of {len(rows)} periods billed before"
                )


class SubscriptionRepository(MerchantRepository[SubscriptionBatch]):
    """Loads and saves one merchant's subscriptions through the batch's
    `SubscriptionBatch`: reads of what it holds cost nothing, and a bill run's writes
    wait for its `flush` (the consumer's `BatchHooks.finish`, batch.py)."""

    async def lock_key(self, subscription_key: str) -> None:
        """Serialize work on a key that may not exist yet (two creates of one key)."""
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            f"subscription:{self.website_key}:{subscription_key}",
        )

    async def get(self, subscription_key: str) -> Subscription | None:
        """The subscription, its row locked (FOR UPDATE) for this transaction."""
        key = self._key(subscription_key)
        await self.batch.load(self.conn, [key])
        return self.batch.subs[key]

    async def key_of_transaction(self, transaction_key: str) -> str | None:
        """The subscription whose initial transaction this is, if any."""
        await self.flush()
        key: str | None = await self.conn.fetchval(
            "SELECT subscription_key FROM subscriptions"
            " WHERE website_key = $1 AND initial_transaction_key = $2",
            self.website_key,
            transaction_key,
        )
        return key

    async def insert(self, sub: Subscription) -> None:
        await self.flush()
        self.batch.subs[self._key(sub.key)] = sub
        self.batch.billed_ahead[self._key(sub.key)] = set()
        await self.conn.execute(
            "INSERT INTO subscriptions (website_key, subscription_key, status, request_hash,"
            " state, initial_transaction_key, initial_transaction, payment_method,"
            " mandate_reference, next_billing_date)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            *self._row(sub),
        )
        await self._write_plans(sub)

    async def save(self, sub: Subscription, *, plans: bool = True) -> None:
        """Write the subscription; its plan versions too unless `plans` is False (a bill
        run changes none: in a batch, that write is kept until the batch ends)."""
        key = self._key(sub.key)
        self.batch.subs[key] = sub
        if not plans:
            self.batch.dirty[key] = sub
            return
        self.batch.dirty.pop(key, None)
        await self.flush()
        await self.conn.execute(
            "UPDATE subscriptions SET status = $3, request_hash = $4, state = $5,"
            " initial_transaction_key = $6, initial_transaction = $7, payment_method = $8,"
            " mandate_reference = $9, next_billing_date = $10, updated_at = now()"
            " WHERE website_key = $1 AND subscription_key = $2",
            *self._row(sub),
        )
        if plans:
            await self._write_plans(sub)

    def _row(self, sub: Subscription) -> tuple[Any, ...]:
        return _row(self.website_key, sub)

    async def due_keys(self, as_of: date, after_key: str | None, limit: int) -> list[str]:
        """Active subscriptions with a period due on or before `as_of`, by key, after
        `after_key` (a merchant-wide bill run's page). A row without a billing date
        (written before it was kept) is taken too: its RunBilling decides."""
        await self.flush()
        rows = await self.conn.fetch(
            "SELECT subscription_key FROM subscriptions"
            " WHERE website_key = $1 AND status = 'active'"
            " AND (next_billing_date <= $2 OR next_billing_date IS NULL)"
            " AND subscription_key > $3"
            " ORDER BY subscription_key LIMIT $4",
            self.website_key,
            as_of,
            after_key or "",
            limit,
        )
        return [row["subscription_key"] for row in rows]

    async def _write_plans(self, sub: Subscription) -> None:
        order = list(dict.fromkeys(plan.product_code for plan in sub.billing.plans))
        await self.conn.execute(
            "DELETE FROM rate_plan_versions WHERE website_key = $1 AND subscription_key = $2",
            self.website_key,
            sub.key,
        )
        await self.conn.executemany(
            "INSERT INTO rate_plan_versions (website_key, subscription_key, product_code,"
            " effective_from_period, position, description, unit_price, quantity,"
            " vat_percentage, start_date, end_date, billed_from_period)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            [
                (
                    self.website_key,
                    sub.key,
                    plan.product_code,
                    plan.effective_from_period,
                    order.index(plan.product_code),
                    plan.description,
                    plan.unit_price,
                    plan.quantity,
                    plan.vat_percentage,
                    plan.start_date,
                    plan.end_date,
                    plan.billed_from_period,
                )
                for plan in sub.billing.plans
            ],
        )

    async def mark_billed(
        self,
        subscription_key: str,
        period_index: int,
        *,
        invoice_number: str | None,
        message_id: uuid.UUID | None,
        amount_debit: Decimal,
        amount_vat: Decimal,
        billed_at: datetime,
    ) -> bool:
        """Record a billed period, written when the batch ends; False when it was billed
        before (nothing written)."""
        key = self._key(subscription_key)
        await self.batch.load(self.conn, [key])
        billed = self.batch.billed_ahead.setdefault(key, set())
        if period_index in billed:
            return False
        billed.add(period_index)
        row = (
            self.website_key,
            subscription_key,
            period_index,
            invoice_number,
            message_id,
            amount_debit,
            amount_vat,
            billed_at,
        )
        self.batch.billed.append(row)
        return True

    async def billed_invoices(self, subscription_key: str, from_index: int) -> dict[int, str]:
        """The invoice numbers of the billed periods from `from_index` on (periods billed
        without an invoice are left out)."""
        await self.flush()
        rows = await self.conn.fetch(
            "SELECT period_index, invoice_number FROM billed_periods"
            " WHERE website_key = $1 AND subscription_key = $2 AND period_index >= $3"
            " AND invoice_number IS NOT NULL",
            self.website_key,
            subscription_key,
            from_index,
        )
        return {row["period_index"]: row["invoice_number"] for row in rows}

    async def mark_rejected(self, invoice_number: str, at: datetime) -> tuple[str, int] | None:
        """Record that a period's invoice was rejected: its (subscription key, period),
        or None when it is not a period invoice or was recorded before."""
        await self.flush()
        row = await self.conn.fetchrow(
            "UPDATE billed_periods SET rejected_at = $3"
            " WHERE website_key = $1 AND invoice_number = $2 AND rejected_at IS NULL"
            " RETURNING subscription_key, period_index",
            self.website_key,
            invoice_number,
            at,
        )
        return None if row is None else (row["subscription_key"], row["period_index"])

    async def count_credit_note(self, subscription_key: str, period_index: int) -> int:
        """Count one more credit note on a period's invoice; how many it has had before."""
        await self.flush()
        before: int = await self.conn.fetchval(
            "UPDATE billed_periods SET credit_notes = credit_notes + 1"
            " WHERE website_key = $1 AND subscription_key = $2 AND period_index = $3"
            " RETURNING credit_notes - 1",
            self.website_key,
            subscription_key,
            period_index,
        )
        return before
