"""Fuzz: hostile records on every topic every service consumes stop no consumer.

All five services run in-process on the real broker and PostgreSQL (manual clock,
`KAFKA_MAX_MESSAGE_BYTES` = 256 KiB so that oversized bodies are cheap). Every consumed
topic (the external ones, the platform-only ones, the agencies' answers, and the results
and event topics the notifier copies to merchants' own topics) gets:

- fixed hostile cases (deep nesting, oversized bodies, tombstones, random bytes,
  invalid UTF-8 in value and key, NUL, lone surrogates, other encodings, hostile website
  keys, every catalog type on every topic);
- records hypothesis draws from the contracts' JSON schemas, valid-looking or mutated
  (fields dropped, added, retyped, emptied, made huge, nested deep; number literals
  JSON has no value for; keys with NUL bytes or not UTF-8);
- good messages with edge values in some fields (bounds, first and last dates,
  longest strings, fullest lists), which get past the business rules to the handlers.

First the good merchant and the fuzz merchants get topics of their own (EnableKafkaPush;
the fuzz merchants' copying is turned off again, and fuzz records may turn it on): the
notifier's copying consumers read only those merchants' records. Good CreateInvoice
commands are interleaved with the bad ones on every partition of the invoice commands.
Then a good message goes to every partition of every consumed topic and must be answered
as expected (or, where nothing answers, have its effect: a push, a copy on the good
merchant's own topic, a message outcome, a payment), and `oracle.check` must hold for
every record on those topics, including what the platform itself wrote there meanwhile
(answers, timers that fired, message outcomes): dead-lettered exactly once (a known type
on a topic that does not carry it as `not_allowed_here`) or handled, or left out unread
by a copying consumer when its merchant has no topics of its own; each command answered
exactly once, a dead-lettered one with the dead letter's codes; no dead letter or answer
that belongs to no record, nothing left in an outbox, every consumer group committed past
every record. Answers are what the services wrote on the results topic: not the test's
own records there, nor the messages of timers that named it. Afterwards: no handler
crashed on a record that parsed, the interleaved commands were handled as if alone, each
handled InvoiceEvent was pushed once, the good merchant's own topics hold each of its
records once (not the answers to what only the platform sends) and nothing else, the
fuzz merchants' own topics hold only their own records, each once, metrics labels are
catalog types, letters stayed in the spool directory.

`CM_FUZZ_REPORT=path` writes what became of each kind of record, as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
import os
import re
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from contracts import topics
from contracts.catalog import platform_only_types, types_for_topic
from contracts.collection import CaseEvent, CaseEventName, CaseSnapshot, CaseState
from contracts.debtor import DebtorSnapshot
from contracts.envelope import parse_envelope, registered_types
from contracts.invoice import InvoiceStatus
from contracts.subscription import (
    BillingIntervalSnapshot,
    BillingTiming,
    IntervalUnit,
    RatePlanSnapshot,
    SubscriptionEvent,
    SubscriptionEventName,
    SubscriptionSnapshot,
    SubscriptionStatus,
)
from contracts.topics import merchant_topic
from services.runtime.app import Service, build_service
from tests.fuzz import oracle
from tests.fuzz.records import (
    CONSUMED_TOPICS,
    FRESH_ID,
    FRESH_NAME,
    FUZZ_REFERENCE,
    FUZZ_WEBSITES,
    Blueprint,
    edge_records,
    fixed_records,
    records,
    serialise,
)
from tests.support.invoice_domain import invoice_snapshot
from tests.support.invoices import debtor, invoice_payload
from tests.support.kafka import BackgroundConsumer, partitions, poll_until
from tests.support.notifier import HttpSink, SmtpSink
from tests.support.services import make_settings

PARTITIONS = 8
MAX_MESSAGE_BYTES = 256 * 1024
DLQ_MAX_VALUE_BYTES = 16_384
#: Hypothesis draws per consumed topic (besides the fixed cases).
DRAWS_PER_TOPIC = 60
#: Good messages with edge values in some fields, per good message of a topic.
EDGES_PER_MESSAGE = 12
#: Good CreateInvoice commands between the bad records, per partition.
INTERLEAVED_PER_PARTITION = 2
OCCURRED_AT = "2026-11-01T09:00:00+00:00"
#: Dead-letter codes of a handler that crashed, or of a dead letter that failed.
CRASH_CODES = frozenset({"handler_error", "dead_letter_failed"})
#: Webhooks registered by fuzz records go to a port nothing listens on, on loopback.
FUZZ_WEBHOOK_URL = "http://127.0.0.1:9/hook"
#: A deadline for what a loaded 2-core machine may need, not a wait.
SETTLE_S = 120.0
#: The test sends its records in slices of about this many bytes (send_all).
SEND_SLICE_BYTES = 4 * 1024 * 1024


# --- good messages -------------------------------------------------------------------------


def invoice_event_payload(website_key: str, number: str) -> dict[str, Any]:
    return {
        "event": "CustomEvent",
        "event_code": None,
        "event_category": "Other",
        "event_parameters": [{"key": "CustomEventMessage", "value": "alive"}],
        "sequence": 1,
        "invoice": invoice_snapshot(number, website_key=website_key),
    }


def send_letter_payload(website_key: str, number: str) -> dict[str, Any]:
    """A payment invitation by letter (the notifier writes it to LETTER_SPOOL_DIR)."""
    invoice = invoice_event_payload(website_key, number)["invoice"]
    invoice["debtor"] = {
        "code": "D-1",
        "person": {"first_name": "Jan", "last_name": "Jansen", "culture": "nl-NL"},
        "address": {"street": "Dorpsstraat", "city": "Utrecht", "country": "NL"},
        "unreachable": {},
    }
    return {
        "invoice_number": number,
        "step_index": 1,
        "action": "PaymentInvitation",
        "channels": ["letter"],
        "invoice": invoice,
    }


def subscription_event_payload(name: str) -> dict[str, Any]:
    event = SubscriptionEvent(
        event=SubscriptionEventName.CREATED,
        subscription=SubscriptionSnapshot(
            subscription_key=name,
            status=SubscriptionStatus.ACTIVE,
            debtor=DebtorSnapshot.model_validate(debtor()),
            currency="EUR",
            scheme_key="DefaultCM1",
            interval=BillingIntervalSnapshot(unit=IntervalUnit.MONTH),
            billing_timing=BillingTiming.ADVANCE,
            start_date=date(2026, 11, 1),
            rate_plans=[
                RatePlanSnapshot(
                    product_code="GOLD",
                    description="Gold plan",
                    unit_price=Decimal("10.00"),
                    vat_percentage=Decimal("21"),
                    start_date=date(2026, 11, 1),
                )
            ],
            next_period_index=1,
            next_billing_date=date(2026, 11, 1),
        ),
    )
    return event.model_dump(mode="json")


def case_event_payload(name: str) -> dict[str, Any]:
    event = CaseEvent(
        event=CaseEventName.CREATED,
        case=CaseSnapshot(
            case_key=name,
            state=CaseState.PREPARING,
            invoice_number=name,
            external_id=f"EXT-{name}",
            currency="EUR",
            due_date=date(2026, 11, 15),
            amount=Decimal("121.00"),
            collected_amount=Decimal("0"),
        ),
    )
    return event.model_dump(mode="json")


#: Invoice numbers that are valid identifiers and would be paths if used as file names.
PATH_LIKE_NUMBERS = ("../../../escape", "/tmp/escape", "..", "a/../../b", "..\\..\\x")


def good_message(topic: str, website_key: str, name: str) -> tuple[str, dict[str, Any], str]:
    """(type, payload, Kafka key) of a message the topic's consumers take as good."""
    if topic == topics.INVOICE_COMMANDS:
        return "CreateInvoice", invoice_payload(name), f"{website_key}:{name}"
    if topic == topics.PAYMENT_TRANSACTIONS:
        payload = {
            "invoice_number": name,
            "transaction_key": f"T-{name}",
            "service": "ideal",
            "amount": "21.00",
            "status": "success",
            "is_slow": False,
        }
        return "TransactionStatusChanged", payload, f"{website_key}:{name}"
    if topic == topics.INVOICE_EVENTS:
        return "InvoiceEvent", invoice_event_payload(website_key, name), f"{website_key}:{name}"
    if topic == topics.SCHEDULER_COMMANDS:
        message = {
            "message_id": str(uuid.uuid4()),
            "type": "StepDue",
            "website_key": website_key,
            "payload": {
                "invoice_number": name,
                "step_index": 1,
                "scheme_version": 1,
                "schedule_version": 0,
            },
        }
        payload = {
            "timer_id": f"timer-{name}",
            "due_at": "2990-01-01T00:00:00+00:00",  # the manual clock never gets there
            "topic": topics.INVOICE_INTERNAL,
            "key": f"{website_key}:{name}",
            "message": message,
        }
        return "ScheduleTimer", payload, f"timer-{name}"
    if topic == topics.NOTIFIER_COMMANDS:
        payload = {
            "template_key": f"T-{name}",
            "culture": "nl-NL",
            "channel": "email",
            "subject": "Invoice [InvoiceNumber]",
            "body": "Please pay [InvoiceNumber].",
        }
        return "UpsertTemplate", payload, f"{website_key}:template:T-{name}"
    if topic == topics.SUBSCRIPTION_COMMANDS:
        return "StopSubscription", {"subscription_key": name}, f"{website_key}:{name}"
    if topic == topics.COLLECTION_COMMANDS:
        return "MarkAsPrepared", {"case_key": name}, f"{website_key}:{name}"
    if topic == topics.INVOICE_INTERNAL:
        payload = {"invoice_number": name, "status_code": 71, "case_key": f"C-{name}"}
        return "SetCollectionStatus", payload, f"{website_key}:{name}"
    if topic == topics.NOTIFIER_INTERNAL:
        return "SendMessage", send_letter_payload(website_key, name), f"{website_key}:{name}"
    if topic == topics.SUBSCRIPTION_INTERNAL:
        return "RunBilling", {"subscription_key": name}, f"{website_key}:{name}"
    if topic == topics.AGENCY_ANSWERS:
        payload = {"case_key": name, "reason": "unknown debtor"}
        return "AgencyRefused", payload, f"{website_key}:{name}"
    if topic == topics.COMMAND_RESULTS:
        payload = {
            "command_type": "CreateInvoice",
            "command_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{website_key}:{name}")),
            "keys": {"invoice_key": f"K{name}"},
        }
        return "CommandAccepted", payload, website_key
    if topic == topics.SUBSCRIPTION_EVENTS:
        return "SubscriptionEvent", subscription_event_payload(name), f"{website_key}:{name}"
    if topic == topics.COLLECTION_EVENTS:
        return "CaseEvent", case_event_payload(name), f"{website_key}:{name}"
    raise AssertionError(f"no good message for {topic}")


