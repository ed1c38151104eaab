"""Webhook deliveries in the console, on the real broker and PostgreSQL: the notifier
announces every recorded attempt (WebhookDeliveryAttempted on cm.notifier.events, from
its outbox), the console keeps them, and its invoice page and webhook delivery log show
a failed attempt with its retry time, then the delivery."""

from __future__ import annotations

import json
from datetime import datetime

from contracts import topics
from services.console.web import fmt_datetime
from services.notifier.webhooks import RETRY_DELAYS
from tests.support.console import (
    ConsoleStack,
    console_fixtures,
    create,
    register_webhook,
)
from tests.support.invoices import InvoiceClient
from tests.support.kafka import TopicWatcher
from tests.support.notifier import HttpSink, Request

stack, merchant = console_fixtures("scheduler", "notifier", webhook_timeout_s=2.0)


async def test_a_failed_then_delivered_push_shows_in_the_log_with_its_retry_time(
    stack: ConsoleStack, merchant: InvoiceClient, endpoint: HttpSink
) -> None:
    website_key = merchant.website_key
    failures = {"left": 1}

    def fails_once(request: Request) -> int:
        if request.json()["Invoice"]["WebsiteKey"] != website_key:
            return 200
        if failures["left"] > 0:
            failures["left"] -= 1
            return 503
        return 200

    endpoint.responder = fails_once
    events = TopicWatcher(stack.cm.bootstrap, stack.cm.prefix + topics.NOTIFIER_EVENTS)
    await events.start()
    try:
        await register_webhook(stack, merchant, endpoint.url)
        await create(merchant, "WD-1", scheme_key="DefaultNone")
        invoice = await stack.row_when(website_key, "WD-1", status_code=10)

        # The first attempt failed: the console shows it with the time of the retry.
        (failed,) = await stack.webhook_attempts(website_key, 1)
        assert (failed["attempt"], failed["outcome"], failed["status_code"]) == (1, "failed", 503)
        assert failed["error"] == "http_503"
        assert failed["invoice_number"] == "WD-1"
        retry_at = failed["next_retry_at"]
        # The first backoff after the push's business time (the invoice event's).
        (created,) = [
            r.json()
            for r in merchant.watcher.on(stack.cm.prefix + topics.INVOICE_EVENTS)
            if r.key == f"{website_key}:WD-1"
        ]
        assert retry_at == datetime.fromisoformat(created["occurred_at"]) + RETRY_DELAYS[0]
        shown_retry = fmt_datetime(retry_at, "nl-NL", "Europe/Amsterdam")
        async with stack.signed_in(await stack.user(website_key)) as client:
            log = (await client.get("/webhooks/deliveries")).text
            assert 'data-outcome="failed" data-attempt="1"' in log
            assert "HTTP 503" in log
            assert shown_retry in log  # in the retry list and on the attempt
            assert f'<a href="/invoices/{invoice["invoice_key"]}">WD-1</a>' in log

            # The retry timer fires: the second attempt delivers.
            await stack.cm.tick(retry_at)
            attempts = await stack.webhook_attempts(website_key, 2)
            assert [(a["attempt"], a["outcome"]) for a in attempts] == [
                (1, "failed"),
                (2, "delivered"),
            ]
            assert attempts[1]["status_code"] == 200 and attempts[1]["next_retry_at"] is None
            assert attempts[1]["delivery_id"] == failed["delivery_id"]
            assert attempts[1]["push_message_id"] == failed["push_message_id"]

            log = (await client.get("/webhooks/deliveries")).text
            assert 'data-outcome="delivered" data-attempt="2"' in log
            assert 'data-outcome="failed" data-attempt="1"' in log
            assert "No delivery is waiting for a retry." in log
            failures_only = (await client.get("/webhooks/deliveries?failed=1")).text
            assert 'data-outcome="failed" data-attempt="1"' in failures_only
            assert 'data-outcome="delivered"' not in failures_only

            page = (await client.get(f"/invoices/{invoice['invoice_key']}")).text
            assert 'id="deliveries"' in page
            assert 'data-outcome="delivered" data-attempt="2"' in page
            assert 'data-outcome="failed" data-attempt="1"' in page
            assert shown_retry in page

        # Exactly one event per attempt, keyed by the invoice, with nothing secret in it.
        mine = [
            r
            for r in events.on(stack.cm.prefix + topics.NOTIFIER_EVENTS)
            if r.key == f"{website_key}:WD-1"
        ]
        bodies = [r.json() for r in mine]
        assert [(b["type"], b["payload"]["attempt"]) for b in bodies] == [
            ("WebhookDeliveryAttempted", 1),
            ("WebhookDeliveryAttempted", 2),
        ]
        assert len({b["message_id"] for b in bodies}) == 2
        for body in bodies:
            assert body["website_key"] == website_key
            assert set(body["payload"]) == {
                "invoice_number",
                "delivery_id",
                "push_message_id",
                "attempt",
                "outcome",
                "status_code",
                "error",
                "duration_ms",
                "attempted_at",
                "next_retry_at",
            }
            assert endpoint.url not in json.dumps(body)
        assert bodies[0]["payload"]["next_retry_at"] is not None
        assert bodies[1]["payload"]["outcome"] == "delivered"
    finally:
        await events.stop()


async def test_another_merchant_sees_none_of_the_deliveries(
    stack: ConsoleStack, merchant: InvoiceClient, endpoint: HttpSink
) -> None:
    endpoint.responder = lambda request: 200
    await register_webhook(stack, merchant, endpoint.url)
    await create(merchant, "WD-2", scheme_key="DefaultNone")
    await stack.webhook_attempts(merchant.website_key, 1)
    other = await stack.cm.merchant()
    try:
        async with stack.signed_in(await stack.user(other.website_key)) as client:
            log = (await client.get("/webhooks/deliveries")).text
            assert "WD-2" not in log
            assert "Attempts so far: 0 delivered" in log
    finally:
        await other.watcher.stop()
