"""Merchant settings on the real broker and Postgres (docs/invoices.md "Merchant
settings"): UpdateMerchantSettings, then an invoice whose step timer is set at midnight
in the merchant's time zone, whose culture is the merchant's default, and whose message
reaches the SMTP server from the merchant's sender name. The invoice service, the
scheduler and the notifier run on one prefix with the manual clock (2026-11-01 09:00 UTC).
"""

from __future__ import annotations

import email
import email.policy
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from contracts import topics
from services.notifier.channels.sms import SmsSender
from tests.integration.test_notifier import cm, spool
from tests.support.invoices import InvoiceClient, debtor, invoice_payload
from tests.support.kafka import TopicWatcher, poll_until
from tests.support.notifier import HttpSink, SmtpSink
from tests.support.platform import Platform

SENDER = "Winkel Eén"


__all__ = ["cm", "spool"]  # the fixtures: invoice, scheduler and notifier mailing to `smtp`


@pytest.fixture(scope="module")
async def requests(cm: Platform) -> AsyncIterator[TopicWatcher]:
    """What the invoice service asks of the scheduler and the notifier."""
    watcher = TopicWatcher(
        cm.bootstrap, cm.prefix + topics.SCHEDULER_COMMANDS, cm.prefix + topics.NOTIFIER_INTERNAL
    )
    await watcher.start()
    yield watcher
    await watcher.stop()


@pytest.fixture
async def inv(cm: Platform) -> AsyncIterator[InvoiceClient]:
    """A merchant of its own for each test."""
    client = InvoiceClient(cm.bootstrap, cm.prefix, cm.services["invoice"])
    await client.watcher.start()
    yield client
    await client.watcher.stop()


async def update_settings(inv: InvoiceClient, **payload: Any) -> dict[str, Any]:
    command = await inv.command(
        "UpdateMerchantSettings", payload, key=f"{inv.website_key}:merchant"
    )
    return await inv.answer(command)


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def timer_due_times(
    cm: Platform, requests: TopicWatcher, inv: InvoiceClient, number: str
) -> list[datetime]:
    """When each ScheduleTimer the invoice service sent for the invoice is due, in order."""
    timer_id = f"invoice-step:{inv.website_key}:{number}"
    return [
        instant(body["payload"]["due_at"])
        for record in requests.on(cm.prefix + topics.SCHEDULER_COMMANDS)
        if (body := record.json())["type"] == "ScheduleTimer"
        and body["payload"]["timer_id"] == timer_id
    ]


async def wait_timers(
    cm: Platform, requests: TopicWatcher, inv: InvoiceClient, number: str, count: int
) -> list[datetime]:
    async def enough() -> list[datetime] | None:
        found = timer_due_times(cm, requests, inv, number)
        return found if len(found) >= count else None

    return await poll_until(enough, what=f"{count} step timers of {number}")


async def send_messages(
    cm: Platform, requests: TopicWatcher, inv: InvoiceClient, number: str
) -> list[dict[str, Any]]:
    async def found() -> list[dict[str, Any]] | None:
        sends = [
            body["payload"]
            for record in requests.on(cm.prefix + topics.NOTIFIER_INTERNAL)
            if record.key == f"{inv.website_key}:{number}"
            and (body := record.json())["type"] == "SendMessage"
        ]
        return sends or None

    return await poll_until(found, what=f"a SendMessage for {number}")