#: What answers the good message of each topic (its type, and the one error code of a
#: rejection), or None where nothing answers and its effect is looked for instead. The
#: rejected ones name a subscription or case no one created: the handler ran.
LIVE_ANSWERS: dict[str, tuple[str, str | None] | None] = {
    topics.INVOICE_COMMANDS: ("CommandAccepted", None),
    topics.INVOICE_INTERNAL: ("CommandAccepted", None),  # status 71 on the live invoice
    topics.SCHEDULER_COMMANDS: ("CommandAccepted", None),
    topics.NOTIFIER_COMMANDS: ("CommandAccepted", None),
    topics.SUBSCRIPTION_COMMANDS: ("CommandRejected", "unknown_subscription"),
    topics.SUBSCRIPTION_INTERNAL: ("CommandRejected", "unknown_subscription"),
    topics.COLLECTION_COMMANDS: ("CommandRejected", "unknown_case"),
    topics.AGENCY_ANSWERS: ("CommandRejected", "unknown_case"),
    # Effects (_effects_seen): pushed; copied to the merchant's own topics; a message
    # outcome; a payment on the invoice.
    topics.INVOICE_EVENTS: None,
    topics.COMMAND_RESULTS: None,
    topics.SUBSCRIPTION_EVENTS: None,
    topics.COLLECTION_EVENTS: None,
    topics.NOTIFIER_INTERNAL: None,
    topics.PAYMENT_TRANSACTIONS: None,
}
#: The consumed topics whose records the notifier copies to a merchant's own topics, by
#: feed (`cm.push.{website_key}.{feed}`).
FEEDS_COPIED = {
    feed: source for feed, source in topics.MERCHANT_FEEDS.items() if source in CONSUMED_TOPICS
}


def envelope(
    type_: str, payload: dict[str, Any], website_key: str, message_id: Any
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "type": type_,
        "website_key": website_key,
        "occurred_at": OCCURRED_AT,
        "payload": payload,
    }


@dataclass(frozen=True)
class Good:
    """A good record sent by the test, and where."""

    topic: str  # base name
    partition: int
    type: str
    message_id: str
    website_key: str
    name: str
    key: bytes
    value: bytes


def good(topic: str, partition: int, website_key: str, name: str) -> Good:
    type_, payload, key = good_message(topic, website_key, name)
    return make_good(topic, partition, website_key, name, type_, payload, key)


