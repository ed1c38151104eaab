"""SQL of the console's schema. Every read takes the merchant (website key) first: there is
no query that could return another merchant's rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from contracts.collection import CaseEvent
from contracts.invoice import InvoiceEvent, InvoiceEventName
from contracts.notifier import WebhookDeliveryAttempted
from contracts.results import CommandAccepted, CommandRejected
from contracts.subscription import SubscriptionEvent
from services.console import reports
from services.console.interest import MoneyPoint, money_point
from services.runtime.db import Connection

#: Invoices on one page of the list.
PAGE_SIZE = 50


# --- writes from the event topics ---------------------------------------------------------


async def apply_invoice_event(
    conn: Connection, website_key: str, message_id: uuid.UUID, at: datetime, evt: InvoiceEvent
) -> None:
    """Record the event in the timeline and keep the invoice row at the snapshot of its
    highest sequence (a late, older event changes the timeline only)."""
    inv = evt.invoice
    money = money_point(inv, at)  # for the interest breakdown (services/console/interest.py)
    await conn.execute(
        "INSERT INTO invoice_events (website_key, invoice_key, sequence, message_id, event,"
        " category, parameters, status_code, open_amount, occurred_at, money_day, principal,"
        " costs, paid, refunded)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        " ON CONFLICT DO NOTHING",
        website_key,
        inv.invoice_key,
        evt.sequence,
        message_id,
        str(evt.event),
        str(evt.event_category),
        {p.key: p.value for p in evt.event_parameters},
        int(inv.status_code),
        inv.open_amount_incl_admin_costs,
        at,
        money.day,
        money.principal,
        money.costs,
        money.paid,
        money.refunded,
    )
    await conn.execute(
        "INSERT INTO invoices (website_key, invoice_key, invoice_number, type, status_code,"
        " is_test, is_paid, scheme_key, step_index, next_step_index, next_step_due_at,"
        " debtor_code, currency, amount_debit, open_amount, invoice_date, due_date,"
        " last_sequence, last_event_at, snapshot, amount_paid, admin_costs, admin_costs_paid)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,"
        " $18, $19, $20, $21, $22, $23)"
        " ON CONFLICT (website_key, invoice_key) DO UPDATE SET"
        " invoice_number = EXCLUDED.invoice_number, type = EXCLUDED.type,"
        " status_code = EXCLUDED.status_code, is_test = EXCLUDED.is_test,"
        " is_paid = EXCLUDED.is_paid, scheme_key = EXCLUDED.scheme_key,"
        " step_index = EXCLUDED.step_index, next_step_index = EXCLUDED.next_step_index,"
        " next_step_due_at = EXCLUDED.next_step_due_at, debtor_code = EXCLUDED.debtor_code,"
        " currency = EXCLUDED.currency, amount_debit = EXCLUDED.amount_debit,"
        " open_amount = EXCLUDED.open_amount, invoice_date = EXCLUDED.invoice_date,"
        " due_date = EXCLUDED.due_date, last_sequence = EXCLUDED.last_sequence,"
        " last_event_at = EXCLUDED.last_event_at, snapshot = EXCLUDED.snapshot,"
        " amount_paid = EXCLUDED.amount_paid, admin_costs = EXCLUDED.admin_costs,"
        " admin_costs_paid = EXCLUDED.admin_costs_paid"
        " WHERE invoices.last_sequence < EXCLUDED.last_sequence",
        website_key,
        inv.invoice_key,
        inv.invoice_number,
        str(inv.type),
        int(inv.status_code),
        inv.is_test,
        inv.is_paid,
        inv.scheme_key,
        inv.previous_step_index,
        inv.next_step_index,
        inv.next_step_due_at,
        inv.debtor_code,
        inv.currency,
        inv.amount_debit,
        inv.open_amount_incl_admin_costs,
        inv.invoice_date,
        inv.due_date,
        evt.sequence,
        at,
        # No debtor details (names, addresses, contact data): the console needs the code
        # only, and keeps no personal data it would have to prune.
        inv.model_dump(mode="json", exclude={"debtor"}),
        inv.amount_paid,
        inv.amount_admin_costs,
        inv.amount_admin_costs_paid,
    )


async def record_webhook_attempt(
    conn: Connection, website_key: str, message_id: uuid.UUID, evt: WebhookDeliveryAttempted
) -> None:
    """One attempt of a webhook delivery (an attempt seen again changes nothing)."""
    await conn.execute(
        "INSERT INTO webhook_attempts (website_key, delivery_id, attempt, message_id,"
        " invoice_number, push_message_id, outcome, status_code, error, duration_ms,"
        " attempted_at, next_retry_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
        website_key,
        evt.delivery_id,
        evt.attempt,
        message_id,
        evt.invoice_number,
        evt.push_message_id,
        str(evt.outcome),
        evt.status_code,
        evt.error,
        evt.duration_ms,
        evt.attempted_at,
        evt.next_retry_at,
    )


async def apply_subscription_event(
    conn: Connection, website_key: str, message_id: uuid.UUID, at: datetime, evt: SubscriptionEvent
) -> None:
    sub = evt.subscription
    await conn.execute(
        "INSERT INTO subscription_events (website_key, message_id, subscription_key, event,"
        " invoice_number, period_index, reason, status, occurred_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        website_key,
        message_id,
        sub.subscription_key,
        str(evt.event),
        evt.invoice_number,
        evt.period_index,
        evt.reason,
        str(sub.status),
        at,
    )
    await conn.execute(
        "INSERT INTO subscriptions (website_key, subscription_key, status, currency,"
        " scheme_key, next_billing_date, last_event, last_event_at, snapshot)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " ON CONFLICT (website_key, subscription_key) DO UPDATE SET status = EXCLUDED.status,"
        " currency = EXCLUDED.currency, scheme_key = EXCLUDED.scheme_key,"
        " next_billing_date = EXCLUDED.next_billing_date, last_event = EXCLUDED.last_event,"
        " last_event_at = EXCLUDED.last_event_at, snapshot = EXCLUDED.snapshot"
        " WHERE subscriptions.last_event_at <= EXCLUDED.last_event_at",
        website_key,
        sub.subscription_key,
        str(sub.status),
        sub.currency,
        sub.scheme_key,
        sub.next_billing_date,
        str(evt.event),
        at,
        sub.model_dump(mode="json", exclude={"debtor"}),
    )


async def apply_case_event(
    conn: Connection, website_key: str, message_id: uuid.UUID, at: datetime, evt: CaseEvent
) -> None:
    case = evt.case
    await conn.execute(
        "INSERT INTO case_events (website_key, message_id, case_key, event, reason, state,"
        " collected_amount, occurred_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT DO NOTHING",
        website_key,
        message_id,
        case.case_key,
        str(evt.event),
        evt.reason,
        str(case.state),
        case.collected_amount,
        at,
    )
    await conn.execute(
        "INSERT INTO cases (website_key, case_key, state, invoice_number, environment,"
        " agency_code, currency, amount, collected_amount, last_event, last_event_at, snapshot)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        " ON CONFLICT (website_key, case_key) DO UPDATE SET state = EXCLUDED.state,"
        " invoice_number = EXCLUDED.invoice_number, environment = EXCLUDED.environment,"
        " agency_code = EXCLUDED.agency_code, currency = EXCLUDED.currency,"
        " amount = EXCLUDED.amount, collected_amount = EXCLUDED.collected_amount,"
        " last_event = EXCLUDED.last_event, last_event_at = EXCLUDED.last_event_at,"
        " snapshot = EXCLUDED.snapshot WHERE cases.last_event_at <= EXCLUDED.last_event_at",
        website_key,
        case.case_key,
        str(case.state),
        case.invoice_number,
        str(case.environment),
        case.agency_code,
        case.currency,
        case.amount,
        case.collected_amount,
        str(evt.event),
        at,
        case.model_dump(mode="json"),
    )


def _like_prefix(prefix: str | None) -> str | None:
    if not prefix:
        return None
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True)
class Listed:
    """A read model listed by key: its table and key, the columns a list shows, the
    column a list filters on, the columns a key prefix searches, and its events."""

    table: str
    key: str
    columns: str
    filtered_by: str
    searched: tuple[str, ...]
    events_table: str
    event_columns: str


SUBSCRIPTIONS = Listed(
    "subscriptions",
    "subscription_key",
    "subscription_key, status, currency, scheme_key, next_billing_date, last_event, last_event_at",
    "status",
    ("subscription_key",),
    "subscription_events",
    "event, invoice_number, period_index, reason, status, occurred_at",
)
CASES = Listed(
    "cases",
    "case_key",
    "case_key, state, invoice_number, environment, agency_code, currency, amount,"
    " collected_amount, last_event, last_event_at",
    "state",
    ("case_key", "invoice_number"),
    "case_events",
    "event, reason, state, collected_amount, occurred_at",
)


async def listed_page(
    conn: Connection,
    listed: Listed,
    website_key: str,
    value: str | None,
    after: str | None,
    limit: int = PAGE_SIZE,
    prefix: str | None = None,
) -> list[dict[str, Any]]:
    """Up to `limit` + 1 rows by key, after `after`, with `value` in the filtered column
    if given, and a searched column starting with `prefix` if given."""
    search = " OR ".join(f"{column} LIKE $5" for column in listed.searched)
    rows = await conn.fetch(
        f"SELECT {listed.columns} FROM {listed.table} WHERE website_key = $1"
        f" AND ($2::text IS NULL OR {listed.filtered_by} = $2)"
        f" AND ($3::text IS NULL OR {listed.key} > $3)"
        f" AND ($5::text IS NULL OR {search})"
        f" ORDER BY {listed.key} LIMIT $4",
        website_key,
        value,
        after,
        limit + 1,
        _like_prefix(prefix),
    )
    return [dict(r) for r in rows]


async def listed_row(
    conn: Connection, listed: Listed, website_key: str, key: str
) -> dict[str, Any] | None:
    """One row, without its events."""
    row = await conn.fetchrow(
        f"SELECT * FROM {listed.table} WHERE website_key = $1 AND {listed.key} = $2",
        website_key,
        key,
    )
    return None if row is None else dict(row)


async def listed_one(
    conn: Connection, listed: Listed, website_key: str, key: str
) -> dict[str, Any] | None:
    """One row with its `events`, oldest first."""
    found = await listed_row(conn, listed, website_key, key)
    if found is None:
        return None
    found["events"] = [
        dict(r)
        for r in await conn.fetch(
            f"SELECT {listed.event_columns} FROM {listed.events_table}"
            f" WHERE website_key = $1 AND {listed.key} = $2 ORDER BY occurred_at, message_id",
            website_key,
            key,
        )
    ]
    return found


async def case_sums(
    conn: Connection, website_key: str
) -> list[tuple[str, str, int, Decimal, Decimal]]:
    """(currency, state, cases, amount, collected) of the merchant's production cases."""
    rows = await conn.fetch(
        "SELECT currency, state, count(*) AS cases, sum(amount) AS amount,"
        " sum(collected_amount) AS collected FROM cases"
        " WHERE website_key = $1 AND environment = 'production' GROUP BY 1, 2",
        website_key,
    )
    return [(r["currency"], r["state"], r["cases"], r["amount"], r["collected"]) for r in rows]


