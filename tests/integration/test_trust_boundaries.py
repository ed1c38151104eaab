"""Who may write what, on the real broker and Postgres: a type only the platform sends is
refused on the topics outsiders write (`not_allowed_here`), and a StepDue that arrives
before the step is due by the invoice's own schedule is refused (`not_due`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts import catalog, topics
from tests.support.invoices import invoice_payload
from tests.support.kafka import envelope, poll_until, publish, read_all
from tests.support.platform import Platform, platform

CREATED = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)

#: A type the platform alone sends (or, for the agency's answer, an agency alone), sent
#: on an external topic by someone who may write that topic.
IMPERSONATIONS = [
    (topics.INVOICE_COMMANDS, "StepDue", {"invoice_number": "X", "step_index": 1}),
    (topics.INVOICE_COMMANDS, "SetCollectionStatus", {"invoice_number": "X"}),
    (topics.INVOICE_COMMANDS, "RegisterCollectedAmount", {"invoice_number": "X"}),
    (topics.INVOICE_COMMANDS, "RecordMessageOutcome", {"invoice_number": "X"}),
    (topics.NOTIFIER_COMMANDS, "SendMessage", {"invoice_number": "X"}),
    (topics.NOTIFIER_COMMANDS, "RetryWebhookDelivery", {}),
    (topics.SUBSCRIPTION_COMMANDS, "RunBilling", {"subscription_key": "S"}),
    (topics.SUBSCRIPTION_COMMANDS, "RunMerchantBilling", {}),
    (topics.COLLECTION_COMMANDS, "AgencyProcessed", {"case_key": "C"}),
]


@pytest.fixture
async def cm(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Platform]:
    async with platform(kafka_bootstrap, database_url, *catalog.SERVICES) as running:
        yield running


def test_every_impersonated_type_is_one_outsiders_may_not_send_there() -> None:
    platform_only = catalog.platform_only_types()
    for topic, type_name, _ in IMPERSONATIONS:
        spec = catalog.topic_spec(topic)
        assert not spec.platform_only, f"{topic} is written by outsiders"
        assert type_name not in catalog.types_for_topic(topic)
        assert type_name in platform_only or type_name.startswith("Agency")


async def test_a_platform_only_type_on_an_external_topic_is_refused(cm: Platform) -> None:
    website = cm.invoices.website_key
    sent: dict[str, str] = {}
    for topic, type_name, payload in IMPERSONATIONS:
        body = envelope(type_name, payload, website_key=website)
        sent[str(body["message_id"])] = type_name
        await publish(
            cm.bootstrap, cm.prefix + topic, [(f"{website}:x", json.dumps(body).encode())]
        )

    for command_id, type_name in sent.items():
        answer = await cm.invoices.answer(command_id)
        assert answer["type"] == "CommandRejected", type_name
        errors = answer["payload"]["errors"]
        assert [(e["field"], e["code"]) for e in errors] == [("type", "not_allowed_here")]
        assert type_name in errors[0]["message"]

    letters = await poll_until(
        lambda: _at_least(read_all(cm.bootstrap, cm.prefix + topics.DLQ), len(IMPERSONATIONS)),
        what="a dead letter per refused message",
    )
    codes = {letter.json()["payload"]["errors"][0]["code"] for letter in letters}
    assert codes == {"not_allowed_here"}


async def test_a_step_due_before_its_time_is_refused_and_on_time_it_runs(cm: Platform) -> None:
    number = f"INV-{uuid.uuid4().hex[:6]}"
    created = await cm.invoices.command(
        "CreateInvoice", invoice_payload(number), occurred_at=CREATED.isoformat()
    )
    assert (await cm.invoices.answer(created))["type"] == "CommandAccepted"
    await cm.tick(CREATED)  # the invitation, due at once, runs; the next step is timed
    timer = await poll_until(
        lambda: _future_step_timer(cm, number), what="a timer for a step in the future"
    )
    step_due: dict[str, Any] = timer["message"]
    events_before = len(await cm.invoices.events(number, 1))

    early = {
        **step_due,
        "message_id": str(uuid.uuid4()),
        "occurred_at": (datetime.fromisoformat(timer["due_at"]) - timedelta(days=1)).isoformat(),
    }
    await publish(
        cm.bootstrap,
        cm.prefix + topics.INVOICE_INTERNAL,
        [(timer["key"], json.dumps(early).encode())],
    )

    async def refused() -> dict[str, Any] | None:
        for record in await read_all(cm.bootstrap, cm.prefix + topics.DLQ):
            letter = record.json()["payload"]
            if f'"{early["message_id"]}"' in letter["raw_value"]:
                return letter  # type: ignore[no-any-return]
        return None

    letter = await poll_until(refused, what="the early StepDue dead-lettered")
    assert [e["code"] for e in letter["errors"]] == ["not_due"]
    assert len(cm.invoices.events_now(number)) == events_before
    step = step_due["payload"]["step_index"]
    assert await _step_messages(cm, number, step) == []

    # The same step at its time runs (the timer's own message, on the internal topic):
    # its message goes to the notifier.
    await publish(
        cm.bootstrap,
        cm.prefix + topics.INVOICE_INTERNAL,
        [(timer["key"], json.dumps(step_due).encode())],
    )
    sent = await poll_until(lambda: _step_messages(cm, number, step), what="the step's message")
    assert len(sent) == 1


async def _step_messages(cm: Platform, number: str, step: int) -> list[dict[str, Any]]:
    return [
        message
        for record in await read_all(cm.bootstrap, cm.prefix + topics.NOTIFIER_INTERNAL)
        if (message := record.json()["payload"])["invoice_number"] == number
        and message["step_index"] == step
    ]


async def _future_step_timer(cm: Platform, number: str) -> dict[str, Any] | None:
    for record in await read_all(cm.bootstrap, cm.prefix + topics.SCHEDULER_COMMANDS):
        body = record.json()
        if body["type"] != "ScheduleTimer":
            continue
        timer = body["payload"]
        message = timer["message"]
        if (
            message["type"] == "StepDue"
            and message["payload"]["invoice_number"] == number
            and datetime.fromisoformat(timer["due_at"]) > CREATED
        ):
            return timer  # type: ignore[no-any-return]
    return None


async def _at_least(coro: Any, n: int) -> list[Any] | None:
    found = await coro
    return found if len(found) >= n else None