def make_good(
    topic: str,
    partition: int,
    website_key: str,
    name: str,
    type_: str,
    payload: dict[str, Any],
    key: str,
) -> Good:
    message_id = str(uuid.uuid4())
    body = json.dumps(envelope(type_, payload, website_key, message_id)).encode()
    return Good(topic, partition, type_, message_id, website_key, name, key.encode(), body)


def live_good(topic: str, partition: int, website_key: str) -> Good:
    """The good message of `topic` about invoice (subscription, case) LIVE-{partition}.
    The live invoices follow no dunning scheme: what the second wave does to them (a
    collection status, a payment) does not depend on how far the fuzz's Ticks moved the
    clock meanwhile."""
    name = f"LIVE-{partition}"
    type_, payload, key = good_message(topic, website_key, name)
    if topic == topics.INVOICE_COMMANDS:
        payload = {**payload, "scheme_key": "DefaultNone"}
    if topic == topics.INVOICE_EVENTS:
        # A rejected invoice: the subscription service's prefilter drops every other
        # invoice event unparsed (services/subscription/app.py), so only such an event
        # reaches its inbox and shows its consumer alive on the partition.
        payload = {
            **payload,
            "invoice": {**payload["invoice"], "status_code": int(InvoiceStatus.REJECTED)},
        }
    return make_good(topic, partition, website_key, name, type_, payload, key)


def bases(topic: str) -> list[dict[str, Any]]:
    """Good envelopes of the fuzz merchant for `topic`, about the invoice the fixed
    records create (FUZZ_REFERENCE), for edge values to go into."""
    website = FUZZ_WEBSITES[0]
    type_, payload, _ = good_message(topic, website, FUZZ_REFERENCE)
    found = [(type_, payload)]
    if topic == topics.INVOICE_COMMANDS:
        line = {
            "sku": "SKU-1",
            "description": "Widget",
            "quantity": "2",
            "unit_price": "50.00",
            "vat_percentage": "21",
        }
        found += [
            (
                "CreateInvoice",
                invoice_payload(
                    FRESH_NAME,
                    lines=[line],
                    custom_parameters=[{"key": "order", "value": "O-9"}],
                    scheme_key="FZ",
                ),
            ),
            (
                "CreateCreditNote",
                {
                    "original_invoice_number": FUZZ_REFERENCE,
                    "credit_note_number": FRESH_NAME,
                    "amount": "10.00",
                    "description": "Returned",
                },
            ),
            (
                "CreatePaymentPlan",
                {
                    "dossier_number": FRESH_NAME,
                    "included_invoice_numbers": [FUZZ_REFERENCE],
                    "installment_count": 3,
                    "initial_amount": "0",
                    "start_date": "2026-11-20",
                    "interval": "month",
                    "scheme_key": "DefaultCM1",
                },
            ),
            (
                "UpsertScheme",
                {
                    "scheme_key": "FZ",
                    "name": "Fuzz",
                    "steps": [
                        {
                            "index": 1,
                            "action": "PaymentInvitation",
                            "days": 0,
                            "channels": ["email"],
                        },
                        {"index": 2, "action": "AdminCostIncrease", "days": 14, "admin_cost": "5"},
                        {"index": 3, "action": "Threshold", "days": 20, "threshold_amount": "10"},
                    ],
                },
            ),
            ("AddOrUpdateDebtor", {"debtor": debtor("D-9")}),
            ("CreateCustomEvent", {"invoice_number": FUZZ_REFERENCE, "message": "[InvoiceNumber]"}),
            ("PauseInvoice", {"invoice_number": FUZZ_REFERENCE}),
        ]
    if topic == topics.INVOICE_INTERNAL:
        found += [
            (
                "StepDue",
                {
                    "invoice_number": FUZZ_REFERENCE,
                    "step_index": 1,
                    "scheme_version": 1,
                    "schedule_version": 1,
                },
            ),
            (
                "RecordMessageOutcome",
                {
                    "invoice_number": FUZZ_REFERENCE,
                    "step_index": 1,
                    "outcome": "sent",
                    "channel": "letter",
                },
            ),
            (
                "RegisterCollectedAmount",
                {"invoice_number": FUZZ_REFERENCE, "amount": "10.00", "case_key": "C-1"},
            ),
        ]
    if topic == topics.NOTIFIER_INTERNAL:
        found.append(
            (
                "RetryWebhookDelivery",
                {
                    "invoice_number": FUZZ_REFERENCE,
                    "delivery_id": "1",
                    "push_message_id": str(uuid.uuid4()),
                    "attempt": 2,
                },
            )
        )
    if topic == topics.SUBSCRIPTION_INTERNAL:
        found.append(("RunMerchantBilling", {"as_of": "2026-12-01"}))
    if topic == topics.AGENCY_ANSWERS:
        found += [
            ("AgencyAccepted", {"case_key": FUZZ_REFERENCE, "agency_reference": "AG-REF"}),
            (
                "AgencyProcessed",
                {"case_key": FUZZ_REFERENCE, "complete": False, "collected_amount": "60.00"},
            ),
            ("AddCollectedAmount", {"case_key": FUZZ_REFERENCE, "amount": "60.00"}),
        ]
    if topic == topics.COMMAND_RESULTS:
        found.append(
            (
                "CommandRejected",
                {
                    "command_type": "CreateInvoice",
                    "command_id": str(uuid.uuid4()),
                    "errors": [
                        {"field": "payload.due_date", "code": "before_invoice_date", "message": "…"}
                    ],
                },
            )
        )
    if topic == topics.SCHEDULER_COMMANDS:
        # The manual clock moves (to the edges too): due timers fire, dunning runs.
        found += [
            ("Tick", {"as_of": "2026-11-02T00:00:00+00:00"}),
            ("CancelTimer", {"timer_id": f"timer-{FUZZ_REFERENCE}"}),
        ]
    envelopes = [envelope(t, p, website, FRESH_ID) for t, p in found]
    for body in envelopes:  # a good base is good: otherwise its edges test nothing
        parse_envelope(serialise(body), types_for_topic(topic))
    return envelopes


# --- the records ---------------------------------------------------------------------------


def draw_records(strategy: st.SearchStrategy[Blueprint], count: int, label: str) -> list[Blueprint]:
    """`count` records drawn by hypothesis, the same on every run (the seed is the
    label's: each topic and each good message gets draws of its own)."""
    drawn: list[Blueprint] = []

    @seed(zlib.crc32(label.encode()))
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(blueprint: Blueprint) -> None:
        drawn.append(blueprint)

    collect()
    return drawn


