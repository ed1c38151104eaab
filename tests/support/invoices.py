"""A client for tests of the invoice service: send commands, wait for answers and events."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from contracts import topics
from services.invoice.app import definition
from services.runtime.app import Service, build_service
from tests.support.kafka import (
    MerchantClient,
    at_least,
    envelope,
    publish,
    topic_of,
)
from tests.support.services import make_settings

OCCURRED_AT = "2026-11-01T09:00:00+00:00"


def debtor(code: str = "D-1", **extra: Any) -> dict[str, Any]:
    return {
        "code": code,
        "person": {"first_name": "Jan", "last_name": "Jansen", "culture": "nl-NL"},
        "email": "jan@example.test",
        "address": {
            "street": "Dorpsstraat",
            "house_number": "1",
            "postal_code": "1234 AB",
            "city": "Utrecht",
            "country": "NL",
        },
        **extra,
    }


def invoice_payload(number: str, **overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "invoice_number": number,
        "invoice_date": "2026-11-01",
        "due_date": "2026-11-15",
        "currency": "EUR",
        "amount_debit": "121.00",
        "amount_vat": "21.00",
        "description": "Order 1",
        "culture": "nl-NL",
        "pay_link": "https://pay.example.test/INV",
        "debtor": debtor(),
    }
    payload.update(overrides)
    return payload


class InvoiceClient(MerchantClient):
    """Talks to one in-process invoice service through its (prefixed) topics."""

    def __init__(self, bootstrap: str, prefix: str, service: Service) -> None:
        super().__init__(bootstrap, prefix, topics.INVOICE_EVENTS, topics.DLQ)
        self.service = service

    async def command(
        self,
        type_: str,
        payload: dict[str, Any],
        *,
        website_key: str | None = None,
        key: str | None = None,
        occurred_at: str = OCCURRED_AT,
        message_id: str | None = None,
    ) -> str:
        website_key = website_key or self.website_key
        body = envelope(
            type_, payload, website_key=website_key, occurred_at=occurred_at, message_id=message_id
        )
        number = payload.get("invoice_number") or payload.get("original_invoice_number")
        key = key or f"{website_key}:{number}"
        await publish(
            self.bootstrap,
            self.prefix + topic_of(type_, topics.INVOICE_COMMANDS),
            [(key, json.dumps(body).encode())],
        )
        return str(body["message_id"])

    async def transaction(
        self,
        number: str,
        transaction_key: str,
        amount: str,
        status: str,
        *,
        is_slow: bool = False,
        service: str = "ideal",
        website_key: str | None = None,
        occurred_at: str = OCCURRED_AT,
        message_id: str | None = None,
        mandate_reference: str | None = None,
    ) -> str:
        website_key = website_key or self.website_key
        payload: dict[str, Any] = {
            "invoice_number": number,
            "transaction_key": transaction_key,
            "service": service,
            "amount": amount,
            "status": status,
            "is_slow": is_slow,
        }
        if mandate_reference is not None:
            payload["mandate_reference"] = mandate_reference
        body = envelope(
            "TransactionStatusChanged",
            payload,
            website_key=website_key,
            occurred_at=occurred_at,
            message_id=message_id,
        )
        await publish(
            self.bootstrap,
            self.prefix + topics.PAYMENT_TRANSACTIONS,
            [(f"{website_key}:{number}", json.dumps(body).encode())],
        )
        return str(body["message_id"])

    def answers(self, command_id: str) -> list[dict[str, Any]]:
        return [
            r.json()
            for r in self.watcher.on(self.prefix + topics.COMMAND_RESULTS)
            if r.json()["payload"]["command_id"] == command_id
        ]

    def events_now(self, number: str, website_key: str | None = None) -> list[dict[str, Any]]:
        website_key = website_key or self.website_key
        found = self.watcher.payloads(
            self.prefix + topics.INVOICE_EVENTS, f"{website_key}:{number}"
        )
        return sorted(found, key=lambda e: e["sequence"])

    async def events(
        self, number: str, count: int, website_key: str | None = None
    ) -> list[dict[str, Any]]:
        """Wait until the invoice has at least `count` events; returns them in sequence."""

        return await at_least(
            count, lambda: self.events_now(number, website_key), what=f"{count} events of {number}"
        )

    async def snapshot(self, number: str, count: int) -> dict[str, Any]:
        """The invoice as of its `count`-th event."""
        return (await self.events(number, count))[count - 1]["invoice"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def service(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Service]:
    """One invoice service for the module, on topics of its own (a fresh prefix); every
    test is a merchant of its own (`inv`)."""
    prefix = f"i{uuid.uuid4().hex[:10]}."
    running = build_service(definition(), make_settings(kafka_bootstrap, database_url, prefix))
    async with running.app:
        yield running


@pytest.fixture
async def inv(kafka_bootstrap: str, service: Service) -> AsyncIterator[InvoiceClient]:
    """A client with a merchant of its own, watching the service's output."""
    client = InvoiceClient(kafka_bootstrap, service.runtime.topics.prefix, service)
    await client.watcher.start()
    yield client
    await client.watcher.stop()
