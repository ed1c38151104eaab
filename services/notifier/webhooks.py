"""Webhook delivery: signed HTTP POSTs of pushes to the merchant's endpoint, per invoice in
sequence order, retried through scheduler timers.

Each delivery is its own unit: claim, commit, send, record (claims and successful
records are shared by many deliveries, each in one statement).

- **Claim**: one short transaction marks due deliveries `sending` with a lease
  (`WEBHOOK_LEASE_S`) and a claim token, and commits; no row lock is held while sending.
  Only the lowest open push of an invoice is claimable, and a `sending` one blocks the
  rest of its invoice, so pushes of an invoice go out in sequence order. The claim is
  fair: at most `WEBHOOK_MAX_IN_FLIGHT_PER_MERCHANT` deliveries of a merchant per claim,
  none of a merchant this process already has twice that many of.
- **Send**: each delivery in a task of its own, at most `WEBHOOK_MAX_IN_FLIGHT` in
  flight and `WEBHOOK_MAX_IN_FLIGHT_PER_MERCHANT` per merchant, under one overall
  deadline (`WEBHOOK_TIMEOUT_S`: connect, send and read together), reading at most
  `NOTIFIER_RESPONSE_MAX_BYTES` of the answer (only its status counts). Any exception
  of one delivery, expected or not, becomes that delivery's error code; a stored URL
  that does not parse (`invalid_url`), a secret that is not a `whsec_` key
  (`invalid_secret`) or that no key of `CM_SECRET_KEY` decrypts (`secret_unreadable`),
  and a target that is not a public https endpoint (`target_not_allowed`, netguard.py)
  fail only that delivery.
- **Record**: each outcome only while the claim token still matches: the delivery log,
  and for a failure a `ScheduleTimer` whose `RetryWebhookDelivery` makes it pending again
  after its backoff, in a transaction of its own. Successes are group-committed: the
  deliveries that succeed while one recording transaction runs are recorded together in
  the next (one statement), so a burst costs a commit per group, not per push; each
  delivery's task waits for its own record, and the invoice's next push is claimable
  only after it committed, as before. After the last
  retry the delivery is given up (`failed`, a `WebhookDeliveryFailed` log entry, a
  metric) and the invoice's next push may go.
- **Announce**: every recorded attempt becomes a `WebhookDeliveryAttempted` event on
  `cm.notifier.events` (outcome, status or error code, duration, next retry time; no
  URL, secret or body), written to the outbox by the statement or transaction that
  records the attempt: exactly one per recorded attempt, none for a record that lost its
  claim. A group-committed batch of successes writes its events in the same single
  statement as its log rows (no extra round trip).

A worker that dies mid-send leaves its deliveries `sending`; when the lease lapses they
are claimed again and sent again with the same `webhook-id` (at-least-once: receivers
deduplicate on it, as Standard Webhooks asks). A delivery whose lease is nearly over
before it got a slot is released unsent rather than risk two workers sending it at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from prometheus_client import Counter, Histogram
from standardwebhooks import Webhook
from yarl import URL

from contracts import topics
from contracts.catalog import key_for_payload, timer_for
from contracts.envelope import Message, envelope_class
from contracts.notifier import DeliveryOutcome, RetryWebhookDelivery, WebhookDeliveryAttempted
from services.notifier.limits import NotifierLimits, error_code, header_value
from services.notifier.metrics import GIVE_UPS, RETRIES, WEBHOOK
from services.notifier.netguard import TargetNotAllowed, TargetPolicy, guarded_connector
from services.notifier.repository import ClaimedDelivery, NotifierRepository
from services.notifier.secrets import SecretBox, SecretUnreadable
from services.runtime.app import Runtime
from services.runtime.logs import get_logger
from services.runtime.outbox import OutboxMessage, shard_of

log = get_logger(__name__)

#: Wait after each failed attempt before the next (docs/notifier.md); then give up.
RETRY_DELAYS: tuple[timedelta, ...] = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
#: Most deliveries claimed per claim transaction.
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
RELEASED = Counter(
    "cm_notifier_webhook_released_total",
    "Claimed deliveries released unsent (shutdown, or their lease nearly over)",
)

#: Namespace of the ids of retry messages: one id per (delivery, attempt), so a repeated
#: failure record cannot schedule two different retries.
_RETRY_IDS = uuid.UUID("8d7c3f0e-4b1a-4c55-9a0e-5b2f4f3c9e11")
#: Namespace of the ids of WebhookDeliveryAttempted events: one id per (delivery, attempt).
_ATTEMPT_IDS = uuid.UUID("3f1b6a52-9c4e-4d0b-8e7a-2a6d5c1f7b90")


@dataclass(frozen=True)
class PostResult:
    status_code: int | None
    error: str | None
    latency_ms: float | None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class InvalidDelivery(Exception):
    """The stored webhook cannot be used (a bad URL or secret): this delivery fails."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def signing_key(secret: str) -> Webhook:
    """The signer of a stored secret: `whsec_` + base64 of a non-empty key, or
    `InvalidDelivery("invalid_secret")` (rows stored before RegisterWebhook checked it)."""
    if not secret.startswith("whsec_"):
        raise InvalidDelivery("invalid_secret")
    encoded = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidDelivery("invalid_secret") from None
    if not key:
        raise InvalidDelivery("invalid_secret")
    return Webhook(key)