@pytest.fixture(scope="module")
def blueprints() -> dict[str, list[Blueprint]]:
    found = {}
    for topic in CONSUMED_TOPICS:
        type_, payload, _ = good_message(topic, FUZZ_WEBSITES[0], "F-1")
        valid = envelope(type_, payload, FUZZ_WEBSITES[0], FRESH_ID)
        found[topic] = (
            fixed_records(topic, valid)
            + draw_records(records(topic), DRAWS_PER_TOPIC, topic)
            + [
                blueprint
                for base in bases(topic)
                for blueprint in draw_records(
                    edge_records([base]), EDGES_PER_MESSAGE, f"{topic}:{base['type']}"
                )
            ]
        )
    # Letters for hostile website keys and path-like invoice numbers: they must stay in
    # the spool directory.
    found[topics.NOTIFIER_INTERNAL] += [
        Blueprint(
            f"fixed:letter_path={website}/{number}",
            tree=envelope("SendMessage", send_letter_payload(website, number), website, FRESH_ID),
        )
        for website in ("..", FUZZ_WEBSITES[0])
        for number in PATH_LIKE_NUMBERS
    ]
    return found


# --- reading topics with raw keys ----------------------------------------------------------


class RawWatcher(BackgroundConsumer):
    """Reads topics from the beginning in the background, keys and values as bytes."""

    def __init__(self, bootstrap: str, *names: str) -> None:
        self.bootstrap = bootstrap
        self.names = names
        self.records: list[oracle.Seen] = []
        self._by_topic: dict[str, list[oracle.Seen]] = {}

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=20,
            max_partition_fetch_bytes=4 * MAX_MESSAGE_BYTES,
        )
        await self._consumer.start()
        tps = await partitions(self._consumer, self.names)
        assert len(tps) == PARTITIONS * len(self.names), "every topic exists with 8 partitions"
        await self._read_from_beginning(tps)

    async def _take(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        seen = [
            oracle.Seen(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ()))
            for m in records
        ]
        self.records.extend(seen)
        for record in seen:
            self._by_topic.setdefault(record.topic, []).append(record)

    def on(self, name: str) -> list[oracle.Seen]:
        return list(self._by_topic.get(name, ()))


# --- the platform --------------------------------------------------------------------------


@dataclass
class Running:
    prefix: str
    services: dict[str, Service]
    watcher: RawWatcher
    bootstrap: str
    spool: Path
    stack: AsyncExitStack
    #: (topic, partition, offset) of every record the test itself wrote.
    sent: set[tuple[str, int, int]] = field(default_factory=set)
    #: Per record of the scheduler's commands: the (topic, message_id) of the message a
    #: ScheduleTimer would publish there (None when it is no ScheduleTimer).
    timers: dict[tuple[int, int], tuple[str, str] | None] = field(default_factory=dict)
    #: The JSON value of each record read so far (None: not JSON), by where it is: the
    #: services run in the test's event loop, so what it reads again is read once.
    bodies: dict[tuple[str, int, int], Any] = field(default_factory=dict)

    def t(self, base: str) -> str:
        return self.prefix + base

    async def send(self, items: list[tuple[str, int, bytes | None, bytes | None]]) -> None:
        self.sent.update(await send_all(self.bootstrap, items))

    def body(self, record: oracle.Seen) -> Any:
        """The record's value as JSON, None when it is none."""
        where = (record.topic, record.partition, record.offset)
        if where not in self.bodies:
            try:
                self.bodies[where] = record.json()
            except (ValueError, RecursionError):
                self.bodies[where] = None
        return self.bodies[where]

    def written(self, base: str) -> list[oracle.Seen]:
        """The records on a topic the platform wrote: not the test's own."""
        return [
            r
            for r in self.watcher.on(self.t(base))
            if (r.topic, r.partition, r.offset) not in self.sent
        ]


@pytest.fixture
async def running(
    kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> AsyncIterator[Running]:
    prefix = f"fz{uuid.uuid4().hex[:10]}."
    spool = tmp_path / "letters" / "deep" / "spool"
    spool.mkdir(parents=True)
    with sinks() as (smtp, http):
        async with AsyncExitStack() as stack:
            services: dict[str, Service] = {}
            for name in oracle.SERVICES:
                definition = importlib.import_module(f"services.{name}.app").definition()
                # A schema per service and test: inbox and outbox hold this test's rows only.
                definition = replace(definition, schema=f"{name}_{prefix.strip('.')}")
                service = build_service(
                    definition,
                    make_settings(
                        kafka_bootstrap,
                        database_url,
                        prefix,
                        cm_clock="manual",
                        kafka_max_message_bytes=MAX_MESSAGE_BYTES,
                        dlq_max_value_bytes=DLQ_MAX_VALUE_BYTES,
                        handler_retry_backoff_ms=20,
                        smtp_port=smtp.port,
                        sms_provider_url=http.url,
                        letter_spool_dir=str(spool),
                        webhook_timeout_s=2.0,
                        log_level="ERROR",
                    ),
                )
                await stack.enter_async_context(service.app)
                services[name] = service
            watched = {*CONSUMED_TOPICS, topics.DLQ, topics.COMMAND_RESULTS, topics.PUSH_INVOICE}
            watcher = RawWatcher(kafka_bootstrap, *(prefix + name for name in sorted(watched)))
            await watcher.start()
            stack.push_async_callback(watcher.stop)
            yield Running(prefix, services, watcher, kafka_bootstrap, spool, stack)


@contextlib.contextmanager
def sinks() -> Iterator[tuple[SmtpSink, HttpSink]]:
    """Where the notifier's e-mail, SMS and webhooks go: servers on loopback."""
    smtp = SmtpSink()
    smtp.start()
    http = HttpSink()
    http.start()
    try:
        yield smtp, http
    finally:
        http.stop()
        smtp.stop()


async def send_all(
    bootstrap: str, items: list[tuple[str, int, bytes | None, bytes | None]]
) -> set[tuple[str, int, int]]:
    """Send the records; where they went, (topic, partition, offset) each. In slices
    of SEND_SLICE_BYTES, each written before the next is sent: the broker is busy with
    what the services write meanwhile."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        linger_ms=5,
        max_request_size=4 * MAX_MESSAGE_BYTES,
        request_timeout_ms=int(SETTLE_S * 1000),  # a deadline for a loaded machine
    )
    await producer.start()
    written = []
    try:
        start, size = 0, 0
        for end, (_, _, key, value) in enumerate(items, 1):
            size += len(key or b"") + len(value or b"")
            if size >= SEND_SLICE_BYTES or end == len(items):
                futures = [
                    await producer.send(topic, value=value, key=key, partition=partition)
                    for topic, partition, key, value in items[start:end]
                ]
                written += await asyncio.gather(*futures)
                start, size = end, 0
    finally:
        await producer.stop()
    return {(m.topic, m.partition, m.offset) for m in written}


# --- what the test reads back --------------------------------------------------------------


async def read_topics(bootstrap: str, names: list[str]) -> list[oracle.Seen]:
    """Every record on the topics now, on whatever partitions they have."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * MAX_MESSAGE_BYTES,
    )
    await consumer.start()
    found: list[oracle.Seen] = []
    try:
        tps = await partitions(consumer, names)
        assert {tp.topic for tp in tps} == set(names), "every topic exists"
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + SETTLE_S
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            assert time.monotonic() < deadline, "the topics are read to their end"
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                found += [
                    oracle.Seen(
                        m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ())
                    )
                    for m in msgs
                ]
    finally:
        await consumer.stop()
    return found


