"""SQL for the notifier's schema: templates, webhooks, deliveries and message jobs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from contracts.invoice import Channel
from services.notifier.templates import Template
from services.runtime.db import Connection


@dataclass(frozen=True)
class ClaimedDelivery:
    id: int
    website_key: str
    invoice_number: str
    sequence: int
    push_message_id: uuid.UUID
    correlation_id: uuid.UUID
    body: bytes
    attempts: int
    business_time: datetime
    url: str
    secret: str


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    attempts: int
    command: dict[str, Any]


#: The lowest open push of each invoice that may be sent now: pending, with no earlier
#: push of the same invoice still pending or waiting for a retry. Rows another worker
#: holds are skipped; the earlier row it holds stays pending until that worker commits,
#: so a later push of the same invoice cannot overtake it.
_CLAIM_DELIVERIES = """
SELECT d.id, d.website_key, d.invoice_number, d.sequence, d.push_message_id,
       d.correlation_id, d.body, d.attempts, d.business_time, w.url, w.secret
  FROM webhook_deliveries d
  JOIN webhooks w ON w.website_key = d.website_key AND w.enabled
 WHERE d.status = 'pending'
   AND NOT EXISTS (
       SELECT 1 FROM webhook_deliveries e
        WHERE e.website_key = d.website_key AND e.invoice_number = d.invoice_number
          AND e.sequence < d.sequence AND e.status IN ('pending', 'retrying'))
 ORDER BY d.id
 LIMIT $1
   FOR UPDATE OF d SKIP LOCKED