async def test_steps_run_at_local_midnight_in_the_culture_and_from_the_sender_name(
    cm: Platform, requests: TopicWatcher, inv: InvoiceClient, smtp: SmtpSink
) -> None:
    answer = await update_settings(
        inv, time_zone="Europe/Amsterdam", default_culture="en-GB", sender_name=SENDER
    )
    assert answer["type"] == "CommandAccepted", answer
    assert answer["payload"]["keys"] == {"time_zone": "Europe/Amsterdam"}

    to = f"d-{uuid.uuid4().hex[:8]}@example.test"
    payload = invoice_payload(
        "MS-1",
        invoice_date="2026-11-03",
        due_date="2026-11-17",
        debtor=debtor(email=to, person={"first_name": "Ann", "last_name": "Smith"}),
    )
    del payload["culture"]  # neither the invoice nor its debtor names one
    created = await inv.answer(await inv.command("CreateInvoice", payload))
    assert created["type"] == "CommandAccepted", created

    snapshot = await inv.snapshot("MS-1", 1)
    assert snapshot["culture"] == "en-GB"  # the merchant's default
    # The invitation is due on 3 November at 00:00 in Amsterdam: 23:00 UTC the day before.
    assert instant(snapshot["next_step_due_at"]) == datetime(2026, 11, 2, 23, tzinfo=UTC)
    assert await wait_timers(cm, requests, inv, "MS-1", 1) == [
        datetime(2026, 11, 2, 23, tzinfo=UTC)
    ]

    await cm.tick(datetime(2026, 11, 2, 23, tzinfo=UTC))
    events = await inv.events("MS-1", 2)
    assert [e["event_code"] for e in events] == [2, 10]  # the invitation went out by e-mail
    # The next step (due + 7 = 24 November) is planned at midnight in Amsterdam too.
    assert instant(events[1]["invoice"]["next_step_due_at"]) == datetime(
        2026, 11, 23, 23, tzinfo=UTC
    )

    [send] = await send_messages(cm, requests, inv, "MS-1")
    assert send["sender_name"] == SENDER

    [mail] = await smtp.wait_for(to, 1)
    parsed = email.message_from_bytes(mail.raw, policy=email.policy.default)
    [sender] = parsed["From"].addresses
    assert sender.display_name == SENDER
    assert mail.subject.startswith("Invoice MS-1")  # English: the merchant's culture


async def test_an_unknown_time_zone_is_refused_and_nothing_is_stored(
    inv: InvoiceClient,
) -> None:
    answer = await update_settings(inv, time_zone="Europe/Atlantis", sender_name="Never")
    assert answer["type"] == "CommandRejected"
    errors = [(e["field"], e["code"]) for e in answer["payload"]["errors"]]
    assert errors == [("payload.time_zone", "unknown_time_zone")]
    bad = await update_settings(inv, time_zone="../../etc/passwd")
    assert bad["type"] == "CommandRejected"
    assert [e["field"] for e in bad["payload"]["errors"]] == ["payload.time_zone"]

    # The merchant still has the defaults: steps at midnight UTC.
    created = await inv.answer(
        await inv.command("CreateInvoice", invoice_payload("MS-2", invoice_date="2026-11-03"))
    )
    assert created["type"] == "CommandAccepted", created
    snapshot = await inv.snapshot("MS-2", 1)
    assert instant(snapshot["next_step_due_at"]) == datetime(2026, 11, 3, tzinfo=UTC)


async def test_a_new_time_zone_moves_an_invoices_timer_at_its_next_change(
    requests: TopicWatcher, cm: Platform, inv: InvoiceClient
) -> None:
    created = await inv.answer(
        await inv.command("CreateInvoice", invoice_payload("MS-3", invoice_date="2026-11-10"))
    )
    assert created["type"] == "CommandAccepted", created
    first = await inv.snapshot("MS-3", 1)
    assert instant(first["next_step_due_at"]) == datetime(2026, 11, 10, tzinfo=UTC)

    answer = await update_settings(inv, time_zone="Asia/Tokyo")
    assert answer["type"] == "CommandAccepted", answer
    # The timer set stays until the invoice changes; a partial payment is a change.
    await inv.transaction("MS-3", "TX-1", "21.00", "success")
    after = await inv.snapshot("MS-3", 2)
    assert instant(after["next_step_due_at"]) == datetime(2026, 11, 9, 15, tzinfo=UTC)
    assert await wait_timers(cm, requests, inv, "MS-3", 2) == [
        datetime(2026, 11, 10, tzinfo=UTC),
        datetime(2026, 11, 9, 15, tzinfo=UTC),  # midnight of 10 November in Tokyo
    ]


async def test_the_sms_provider_gets_the_sender_name(endpoint: HttpSink) -> None:
    async with httpx.AsyncClient() as client:
        sms = SmsSender(client, endpoint.url, timeout_s=5, max_response_bytes=4096)
        await sms.send("+31600000000", "Pay please", "MS-4-step1-1", SENDER)
        await sms.send("+31600000000", "Pay please", "MS-4-step1-2")
    with_name, without = [r.json() for r in endpoint.started[-2:]]
    assert with_name["sender"] == SENDER
    assert "sender" not in without
