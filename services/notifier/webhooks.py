"""Webhook delivery: signed HTTP POSTs of pushes to the merchant's endpoint, per invoice in
sequence order, retried through scheduler timers.

A background task claims due deliveries (`FOR UPDATE SKIP LOCKED`, only the lowest open
push per invoice), posts them concurrently, and in the same transaction records each
outcome in the delivery log and, for a failure, enqueues a `ScheduleTimer` whose
`RetryWebhookDelivery` makes the delivery pending again. After the last retry the
delivery is given up (`failed`, a `WebhookDeliveryFailed` log entry, a metric) and the
invoice's next push may go. A crash after a POST but before the commit sends that push
again: receivers deduplicate on `webhook-id`, as Standard Webhooks asks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prometheus_client import Counter, Histogram
from standardwebhooks import Webhook

from contracts import topics
from contracts.envelope import Message, envelope_class
from contracts.notifier import RetryWebhookDelivery
from contracts.scheduler import ScheduleTimer
from services.notifier.repository import ClaimedDelivery, NotifierRepository
from services.runtime.app import Runtime
from services.runtime.logs import get_logger
from services.runtime.outbox import OutboxMessage, enqueue

log = get_logger(__name__)

#: Wait after each failed attempt before the next (CONTRACTS.md); then give up.
RETRY_DELAYS: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
#: Deliveries claimed (and posted concurrently) per transaction.
BATCH_SIZE = 100

ATTEMPTS = Counter(
    "cm_notifier_webhook_attempts_total", "Webhook delivery attempts, by outcome", ["outcome"]
)
GIVEN_UP = Counter(
    "cm_notifier_webhook_deliveries_failed_total",
    "Webhook deliveries given up after the last retry (WebhookDeliveryFailed)",
)
LATENCY = Histogram(
    "cm_notifier_webhook_latency_seconds", "Time from POST to the endpoint's answer"
)

#: Namespace of the ids of retry messages: one id per (delivery, attempt), so a repeated
#: failure record cannot schedule two different retries.
_RETRY_IDS = uuid.UUID("8d7c3f0e-4b1a-4c55-9a0e-5b2f4f3c9e11")


@dataclass(frozen=True)
class PostResult:
    status_code: int | None
    error: str | None
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signed_headers(secret: str, message_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """Standard Webhooks headers for one push, signed at `now` (the wall clock)."""
    moment = datetime.fromtimestamp(int(now.timestamp()), UTC)
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, moment, body.decode()),
    }


async def post(client: httpx.AsyncClient, delivery: ClaimedDelivery) -> PostResult:
    headers = signed_headers(
        delivery.secret, str(delivery.push_message_id), delivery.body, datetime.now(UTC)
    )
    started = time.perf_counter()
    try:
        response = await client.post(delivery.url, content=delivery.body, headers=headers)
    except httpx.HTTPError as error:
        elapsed = time.perf_counter() - started
        return PostResult(None, type(error).__name__, elapsed * 1000)
    elapsed = time.perf_counter() - started
    LATENCY.observe(elapsed)
    return PostResult(response.status_code, None, elapsed * 1000)


def _envelope_json(
    payload: Message,
    *,
    website_key: str,
    occurred_at: datetime,
    correlation_id: uuid.UUID,
    causation_id: uuid.UUID,
    message_id: uuid.UUID,
) -> Any:
    return envelope_class(type(payload)).model_construct(
        message_id=message_id,
        type=payload.TYPE,
        website_key=website_key,
        occurred_at=occurred_at,
        correlation_id=correlation_id,
        causation_id=causation_id,
        payload=payload,
    )


def retry_timer(delivery: ClaimedDelivery, failed_attempt: int, prefix: str) -> OutboxMessage:
    """The ScheduleTimer that brings the delivery back after its backoff (business time:
    the delivery's last pending time plus the delay)."""
    due_at = delivery.business_time + RETRY_DELAYS[failed_attempt - 1]
    timer_id = f"webhook:{delivery.id}"
    retry = _envelope_json(
        RetryWebhookDelivery(
            invoice_number=delivery.invoice_number,
            delivery_id=str(delivery.id),
            push_message_id=delivery.push_message_id,
            attempt=failed_attempt + 1,
        ),
        website_key=delivery.website_key,
        occurred_at=due_at,
        correlation_id=delivery.correlation_id,
        causation_id=delivery.push_message_id,
        message_id=uuid.uuid5(_RETRY_IDS, f"{delivery.id}:{failed_attempt + 1}"),
    )
    schedule = _envelope_json(
        ScheduleTimer.for_envelope(timer_id, due_at, retry),
        website_key=delivery.website_key,
        occurred_at=delivery.business_time,
        correlation_id=delivery.correlation_id,
        causation_id=delivery.push_message_id,
        message_id=uuid.uuid5(_RETRY_IDS, f"{delivery.id}:{failed_attempt + 1}:timer"),
    )
    return OutboxMessage(f"{prefix}{topics.SCHEDULER_COMMANDS}", timer_id, schedule.to_json())


class WebhookDispatcher:
    """Claims, posts and records deliveries; one transaction per batch."""

    #: Requests in flight per dispatcher (shared by its workers).
    MAX_IN_FLIGHT = 16

    def __init__(self, runtime: Runtime, client: httpx.AsyncClient) -> None:
        self.runtime = runtime
        self.client = client
        self._in_flight = asyncio.Semaphore(self.MAX_IN_FLIGHT)

    async def _post(self, delivery: ClaimedDelivery) -> PostResult:
        # A few requests in flight at a time: httpx's pool slows down sharply with
        # hundreds of requests waiting in it.
        async with self._in_flight:
            return await post(self.client, delivery)

    async def dispatch_batch(self, limit: int = BATCH_SIZE) -> int:
        """Deliver what is due now; returns how many deliveries were attempted."""
        outbox: list[OutboxMessage] = []
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            repo = NotifierRepository(conn)
            claimed = await repo.claim_deliveries(limit)
            if not claimed:
                return 0
            results = await asyncio.gather(*(self._post(d) for d in claimed))
            for delivery, result in zip(claimed, results, strict=True):
                outbox.extend(await self._record(repo, delivery, result))
            await enqueue(conn, outbox, self.runtime.settings.relay_shards)
        if outbox and self.runtime.relay is not None:
            self.runtime.relay.wake()
        return len(claimed)

    async def _record(
        self, repo: NotifierRepository, delivery: ClaimedDelivery, result: PostResult
    ) -> list[OutboxMessage]:
        attempt = delivery.attempts + 1
        context = {
            "website_key": delivery.website_key,
            "invoice_number": delivery.invoice_number,
            "delivery_id": delivery.id,
            "attempt": attempt,
            "status_code": result.status_code,
        }
        if result.ok:
            ATTEMPTS.labels("delivered").inc()
            await repo.record_attempt(
                delivery,
                status="delivered",
                status_code=result.status_code,
                error=None,
                latency_ms=result.latency_ms,
                gave_up=False,
            )
            return []
        ATTEMPTS.labels("failed").inc()
        error = result.error or f"http_{result.status_code}"
        gave_up = attempt > len(RETRY_DELAYS)
        await repo.record_attempt(
            delivery,
            status="failed" if gave_up else "retrying",
            status_code=result.status_code,
            error=error,
            latency_ms=result.latency_ms,
            gave_up=gave_up,
        )
        if gave_up:
            GIVEN_UP.inc()
            log.warning("WebhookDeliveryFailed: giving up on a push", error=error, **context)
            return []
        log.info("webhook delivery failed; retry scheduled", error=error, **context)
        return [retry_timer(delivery, attempt, self.runtime.topics.prefix)]