"""


#: (website_key, invoice_number, sequence, push message id, correlation id, body, time)
DeliveryRow = tuple[str, str, int, uuid.UUID, uuid.UUID, bytes, datetime]


class NotifierRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # --- templates ---

    async def upsert_template(
        self,
        website_key: str,
        template_key: str,
        culture: str,
        channel: Channel,
        subject: str | None,
        body: str,
    ) -> None:
        await self.conn.execute(
            "INSERT INTO templates (website_key, template_key, culture, channel, subject, body)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (website_key, template_key, culture, channel) DO UPDATE"
            " SET subject = EXCLUDED.subject, body = EXCLUDED.body, updated_at = now()",
            website_key,
            template_key,
            culture,
            channel.value,
            subject,
            body,
        )

    async def templates(
        self, website_key: str, template_key: str
    ) -> dict[tuple[str, Channel], Template]:
        """The merchant's texts of one template: (culture, channel) → text."""
        rows = await self.conn.fetch(
            "SELECT culture, channel, subject, body FROM templates"
            " WHERE website_key = $1 AND template_key = $2",
            website_key,
            template_key,
        )
        return {
            (row["culture"], Channel(row["channel"])): Template(row["subject"], row["body"])
            for row in rows
        }

    # --- webhooks ---

    async def upsert_webhook(self, website_key: str, url: str, secret: str, enabled: bool) -> None:
        await self.conn.execute(
            "INSERT INTO webhooks (website_key, url, secret, enabled) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (website_key) DO UPDATE SET url = EXCLUDED.url,"
            " secret = EXCLUDED.secret, enabled = EXCLUDED.enabled, updated_at = now()",
            website_key,
            url,
            secret,
            enabled,
        )

    async def add_deliveries(self, rows: list[DeliveryRow]) -> None:
        """`add_delivery` for a whole batch, in one statement."""
        await self.conn.execute(
            "INSERT INTO webhook_deliveries (website_key, invoice_number, sequence,"
            " push_message_id, correlation_id, body, business_time)"
            " SELECT d.w, d.n, d.s, d.m, d.c, d.b, d.t FROM unnest($1::text[], $2::text[],"
            " $3::int[], $4::uuid[], $5::uuid[], $6::bytea[], $7::timestamptz[])"
            " WITH ORDINALITY AS d(w, n, s, m, c, b, t, o)"
            " JOIN webhooks h ON h.website_key = d.w AND h.enabled ORDER BY d.o"
            " ON CONFLICT (push_message_id) DO NOTHING",
            *(list(column) for column in zip(*rows, strict=True)),
        )

    async def add_delivery(
        self,
        website_key: str,
        invoice_number: str,
        sequence: int,
        push_message_id: uuid.UUID,
        correlation_id: uuid.UUID,
        body: bytes,
        business_time: datetime,
    ) -> bool:
        """A delivery of the push, when the merchant has an enabled webhook."""
        inserted = await self.conn.fetchval(
            "INSERT INTO webhook_deliveries (website_key, invoice_number, sequence,"
            " push_message_id, correlation_id, body, business_time)"
            " SELECT $1, $2, $3, $4, $5, $6, $7 FROM webhooks"
            " WHERE website_key = $1 AND enabled"
            " ON CONFLICT (push_message_id) DO NOTHING RETURNING id",
            website_key,
            invoice_number,
            sequence,
            push_message_id,
            correlation_id,
            body,
            business_time,
        )
        return inserted is not None

    async def make_due_again(
        self, website_key: str, delivery_id: int, attempt: int, business_time: datetime
    ) -> bool:
        """A retry timer fired: the delivery may be sent again (unless the timer is stale)."""
        updated = await self.conn.fetchval(
            "UPDATE webhook_deliveries SET status = 'pending', business_time = $4"
            " WHERE id = $2 AND website_key = $1 AND status = 'retrying' AND attempts = $3 - 1"
            " RETURNING id",
            website_key,
            delivery_id,
            attempt,
            business_time,
        )
        return updated is not None

    async def claim_deliveries(self, limit: int) -> list[ClaimedDelivery]:
        rows = await self.conn.fetch(_CLAIM_DELIVERIES, limit)
        return [ClaimedDelivery(**dict(row)) for row in rows]

    async def record_attempt(
        self,
        delivery: ClaimedDelivery,
        *,
        status: str,
        status_code: int | None,
        error: str | None,
        latency_ms: float,
        gave_up: bool,
    ) -> None:
        attempt = delivery.attempts + 1
        await self.conn.execute(
            "UPDATE webhook_deliveries SET status = $2, attempts = $3, last_status = $4,"
            " delivered_at = CASE WHEN $2 = 'delivered' THEN now() END WHERE id = $1",
            delivery.id,
            status,
            attempt,
            status_code,
        )
        entries: list[tuple[int, int, str, int | None, str | None, float | None]] = [
            (
                delivery.id,
                attempt,
                "delivered" if status == "delivered" else "attempt_failed",
                status_code,
                error,
                latency_ms,
            )
        ]
        if gave_up:
            entries.append(
                (delivery.id, attempt, "WebhookDeliveryFailed", status_code, error, None)
            )
        await self.conn.executemany(
            "INSERT INTO webhook_delivery_log (delivery_id, attempt, outcome, status_code,"
            " error, latency_ms) VALUES ($1, $2, $3, $4, $5, $6)",
            entries,
        )

    # --- messages to debtors ---

    async def add_message_job(
        self,
        command_id: uuid.UUID,
        website_key: str,
        invoice_number: str,
        step_index: int,
        command: dict[str, Any],
    ) -> None:
        await self.conn.execute(
            "INSERT INTO message_jobs (command_id, website_key, invoice_number, step_index,"
            " command) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (command_id) DO NOTHING",
            command_id,
            website_key,
            invoice_number,
            step_index,
            command,
        )

    async def claim_jobs(self, limit: int) -> list[ClaimedJob]:
        rows = await self.conn.fetch(
            "SELECT id, attempts, command FROM message_jobs"
            " WHERE status = 'pending' AND available_at <= now()"
            " ORDER BY available_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
            limit,
        )
        return [ClaimedJob(row["id"], row["attempts"], row["command"]) for row in rows]

    async def finish_job(self, job_id: int, outcome: str, channel: str | None) -> None:
        await self.conn.execute(
            "UPDATE message_jobs SET status = 'done', outcome = $2, channel = $3,"
            " attempts = attempts + 1, done_at = now() WHERE id = $1",
            job_id,
            outcome,
            channel,
        )

    async def postpone_job(self, job_id: int, delay_s: float) -> None:
        """A provider was unreachable: try the whole message again later (wall clock:
        a transport concern, not business time)."""
        await self.conn.execute(
            "UPDATE message_jobs SET attempts = attempts + 1,"
            " available_at = now() + make_interval(secs => $2) WHERE id = $1",
            job_id,
            delay_s,
        )

    async def log_channel(self, entries: list[tuple[int, str, str, str | None]]) -> None:
        if entries:
            await self.conn.executemany(
                "INSERT INTO message_log (job_id, channel, result, detail) VALUES ($1, $2, $3, $4)",
                entries,
            )
