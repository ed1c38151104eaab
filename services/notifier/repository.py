"""SQL for the notifier's schema: templates, webhooks, deliveries and message jobs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from contracts.invoice import Channel
from services.notifier.templates import Template
from services.runtime.db import Connection
from services.runtime.outbox import OutboxMessage, headers_json


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
    #: As stored: encrypted (`fernet:…`, see secrets.py) or plain text from before that.
    secret: str
    claim_token: uuid.UUID


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    attempts: int
    command: dict[str, Any]
    claim_token: uuid.UUID
    command_id: uuid.UUID
    website_key: str
    invoice_number: str
    step_index: int


#: Claim deliveries fairly, in one statement: the merchants with claimable rows (a loose
#: index scan over website keys, skipping `$3`: merchants this process is already busy
#: with), at most `$2` of each merchant's oldest claimable pushes, the oldest `$1` of
#: those; each is marked `sending` with a lease and the claim token `$5`, and the
#: transaction commits before anything is sent. A push is claimable when it is pending,
#: or sending with a lapsed lease (its worker died), and no earlier push of its invoice
#: is still open (pending, sending or retrying): per-invoice order. Rows another claim
#: holds are skipped; the final UPDATE checks the status again on the row's latest
#: version, so a row claimed and committed meanwhile is not claimed twice.
_CLAIM_DELIVERIES = """
WITH RECURSIVE merchants(website_key) AS (
    (SELECT website_key FROM webhook_deliveries
      WHERE status IN ('pending', 'sending') AND website_key <> ALL($3::text[])
      ORDER BY website_key LIMIT 1)
    UNION ALL
    SELECT (SELECT d.website_key FROM webhook_deliveries d
             WHERE d.status IN ('pending', 'sending') AND d.website_key > m.website_key
               AND d.website_key <> ALL($3::text[])
             ORDER BY d.website_key LIMIT 1)
      FROM merchants m
     WHERE m.website_key IS NOT NULL
), candidates AS (
    SELECT c.id
      FROM merchants m
      JOIN webhooks w ON w.website_key = m.website_key AND w.enabled
      CROSS JOIN LATERAL (
          SELECT d.id FROM webhook_deliveries d
           WHERE d.website_key = m.website_key
             AND d.status IN ('pending', 'sending')
             AND (d.status = 'pending' OR d.lease_until < now())
             AND NOT EXISTS (
                 SELECT 1 FROM webhook_deliveries e
                  WHERE e.website_key = d.website_key AND e.invoice_number = d.invoice_number
                    AND e.sequence < d.sequence
                    AND e.status IN ('pending', 'sending', 'retrying'))
           ORDER BY d.id
           LIMIT $2) c
     ORDER BY c.id
     LIMIT $1
), locked AS (
    SELECT id FROM webhook_deliveries
     WHERE id IN (SELECT id FROM candidates)
       FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
   SET status = 'sending', lease_until = now() + make_interval(secs => $4), claim_token = $5
  FROM locked l, webhooks w
 WHERE d.id = l.id AND w.website_key = d.website_key AND w.enabled
   AND (d.status = 'pending' OR (d.status = 'sending' AND d.lease_until < now()))
RETURNING d.id, d.website_key, d.invoice_number, d.sequence, d.push_message_id,
          d.correlation_id, d.body, d.attempts, d.business_time, w.url, w.secret,
          d.claim_token
"""

#: Claim due message jobs (pending and due, or sending with a lapsed lease): `sending`,
#: with the lease's end in available_at and the claim token `$3`.
_CLAIM_JOBS = """
WITH locked AS (
    SELECT id FROM message_jobs m
     WHERE status IN ('pending', 'sending') AND available_at <= now()
       -- One message at a time per invoice, in the order they were asked for: a reminder
       -- never overtakes the invitation (their outcomes become the invoice's events).
       AND NOT EXISTS (
           SELECT 1 FROM message_jobs e
            WHERE e.website_key = m.website_key AND e.invoice_number = m.invoice_number
              AND e.id < m.id AND e.status IN ('pending', 'sending'))
     ORDER BY available_at, id
     LIMIT $1
       FOR UPDATE SKIP LOCKED
)
UPDATE message_jobs j
   SET status = 'sending', available_at = now() + make_interval(secs => $2), claim_token = $3
  FROM locked l
 WHERE j.id = l.id AND j.status IN ('pending', 'sending') AND j.available_at <= now()
RETURNING j.id, j.attempts, j.command, j.claim_token, j.command_id, j.website_key,
          j.invoice_number, j.step_index
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
        """Set the merchant's endpoint; `secret` is the stored (encrypted) form."""
        await self.conn.execute(
            "INSERT INTO webhooks (website_key, url, secret, enabled) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (website_key) DO UPDATE SET url = EXCLUDED.url,"
            " secret = EXCLUDED.secret, enabled = EXCLUDED.enabled, updated_at = now()",
            website_key,
            url,
            secret,
            enabled,
        )

    async def webhook_secrets(self, after: str, limit: int) -> list[tuple[str, str]]:
        """Stored secrets (website_key, stored form), in website-key order after `after`."""
        rows = await self.conn.fetch(
            "SELECT website_key, secret FROM webhooks WHERE website_key > $1"
            " ORDER BY website_key LIMIT $2",
            after,
            limit,
        )
        return [(row["website_key"], row["secret"]) for row in rows]

    async def replace_secret(self, website_key: str, old: str, new: str) -> bool:
        """The stored secret re-encrypted, unless it changed since it was read."""
        updated = await self.conn.fetchval(
            "UPDATE webhooks SET secret = $3 WHERE website_key = $1 AND secret = $2"
            " RETURNING website_key",
            website_key,
            old,
            new,
        )
        return updated is not None

    async def add_deliveries(self, rows: list[DeliveryRow]) -> None:
        """A delivery of each push whose merchant has an enabled webhook, in one
        statement for the batch."""
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

    async def claim_deliveries(
        self,
        limit: int,
        *,
        per_merchant: int,
        skip_merchants: list[str],
        lease_s: float,
    ) -> list[ClaimedDelivery]:
        """Mark up to `limit` deliveries `sending` under one new claim token (see
        `_CLAIM_DELIVERIES`); run it in a transaction of its own and commit at once."""
        rows = await self.conn.fetch(
            _CLAIM_DELIVERIES, limit, per_merchant, skip_merchants, lease_s, uuid.uuid4()
        )
        return sorted((ClaimedDelivery(**dict(row)) for row in rows), key=lambda d: d.id)

    async def release_deliveries(self, tokens: list[uuid.UUID], ids: list[int]) -> None:
        """Claimed but not sent (shutdown, or too little lease left): pending again."""
        await self.conn.execute(
            "UPDATE webhook_deliveries SET status = 'pending', lease_until = NULL,"
            " claim_token = NULL"
            " WHERE id = ANY($2::bigint[]) AND claim_token = ANY($1::uuid[])"
            " AND status = 'sending'",
            tokens,
            ids,
        )

    async def record_attempt(
        self,
        delivery: ClaimedDelivery,
        *,
        status: str,
        status_code: int | None,
        error: str | None,
        latency_ms: float | None,
        gave_up: bool,
    ) -> bool:
        """Record one attempt of a claimed delivery; False (nothing written) when the
        claim is no longer ours (its lease lapsed and another worker claimed it)."""
        attempt = delivery.attempts + 1
        updated = await self.conn.fetchval(
            "UPDATE webhook_deliveries SET status = $2, attempts = $3, last_status = $4,"
            " last_error = $5, lease_until = NULL, claim_token = NULL,"
            " delivered_at = CASE WHEN $2 = 'delivered' THEN now() END,"
            " settled_at = CASE WHEN $2 IN ('delivered', 'failed') THEN now() END"
            " WHERE id = $1 AND claim_token = $6 AND status = 'sending' RETURNING id",
            delivery.id,
            status,
            attempt,
            status_code,
            error,
            delivery.claim_token,
        )
        if updated is None:
            return False
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
        return True

    async def record_delivered(
        self,
        delivered: list[tuple[ClaimedDelivery, int, float | None]],
        events: list[tuple[int, OutboxMessage]] | None = None,
    ) -> set[int]:
        """`record_attempt(status="delivered")` of many claimed deliveries (delivery, HTTP
        status, latency) in one statement; returns the ids recorded (the others' claims
        are no longer ours: nothing written for them).

        `events`: one (outbox shard, message) per delivery, in the same order (its
        WebhookDeliveryAttempted): the same statement writes to the outbox the messages
        of the deliveries it recorded, and only those, in the batch's order."""
        if not delivered:
            return set()
        if events is not None and len(events) != len(delivered):
            raise ValueError("one event per delivery")
        pairs = events or []
        rows = await self.conn.fetch(
            "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::int[], $4::int[],"
            " $5::float8[]) WITH ORDINALITY AS u(id, token, attempt, status_code, latency_ms,"
            " n)),"
            " done AS (UPDATE webhook_deliveries d SET status = 'delivered',"
            " attempts = u.attempt, last_status = u.status_code, last_error = NULL,"
            " lease_until = NULL, claim_token = NULL, delivered_at = now(), settled_at = now()"
            " FROM u WHERE d.id = u.id AND d.claim_token = u.token AND d.status = 'sending'"
            " RETURNING d.id),"
            " logged AS (INSERT INTO webhook_delivery_log (delivery_id, attempt, outcome,"
            " status_code, error, latency_ms) SELECT u.id, u.attempt, 'delivered',"
            " u.status_code, NULL, u.latency_ms FROM u JOIN done ON done.id = u.id"
            " ORDER BY u.id),"
            " announced AS (INSERT INTO outbox (shard, topic, key, value, headers)"
            " SELECT e.s, e.t, e.k, e.v, e.h::jsonb FROM unnest($6::smallint[], $7::text[],"
            " $8::text[], $9::bytea[], $10::text[]) WITH ORDINALITY AS e(s, t, k, v, h, n)"
            " JOIN u ON u.n = e.n JOIN done ON done.id = u.id ORDER BY e.n)"
            " SELECT id FROM done",
            [d.id for d, _, _ in delivered],
            [d.claim_token for d, _, _ in delivered],
            [d.attempts + 1 for d, _, _ in delivered],
            [code for _, code, _ in delivered],
            [latency for _, _, latency in delivered],
            [shard for shard, _ in pairs],
            [m.topic for _, m in pairs],
            [m.key for _, m in pairs],
            [m.value for _, m in pairs],
            [headers_json(m.headers) for _, m in pairs],
        )
        return {row["id"] for row in rows}

    async def prune_personal_data(self, older_than: timedelta, limit: int) -> int:
        """Drop the bodies of up to `limit` pushes delivered or given up, and the commands
        (invoice snapshots) of up to `limit` message jobs done or given up, longer than
        `older_than` ago; the rows stay (ids, order, status, outcome and the logs keep
        deduplication and the history working). Returns how many rows lost data."""
        pushes = await self.conn.fetchval(
            "WITH old AS (SELECT id FROM webhook_deliveries"
            "  WHERE status IN ('delivered', 'failed') AND body IS NOT NULL"
            "    AND settled_at < now() - $1::interval ORDER BY settled_at LIMIT $2)"
            " , pruned AS (UPDATE webhook_deliveries d SET body = NULL, pruned_at = now()"
            "  FROM old WHERE d.id = old.id RETURNING d.id)"
            " SELECT count(*) FROM pruned",
            older_than,
            limit,
        )
        jobs = await self.conn.fetchval(
            "WITH old AS (SELECT id FROM message_jobs"
            "  WHERE status IN ('done', 'failed') AND command IS NOT NULL"
            "    AND done_at < now() - $1::interval ORDER BY done_at LIMIT $2)"
            " , pruned AS (UPDATE message_jobs j SET command = NULL, pruned_at = now()"
            "  FROM old WHERE j.id = old.id RETURNING j.id)"
            " SELECT count(*) FROM pruned",
            older_than,
            limit,
        )
        return int(pushes) + int(jobs)

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

    async def claim_jobs(self, limit: int, *, lease_s: float) -> list[ClaimedJob]:
        """Mark up to `limit` due jobs `sending` under one new claim token (see
        `_CLAIM_JOBS`); run it in a transaction of its own and commit at once."""
        rows = await self.conn.fetch(_CLAIM_JOBS, limit, lease_s, uuid.uuid4())
        return sorted((ClaimedJob(**dict(row)) for row in rows), key=lambda j: j.id)

    async def release_jobs(self, tokens: list[uuid.UUID], ids: list[int]) -> None:
        """Claimed but not started (shutdown, or too little lease left): due again now."""
        await self.conn.execute(
            "UPDATE message_jobs SET status = 'pending', available_at = now(),"
            " claim_token = NULL"
            " WHERE id = ANY($2::bigint[]) AND claim_token = ANY($1::uuid[])"
            " AND status = 'sending'",
            tokens,
            ids,
        )

    async def finish_job(
        self,
        job: ClaimedJob,
        status: str,
        outcome: str | None,
        channel: str | None,
        error: str | None = None,
    ) -> bool:
        """The job is done (`done`: its outcome is answered; `failed`: given up without
        one); False (nothing written) when the claim is no longer ours."""
        updated = await self.conn.fetchval(
            "UPDATE message_jobs SET status = $3, outcome = $4, channel = $5,"
            " attempts = attempts + 1, done_at = now(), claim_token = NULL, last_error = $6"
            " WHERE id = $1 AND claim_token = $2 AND status = 'sending' RETURNING id",
            job.id,
            job.claim_token,
            status,
            outcome,
            channel,
            error,
        )
        return updated is not None

    async def postpone_job(self, job: ClaimedJob, delay_s: float, error: str | None) -> bool:
        """Try the whole message again later (wall clock: a transport concern, not
        business time); False (nothing written) when the claim is no longer ours."""
        updated = await self.conn.fetchval(
            "UPDATE message_jobs SET status = 'pending', attempts = attempts + 1,"
            " available_at = now() + make_interval(secs => $3), claim_token = NULL,"
            " last_error = $4"
            " WHERE id = $1 AND claim_token = $2 AND status = 'sending' RETURNING id",
            job.id,
            job.claim_token,
            delay_s,
            error,
        )
        return updated is not None

    async def log_channel(self, entries: list[tuple[int, str, str, str | None]]) -> None:
        if entries:
            await self.conn.executemany(
                "INSERT INTO message_log (job_id, channel, result, detail) VALUES ($1, $2, $3, $4)",
                entries,
            )
