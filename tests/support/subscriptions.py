"""Subscription commands and events for tests: a client on a running platform, and
payloads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from contracts import topics
from tests.support.invoices import debtor
from tests.support.kafka import TopicWatcher, at_least, envelope, publish, topic_of
from tests.support.platform import Platform, platform


class Subscriptions:
    """Sends subscription commands of the platform's merchant and reads their events."""

    def __init__(self, cm: Platform) -> None:
        self.cm = cm
        self.website_key = cm.invoices.website_key
        self.events = TopicWatcher(cm.bootstrap, cm.prefix + topics.SUBSCRIPTION_EVENTS)

    async def command(
        self,
        type_: str,
        payload: dict[str, Any],
        *,
        occurred_at: str = "2026-01-01T09:00:00+00:00",
        message_id: str | None = None,
    ) -> str:
        body = envelope(
            type_,
            payload,
            website_key=self.website_key,
            occurred_at=occurred_at,
            message_id=message_id,
        )
        await publish(
            self.cm.bootstrap,
            self.cm.prefix + topic_of(type_, topics.SUBSCRIPTION_COMMANDS),
            [(f"{self.website_key}:{payload['subscription_key']}", json.dumps(body).encode())],
        )
        return str(body["message_id"])

    async def answer(self, command_id: str) -> dict[str, Any]:
        return await self.cm.invoices.answer(command_id)

    def events_now(self, key: str) -> list[dict[str, Any]]:
        return self.events.payloads(
            self.cm.prefix + topics.SUBSCRIPTION_EVENTS, f"{self.website_key}:{key}"
        )

    async def events_of(self, key: str, count: int) -> list[dict[str, Any]]:
        return await at_least(
            count, lambda: self.events_now(key), what=f"{count} events of subscription {key}"
        )


@pytest.fixture
async def subs(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Subscriptions]:
    """The invoice service, the scheduler (manual clock) and the subscription service."""
    async with platform(
        kafka_bootstrap, database_url, "invoice", "scheduler", "subscription"
    ) as running:
        client = Subscriptions(running)
        await client.events.start()
        try:
            yield client
        finally:
            await client.events.stop()


def subscription(key: str, **overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "subscription_key": key,
        "debtor": debtor(),
        "currency": "EUR",
        "interval": {"unit": "month", "count": 1},
        "billing_timing": "advance",
        "start_date": "2026-01-01",
        "rate_plans": [
            {
                "product_code": "BASIC",
                "description": "Basic plan",
                "unit_price": "10.00",
                "vat_percentage": "21",
                "start_date": "2026-01-01",
            }
        ],
    }
    payload.update(overrides)
    return payload


async def create(subs: Subscriptions, key: str, **overrides: Any) -> dict[str, Any]:
    mid = await subs.command("CreateSubscription", subscription(key, **overrides))
    answer = await subs.answer(mid)
    assert answer["type"] == "CommandAccepted", answer
    return answer


def codes(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["field"], e["code"]) for e in answer["payload"]["errors"]]


async def invoice_created(subs: Subscriptions, number: str) -> dict[str, Any]:
    events = await subs.cm.invoices.events(number, 1)
    return events[0]["invoice"]  # type: ignore[no-any-return]
