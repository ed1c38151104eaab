"""Several platform services in-process on one topic prefix, with the manual clock.

`Platform` starts the services a test names, watches their output topics, moves the
manual clock (`tick`) and can stand in for the notifier (answering every SendMessage
with a RecordMessageOutcome, as the notifier will).
"""

from __future__ import annotations

import importlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from contracts import topics
from services.collection.handlers import auto_case_key
from services.runtime.app import Service, build_service
from tests.support.invoices import InvoiceClient
from tests.support.kafka import BackgroundConsumer, TopicWatcher, envelope, poll_until, publish
from tests.support.notifier import HttpSink, SmtpSink
from tests.support.services import make_settings

#: How the stand-in notifier answers: (SendMessage payload) → (outcome, channel, delay).
OutcomeRule = Callable[[dict[str, Any]], tuple[str, str | None, timedelta]]


def always_sent(message: dict[str, Any]) -> tuple[str, str | None, timedelta]:
    return "sent", message["channels"][0], timedelta(0)


class StandInNotifier(BackgroundConsumer):
    """Answers SendMessage commands with RecordMessageOutcome (no real messages)."""

    def __init__(self, bootstrap: str, prefix: str, rule: OutcomeRule = always_sent) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.rule = rule
        self.received: list[dict[str, Any]] = []

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self.prefix + topics.NOTIFIER_INTERNAL,
            bootstrap_servers=self.bootstrap,
            group_id=f"{self.prefix}stand-in-notifier",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
        )
        await self._consumer.start()
        self._start_reading()

    async def _take(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            body = json.loads(record.value or b"{}")
            if body.get("type") != "SendMessage":
                continue
            self.received.append(body)
            outcome, channel, delay = self.rule(body["payload"])
            sent_at = datetime.fromisoformat(body["occurred_at"]) + delay
            answer = envelope(
                "RecordMessageOutcome",
                {
                    "invoice_number": body["payload"]["invoice_number"],
                    "step_index": body["payload"]["step_index"],
                    "outcome": outcome,
                    "channel": channel,
                },
                website_key=body["website_key"],
                occurred_at=sent_at.isoformat(),
            )
            await publish(
                self.bootstrap,
                self.prefix + topics.INVOICE_INTERNAL,
                [
                    (
                        record.key.decode() if record.key else None,
                        json.dumps(answer).encode(),
                    )
                ],
            )


class Platform:
    """Services on one prefix; a client for invoices; the manual clock."""

    def __init__(self, bootstrap: str, prefix: str, services: dict[str, Service]) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.services = services
        self.invoices = InvoiceClient(bootstrap, prefix, services.get("invoice"))  # type: ignore[arg-type]
        self.scheduler_events = TopicWatcher(bootstrap, prefix + topics.SCHEDULER_EVENTS)

    async def merchant(self) -> InvoiceClient:
        """A client of the invoice service for a merchant of its own, watching (the caller
        stops its watcher, or leaves it to the end of the module)."""
        client = InvoiceClient(self.bootstrap, self.prefix, self.services["invoice"])
        await client.watcher.start()
        return client

    @property
    def notifier_pool(self) -> asyncpg.Pool:
        """The running notifier's database pool."""
        return self.services["notifier"].runtime.pool

    async def tick(self, as_of: datetime) -> dict[str, Any]:
        """Move the manual clock and wait until its timers are out (TickCompleted)."""
        body = envelope(
            "Tick",
            {"as_of": as_of.isoformat()},
            website_key="operator",
            occurred_at=as_of.isoformat(),
        )
        await publish(
            self.bootstrap,
            self.prefix + topics.SCHEDULER_COMMANDS,
            [("clock", json.dumps(body).encode())],
        )

        async def completed() -> dict[str, Any] | None:
            for record in self.scheduler_events.on(self.prefix + topics.SCHEDULER_EVENTS):
                event = record.json()
                if event["type"] == "TickCompleted" and event["causation_id"] == body["message_id"]:
                    return event  # type: ignore[no-any-return]
            return None

        return await poll_until(completed, what=f"TickCompleted for {as_of}")


@asynccontextmanager
async def platform(
    kafka_bootstrap: str, database_url: str, *names: str, **settings: Any
) -> AsyncIterator[Platform]:
    """Start the named services (e.g. "invoice", "scheduler") with the manual clock."""
    prefix = f"p{uuid.uuid4().hex[:10]}."
    async with AsyncExitStack() as stack:
        services: dict[str, Service] = {}
        for name in names:
            module = importlib.import_module(f"services.{name}.app")
            definition = module.definition()
            if name in ("scheduler", "notifier"):
                # The manual clock and the timers (the notifier's open deliveries and
                # message jobs) live in the schema: one per test.
                definition = replace(definition, schema=f"{name}_{prefix.strip('.')}")
            service = build_service(
                definition,
                make_settings(kafka_bootstrap, database_url, prefix, cm_clock="manual", **settings),
            )
            await stack.enter_async_context(service.app)
            services[name] = service
        running = Platform(kafka_bootstrap, prefix, services)
        await running.invoices.watcher.start()
        stack.push_async_callback(running.invoices.watcher.stop)
        await running.scheduler_events.start()
        stack.push_async_callback(running.scheduler_events.stop)
        yield running


@asynccontextmanager
async def webhook_merchant(cm: Platform, endpoint: HttpSink) -> AsyncIterator[InvoiceClient]:
    """A merchant of its own on `cm` (as `Platform.merchant`); its webhook `endpoint`
    answers 200 unless the test says otherwise."""
    endpoint.responder = lambda request: 200
    client = await cm.merchant()
    try:
        yield client
    finally:
        await client.watcher.stop()


def notifier_platform(
    kafka_bootstrap: str, database_url: str, *more: str, **settings: Any
) -> AbstractAsyncContextManager[Platform]:
    """Invoice, scheduler and notifier (the services a scheme's messages pass through),
    then the `more` services."""
    return platform(
        kafka_bootstrap, database_url, "invoice", "scheduler", "notifier", *more, **settings
    )


def mailing_services(
    kafka_bootstrap: str, database_url: str, smtp: Any, spool: Path, *more: str
) -> AbstractAsyncContextManager[Platform]:
    """The notifier platform and the `more` services, mailing to `smtp` (a
    tests.support.notifier SmtpSink) and spooling letters in `spool`."""
    return notifier_platform(
        kafka_bootstrap, database_url, *more, smtp_port=smtp.port, letter_spool_dir=str(spool)
    )


@asynccontextmanager
async def mailing_platform(
    kafka_bootstrap: str, database_url: str, smtp: Any, spool: Path
) -> AsyncIterator[Platform]:
    """`mailing_services` on registration day (2026-11-01 09:00): steps due by then (the
    invitations) fire at once."""
    async with mailing_services(kafka_bootstrap, database_url, smtp, spool) as running:
        await running.tick(datetime(2026, 11, 1, 9, 0, tzinfo=UTC))
        yield running


class CollectionWatch:
    """A running platform with one invoice's pushes (cm.push.invoice) and the events of
    its automatic collection case watched."""

    def __init__(self, cm: Platform, number: str) -> None:
        self.cm = cm
        self.number = number
        self.website_key = cm.invoices.website_key
        self.watcher = TopicWatcher(
            cm.bootstrap, cm.prefix + topics.PUSH_INVOICE, cm.prefix + topics.COLLECTION_EVENTS
        )

    def pushes(self) -> list[dict[str, Any]]:
        found = [
            json.loads(r.value or b"{}", parse_float=Decimal)["Invoice"]
            for r in self.watcher.on(self.cm.prefix + topics.PUSH_INVOICE)
            if r.key == f"{self.website_key}:{self.number}"
        ]
        return sorted(found, key=lambda p: p["EventSequence"])

    def case_events(self) -> list[dict[str, Any]]:
        key = f"{self.website_key}:{auto_case_key(self.website_key, self.number)}"
        return self.watcher.payloads(self.cm.prefix + topics.COLLECTION_EVENTS, key)


@asynccontextmanager
async def collection_services(
    kafka_bootstrap: str, database_url: str, spool: Path, number: str
) -> AsyncIterator[CollectionWatch]:
    """`mailing_services` with the collection service (mailing to a local SmtpSink),
    watching invoice `number` and its automatic case."""
    with SmtpSink() as smtp:
        async with mailing_services(kafka_bootstrap, database_url, smtp, spool, "collection") as cm:
            running = CollectionWatch(cm, number)
            await running.watcher.start()
            try:
                yield running
            finally:
                await running.watcher.stop()


def days(n: int) -> timedelta:
    return timedelta(days=n)
