"""Merchant settings (docs/invoices.md "Merchant settings"): steps at midnight in the
merchant's time zone (DST days included), the settings' field rules, the culture
fallback order, and the sender name on the notifier's e-mail, letter, SMS and
`[CompanyName]`. Pure: the domain and the notifier's builders, no I/O. The expected
instants are written out by hand (Amsterdam is UTC+1 in winter, UTC+2 in summer; in
2026 summer time runs from 29 March to 25 October)."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from contracts.debtor import Debtor, Person
from contracts.envelope import new_envelope
from contracts.invoice import CreateInvoice, InvoiceStatus, StepAction, UpdateMerchantSettings
from contracts.notifier import SendMessage
from services.invoice import domain, dunning
from services.invoice.domain import commands, merchant
from services.invoice.domain.merchant import MerchantSettings, local_midnight
from services.notifier.channels import Rendered
from services.notifier.channels.email import EmailSender
from services.notifier.channels.letter import render_pdf
from services.notifier.messages import _merchant_name
from tests.unit.test_notifier_templates import snapshot

AMS = "Europe/Amsterdam"
D = Decimal


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


STEPS = [
    domain.SchemeStepState(index=1, action=StepAction.PAYMENT_INVITATION, days=0),
    domain.SchemeStepState(index=2, action=StepAction.REMINDER, days=7, channels=["email"]),
    domain.SchemeStepState(index=3, action=StepAction.REMINDER, days=14, channels=["email"]),
]


def invoice(**overrides: Any) -> domain.Invoice:
    fields: dict[str, Any] = {
        "website_key": "shop",
        "invoice_number": "INV-1",
        "invoice_key": "KEY-1",
        "status": InvoiceStatus.ACTIVE,
        "invoice_date": date(2026, 10, 20),
        "due_date": date(2026, 10, 20),
        "currency": "EUR",
        "amount_debit": D("121.00"),
        "scheme_key": "Mine",
        "scheme_steps": STEPS,
        "created_at": utc(2026, 10, 20, 9),
        "time_zone": AMS,
    }
    fields.update(overrides)
    return domain.Invoice(**fields)


# --- midnight in the merchant's time zone ------------------------------------------------


@pytest.mark.parametrize(
    ("day", "time_zone", "expected"),
    [
        (date(2026, 11, 22), "UTC", utc(2026, 11, 22)),
        (date(2026, 11, 22), AMS, utc(2026, 11, 21, 23)),  # winter: UTC+1
        (date(2026, 7, 1), AMS, utc(2026, 6, 30, 22)),  # summer: UTC+2
        # The days of the DST changes: midnight comes before the change at 02:00/03:00.
        (date(2026, 3, 29), AMS, utc(2026, 3, 28, 23)),
        (date(2026, 3, 30), AMS, utc(2026, 3, 29, 22)),
        (date(2026, 10, 25), AMS, utc(2026, 10, 24, 22)),
        (date(2026, 10, 26), AMS, utc(2026, 10, 25, 23)),
        (date(2026, 11, 22), "America/New_York", utc(2026, 11, 22, 5)),
        (date(2026, 11, 22), "Asia/Tokyo", utc(2026, 11, 21, 15)),
        # Chile moves its clocks at midnight: 6 September 2026 starts at 01:00 (UTC-3).
        (date(2026, 9, 6), "America/Santiago", utc(2026, 9, 6, 4)),
        (date(2026, 9, 7), "America/Santiago", utc(2026, 9, 7, 3)),
    ],
)
def test_a_day_starts_at_midnight_in_the_zone(
    day: date, time_zone: str, expected: datetime
) -> None:
    assert local_midnight(day, time_zone) == expected


def test_steps_across_the_end_of_summer_time_fall_at_local_midnight() -> None:
    """Due 20 October (summer time): the invitation on the 20th and the reminder of the
    27th (winter time) each at 00:00 in Amsterdam, one hour apart in UTC."""
    inv = invoice()
    assert inv.step_due_at(STEPS[0]) == utc(2026, 10, 19, 22)
    assert inv.step_due_at(STEPS[1]) == utc(2026, 10, 26, 23)
    assert inv.step_due_at(STEPS[2]) == utc(2026, 11, 2, 23)
    # Held time still shifts the step by exactly that long.
    held = invoice(held_seconds=3600)
    assert held.step_due_at(STEPS[1]) == utc(2026, 10, 27, 0)


def test_the_timer_is_set_for_local_midnight() -> None:
    inv = invoice(previous_step_index=1)
    plan = domain.plan_timer(inv, utc(2026, 10, 20, 9))
    assert plan is not None
    assert (plan.step_index, plan.due_at) == (2, utc(2026, 10, 26, 23))
    assert inv.next_step_due_at == utc(2026, 10, 26, 23)


def test_without_settings_steps_run_at_midnight_utc() -> None:
    assert MerchantSettings().time_zone == "UTC"
    inv = invoice(time_zone=MerchantSettings().time_zone)
    assert inv.step_due_at(STEPS[1]) == utc(2026, 10, 27)


def test_a_new_time_zone_moves_the_timer_at_the_invoices_next_planning() -> None:
    """The repository reads an invoice with its merchant's current zone: the timer set
    in UTC stays until the invoice's next change plans it again, then it moves."""
    inv = invoice(time_zone="UTC", previous_step_index=1)
    domain.plan_timer(inv, utc(2026, 10, 20, 9))
    assert (inv.timer_step, inv.timer_due_at) == (2, utc(2026, 10, 27))
    version = inv.schedule_version
    assert domain.plan_timer(inv, utc(2026, 10, 21)) is None  # nothing changed: kept
    moved = inv.model_copy(update={"time_zone": AMS})
    plan = domain.plan_timer(moved, utc(2026, 10, 22))
    assert plan is not None and plan.due_at == utc(2026, 10, 26, 23)
    assert plan.schedule_version == version + 1  # the old timer's StepDue is stale