async def inboxes(
    run: Running, website_key: str | None = None
) -> dict[str, set[oracle.MessageRef]]:
    """Per consumer, the messages it has handled: (website_key, message_id) each (only
    one merchant's, when `website_key` names it)."""
    found: dict[str, set[oracle.MessageRef]] = {}
    for service in run.services.values():
        rows = await service.runtime.pool.fetch(
            "SELECT consumer, website_key, message_id FROM inbox"
            " WHERE $1::text IS NULL OR website_key = $1",
            website_key,
        )
        for row in rows:
            found.setdefault(row["consumer"], set()).add((row["website_key"], row["message_id"]))
    return found


async def relayed(run: Running) -> list[str]:
    """What is still to be published, or was refused by the broker, per service."""
    waiting = []
    for name, service in run.services.items():
        pool = service.runtime.pool
        outbox = await pool.fetchval("SELECT count(*) FROM outbox")
        parked = await pool.fetchval("SELECT count(*) FROM outbox_parked")
        if outbox or parked:
            waiting.append(f"{name}: {outbox} in the outbox, {parked} parked")
    return waiting


async def uncommitted(run: Running) -> list[str]:
    """Partitions whose consumer group has not committed past the last record read."""
    last: dict[TopicPartition, int] = {}
    for record in run.watcher.records:
        tp = TopicPartition(record.topic, record.partition)
        last[tp] = max(last.get(tp, -1), record.offset)
    behind = []
    # The watcher has read every record on the consumed topics: a record the relay has
    # just published but the watcher not yet read would be left out of the verdict (and
    # out of what the merchant's own topics are expected to hold).
    ends_reader = AIOKafkaConsumer(bootstrap_servers=run.bootstrap, enable_auto_commit=False)
    await ends_reader.start()
    try:
        wanted = [
            TopicPartition(run.t(name), p) for name in CONSUMED_TOPICS for p in range(PARTITIONS)
        ]
        ends = await ends_reader.end_offsets(wanted)
    finally:
        await ends_reader.stop()
    for tp, end in ends.items():
        if end > last.get(tp, -1) + 1:
            behind.append(
                f"the watcher {tp.topic}[{tp.partition}] at {last.get(tp, -1)}, end {end}"
            )
    for consumer in oracle.consumers():
        group = run.prefix + f"cm.{consumer.service}.{consumer.name}"
        # Not subscribed: it only reads the group's committed offsets, never joins it.
        reader = AIOKafkaConsumer(
            bootstrap_servers=run.bootstrap, group_id=group, enable_auto_commit=False
        )
        await reader.start()
        try:
            for p in range(PARTITIONS):
                tp = TopicPartition(run.t(consumer.topic), p)
                if tp in last:
                    offset = await reader.committed(tp)
                    if offset is None or offset < last[tp] + 1:
                        behind.append(f"{group} {tp.topic}[{p}] at {offset}, last {last[tp]}")
        finally:
            await reader.stop()
    return behind


async def merchants_with_topics(run: Running) -> set[str]:
    """The merchants the notifier made topics of their own for (copying on or off)."""
    rows = await run.services["notifier"].runtime.pool.fetch(
        "SELECT website_key FROM kafka_push_merchants"
    )
    return {row["website_key"] for row in rows}


def timer_messages(run: Running) -> set[tuple[str, str]]:
    """(base topic, message_id) of every message a timer may have published: the
    scheduler publishes a ScheduleTimer's message as it is, on any topic it names."""
    for record in run.watcher.on(run.t(topics.SCHEDULER_COMMANDS)):
        where = (record.partition, record.offset)
        if where not in run.timers:
            run.timers[where] = _timer_target(record.value)
    return {target for target in run.timers.values() if target is not None}


def _timer_target(value: bytes | None) -> tuple[str, str] | None:
    try:
        timer = parse_envelope(value or b"", {"ScheduleTimer"})
    except Exception:
        return None
    return timer.payload.topic, str(timer.payload.message.get("message_id"))


def answers(run: Running) -> list[oracle.Seen]:
    """The services' answers: what the platform wrote on the results topic, except the
    messages of timers that named it (a fuzz ScheduleTimer may). Not the test's own
    records there (the notifier consumes that topic: the fuzz writes to it too)."""
    fired = timer_messages(run)
    found = []
    for record in run.written(topics.COMMAND_RESULTS):
        body = run.body(record)
        message_id = str(body.get("message_id")) if isinstance(body, dict) else None
        if (topics.COMMAND_RESULTS, message_id) not in fired:
            found.append(record)
    return found


