"""Merchant webhooks: signed (Standard Webhooks), per invoice in sequence order, retried on
the scheduler's manual clock, given up after the last retry."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from contracts import topics
from contracts.notifier import DeliveryOutcome
from services.notifier import webhooks
from services.notifier.repository import NotifierRepository
from tests.support.invoices import InvoiceClient, invoice_payload
from tests.support.kafka import at_least, poll_until
from tests.support.notifier import HttpSink, Request, new_secret, notifier_command
from tests.support.platform import Platform, notifier_platform, webhook_merchant


@pytest.fixture(scope="module")
async def cm(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Platform]:
    async with notifier_platform(kafka_bootstrap, database_url, webhook_timeout_s=2.0) as running:
        yield running


@pytest.fixture
async def inv(cm: Platform, endpoint: HttpSink) -> AsyncIterator[InvoiceClient]:
    async with webhook_merchant(cm, endpoint) as client:
        yield client


async def register(cm: Platform, inv: InvoiceClient, url: str, secret: str) -> None:
    mid = await notifier_command(
        cm.bootstrap,
        cm.prefix,
        "RegisterWebhook",
        {"url": url, "secret": secret},
        website_key=inv.website_key,
        key=f"{inv.website_key}:webhook",
    )
    answer = await inv.answer(mid)
    assert answer["type"] == "CommandAccepted", answer


async def invoice_with_events(inv: InvoiceClient, number: str, count: int, at: datetime) -> None:
    """An invoice without steps and `count` events in all (creation + custom events)."""
    payload = invoice_payload(number, scheme_key="DefaultNone")
    answer = await inv.answer(
        await inv.command("CreateInvoice", payload, occurred_at=at.isoformat())
    )
    assert answer["type"] == "CommandAccepted", answer
    for i in range(count - 1):
        await inv.command(
            "CreateCustomEvent",
            {"invoice_number": number, "message": f"event {i + 2}"},
            occurred_at=at.isoformat(),
        )
    await inv.events(number, count)


def mine(requests: list[Request], inv: InvoiceClient) -> list[Request]:
    return [r for r in requests if r.json()["Invoice"]["WebsiteKey"] == inv.website_key]


async def accepted_for(endpoint: HttpSink, inv: InvoiceClient, count: int) -> list[Request]:
    return await at_least(
        count, lambda: mine(endpoint.accepted(), inv), what=f"{count} accepted pushes"
    )


def sequences(requests: list[Request]) -> list[int]:
    return [r.json()["Invoice"]["EventSequence"] for r in requests]


async def retry_scheduled(cm: Platform, inv: InvoiceClient, attempt: int) -> None:
    """Wait until the scheduler holds the timer of the merchant's `attempt`-th try (the
    failure before it is recorded): a Tick before that would not fire it."""
    pool = cm.services["scheduler"].runtime.pool

    async def held() -> bool:
        async with pool.acquire() as conn:
            found = await conn.fetchval(
                "SELECT count(*) FROM timers WHERE website_key = $1"
                " AND timer_id LIKE 'webhook:%' AND (message->'payload'->>'attempt')::int = $2",
                inv.website_key,
                attempt,
            )
        return bool(found)

    await poll_until(held, what=f"the timer of attempt {attempt}")


async def settled_deliveries(cm: Platform, inv: InvoiceClient, count: int) -> list[asyncpg.Record]:
    """The merchant's deliveries once `count` of them are delivered or given up (an
    endpoint sees a request before the notifier records its answer)."""
    pool = cm.notifier_pool

    async def settled() -> list[asyncpg.Record] | None:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT sequence, status, attempts FROM webhook_deliveries"
                " WHERE website_key = $1 ORDER BY sequence",
                inv.website_key,
            )
        done = [r for r in rows if r["status"] in ("delivered", "failed")]
        return list(rows) if len(done) >= count else None

    return await poll_until(settled, what=f"{count} deliveries settled")


def event_ids(inv: InvoiceClient, number: str) -> list[str]:
    bodies = [
        r.json()
        for r in inv.watcher.on(inv.prefix + "cm.invoice.events")
        if r.key == f"{inv.website_key}:{number}"
    ]
    return [b["message_id"] for b in sorted(bodies, key=lambda b: b["payload"]["sequence"])]


async def test_pushes_arrive_signed_and_verify_with_standardwebhooks(
    cm: Platform, inv: InvoiceClient, endpoint: HttpSink
) -> None:
    secret = new_secret()
    await register(cm, inv, endpoint.url, secret)
    await invoice_with_events(inv, "W-1", 2, datetime(2026, 11, 1, 9, tzinfo=UTC))
    received = await accepted_for(endpoint, inv, 2)
    assert sequences(received) == [1, 2]
    assert [r.headers["webhook-id"] for r in received] == event_ids(inv, "W-1")
    for request in received:
        payload: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
        assert payload["Invoice"]["InvoiceNumber"] == "W-1"
        assert request.headers["content-type"] == "application/json"

    tampered = received[0].body.replace(b'"AmountDebit":121.00', b'"AmountDebit":1.00')
    assert tampered != received[0].body
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, received[0].headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(received[0].body, received[0].headers)


async def test_an_endpoint_that_fails_twice_gets_every_push_once_in_order(
    cm: Platform, inv: InvoiceClient, endpoint: HttpSink
) -> None:
    failures = {"left": 2}

    def flaky(request: Request) -> int:
        if request.json()["Invoice"]["WebsiteKey"] != inv.website_key:
            return 200
        if failures["left"] > 0:
            failures["left"] -= 1
            return 503
        return 200

    endpoint.responder = flaky
    await register(cm, inv, endpoint.url, new_secret())
    at = datetime(2027, 1, 4, 9, tzinfo=UTC)
    await invoice_with_events(inv, "W-2", 3, at)

    async def attempts(count: int) -> None:
        async def enough() -> bool:
            return len(mine(endpoint.requests, inv)) >= count

        await poll_until(enough, what=f"{count} attempts")

    await attempts(1)
    await retry_scheduled(cm, inv, 2)
    await cm.tick(at + timedelta(seconds=5))  # the first retry
    await attempts(2)
    await retry_scheduled(cm, inv, 3)
    await cm.tick(at + timedelta(seconds=5) + timedelta(minutes=5))  # the second retry
    await accepted_for(endpoint, inv, 3)
    await settled_deliveries(cm, inv, 3)
    all_requests = mine(endpoint.requests, inv)
    accepted = [r for r in all_requests if r.status == 200]
    assert [r.status for r in all_requests] == [503, 503, 200, 200, 200]
    assert sequences(all_requests) == [1, 1, 1, 2, 3]  # later pushes waited for the first
    assert [r.headers["webhook-id"] for r in accepted] == event_ids(inv, "W-2")

    pool = cm.notifier_pool
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT d.sequence, d.status, d.attempts, l.outcome, l.status_code, l.latency_ms"
            " FROM webhook_deliveries d JOIN webhook_delivery_log l ON l.delivery_id = d.id"
            " WHERE d.website_key = $1 ORDER BY d.sequence, l.id",
            inv.website_key,
        )
    assert [(r["sequence"], r["outcome"], r["status_code"]) for r in rows] == [
        (1, "attempt_failed", 503),
        (1, "attempt_failed", 503),
        (1, "delivered", 200),
        (2, "delivered", 200),
        (3, "delivered", 200),
    ]
    assert all(r["status"] == "delivered" and r["latency_ms"] is not None for r in rows)


async def test_a_push_is_given_up_after_the_last_retry_and_the_next_one_goes(
    cm: Platform, inv: InvoiceClient, endpoint: HttpSink
) -> None:
    def first_always_fails(request: Request) -> int:
        body = request.json()["Invoice"]
        return 500 if body["WebsiteKey"] == inv.website_key and body["EventSequence"] == 1 else 200

    endpoint.responder = first_always_fails
    await register(cm, inv, endpoint.url, new_secret())
    at = datetime(2027, 3, 1, 9, tzinfo=UTC)
    await invoice_with_events(inv, "W-3", 2, at)
    due = at
    for failed, delay in enumerate(
        (
            timedelta(seconds=5),
            timedelta(minutes=5),
            timedelta(minutes=30),
            timedelta(hours=2),
            timedelta(hours=5),
            timedelta(hours=10),
            timedelta(hours=10),
        ),
        start=1,
    ):
        await retry_scheduled(cm, inv, failed + 1)
        count = len(mine(endpoint.requests, inv))

        async def attempted(count: int = count) -> bool:
            return len(mine(endpoint.requests, inv)) > count

        due += delay
        await cm.tick(due)
        await poll_until(attempted, what=f"the attempt after {delay}")

    async def all_nine() -> bool:
        return len(mine(endpoint.requests, inv)) >= 9

    await poll_until(all_nine, what="the second push")
    requests = mine(endpoint.requests, inv)
    assert sequences(requests) == [1] * 8 + [2]
    assert [r.status for r in requests] == [500] * 8 + [200]
    statuses = await settled_deliveries(cm, inv, 2)
    pool = cm.notifier_pool
    async with pool.acquire() as conn:
        outcomes = await conn.fetchval(
            "SELECT array_agg(l.outcome ORDER BY l.id) FROM webhook_delivery_log l"
            " JOIN webhook_deliveries d ON d.id = l.delivery_id"
            " WHERE d.website_key = $1 AND d.sequence = 1",
            inv.website_key,
        )
    assert [tuple(r) for r in statuses] == [(1, "failed", 8), (2, "delivered", 1)]
    assert outcomes == ["attempt_failed"] * 8 + ["WebhookDeliveryFailed"]


def counted(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"channel": "webhook"}) or 0.0


async def test_retries_and_give_ups_are_counted_for_the_webhook_channel(
    cm: Platform, inv: InvoiceClient, endpoint: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "RETRY_DELAYS", (timedelta(seconds=5),))  # one retry
    retries, give_ups = counted("cm_notifier_retries_total"), counted("cm_notifier_give_ups_total")

    def fails(request: Request) -> int:
        return 500 if request.json()["Invoice"]["WebsiteKey"] == inv.website_key else 200

    endpoint.responder = fails
    await register(cm, inv, endpoint.url, new_secret())
    at = datetime(2027, 5, 3, 9, tzinfo=UTC)
    await invoice_with_events(inv, "W-M", 1, at)
    await retry_scheduled(cm, inv, 2)
    assert counted("cm_notifier_retries_total") == retries + 1
    await cm.tick(at + timedelta(seconds=5))
    (row,) = await settled_deliveries(cm, inv, 1)
    assert tuple(row) == (1, "failed", 2)

    async def given_up() -> bool:
        return counted("cm_notifier_give_ups_total") == give_ups + 1

    await poll_until(given_up, what="the give-up counted")
    assert counted("cm_notifier_retries_total") == retries + 1


async def test_a_group_of_deliveries_announces_only_those_it_recorded(cm: Platform) -> None:
    """The group commit's one statement writes a WebhookDeliveryAttempted to the outbox for
    each delivery it recorded, and none for one whose claim is no longer ours. Checked
    inside a transaction that is rolled back (the running workers never see its rows)."""
    website_key = f"shop-{uuid.uuid4().hex[:8]}"
    at = datetime(2027, 3, 1, 9, tzinfo=UTC)
    rows = [
        (website_key, "G-1", 1, uuid.uuid4(), uuid.uuid4(), b"{}", at),
        (website_key, "G-2", 1, uuid.uuid4(), uuid.uuid4(), b"{}", at),
    ]
    topic = cm.prefix + topics.NOTIFIER_EVENTS
    async with cm.notifier_pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            repo = NotifierRepository(conn)
            await repo.upsert_webhook(website_key, "https://shop.example/hook", new_secret(), True)
            await repo.add_deliveries(rows)
            claimed = [
                d
                for d in await repo.claim_deliveries(
                    100, per_merchant=10, skip_merchants=[], lease_s=60.0
                )
                if d.website_key == website_key
            ]
            assert [d.invoice_number for d in claimed] == ["G-1", "G-2"]
            ours, lapsed = claimed[0], replace(claimed[1], claim_token=uuid.uuid4())
            result = webhooks.PostResult(200, None, 1.5)
            events = [
                webhooks.attempt_event(
                    d,
                    result,
                    outcome=DeliveryOutcome.DELIVERED,
                    error=None,
                    next_retry_at=None,
                    prefix=cm.prefix,
                )
                for d in (ours, lapsed)
            ]
            recorded = await repo.record_delivered(
                [(ours, 200, 1.5), (lapsed, 200, 1.5)], [(0, e) for e in events]
            )
            assert recorded == {ours.id}
            outbox = await conn.fetch(
                "SELECT key, value FROM outbox WHERE topic = $1 AND key LIKE $2",
                topic,
                f"{website_key}:%",
            )
        finally:
            await transaction.rollback()
    assert [r["key"] for r in outbox] == [f"{website_key}:G-1"]
    body = json.loads(outbox[0]["value"])
    assert body["type"] == "WebhookDeliveryAttempted"
    assert body["payload"]["delivery_id"] == str(ours.id)
    assert body["payload"]["outcome"] == "delivered"
    assert body["payload"]["attempt"] == 1 and body["payload"]["status_code"] == 200