def test_the_14_day_letters_term_counts_days_in_the_merchants_zone() -> None:
    """Sent at 00:30 in Amsterdam on 7 December (23:30 UTC on the 6th): by e-mail the
    costs may be charged from 22 December, 00:00 in Amsterdam."""
    sent = datetime.fromisoformat("2026-12-07T00:30:00+01:00")
    inv = invoice(cost_letter_sent_at=sent, cost_letter_channel="email")
    assert dunning.letter_term_ends(inv) == utc(2026, 12, 21, 23)
    assert dunning.letter_term_ends(inv.model_copy(update={"time_zone": "UTC"})) == utc(
        2026, 12, 21
    )


# --- the settings' rules -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["UTC", AMS, "America/Argentina/Buenos_Aires", "Etc/GMT+1"])
def test_a_known_time_zone_is_accepted(name: str) -> None:
    assert merchant.settings_errors(UpdateMerchantSettings(time_zone=name)) == []


@pytest.mark.parametrize("name", ["Europe/Amsterdan", "Mars/Olympus", "localtime", "utc+1"])
def test_an_unknown_time_zone_is_refused_on_its_field(name: str) -> None:
    errors = merchant.settings_errors(UpdateMerchantSettings(time_zone=name))
    assert [(e.field, e.code) for e in errors] == [("payload.time_zone", "unknown_time_zone")]


@pytest.mark.parametrize("name", ["../etc/passwd", "Europe Amsterdam", "", "/UTC"])
def test_a_time_zone_that_is_no_name_does_not_parse(name: str) -> None:
    with pytest.raises(ValueError):
        UpdateMerchantSettings(time_zone=name)


def test_a_sender_name_is_one_line() -> None:
    with pytest.raises(ValueError):
        UpdateMerchantSettings(sender_name="Shop\r\nBcc: x@example.test")


# --- culture and time zone of a new invoice ------------------------------------------------


class Scheme:
    version = 1
    step_states = STEPS
    recollection_state = None


def create(settings: MerchantSettings | None, **overrides: Any) -> domain.Invoice:
    payload: dict[str, Any] = {
        "invoice_number": "INV-1",
        "invoice_date": date(2026, 11, 1),
        "due_date": date(2026, 11, 15),
        "currency": "EUR",
        "amount_debit": D("121.00"),
        "amount_vat": D("21.00"),
        "scheme_key": "Mine",
        "debtor": Debtor(code="D-1", person=Person(first_name="Jan", last_name="Jansen")),
        **overrides,
    }
    result = commands.create_invoice(
        new_envelope(CreateInvoice(**payload), website_key="shop", occurred_at=utc(2026, 10, 1)),
        existing=None,
        scheme=Scheme(),
        parked=[],
        settings=settings,
    )
    return result.changes[-1].invoice


