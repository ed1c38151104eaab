"""The notifier with the invoice service and the scheduler, on the real broker and Postgres:
pushes, messages to debtors through a real SMTP server and a letter spool, templates."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from contracts import topics
from tests.support.invoices import InvoiceClient, debtor, invoice_payload
from tests.support.kafka import TopicWatcher, poll_until
from tests.support.notifier import SmtpSink, notifier_command
from tests.support.platform import Platform, mailing_platform


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("letters")


@pytest.fixture(scope="module")
async def cm(
    kafka_bootstrap: str, database_url: str, smtp: SmtpSink, spool: Path
) -> AsyncIterator[Platform]:
    async with mailing_platform(kafka_bootstrap, database_url, smtp, spool) as running:
        yield running


@pytest.fixture(scope="module")
async def pushes(cm: Platform) -> AsyncIterator[TopicWatcher]:
    watcher = TopicWatcher(cm.bootstrap, cm.prefix + topics.PUSH_INVOICE)
    await watcher.start()
    yield watcher
    await watcher.stop()


@pytest.fixture
async def inv(cm: Platform) -> AsyncIterator[InvoiceClient]:
    """A merchant of its own for each test."""
    client = await cm.merchant()
    yield client
    await client.watcher.stop()


def schema_test_invoice(number: str, email: str, **overrides: Any) -> dict[str, Any]:
    """A test invoice that runs DefaultCM1's steps on TriggerNextStep (no clock needed)."""
    return invoice_payload(
        number,
        is_test=True,
        description="schema_test notifier",
        amount_debit="1234.56",
        amount_vat="214.26",
        pay_link=f"https://pay.example.test/{number}",
        debtor=debtor(email=email),
        **overrides,
    )


async def create(inv: InvoiceClient, payload: dict[str, Any]) -> None:
    answer = await inv.answer(await inv.command("CreateInvoice", payload))
    assert answer["type"] == "CommandAccepted", answer


async def next_step(inv: InvoiceClient, number: str) -> None:
    answer = await inv.answer(await inv.command("TriggerNextStep", {"invoice_number": number}))
    assert answer["type"] == "CommandAccepted", answer


def codes(inv: InvoiceClient, number: str) -> list[int | None]:
    return [e["event_code"] for e in inv.events_now(number)]


async def wait_codes(inv: InvoiceClient, number: str, count: int) -> list[int | None]:
    await inv.events(number, count)
    return codes(inv, number)


def address() -> str:
    return f"d-{uuid.uuid4().hex[:8]}@example.test"


# --- pushes --------------------------------------------------------------------------------


async def test_every_invoice_event_becomes_one_buckaroo_push(
    inv: InvoiceClient, pushes: TopicWatcher, cm: Platform
) -> None:
    await create(inv, invoice_payload("P-1", scheme_key="DefaultNone"))
    await inv.answer(
        await inv.command("CreateCustomEvent", {"invoice_number": "P-1", "message": "hello"})
    )
    events = await inv.events("P-1", 2)
    key = f"{inv.website_key}:P-1"
    ids = [
        r.json()["message_id"]
        for r in inv.watcher.on(cm.prefix + topics.INVOICE_EVENTS)
        if r.key == key
    ]

    async def both() -> list[Any] | None:
        found = [r for r in pushes.on(cm.prefix + topics.PUSH_INVOICE) if r.key == key]
        return found if len(found) >= 2 else None

    records = await poll_until(both, what="two pushes")
    assert len(records) == 2
    assert sorted(r.headers["message-id"] for r in records) == sorted(ids)
    assert all(r.headers["content-type"] == "application/json" for r in records)
    bodies = sorted((r.json()["Invoice"] for r in records), key=lambda b: b["EventSequence"])
    assert [b["EventSequence"] for b in bodies] == [1, 2]
    assert [b["Event"] for b in bodies] == ["ChangedStatus", "CustomEvent"]
    first = bodies[0]
    assert first["InvoiceNumber"] == "P-1" and first["WebsiteKey"] == inv.website_key
    assert first["InvoiceKey"] == events[0]["invoice"]["invoice_key"]
    assert first["InvoiceDate"] == "2026-11-01T00:00:00"
    assert first["EventDateTime"] == "2026-11-01T09:00:00+00:00"
    raw = next(r.value for r in records if r.json()["Invoice"]["EventSequence"] == 1)
    assert b'"AmountDebit":121.00' in raw  # an exact JSON number, as Buckaroo sends it


# --- messages to debtors -------------------------------------------------------------------


async def test_a_reminder_reaches_the_smtp_server_in_dutch_with_amounts_and_pay_link(
    inv: InvoiceClient, smtp: SmtpSink
) -> None:
    to = address()
    await create(inv, schema_test_invoice("M-1", to))
    assert await wait_codes(inv, "M-1", 2) == [2, 10]  # the invitation went out by e-mail
    await next_step(inv, "M-1")
    assert await wait_codes(inv, "M-1", 3) == [2, 10, 4]
    invitation, reminder = await smtp.wait_for(to, 2)
    assert invitation.subject == "Factuur M-1"
    assert "1 november 2026" in invitation.text and "15 november 2026" in invitation.text
    assert reminder.subject == "Herinnering factuur M-1"
    assert reminder.message["To"] == f"Jan Jansen <{to}>"
    assert "Beste Jan Jansen," in reminder.text
    assert "€ 1.234,56" in reminder.text
    assert "https://pay.example.test/M-1" in reminder.text
    assert "[" not in reminder.text  # every tag filled in