def answers_by_command(run: Running) -> dict[str, list[dict[str, Any]]]:
    """The answers by command id (the test's commands have ids of their own)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for record in answers(run):
        body = run.body(record)
        found.setdefault(str(body["payload"]["command_id"]), []).append(body)
    return found


# --- the test ------------------------------------------------------------------------------


async def test_hostile_records_on_every_consumed_topic_stop_no_consumer(
    running: Running, blueprints: dict[str, list[Blueprint]]
) -> None:
    run = running
    started = time.monotonic()
    shop = f"good-{uuid.uuid4().hex[:8]}"

    # 0. The good merchant gets topics of its own (EnableKafkaPush): from now on the
    #    notifier copies its records of the shared topics there, which is what its
    #    consumers of the results and event topics do with a record. Those consumers
    #    leave out, unread, the records of merchants without topics of their own: so that
    #    they read the fuzz merchants' records, those get topics too (".." can have none),
    #    with copying off again (DisableKafkaPush keeps the topics), which a fuzz record
    #    may turn on. Which merchants have topics cannot change after this (a fuzz record
    #    names no other valid website key): the oracle knows what is left out.
    with_topics = {shop, *FUZZ_WEBSITES} - {".."}
    for type_, websites in (
        ("EnableKafkaPush", sorted(with_topics)),
        ("DisableKafkaPush", sorted(with_topics - {shop})),
    ):
        await _command_everywhere(run, type_, websites)
    assert await merchants_with_topics(run) == with_topics
    feeds = {feed: run.t(merchant_topic(shop, feed)) for feed in topics.MERCHANT_FEEDS}
    feed_watcher = RawWatcher(run.bootstrap, *feeds.values())
    await feed_watcher.start()
    run.stack.push_async_callback(feed_watcher.stop)

    # 1. The bad records, round robin over the partitions; good CreateInvoice commands
    #    between them on the invoice commands.
    items: list[tuple[str, int, bytes | None, bytes | None]] = []
    interleaved: list[Good] = []
    made_as: dict[str, str] = {}  # sha256 of a value → the kind of record it was made as
    for topic, prints in blueprints.items():
        every = max(1, len(prints) // (INTERLEAVED_PER_PARTITION * PARTITIONS))
        for i, blueprint in enumerate(prints):
            key, value = blueprint.materialise(
                max_message_bytes=MAX_MESSAGE_BYTES, webhook_url=FUZZ_WEBHOOK_URL
            )
            items.append((run.t(topic), i % PARTITIONS, key, value))
            made_as[_digest(value)] = blueprint.kind
            if (
                topic == topics.INVOICE_COMMANDS
                and i % every == every - 1
                and len(interleaved) < INTERLEAVED_PER_PARTITION * PARTITIONS
            ):
                g = good(topic, i % PARTITIONS, shop, f"MIX-{len(interleaved)}")
                interleaved.append(g)
                items.append((run.t(topic), g.partition, g.key, g.value))
    await run.send(items)
    sent_bad = len(items) - len(interleaved)
    made_as.update((_digest(g.value), f"good:{g.type}") for g in interleaved)

    # 2. A good message on every partition of every consumed topic, after the bad ones:
    #    first those that need nothing, then those about the invoices the first created
    #    (a payment, a collection status, a step's letter).
    later = (topics.PAYMENT_TRANSACTIONS, topics.INVOICE_INTERNAL, topics.NOTIFIER_INTERNAL)
    live: dict[str, list[Good]] = {}
    for wave in ([t for t in CONSUMED_TOPICS if t not in later], later):
        goods = [live_good(topic, p, shop) for topic in wave for p in range(PARTITIONS)]
        for g in goods:
            live.setdefault(g.topic, []).append(g)
            made_as[_digest(g.value)] = f"good:{g.type}"
        await run.send([(run.t(g.topic), g.partition, g.key, g.value) for g in goods])
        await _answered_as_expected(run, [g for g in goods if LIVE_ANSWERS[g.topic] is not None])
    assert set(live) == set(CONSUMED_TOPICS)
    await poll_until(
        lambda: _effects_seen(run, live, feed_watcher, feeds),
        timeout=SETTLE_S,
        interval=0.2,
        what="the effect of every good event, payment, letter and copy on every partition",
    )
    alive_after = time.monotonic() - started

    # 3. Everything settles: each record dead-lettered once or handled, each command
    #    answered once, nothing left to relay, every consumer group past every record.
    readings: dict[tuple[str, str, int, int], oracle.Reading] = {}
    answer_readings: dict[tuple[str, int, int], oracle.Reading] = {}
    last: list[oracle.Verdict] = []

    def describe(record: oracle.Seen) -> str:
        return f"[{made_as.get(_digest(record.value), 'platform')}] " + record.show()

    async def settled() -> oracle.Verdict | None:
        dead = list(run.watcher.on(run.t(topics.DLQ)))
        inbox = await inboxes(run)
        consumed = [r for name in CONSUMED_TOPICS for r in run.watcher.on(run.t(name))]
        verdict = oracle.check(
            records=consumed,
            dead_letters=dead,
            answers=answers(run),
            answer_readings=answer_readings,
            inbox=inbox,
            merchants_with_topics=with_topics,
            prefix=run.prefix,
            max_message_bytes=MAX_MESSAGE_BYTES,
            dlq_max_value_bytes=DLQ_MAX_VALUE_BYTES,
            readings=readings,
            describe=describe,
        )
        verdict.problems.extend(await relayed(run))
        if verdict.ok:
            verdict.problems.extend(await uncommitted(run))
        last[:] = [verdict]
        return verdict if verdict.ok else None

    try:
        verdict = await poll_until(
            settled, timeout=SETTLE_S, interval=0.5, what="the fuzz to settle"
        )
    except AssertionError:
        problems = last[0].problems if last else []
        kinds = Counter(_kind_of(problem) for problem in problems)
        pytest.fail(
            f"{len(problems)} problems after {SETTLE_S}s:\n"
            + "\n".join(f"{n}x {kind}" for kind, n in kinds.most_common(15))
            + "\n\n"
            + "\n".join(problems[:40]),
            pytrace=False,
        )
    assert sum(verdict.outcomes.values()) >= sent_bad
    # No fuzz record gave another merchant topics of its own (a website key in a record
    # can only be one of the fuzz merchants'): what the oracle took as left out was.
    assert await merchants_with_topics(run) == with_topics
    # Each new kind of refusal came up: a known type on a topic that does not carry it.
    assert verdict.codes["not_allowed_here"], verdict.codes

    # No handler crashed on a record: whatever parses can be stored and computed (issue 8,
    # "values that cannot be stored or computed are refused at the edge"). A business
    # rule an event breaks (Unprocessable, e.g. an outcome for an unknown invoice) is not
    # a crash.
    crashes = [
        f"{consumer.service} {codes}: {describe(record)}"
        for consumer, record, codes in verdict.handler_failures
        if set(codes) & CRASH_CODES
    ]
    assert not crashes, "handlers crashed on records that parsed:\n" + "\n".join(crashes[:20])

    # 4. The good records interleaved with the bad ones were handled as if alone.
    by_command = answers_by_command(run)
    for g in interleaved:
        assert [a["type"] for a in by_command.get(g.message_id, [])] == ["CommandAccepted"], g.name
    created = Counter(
        event["invoice"]["invoice_number"]
        for event in _invoice_events(run, shop)
        if event["sequence"] == 1 and event["event"] == "ChangedStatus"
    )
    for g in interleaved:
        assert created[g.name] == 1, (g.name, created[g.name])

    # 5. Metrics labels from the wire are catalog types or `unknown`.
    catalog_types = set(registered_types()) | {"unknown"}
    labels = {
        sample.labels["type"]
        for metric in REGISTRY.collect()
        if metric.name == "cm_messages_handled"
        for sample in metric.samples
        if "type" in sample.labels
    }
    assert labels, "cm_messages_handled_total has samples"
    assert labels <= catalog_types, labels - catalog_types

    # 6. Each InvoiceEvent the notifier handled is pushed exactly once (the good
    #    merchant's once more, on its own topic).
    pushes = Counter(
        record.header("message-id") for record in run.watcher.on(run.t(topics.PUSH_INVOICE))
    )
    handled = {
        str(envelope.message_id)
        for envelope in _handled_by_notifier(run, readings, topics.INVOICE_EVENTS)
    }
    assert handled, "the notifier handled InvoiceEvents (the good ones at least)"
    assert {mid: n for mid, n in pushes.items() if n != 1} == {}, "pushes repeated"
    assert handled <= set(pushes), handled - set(pushes)

    # 7. The good merchant's own topics hold each of its records once, and nothing else:
    #    its pushes, the answers to its commands (not those only the platform sends), its
    #    subscription and case events.
    await poll_until(
        lambda: _feeds_complete(run, readings, feed_watcher, feeds, shop),
        timeout=SETTLE_S,
        interval=0.2,
        what="the good merchant's records on its own topics",
    )
    # Settle again now that the copies are there, so that the readings hold every record
    # the merchant's topics could have been copied from, those published since the first
    # settle included.
    await poll_until(settled, timeout=SETTLE_S, interval=0.5, what="the fuzz to settle again")
    problems = _feed_problems(run, readings, feed_watcher, feeds, shop)
    # The fuzz merchants' own topics (copying turned on and off by fuzz records) hold
    # their own records only, each once.
    for website in sorted(with_topics - {shop}):
        names = [run.t(merchant_topic(website, feed)) for feed in topics.MERCHANT_FEEDS]
        problems += _strangers_or_repeats(run, website, await read_topics(run.bootstrap, names))
    assert not problems, "\n".join(problems[:20])

    # 8. Letters stay in the spool directory, whatever the website key or invoice number.
    letters = sum(1 for prints in blueprints.values() for b in prints if "letter_path" in b.kind)
    await poll_until(
        lambda: _at_least(letters, list(run.spool.rglob("*.pdf"))),
        timeout=SETTLE_S,
        what=f"{letters} letters in the spool directory",
    )
    outside = [
        p for p in run.spool.parents[2].rglob("*") if p.is_file() and run.spool not in p.parents
    ]
    assert not outside, outside

    report = os.environ.get("CM_FUZZ_REPORT")
    if report:  # what became of each kind of record, for a person to read
        fates: dict[str, Counter[str]] = {}
        for described, fate in verdict.fates.items():
            kind = described[1 : described.index("]")]
            fates.setdefault(kind, Counter())[" | ".join(fate)] += 1
        by_command = answers_by_command(run)
        handled_types: Counter[str] = Counter()
        for reading in readings.values():
            if reading.envelope is not None:
                found = by_command.get(str(reading.envelope.message_id), [])
                codes = sorted({e["code"] for a in found for e in a["payload"].get("errors", [])})
                outcome = "/".join(a["type"] for a in found) or "no answer"
                handled_types[f"{reading.envelope.type}: {outcome} {','.join(codes)}"] += 1
        Path(report).write_text(
            json.dumps(
                {
                    "fates": {kind: dict(c) for kind, c in sorted(fates.items())},
                    "parsed": dict(sorted(handled_types.items())),
                    "dead_letter_codes": dict(verdict.codes.most_common()),
                },
                indent=1,
            )
        )
    print(
        f"fuzz: {sent_bad} bad records, alive after {alive_after:.1f}s, settled after"
        f" {time.monotonic() - started:.1f}s; outcomes {dict(verdict.outcomes)}"
    )


async def _command_everywhere(run: Running, type_: str, websites: list[str]) -> None:
    """EnableKafkaPush (with the test's partitions) or DisableKafkaPush from each
    merchant, accepted."""
    payload = {"partitions": PARTITIONS} if type_ == "EnableKafkaPush" else {}
    goods = [
        make_good(
            topics.NOTIFIER_COMMANDS,
            i % PARTITIONS,
            website,
            "kafka-push",
            type_,
            payload,
            f"{website}:kafka-push",
        )
        for i, website in enumerate(websites)
    ]
    await run.send([(run.t(g.topic), g.partition, g.key, g.value) for g in goods])
    answered = await poll_until(
        lambda: _all_answered(run, goods), timeout=SETTLE_S, interval=0.1, what=type_
    )
    for g in goods:
        assert [a["type"] for a in answered[g.message_id]] == ["CommandAccepted"], answered


def _kind_of(problem: str) -> str:
    """A problem without its particulars (ids, counts, the record), and the topic it is
    about: to sum up many problems."""
    topic = re.search(r"\.(cm\.[a-z.-]+)\[", problem)
    head = re.sub(r"[0-9a-f-]{36}|\d+", "…", problem.split(": [", maxsplit=1)[0])[:80]
    return f"{head} ({topic.group(1) if topic else '-'})"


async def _answered_as_expected(run: Running, goods: list[Good]) -> None:
    """Each good command is answered once, as LIVE_ANSWERS says."""
    answered = await poll_until(
        lambda: _all_answered(run, goods),
        timeout=SETTLE_S,
        interval=0.2,
        what="an answer to the good command on every partition of every command topic",
    )
    for g in goods:
        expected = LIVE_ANSWERS[g.topic]
        assert expected is not None
        kinds = [a["type"] for a in answered[g.message_id]]
        assert kinds == [expected[0]], (g.topic, g.partition, answered[g.message_id])
        if expected[1] is not None:
            codes = [e["code"] for e in answered[g.message_id][0]["payload"]["errors"]]
            assert codes == [expected[1]], (g.topic, codes)


async def _at_least(count: int, found: list[Any]) -> list[Any] | None:
    return found if len(found) >= count else None


def _digest(value: bytes | None) -> str:
    return "tombstone" if value is None else hashlib.sha256(value).hexdigest()


async def _all_answered(run: Running, goods: list[Good]) -> dict[str, list[dict[str, Any]]] | None:
    found = answers_by_command(run)
    waiting = [g for g in goods if g.message_id not in found]
    return None if waiting else found


async def _effects_seen(
    run: Running, live: dict[str, list[Good]], feed_watcher: RawWatcher, feeds: dict[str, str]
) -> bool:
    """What has no answer has an effect: the notifier pushes each good InvoiceEvent (on
    the merchant's own topic too), the subscription and collection services record it
    in their inbox; a payment changes its invoice; a step's letter is answered with its
    outcome; a good record of the results or an event topic is copied to the merchant's
    own topic."""
    pushed = {record.header("message-id") for record in run.watcher.on(run.t(topics.PUSH_INVOICE))}
    own = {record.header("message-id") for record in feed_watcher.on(feeds["invoice"])}
    events = live[topics.INVOICE_EVENTS]
    if not all(g.message_id in pushed and g.message_id in own for g in events):
        return False
    inbox = await inboxes(run, events[0].website_key)
    for consumer in ("subscription.invoice-events", "collection.invoice-events"):
        if not all(_ref(g) in inbox.get(consumer, set()) for g in events):
            return False
    payments = live[topics.PAYMENT_TRANSACTIONS]
    if not all(_ref(g) in inbox.get("subscription.transactions", set()) for g in payments):
        return False
    paid = {
        event["invoice"]["invoice_number"]
        for event in _invoice_events(run, payments[0].website_key)
        if event["event"] == "ChangedTransactionStatus"
    }
    if not all(g.name in paid for g in payments):
        return False
    outcomes = {
        body.get("causation_id")
        for body in _bodies(run, run.written(topics.INVOICE_INTERNAL))
        if body.get("type") == "RecordMessageOutcome"
    }
    if not all(g.message_id in outcomes for g in live[topics.NOTIFIER_INTERNAL]):
        return False
    for feed, source in FEEDS_COPIED.items():
        copied = {body.get("message_id") for body in _bodies(run, feed_watcher.on(feeds[feed]))}
        if not all(g.message_id in copied for g in live[source]):
            return False
    return True


def _ref(g: Good) -> oracle.MessageRef:
    return (g.website_key, uuid.UUID(g.message_id))


def _bodies(run: Running, records: list[oracle.Seen]) -> list[dict[str, Any]]:
    """The JSON objects among the records' values."""
    return [body for body in map(run.body, records) if isinstance(body, dict)]


def _invoice_events(run: Running, website_key: str) -> list[dict[str, Any]]:
    """Payloads of the InvoiceEvents the invoice service wrote for one merchant (not the
    test's own good events, to the event consumers)."""
    return [
        run.body(record)["payload"]
        for record in run.written(topics.INVOICE_EVENTS)
        if record.key is not None and record.key.startswith(f"{website_key}:".encode())
    ]


def _handled_by_notifier(
    run: Running, readings: dict[tuple[str, str, int, int], oracle.Reading], source: str
) -> list[Any]:
    """Envelopes of the records on `source` that the notifier handled: they parsed, and
    its handler did not dead-letter them."""
    dead = {
        (letter["topic"], letter["partition"], letter["offset"])
        for letter in (run.body(r)["payload"] for r in run.watcher.on(run.t(topics.DLQ)))
        if letter["service"] == "notifier"
    }
    return [
        reading.envelope
        for (service, topic, partition, offset), reading in readings.items()
        if service == "notifier"
        and topic == run.t(source)
        and reading.envelope is not None
        and (topic, partition, offset) not in dead
    ]


#: Commands only the platform sends: their answers are the platform's, not copied to a
#: merchant's topic (unless the merchant sent one and it was refused as not_allowed_here).
PLATFORM_COMMANDS = platform_only_types()


def _copied_from(
    run: Running, readings: dict[tuple[str, str, int, int], oracle.Reading], source: str, shop: str
) -> set[str]:
    """Message ids of the merchant's records on `source` its own topic must hold."""
    found = set()
    for envelope in _handled_by_notifier(run, readings, source):
        if envelope.website_key != shop:
            continue
        payload = envelope.payload
        if getattr(payload, "command_type", None) in PLATFORM_COMMANDS and not any(
            error.code == "not_allowed_here" for error in getattr(payload, "errors", ())
        ):
            continue
        found.add(str(envelope.message_id))
    return found


async def _feeds_complete(
    run: Running,
    readings: dict[tuple[str, str, int, int], oracle.Reading],
    feed_watcher: RawWatcher,
    feeds: dict[str, str],
    shop: str,
) -> bool:
    for feed, source in FEEDS_COPIED.items():
        copied = {body.get("message_id") for body in _bodies(run, feed_watcher.on(feeds[feed]))}
        if not _copied_from(run, readings, source, shop) <= copied:
            return False
    pushes = {
        record.header("message-id")
        for record in run.watcher.on(run.t(topics.PUSH_INVOICE))
        if record.key is not None and record.key.startswith(f"{shop}:".encode())
    }
    own = {record.header("message-id") for record in feed_watcher.on(feeds["invoice"])}
    return pushes <= own


def _strangers_or_repeats(run: Running, website: str, records: list[oracle.Seen]) -> list[str]:
    """A merchant's own topics hold its own records only (by Kafka key, and by envelope
    where there is one), each once (by message id)."""
    problems = []
    seen: Counter[tuple[str, str | None]] = Counter()
    for record in records:
        body = run.body(record)
        envelope_site = body.get("website_key") if isinstance(body, dict) else None
        key_site = oracle.website_in_key(record.key)
        if key_site != website or (envelope_site not in (None, website)):
            problems.append(f"{website}'s own topic holds another's record: {record.show()}")
        message_id = record.header("message-id") or (
            str(body.get("message_id")) if isinstance(body, dict) else None
        )
        seen[(record.topic, message_id)] += 1
    repeated = {where: n for where, n in seen.items() if n != 1}
    if repeated:
        problems.append(f"{website}'s own topics repeat records: {list(repeated.items())[:5]}")
    return problems


def _feed_problems(
    run: Running,
    readings: dict[tuple[str, str, int, int], oracle.Reading],
    feed_watcher: RawWatcher,
    feeds: dict[str, str],
    shop: str,
) -> list[str]:
    problems = []
    for feed, source in FEEDS_COPIED.items():
        bodies = _bodies(run, feed_watcher.on(feeds[feed]))
        if len(bodies) != len(feed_watcher.on(feeds[feed])):
            problems.append(f"{feed}: a copy is not a JSON object")
        strangers = [b.get("website_key") for b in bodies if b.get("website_key") != shop]
        if strangers:
            problems.append(f"{feed}: records of other merchants: {strangers[:5]}")
        copies = Counter(str(b.get("message_id")) for b in bodies)
        repeated = {mid: n for mid, n in copies.items() if n != 1}
        if repeated:
            problems.append(f"{feed}: copied more than once: {repeated}")
        expected = _copied_from(run, readings, source, shop)
        if set(copies) != expected:
            problems.append(
                f"{feed}: copied but not the merchant's: {sorted(set(copies) - expected)[:5]},"
                f" the merchant's but not copied: {sorted(expected - set(copies))[:5]}"
            )
    pushes = {
        (record.key, record.value, record.header("message-id"))
        for record in run.watcher.on(run.t(topics.PUSH_INVOICE))
        if record.key is not None and record.key.startswith(f"{shop}:".encode())
    }
    own = Counter(
        (record.key, record.value, record.header("message-id"))
        for record in feed_watcher.on(feeds["invoice"])
    )
    if set(own) != pushes or any(n != 1 for n in own.values()):
        problems.append(
            f"invoice: {len(own)} pushes on the merchant's own topic ({sum(own.values())}"
            f" records), {len(pushes)} of the merchant on {topics.PUSH_INVOICE}"
        )
    return problems