ENGLISH = MerchantSettings(time_zone=AMS, default_culture="en-GB")


def person(culture: str | None) -> Debtor:
    return Debtor(code="D-1", person=Person(first_name="Jan", last_name="Jansen", culture=culture))


@pytest.mark.parametrize(
    ("overrides", "settings", "expected"),
    [
        ({"culture": "de-DE", "debtor": person("fr-FR")}, ENGLISH, "de-DE"),  # its own
        ({"debtor": person("fr-FR")}, ENGLISH, "fr-FR"),  # else its debtor's
        ({"debtor": person(None)}, ENGLISH, "en-GB"),  # else the merchant's default
        (
            {"debtor": Debtor(code="D-2", company={"name": "Acme BV"})},
            ENGLISH,
            "en-GB",
        ),
    ],
)
def test_the_culture_falls_back_to_the_merchants_default(
    overrides: dict[str, Any], settings: MerchantSettings, expected: str
) -> None:
    assert create(settings, **overrides).culture == expected


def test_a_new_invoice_plans_its_steps_in_the_merchants_zone() -> None:
    inv = create(ENGLISH)
    assert inv.time_zone == AMS
    assert (inv.timer_step, inv.timer_due_at) == (1, utc(2026, 10, 31, 23))
    assert create(None).timer_due_at == utc(2026, 11, 1)


def test_installments_take_the_time_zone_of_the_invoices_they_pay() -> None:
    original = invoice(invoice_date=date(2026, 11, 1), due_date=date(2026, 11, 15))
    plan, outcomes, errors = domain.start_payment_plan(
        website_key="shop",
        dossier="PP-1",
        originals=[original],
        requested=["INV-1"],
        installment_count=2,
        initial_amount=D("50.00"),
        cost=D("0"),
        start_date=date(2026, 12, 1),
        interval="month",
        scheme_key="Mine",
        scheme_version=1,
        scheme_steps=STEPS,
        now=utc(2026, 11, 20, 9),
        fingerprint="f",
    )
    assert errors == [] and plan is not None
    installments = [o.invoice for o in outcomes[1:] if o.invoice is not None]
    assert [i.time_zone for i in installments] == [AMS, AMS]
    assert installments[0].step_due_at(STEPS[1]) == utc(2026, 12, 7, 23)


# --- the sender name in the notifier's messages ----------------------------------------------


def test_the_email_comes_from_the_merchants_sender_name_at_the_platforms_address() -> None:
    sender = EmailSender("localhost", 25, "noreply@example.invalid")
    mail = sender.message(
        "jan@example.test", "Jan", Rendered("Factuur", "Tekst"), "INV-1-step1-1", "Winkel Eén"
    )
    parsed = email.message_from_bytes(bytes(mail), policy=email.policy.default)
    [address] = parsed["From"].addresses
    assert (address.display_name, address.addr_spec) == ("Winkel Eén", "noreply@example.invalid")
    # Without a sender name the From is SMTP_FROM as configured.
    plain = sender.message("jan@example.test", "Jan", Rendered("F", "T"), "R", None)
    assert plain["From"] == "noreply@example.invalid"


def test_the_letter_names_the_sender() -> None:
    pdf = render_pdf(
        ["Jan Jansen"], "1 november 2026", Rendered("S", "B"), "Winkel Een", compress=False
    )
    assert b"Winkel Een" in pdf
    without = render_pdf(["Jan Jansen"], "1 november 2026", Rendered("S", "B"), compress=False)
    assert b"Winkel Een" not in without


def send_message(**overrides: Any) -> SendMessage:
    return SendMessage(
        invoice_number="INV-1",
        step_index=1,
        action=StepAction.PAYMENT_INVITATION,
        channels=["email"],
        invoice=snapshot(**overrides.pop("invoice", {})),
        **overrides,
    )


def test_company_name_is_the_parameter_else_the_sender_name_else_the_website_key() -> None:
    named = {"custom_parameters": [{"key": "CompanyName", "value": "Param BV"}]}
    assert _merchant_name(send_message(invoice=named, sender_name="Winkel"), "shop") == "Param BV"
    assert _merchant_name(send_message(sender_name="Winkel"), "shop") == "Winkel"
    assert _merchant_name(send_message(), "shop") == "shop"
