"""Notifier templates: tag checks, substitution, culture formatting, built-in texts."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from contracts.invoice import Channel, InvoiceSnapshot
from services.notifier.messages import choose_template
from services.notifier.templates import (
    BUILT_IN,
    MessageContext,
    Template,
    fill,
    money,
    statutory_costs,
    template_errors,
)
from tests.support.invoice_domain import invoice_snapshot


def snapshot(**overrides: object) -> InvoiceSnapshot:
    values = invoice_snapshot(
        amount="1234.56",
        invoice_key="K",
        pay_link="https://pay.example.test/[PayLink]",
        debtor={"code": "D-1", "person": {"first_name": "Jan", "last_name": "Jansen"}},
    )
    values.update(overrides)
    return InvoiceSnapshot.model_validate(values)


def context(culture: str = "nl-NL") -> MessageContext:
    return MessageContext(snapshot(), culture, datetime(2026, 11, 22, tzinfo=UTC), "Shop")


def test_amounts_follow_the_culture() -> None:
    assert money(Decimal("1234.56"), "EUR", "nl-NL") == "€ 1.234,56"
    assert money(Decimal("1234.56"), "EUR", "en-US") == "€1,234.56"
    assert money(Decimal("1234.56"), "USD", "en-US") == "$1,234.56"


def test_tags_are_filled_once_and_values_are_not_expanded_again() -> None:
    text = fill("[DebtorName]: [OpenAmount] voor [DueDate] via [PayLink]", context())
    assert text == (
        "Jan Jansen: € 1.234,56 voor 15 november 2026 via https://pay.example.test/[PayLink]"
    )


def test_a_template_tag_matches_in_any_case_and_by_its_aliases() -> None:
    text = "[debtorname]: [InvoiceAmountOpen] voor [DUEDATE]"
    assert template_errors("payload.body", text) == []
    assert fill(text, context()) == "Jan Jansen: € 1.234,56 voor 15 november 2026"


def test_the_letter_of_an_invoice_not_in_euros_states_no_statutory_costs() -> None:
    """The statutory step charges nothing on a non-EUR invoice, so the 14-day letter
    states nothing (contracts/statutory.py, applies_to)."""
    text = "[StatutoryCosts] / [OpenAmountInclStatutoryCosts]"
    yen = {name: "290" for name in ("amount_debit", "open_amount", "open_amount_incl_admin_costs")}
    sent = datetime(2026, 11, 22, tzinfo=UTC)
    euro_letter = MessageContext(snapshot(), "en-US", sent, "Shop")
    yen_letter = MessageContext(snapshot(currency="JPY", **yen), "en-US", sent, "Shop")
    assert fill(text, euro_letter) == "€185.18 / €1,419.74"
    assert fill(text, yen_letter) == "¥0 / ¥290"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("[Nope]", "unknown_tag"),
        ("{{ config }}", "template_syntax"),
        ("{% for x in y %}", "template_syntax"),
        ("${x}", "template_syntax"),
        ("<%= x %>", "template_syntax"),
    ],
)
def test_refused_templates(text: str, code: str) -> None:
    assert code in {e.code for e in template_errors("payload.body", text)}


def test_every_built_in_template_uses_known_tags_only() -> None:
    for template in BUILT_IN.values():
        for text in (template.subject, template.body):
            assert template_errors("t", text) == []
    keys = {(k, c) for k, c, _ in BUILT_IN}
    for key in ("payment_invitation", "reminder_1", "reminder_2"):
        assert {(key, "nl-NL"), (key, "en-US")} <= keys


def test_the_fourteen_day_letter_states_costs_and_term() -> None:
    letter = BUILT_IN["reminder_2", "nl-NL", Channel.EMAIL]
    text = fill(letter.body, context())
    assert "14 dagen" in text and "€ 185,18" in text
    assert "[StatutoryCosts]" not in text and "[StatutoryTermDays]" not in text


@pytest.mark.parametrize(
    ("principal", "costs"),
    [
        ("100", "40.00"),
        ("2500", "375.00"),
        ("5000", "625.00"),
        ("10000", "875.00"),
        ("1000000", "6775.00"),
    ],
)
def test_statutory_scale(principal: str, costs: str) -> None:
    assert statutory_costs(Decimal(principal), "EUR") == Decimal(costs)


def test_merchant_text_first_then_built_in_then_default_key() -> None:
    own = Template("S", "B")
    merchant = {("nl-NL", Channel.EMAIL): own}
    assert choose_template(merchant, "reminder_1", "reminder_1", "nl-NL", Channel.EMAIL) is own
    assert choose_template(merchant, "reminder_1", "reminder_1", "nl-NL", Channel.LETTER) is own
    assert (
        choose_template({}, "custom", "reminder_1", "nl-BE", Channel.SMS)
        == BUILT_IN["reminder_1", "nl-NL", Channel.SMS]
    )
    assert (
        choose_template({}, "reminder_1", "reminder_1", "fr-FR", Channel.EMAIL)
        == BUILT_IN["reminder_1", "en-US", Channel.EMAIL]
    )