@functools.lru_cache(maxsize=1024)
def endpoint_url(url: str) -> URL:
    """The stored URL, parsed: http(s) with a host, or `InvalidDelivery("invalid_url")`
    (kept per URL: a merchant's deliveries share it; a bad one raises every time)."""
    try:
        parsed = URL(url)
        _ = parsed.port  # a port that is not a number fails here, not mid-request
    except (ValueError, TypeError, UnicodeError):
        raise InvalidDelivery("invalid_url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidDelivery("invalid_url")
    return parsed


@functools.lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    """`signing_key`, kept per secret: a merchant's deliveries share one signer (a secret
    that does not parse raises every time: exceptions are not cached)."""
    return signing_key(secret)


def signed_headers(secret: str, message_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """Standard Webhooks headers for one push, signed at `now` (the wall clock)."""
    moment = datetime.fromtimestamp(int(now.timestamp()), UTC)
    return {
        "content-type": "application/json",
        "webhook-id": header_value(message_id),
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": header_value(_signer(secret).sign(message_id, moment, body.decode())),
    }


#: The recorded code of a transport error: the kind of failure, as the delivery log named
#: it before the client was aiohttp (docs/notifier.md); any other keeps its type name.
_TRANSPORT_ERRORS: tuple[tuple[type[BaseException], str], ...] = (
    # aiohttp refuses a host such as `127.1` or `2130706433` (legacy IPv4 forms) itself.
    (aiohttp.InvalidURL, "invalid_url"),
    (aiohttp.ClientConnectorError, "ConnectError"),  # refused, unreachable, DNS, TLS
    (aiohttp.ServerDisconnectedError, "RemoteProtocolError"),
    (aiohttp.ClientPayloadError, "RemoteProtocolError"),
    (aiohttp.ClientResponseError, "RemoteProtocolError"),  # an answer that does not parse
)


def transport_error_code(error: BaseException) -> str:
    for kind, code in _TRANSPORT_ERRORS:
        if isinstance(error, kind):
            return code
    return type(error).__name__


class WebhookClient:
    """The HTTP client of webhook deliveries: an aiohttp session on the guarded connector
    (netguard.py), HTTP/1.1 keep-alive, no redirects, no cookies, no proxies from the
    environment, no decompression (only the status counts). Made by `webhook_client`."""

    follow_redirects = False

    def __init__(self, session: aiohttp.ClientSession, policy: TargetPolicy) -> None:
        self.session = session
        self.policy = policy

    @contextlib.asynccontextmanager
    async def send(
        self, url: URL, body: bytes, headers: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST `body` to `url`; the answer's body is left to read (`read_capped`). A
        target that is not allowed raises `TargetNotAllowed` before anything is sent."""
        self.policy.check_scheme(url)
        async with self.session.post(
            url, data=body, headers=headers, allow_redirects=False
        ) as response:
            yield response

    async def close(self) -> None:
        await self.session.close()


async def read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """At most `max_bytes` of the answer's body; the rest is never read (the connection
    is then closed instead of reused: aiohttp keeps only connections whose answer
    ended). The connection reads ahead into a bounded buffer only."""
    parts: list[bytes] = []
    size = 0
    while size < max_bytes:
        chunk = await response.content.readany()
        if not chunk:
            break
        parts.append(chunk[: max_bytes - size])
        size += len(parts[-1])
    return b"".join(parts)


async def post(
    client: WebhookClient,
    delivery: ClaimedDelivery,
    *,
    timeout_s: float,
    max_response_bytes: int,
    secrets: SecretBox | None = None,
) -> PostResult:
    """POST one delivery; every failure is a result with an error code, never raised.

    The stored secret is decrypted with `secrets` (None: it is stored in plain text). One
    deadline covers connect, send and read; at most `max_response_bytes` of the answer
    are read (only its status counts)."""
    started = time.perf_counter()

    def failed(code: str) -> PostResult:
        return PostResult(None, code, (time.perf_counter() - started) * 1000)

    status: int | None = None
    try:
        url = endpoint_url(delivery.url)
        secret = secrets.open(delivery.secret) if secrets is not None else delivery.secret
        headers = signed_headers(
            secret, str(delivery.push_message_id), delivery.body, datetime.now(UTC)
        )
        async with asyncio.timeout(timeout_s):
            async with client.send(url, delivery.body, headers) as response:
                status = response.status
                await read_capped(response, max_response_bytes)
    except (InvalidDelivery, TargetNotAllowed, SecretUnreadable) as error:
        return failed(error.code)
    except (TimeoutError, aiohttp.ClientError) as error:
        if status is None:  # else only the (unneeded) rest of the body was lost
            return failed(
                "timeout" if isinstance(error, TimeoutError) else transport_error_code(error)
            )
    except Exception as error:  # one delivery's bad luck never touches another's
        return failed(error_code(error))
    assert status is not None
    elapsed = time.perf_counter() - started
    LATENCY.observe(elapsed)
    return PostResult(status, None, elapsed * 1000)


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
    due_at = retry_due_at(delivery, failed_attempt)
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
        timer_for(timer_id, due_at, retry),
        website_key=delivery.website_key,
        occurred_at=delivery.business_time,
        correlation_id=delivery.correlation_id,
        causation_id=delivery.push_message_id,
        message_id=uuid.uuid5(_RETRY_IDS, f"{delivery.id}:{failed_attempt + 1}:timer"),
    )
    return OutboxMessage(f"{prefix}{topics.SCHEDULER_COMMANDS}", timer_id, schedule.to_json())


def retry_due_at(delivery: ClaimedDelivery, failed_attempt: int) -> datetime:
    """When the retry after `failed_attempt` is due (business time: the delivery's last
    pending time plus the delay)."""
    return delivery.business_time + RETRY_DELAYS[failed_attempt - 1]


def attempt_event(
    delivery: ClaimedDelivery,
    result: PostResult,
    *,
    outcome: DeliveryOutcome,
    error: str | None,
    next_retry_at: datetime | None,
    prefix: str,
) -> OutboxMessage:
    """The WebhookDeliveryAttempted of one attempt of `delivery` (keyed by its invoice;
    its id is fixed per delivery and attempt)."""
    attempt = delivery.attempts + 1
    event = WebhookDeliveryAttempted.model_construct(
        invoice_number=delivery.invoice_number,
        delivery_id=str(delivery.id),
        push_message_id=delivery.push_message_id,
        attempt=attempt,
        outcome=outcome,
        status_code=result.status_code,
        error=error,
        duration_ms=None if result.latency_ms is None else round(result.latency_ms),
        attempted_at=datetime.now(UTC),
        next_retry_at=next_retry_at,
    )
    envelope = _envelope_json(
        event,
        website_key=delivery.website_key,
        occurred_at=delivery.business_time,
        correlation_id=delivery.correlation_id,
        causation_id=delivery.push_message_id,
        message_id=uuid.uuid5(_ATTEMPT_IDS, f"{delivery.id}:{attempt}"),
    )
    key = key_for_payload(event, delivery.website_key)
    return OutboxMessage(f"{prefix}{topics.NOTIFIER_EVENTS}", key, envelope.to_json())


@dataclass
class _Merchant:
    """This process's claimed deliveries of one merchant and its in-flight slots."""

    slots: asyncio.Semaphore
    claimed: int = 0


@dataclass
class _Claimed:
    delivery: ClaimedDelivery
    lease_ends: float  # time.monotonic(): never later than the lease in the database
    started: bool = field(default=False)


class WebhookDispatcher:
    """Claims deliveries and sends each in a task of its own (see the module docstring).

    `step` is the worker's round: it claims what fits and starts the tasks, without
    waiting for them; `wake` is set whenever a task ends (capacity is free, and the
    invoice's next push may be claimable)."""

    def __init__(
        self,
        runtime: Runtime,
        client: WebhookClient,
        limits: NotifierLimits | None = None,
        secrets: SecretBox | None = None,
    ) -> None:
        self.runtime = runtime
        self.client = client
        self.secrets = secrets
        self.limits = limits or NotifierLimits.of(runtime.settings)
        self.wake = asyncio.Event()
        self._in_flight = asyncio.Semaphore(self.limits.webhook_max_in_flight)
        self._merchants: dict[str, _Merchant] = {}
        self._tasks: dict[asyncio.Task[None], _Claimed] = {}
        #: Delivered, waiting for `_record_delivered` (one transaction for all of them).
        self._delivered: list[tuple[ClaimedDelivery, PostResult, asyncio.Future[bool]]] = []
        self._recorder: asyncio.Task[None] | None = None

    @property
    def max_claimed(self) -> int:
        """Deliveries this process holds at once (in flight or waiting for a slot)."""
        return 2 * self.limits.webhook_max_in_flight

    async def step(self, limit: int = BATCH_SIZE) -> int:
        """Claim what fits and start sending it; returns how many were claimed."""
        room = min(limit, self.max_claimed - len(self._tasks))
        if room <= 0:
            return 0
        per_merchant = self.limits.webhook_max_in_flight_per_merchant
        busy = [key for key, m in self._merchants.items() if m.claimed >= 2 * per_merchant]
        claim_started = time.monotonic()
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            claimed = await NotifierRepository(conn).claim_deliveries(
                room,
                per_merchant=per_merchant,
                skip_merchants=busy,
                lease_s=self.limits.webhook_lease,
            )
        lease_ends = claim_started + self.limits.webhook_lease
        for delivery in claimed:
            merchant = self._merchants.get(delivery.website_key)
            if merchant is None:
                merchant = self._merchants[delivery.website_key] = _Merchant(
                    asyncio.Semaphore(per_merchant)
                )
            merchant.claimed += 1
            item = _Claimed(delivery, lease_ends)
            task = asyncio.create_task(self._deliver(item, merchant))
            self._tasks[task] = item
            task.add_done_callback(self._done)
        return len(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        item = self._tasks.pop(task)
        key = item.delivery.website_key
        merchant = self._merchants[key]
        merchant.claimed -= 1
        if merchant.claimed == 0:
            del self._merchants[key]
        self.wake.set()

    async def _deliver(self, item: _Claimed, merchant: _Merchant) -> None:
        delivery = item.delivery
        try:
            async with merchant.slots, self._in_flight:
                # Started only with time for the whole deadline left on the lease: a
                # lapsed lease lets another worker send it too.
                if time.monotonic() + self.limits.webhook_timeout_s + 5 > item.lease_ends:
                    await self._release([item])
                    return
                item.started = True
                result = await post(
                    self.client,
                    delivery,
                    timeout_s=self.limits.webhook_timeout_s,
                    max_response_bytes=self.limits.response_max_bytes,
                    secrets=self.secrets,
                )
            await self.record(delivery, result)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a failed record: the lease brings the delivery back
            log.error(
                "webhook delivery not recorded; it is sent again when its lease lapses",
                error_type=type(error).__name__,
                website_key=delivery.website_key,
                delivery_id=delivery.id,
            )

    async def _release(self, items: list[_Claimed]) -> None:
        if not items:
            return
        async with self.runtime.pool.acquire() as conn:
            await NotifierRepository(conn).release_deliveries(
                list({i.delivery.claim_token for i in items}), [i.delivery.id for i in items]
            )
        RELEASED.inc(len(items))

    async def close(self) -> None:
        """Stop: cancel the tasks; deliveries not yet started are released (pending again),
        ones cut off mid-send stay `sending` until their lease lapses."""
        unstarted = [item for item in self._tasks.values() if not item.started]
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._recorder is not None:
            self._recorder.cancel()
            await asyncio.gather(self._recorder, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._release(unstarted)

    async def record(self, delivery: ClaimedDelivery, result: PostResult) -> None:
        """The delivery's outcome in a transaction of its own (and its retry timer)."""
        attempt = delivery.attempts + 1
        context = {
            "website_key": delivery.website_key,
            "invoice_number": delivery.invoice_number,
            "delivery_id": delivery.id,
            "attempt": attempt,
            "status_code": result.status_code,
        }
        if result.ok:
            recorded = await self._delivered_recorded(delivery, result)
            ATTEMPTS.labels("delivered").inc()
            if not recorded:
                log.warning("delivery sent after its claim lapsed", **context)
            return
        error = result.error or f"http_{result.status_code}"
        gave_up = attempt > len(RETRY_DELAYS)
        prefix = self.runtime.topics.prefix
        try:
            retry = None if gave_up else retry_timer(delivery, attempt, prefix)
        except Exception as failure:  # e.g. a business time at the end of the calendar
            error, gave_up, retry = f"{error};retry_{error_code(failure)}", True, None
        event = attempt_event(
            delivery,
            result,
            outcome=DeliveryOutcome.GIVEN_UP if gave_up else DeliveryOutcome.FAILED,
            error=error,
            next_retry_at=None if retry is None else retry_due_at(delivery, attempt),
            prefix=prefix,
        )
        async with self.runtime.unit_of_work() as work:
            recorded = await NotifierRepository(work.conn).record_attempt(
                delivery,
                status="failed" if gave_up else "retrying",
                status_code=result.status_code,
                error=error,
                latency_ms=result.latency_ms,
                gave_up=gave_up,
            )
            if recorded:
                work.outbox.append(event)
                if retry is not None:
                    work.outbox.append(retry)
        ATTEMPTS.labels("failed").inc()
        if not recorded:
            log.warning("delivery failed after its claim lapsed", error=error, **context)
        elif gave_up:
            GIVEN_UP.inc()
            GIVE_UPS.labels(WEBHOOK).inc()
            log.warning("WebhookDeliveryFailed: giving up on a push", error=error, **context)
        else:
            RETRIES.labels(WEBHOOK).inc()
            log.info("webhook delivery failed; retry scheduled", error=error, **context)

    async def _delivered_recorded(self, delivery: ClaimedDelivery, result: PostResult) -> bool:
        """Record a delivered push with every other one delivered meanwhile (group commit):
        whoever comes while no recording runs starts one, which takes all that waits;
        what arrives while it runs goes in the next. True once committed; False when the
        claim was no longer ours."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._delivered.append((delivery, result, future))
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_delivered())
        return await future

    async def _record_delivered(self) -> None:
        prefix = self.runtime.topics.prefix
        shards = self.runtime.settings.relay_shards
        while self._delivered:
            batch, self._delivered = self._delivered, []
            try:
                events = [
                    attempt_event(
                        d,
                        r,
                        outcome=DeliveryOutcome.DELIVERED,
                        error=None,
                        next_retry_at=None,
                        prefix=prefix,
                    )
                    for d, r, _ in batch
                ]
                async with self.runtime.pool.acquire() as conn, conn.transaction():
                    recorded = await NotifierRepository(conn).record_delivered(
                        [(d, r.status_code or 0, r.latency_ms) for d, r, _ in batch],
                        [(shard_of(e.key, shards), e) for e in events],
                    )
                if recorded and self.runtime.relay is not None:
                    self.runtime.relay.wake()
            except Exception as error:  # each delivery's task logs it; their leases lapse
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for delivery, _, future in batch:
                if not future.done():
                    future.set_result(delivery.id in recorded)


@contextlib.asynccontextmanager
async def webhook_client(
    limits: NotifierLimits,
    policy: TargetPolicy | None = None,
    *,
    connector: aiohttp.TCPConnector | None = None,
) -> AsyncIterator[WebhookClient]:
    """The HTTP client of webhook deliveries (docs/decisions.md, "Webhook deliveries on
    aiohttp"): connections only to targets `policy` allows (netguard.py; None: the strict
    default), a pool the size of the in-flight bound, the delivery's deadline as the
    session's total timeout too. `connector`: tests (one of `guarded_connector`'s)."""
    policy = policy or TargetPolicy()
    session = aiohttp.ClientSession(
        connector=connector or guarded_connector(policy, limit=limits.webhook_max_in_flight),
        timeout=aiohttp.ClientTimeout(total=limits.webhook_timeout_s),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
    )
    client = WebhookClient(session, policy)
    try:
        yield client
    finally:
        await client.close()