async def record_result(
    conn: Connection, website_key: str, result: CommandAccepted | CommandRejected
) -> None:
    accepted = isinstance(result, CommandAccepted)
    await conn.execute(
        "INSERT INTO results (website_key, command_id, command_type, accepted, errors, keys)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        website_key,
        result.command_id,
        result.command_type,
        accepted,
        [] if accepted else [e.model_dump() for e in result.errors],  # type: ignore[union-attr]
        result.keys if isinstance(result, CommandAccepted) else {},
    )


# --- what the console sends -----------------------------------------------------------------


async def record_sent(
    conn: Connection,
    website_key: str,
    command_id: uuid.UUID,
    command_type: str,
    username: str,
    payload: dict[str, Any],
    *,
    invoice_key: str | None = None,
    scheme_key: str | None = None,
    subject: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO sent_commands (website_key, command_id, command_type, invoice_key,"
        " scheme_key, subject, payload, username) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        website_key,
        command_id,
        command_type,
        invoice_key,
        scheme_key,
        subject,
        payload,
        username,
    )


async def commands_about(
    conn: Connection, website_key: str, subject: str, limit: int = 20
) -> list[dict[str, Any]]:
    """The commands the console sent about a subscription or case (`subject`), newest
    first, with their answers."""
    rows = await conn.fetch(
        "SELECT s.command_id, s.command_type, s.username, s.sent_at, r.accepted, r.errors"
        " FROM sent_commands s LEFT JOIN results r"
        " ON r.website_key = s.website_key AND r.command_id = s.command_id"
        " WHERE s.website_key = $1 AND s.subject = $2 ORDER BY s.sent_at DESC LIMIT $3",
        website_key,
        subject,
        limit,
    )
    return [dict(r) for r in rows]


async def latest_snapshot(conn: Connection, website_key: str) -> dict[str, Any] | None:
    """The snapshot of the merchant's most recently changed real invoice (for previews)."""
    found: dict[str, Any] | None = await conn.fetchval(
        "SELECT snapshot FROM invoices WHERE website_key = $1 AND NOT is_test"
        " ORDER BY last_event_at DESC LIMIT 1",
        website_key,
    )
    return found


async def sent_about(
    conn: Connection, website_key: str, command_type: str, limit: int = 50
) -> list[dict[str, Any]]:
    """Commands of one type the console sent (newest first), with their answers."""
    rows = await conn.fetch(
        "SELECT s.command_id, s.subject, s.payload, s.username, s.sent_at, r.accepted,"
        " r.errors FROM sent_commands s LEFT JOIN results r"
        " ON r.website_key = s.website_key AND r.command_id = s.command_id"
        " WHERE s.website_key = $1 AND s.command_type = $2 ORDER BY s.sent_at DESC LIMIT $3",
        website_key,
        command_type,
        limit,
    )
    return [dict(r) for r in rows]


async def schemes_in_use(conn: Connection, website_key: str) -> list[dict[str, Any]]:
    """The schemes the merchant's invoices follow: key, newest version seen, invoices."""
    rows = await conn.fetch(
        "SELECT scheme_key, max((snapshot->>'scheme_version')::integer) AS version,"
        " count(*) AS invoices FROM invoices WHERE website_key = $1 GROUP BY 1 ORDER BY 1",
        website_key,
    )
    return [dict(r) for r in rows]


async def scheme_versions_sent(
    conn: Connection, website_key: str, scheme_key: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """UpsertScheme commands the console sent (newest first), with their answers."""
    rows = await conn.fetch(
        "SELECT s.command_id, s.scheme_key, s.payload, s.username, s.sent_at, r.accepted,"
        " r.errors FROM sent_commands s LEFT JOIN results r"
        " ON r.website_key = s.website_key AND r.command_id = s.command_id"
        " WHERE s.website_key = $1 AND s.scheme_key IS NOT NULL"
        " AND ($2::text IS NULL OR s.scheme_key = $2) ORDER BY s.sent_at DESC LIMIT $3",
        website_key,
        scheme_key,
        limit,
    )
    return [dict(r) for r in rows]


# --- reads ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvoiceFilter:
    status: int | None = None
    scheme: str | None = None
    step: int | None = None
    debtor: str | None = None
    number: str | None = None


@dataclass(frozen=True)
class PageKey:
    """Where a page starts: after this (due_date, invoice_key), descending."""

    due_date: date
    invoice_key: str

    def token(self) -> str:
        return f"{self.due_date.isoformat()}~{self.invoice_key}"

    @classmethod
    def parse(cls, token: str | None) -> PageKey | None:
        if not token or "~" not in token:
            return None
        day, _, key = token.partition("~")
        try:
            return cls(date.fromisoformat(day), key)
        except ValueError:
            return None


_LIST_COLUMNS = (
    "invoice_key, invoice_number, type, status_code, is_test, is_paid, scheme_key,"
    " step_index, next_step_index, next_step_due_at, debtor_code, currency, amount_debit,"
    " open_amount, invoice_date, due_date, last_event_at"
)


def _next_prefix(prefix: str) -> str | None:
    """The smallest string above every string that starts with `prefix`, in byte order
    (UTF-8 keeps code point order); None when there is none to give."""
    last = ord(prefix[-1]) + 1
    if last > 0x10FFFF or 0xD800 <= last <= 0xDFFF:
        return None
    return prefix[:-1] + chr(last)


def page_query(
    website_key: str, filters: InvoiceFilter, after: PageKey | None, limit: int
) -> tuple[str, list[Any]]:
    """The SQL of one page (`limit` + 1 rows, to know whether another page follows)."""
    where = ["website_key = $1"]
    args: list[Any] = [website_key]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if filters.status is not None:
        where.append(f"status_code = {arg(filters.status)}")
    if filters.scheme:
        where.append(f"scheme_key = {arg(filters.scheme)}")
    if filters.step is not None:
        where.append(f"step_index = {arg(filters.step)}")
    if filters.debtor:
        where.append(f"debtor_code = {arg(filters.debtor)}")
    if filters.number:
        # A byte-order range the text_pattern_ops index serves even in a generic plan
        # (a LIKE parameter does not), and the LIKE for exactness.
        prefix = filters.number
        where.append(f"invoice_number ~>=~ {arg(prefix)}")
        upper = _next_prefix(prefix)
        if upper is not None:
            where.append(f"invoice_number ~<~ {arg(upper)}")
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(f"invoice_number LIKE {arg(escaped + '%')}")
    if after is not None:
        where.append(f"(due_date, invoice_key) < ({arg(after.due_date)}, {arg(after.invoice_key)})")
    sql = (
        f"SELECT {_LIST_COLUMNS} FROM invoices WHERE {' AND '.join(where)}"
        f" ORDER BY due_date DESC, invoice_key DESC LIMIT {arg(limit + 1)}"
    )
    return sql, args


async def invoice_page(
    conn: Connection,
    website_key: str,
    filters: InvoiceFilter,
    after: PageKey | None,
    limit: int = PAGE_SIZE,
) -> tuple[list[dict[str, Any]], PageKey | None]:
    """One page of the merchant's invoices, newest due date first, and the key of the
    next page (None on the last)."""
    sql, args = page_query(website_key, filters, after, limit)
    rows = [dict(r) for r in await conn.fetch(sql, *args)]
    more = len(rows) > limit
    rows = rows[:limit]
    following = PageKey(rows[-1]["due_date"], rows[-1]["invoice_key"]) if more else None
    return rows, following


async def invoice(conn: Connection, website_key: str, invoice_key: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_LIST_COLUMNS}, snapshot, last_sequence FROM invoices"
        " WHERE website_key = $1 AND invoice_key = $2",
        website_key,
        invoice_key,
    )
    return dict(row) if row else None


async def timeline(conn: Connection, website_key: str, invoice_key: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT sequence, event, category, parameters, status_code, open_amount, occurred_at"
        " FROM invoice_events WHERE website_key = $1 AND invoice_key = $2 ORDER BY sequence",
        website_key,
        invoice_key,
    )
    return [dict(r) for r in rows]


async def money_points(
    conn: Connection, website_key: str, invoice_key: str
) -> list[tuple[int, MoneyPoint | None]]:
    """Each event's sequence and money (None for an event stored before the console kept
    it), for the interest breakdown."""
    rows = await conn.fetch(
        "SELECT sequence, money_day, principal, costs, paid, refunded FROM invoice_events"
        " WHERE website_key = $1 AND invoice_key = $2 ORDER BY sequence",
        website_key,
        invoice_key,
    )
    return [
        (
            r["sequence"],
            None
            if r["money_day"] is None
            else MoneyPoint(r["money_day"], r["principal"], r["costs"], r["paid"], r["refunded"]),
        )
        for r in rows
    ]


_ATTEMPT_COLUMNS = (
    "a.delivery_id, a.attempt, a.invoice_number, a.push_message_id, a.outcome,"
    " a.status_code, a.error, a.duration_ms, a.attempted_at, a.next_retry_at"
)


async def invoice_webhook_attempts(
    conn: Connection, website_key: str, invoice_number: str, limit: int = 100
) -> list[dict[str, Any]]:
    """The webhook delivery attempts of an invoice's pushes, newest first."""
    rows = await conn.fetch(
        f"SELECT {_ATTEMPT_COLUMNS} FROM webhook_attempts a"
        " WHERE a.website_key = $1 AND a.invoice_number = $2"
        " ORDER BY a.attempted_at DESC, a.delivery_id DESC, a.attempt DESC LIMIT $3",
        website_key,
        invoice_number,
        limit,
    )
    return [dict(r) for r in rows]


async def webhook_attempts(
    conn: Connection, website_key: str, *, failures_only: bool = False, limit: int = 100
) -> list[dict[str, Any]]:
    """The merchant's recent webhook delivery attempts (only failed and given up ones
    with `failures_only`), newest first, each with its invoice's key when the console
    knows the invoice (to link to it)."""
    rows = await conn.fetch(
        f"SELECT {_ATTEMPT_COLUMNS}, i.invoice_key FROM webhook_attempts a"
        " LEFT JOIN LATERAL (SELECT invoice_key FROM invoices"
        "  WHERE website_key = a.website_key AND invoice_number = a.invoice_number"
        "  LIMIT 1) i ON true"
        " WHERE a.website_key = $1 AND (NOT $2::boolean OR a.outcome <> 'delivered')"
        " ORDER BY a.attempted_at DESC, a.delivery_id DESC, a.attempt DESC LIMIT $3",
        website_key,
        failures_only,
        limit,
    )
    return [dict(r) for r in rows]


async def webhook_retries_due(
    conn: Connection, website_key: str, limit: int = 100
) -> list[dict[str, Any]]:
    """The merchant's deliveries waiting for a retry: those whose latest attempt failed
    with a retry due, soonest first."""
    rows = await conn.fetch(
        f"SELECT {_ATTEMPT_COLUMNS}, i.invoice_key FROM ("
        "  SELECT DISTINCT ON (delivery_id) * FROM webhook_attempts"
        "   WHERE website_key = $1 ORDER BY delivery_id, attempt DESC) a"
        " LEFT JOIN LATERAL (SELECT invoice_key FROM invoices"
        "  WHERE website_key = a.website_key AND invoice_number = a.invoice_number"
        "  LIMIT 1) i ON true"
        " WHERE a.outcome = 'failed' AND a.next_retry_at IS NOT NULL"
        " ORDER BY a.next_retry_at, a.delivery_id LIMIT $2",
        website_key,
        limit,
    )
    return [dict(r) for r in rows]


async def webhook_outcome_counts(conn: Connection, website_key: str) -> dict[str, int]:
    """How many attempts of each outcome the merchant's webhook has had."""
    rows = await conn.fetch(
        "SELECT outcome, count(*) AS n FROM webhook_attempts WHERE website_key = $1"
        " GROUP BY outcome",
        website_key,
    )
    return {r["outcome"]: r["n"] for r in rows}


async def commands_of(
    conn: Connection, website_key: str, invoice_key: str, limit: int = 20
) -> list[dict[str, Any]]:
    """The commands the console sent for an invoice, newest first, with their answer
    (accepted: None while none came back)."""
    rows = await conn.fetch(
        "SELECT s.command_id, s.command_type, s.username, s.sent_at, r.accepted, r.errors"
        " FROM sent_commands s LEFT JOIN results r"
        " ON r.website_key = s.website_key AND r.command_id = s.command_id"
        " WHERE s.website_key = $1 AND s.invoice_key = $2 ORDER BY s.sent_at DESC LIMIT $3",
        website_key,
        invoice_key,
        limit,
    )
    return [dict(r) for r in rows]


async def command(
    conn: Connection, website_key: str, command_id: uuid.UUID
) -> dict[str, Any] | None:
    """A command's answer as the results topic gave it (whoever sent the command)."""
    row = await conn.fetchrow(
        "SELECT command_id, command_type, accepted, errors, keys, received_at FROM results"
        " WHERE website_key = $1 AND command_id = $2",
        website_key,
        command_id,
    )
    return dict(row) if row else None


async def filter_choices(conn: Connection, website_key: str) -> dict[str, list[Any]]:
    """The schemes and steps the merchant's invoices use (for the filter menus)."""
    schemes = await conn.fetch(
        "WITH RECURSIVE s AS ("
        " (SELECT scheme_key FROM invoices WHERE website_key = $1 ORDER BY scheme_key LIMIT 1)"
        " UNION ALL SELECT (SELECT i.scheme_key FROM invoices i WHERE i.website_key = $1"
        " AND i.scheme_key > s.scheme_key ORDER BY i.scheme_key LIMIT 1) FROM s"
        " WHERE s.scheme_key IS NOT NULL) SELECT scheme_key FROM s WHERE scheme_key IS NOT NULL",
        website_key,
    )
    return {"schemes": [r["scheme_key"] for r in schemes]}


# --- reports ----------------------------------------------------------------------------------


def _bucket_case() -> str:
    """SQL for the bucket key of `$2::date - due_date`, from `reports.BUCKETS`."""
    arms = " ".join(
        f"WHEN $2::date - due_date <= {b.high} THEN '{b.key}'"
        for b in reports.BUCKETS
        if b.high is not None
    )
    return f"CASE {arms} ELSE '{reports.BUCKETS[-1].key}' END"


async def aging_sums(
    conn: Connection, website_key: str, as_of: date
) -> list[tuple[str, str, int, Decimal]]:
    """(currency, bucket key, invoices, open amount) of the invoices the aging report
    counts (`reports.counts_for_aging`), summed in SQL."""
    rows = await conn.fetch(
        f"SELECT currency, {_bucket_case()} AS bucket, count(*) AS invoices,"
        " sum(open_amount) AS amount FROM invoices"
        " WHERE website_key = $1 AND NOT is_test AND open_amount > 0"
        " AND status_code <> ALL($3::integer[]) GROUP BY 1, 2",
        website_key,
        as_of,
        list(reports.CLOSED_STATUSES),
    )
    return [(r["currency"], r["bucket"], r["invoices"], r["amount"]) for r in rows]


async def funnel_counts(conn: Connection, website_key: str) -> list[tuple[str, int, bool, int]]:
    """(scheme, step reached or 0, paid, invoices) of the invoices the funnel counts
    (`reports.counts_for_funnel`)."""
    rows = await conn.fetch(
        "SELECT scheme_key, coalesce(step_index, 0) AS step, is_paid, count(*) AS invoices"
        " FROM invoices WHERE website_key = $1 AND NOT is_test"
        " AND status_code <> ALL($2::integer[]) GROUP BY 1, 2, 3",
        website_key,
        list(reports.NOT_IN_FUNNEL),
    )
    return [(r["scheme_key"], r["step"], r["is_paid"], r["invoices"]) for r in rows]


async def cost_sums(conn: Connection, website_key: str) -> list[reports.CostRow]:
    """The costs report's sums of real invoices, from their IncreasedAdminFee events: per
    currency and `Reason` (and per currency in all, `whole`): the invoices charged, the
    costs charged (`Amount`) and paid. What an invoice's last snapshot says was paid of
    its costs (`admin_costs_paid`) is allocated to its charges in the order they were
    charged (by sequence: the earliest charge is paid in full first), as the invoice
    service allocates payments to the costs open at the time (docs/console.md "Costs")."""
    rows = await conn.fetch(
        "WITH fees AS ("
        " SELECT i.currency, e.invoice_key, e.parameters->>'Reason' AS reason,"
        " (e.parameters->>'Amount')::numeric AS amount, i.admin_costs_paid AS paid,"
        " coalesce(sum((e.parameters->>'Amount')::numeric) OVER (PARTITION BY e.invoice_key"
        " ORDER BY e.sequence ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before"
        " FROM invoice_events e JOIN invoices i"
        " ON i.website_key = e.website_key AND i.invoice_key = e.invoice_key"
        " WHERE e.website_key = $1 AND e.event = $2 AND NOT i.is_test)"
        " SELECT currency, reason, GROUPING(reason) = 1 AS whole,"
        " count(DISTINCT invoice_key) AS invoices, sum(amount) AS charged,"
        " sum(least(amount, greatest(0, paid - before))) AS paid"
        " FROM fees WHERE amount > 0 GROUP BY GROUPING SETS ((currency, reason), (currency))",
        website_key,
        str(InvoiceEventName.INCREASED_ADMIN_FEE),
    )
    return [
        (r["currency"], r["reason"], r["whole"], r["invoices"], r["charged"], r["paid"])
        for r in rows
    ]


async def receivables_at(
    conn: Connection, website_key: str, moment: datetime
) -> list[tuple[str, Decimal]]:
    """(currency, open amount) of real invoices just before `moment`: each invoice as its
    last event before then left it (open incl. costs, not closed)."""
    rows = await conn.fetch(
        "SELECT i.currency, sum(e.open_amount) AS amount FROM invoices i"
        " JOIN LATERAL (SELECT ev.open_amount, ev.status_code FROM invoice_events ev"
        " WHERE ev.website_key = i.website_key AND ev.invoice_key = i.invoice_key"
        " AND ev.occurred_at < $2 ORDER BY ev.sequence DESC LIMIT 1) e ON true"
        " WHERE i.website_key = $1 AND NOT i.is_test AND e.open_amount > 0"
        " AND e.status_code <> ALL($3::integer[]) GROUP BY 1",
        website_key,
        moment,
        list(reports.CLOSED_STATUSES),
    )
    return [(r["currency"], r["amount"]) for r in rows]


async def sales_between(
    conn: Connection, website_key: str, first: date, end: date
) -> list[tuple[str, Decimal]]:
    """(currency, amount invoiced) of real invoices dated `first` .. before `end`
    (credit notes and rejected invoices left out)."""
    rows = await conn.fetch(
        "SELECT currency, sum(amount_debit) AS amount FROM invoices"
        " WHERE website_key = $1 AND NOT is_test AND type <> 'CreditNote'"
        " AND status_code <> 90 AND invoice_date >= $2 AND invoice_date < $3 GROUP BY 1",
        website_key,
        first,
        end,
    )
    return [(r["currency"], r["amount"]) for r in rows]


# --- accounts and sessions --------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    username: str
    website_key: str
    culture: str
    time_zone: str


async def create_user(
    conn: Connection,
    username: str,
    website_key: str,
    password_hash: str,
    culture: str,
    time_zone: str,
) -> bool:
    """False when the username is taken (its password is then left as it is)."""
    status = await conn.execute(
        "INSERT INTO users (username, website_key, password_hash, culture, time_zone)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (username) DO NOTHING",
        username,
        website_key,
        password_hash,
        culture,
        time_zone,
    )
    return status.endswith(" 1")


async def set_password(conn: Connection, username: str, password_hash: str) -> None:
    await conn.execute(
        "UPDATE users SET password_hash = $2 WHERE username = $1", username, password_hash
    )


async def user_with_hash(conn: Connection, username: str) -> tuple[User, str] | None:
    row = await conn.fetchrow(
        "SELECT username, website_key, culture, time_zone, password_hash FROM users"
        " WHERE username = $1",
        username,
    )
    if row is None:
        return None
    return User(row["username"], row["website_key"], row["culture"], row["time_zone"]), row[
        "password_hash"
    ]


async def open_session(
    conn: Connection, token_sha256: str, username: str, csrf_token: str, expires_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO sessions (token_sha256, username, csrf_token, expires_at)"
        " VALUES ($1, $2, $3, $4)",
        token_sha256,
        username,
        csrf_token,
        expires_at,
    )


async def session_user(
    conn: Connection, token_sha256: str, now: datetime
) -> tuple[User, str] | None:
    """The user of a live session and its CSRF token."""
    row = await conn.fetchrow(
        "SELECT u.username, u.website_key, u.culture, u.time_zone, s.csrf_token"
        " FROM sessions s JOIN users u USING (username)"
        " WHERE s.token_sha256 = $1 AND s.expires_at > $2",
        token_sha256,
        now,
    )
    if row is None:
        return None
    return User(row["username"], row["website_key"], row["culture"], row["time_zone"]), row[
        "csrf_token"
    ]


async def recent_failures(conn: Connection, keys: list[str], since: datetime) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT key, count(*) AS failures FROM sign_in_failures"
        " WHERE key = ANY($1::text[]) AND failed_at > $2 GROUP BY key",
        keys,
        since,
    )
    return {r["key"]: r["failures"] for r in rows}


async def record_failure(conn: Connection, keys: list[str], before: datetime) -> None:
    """Remember a failed sign-in under each key; forget failures older than `before`."""
    await conn.execute("DELETE FROM sign_in_failures WHERE failed_at <= $1", before)
    await conn.execute("INSERT INTO sign_in_failures (key) SELECT unnest($1::text[])", keys)


async def clear_failures(conn: Connection, key: str) -> None:
    await conn.execute("DELETE FROM sign_in_failures WHERE key = $1", key)


async def close_session(conn: Connection, token_sha256: str) -> None:
    await conn.execute("DELETE FROM sessions WHERE token_sha256 = $1", token_sha256)


async def prune_sessions(conn: Connection, now: datetime) -> None:
    await conn.execute("DELETE FROM sessions WHERE expires_at <= $1", now)