async def test_a_refused_address_falls_back_to_a_letter_pdf(
    inv: InvoiceClient, smtp: SmtpSink, spool: Path
) -> None:
    to = address()
    smtp.refused.add(to)
    await create(inv, schema_test_invoice("M-2", to))
    # The invitation has e-mail only: nothing is left, so it is skipped (event 6).
    assert await wait_codes(inv, "M-2", 2) == [2, 6]
    await next_step(inv, "M-2")  # the reminder: e-mail, then letter
    assert await wait_codes(inv, "M-2", 3) == [2, 6, 5]  # SentBackupReminderMessage
    event = inv.events_now("M-2")[2]
    assert {"key": "StepIndex", "value": "2"} in event["event_parameters"]
    letters = list((spool / inv.website_key).glob("M-2-step2-*.pdf"))
    assert len(letters) == 1
    assert letters[0].read_bytes().startswith(b"%PDF")
    assert smtp.to(to) == []


async def test_all_methods_unreachable_is_skipped_no_methods(
    inv: InvoiceClient, smtp: SmtpSink
) -> None:
    to = address()
    answer = await inv.answer(
        await inv.command(
            "AddOrUpdateDebtor",
            {
                "debtor": debtor(email=to),
                "unreachable": {"email": True, "address": True},
            },
            key=f"{inv.website_key}:debtor:D-1",
        )
    )
    assert answer["type"] == "CommandAccepted", answer
    await create(inv, schema_test_invoice("M-3", to))
    assert await wait_codes(inv, "M-3", 2) == [2, 6]
    await next_step(inv, "M-3")
    assert await wait_codes(inv, "M-3", 3) == [2, 6, 6]
    assert smtp.to(to) == []


async def test_the_fourteen_day_letter_states_the_statutory_costs_and_term(
    inv: InvoiceClient, smtp: SmtpSink
) -> None:
    to = address()
    await create(inv, schema_test_invoice("M-4", to, culture="en-US"))
    await wait_codes(inv, "M-4", 2)
    await next_step(inv, "M-4")
    await wait_codes(inv, "M-4", 3)
    await next_step(inv, "M-4")
    assert await wait_codes(inv, "M-4", 4) == [2, 10, 4, 4]
    mails = await smtp.wait_for(to, 3)
    letter = mails[2]
    assert letter.subject == "Final reminder: invoice M-4 (14-day notice)"
    # 15% of 1,234.56 = 185.18 (above the €40 minimum).
    assert Decimal("1234.56") * Decimal("0.15") == Decimal("185.1840")
    assert "€185.18" in letter.text and "€1,234.56" in letter.text
    assert "14 days" in letter.text
    assert "€1,419.74" in letter.text  # open amount plus the costs


# --- templates -----------------------------------------------------------------------------


async def upsert_template(cm: Platform, inv: InvoiceClient, **payload: Any) -> dict[str, Any]:
    body = {"template_key": "reminder_1", "culture": "nl-NL", "channel": "email", **payload}
    mid = await notifier_command(
        cm.bootstrap,
        cm.prefix,
        "UpsertTemplate",
        body,
        website_key=inv.website_key,
        key=f"{inv.website_key}:template:{body['template_key']}",
    )
    return await inv.answer(mid)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("Beste [DebtorName], betaal [Amount]", "unknown_tag"),
        ("Hallo {{ invoice.__class__.__mro__ }}", "template_syntax"),
        ("{% import os %}{{ os.system('id') }}", "template_syntax"),
        ("Total: ${7*7}", "template_syntax"),
        ("[__import__('os').system('id')]", "unknown_tag"),
    ],
)
async def test_a_template_with_an_unknown_tag_or_code_is_rejected(
    cm: Platform, inv: InvoiceClient, body: str, code: str
) -> None:
    answer = await upsert_template(cm, inv, subject="Herinnering", body=body)
    assert answer["type"] == "CommandRejected"
    assert code in {e["code"] for e in answer["payload"]["errors"]}
    assert {e["field"] for e in answer["payload"]["errors"]} == {"payload.body"}


async def test_a_merchant_template_is_used_for_its_culture_and_channel(
    cm: Platform, inv: InvoiceClient, smtp: SmtpSink
) -> None:
    answer = await upsert_template(
        cm,
        inv,
        subject="Openstaand: [InvoiceNumber]",
        body="Hoi [DebtorName], nog [OpenAmountInclAdminCosts] open. [PayLink] [PayLink]",
    )
    assert answer["type"] == "CommandAccepted", answer
    to = address()
    await create(inv, schema_test_invoice("T-1", to))
    await wait_codes(inv, "T-1", 2)
    await next_step(inv, "T-1")
    await wait_codes(inv, "T-1", 3)
    _, reminder = await smtp.wait_for(to, 2)
    assert reminder.subject == "Openstaand: T-1"
    assert reminder.text.strip() == (
        "Hoi Jan Jansen, nog € 1.234,56 open. "
        "https://pay.example.test/T-1 https://pay.example.test/T-1"
    )
