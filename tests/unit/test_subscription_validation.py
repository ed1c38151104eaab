"""The business rules of CreateSubscription (services/subscription/handlers.create_errors)."""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import TypeAdapter

from contracts.fields import Identifier
from contracts.limits import (
    MAX_DATE,
    MAX_PERIOD_CREDIT_NOTES,
    MAX_PERIOD_INDEX,
    MAX_SUBSCRIPTION_KEY_LENGTH,
    MIN_DATE,
)
from contracts.subscription import BillingInterval, CreateSubscription, IntervalUnit
from services.subscription import domain
from services.subscription.handlers import create_errors
from tests.support.invoices import debtor

PLAN = {
    "product_code": "BASIC",
    "description": "Basic plan",
    "unit_price": "10.00",
    "vat_percentage": "21",
    "start_date": "2026-01-01",
}


def command(**overrides: Any) -> CreateSubscription:
    payload: dict[str, Any] = {
        "subscription_key": "SUB-1",
        "debtor": debtor(),
        "currency": "EUR",
        "interval": {"unit": "month"},
        "start_date": "2026-01-01",
        "rate_plans": [PLAN],
        **overrides,
    }
    return CreateSubscription.model_validate(payload)


def codes(cmd: CreateSubscription) -> list[tuple[str, str]]:
    return [(e.field, e.code) for e in create_errors(cmd)]


def test_a_good_subscription_breaks_no_rule() -> None:
    assert codes(command()) == []
    assert command().payment_term_days == 14
    assert command().billing_day is None


def test_each_broken_rule_names_its_field() -> None:
    assert codes(command(currency="XYZ")) == [("payload.currency", "unknown_currency")]
    assert codes(command(end_date="2025-12-31")) == [
        ("payload.end_date", "end_before_start"),
        ("payload.rate_plans.0.start_date", "outside_subscription"),  # after the end
    ]
    assert codes(command(rate_plans=[PLAN, PLAN])) == [
        ("payload.rate_plans.1.product_code", "duplicate_product_code")
    ]
    assert codes(command(currency="JPY", rate_plans=[{**PLAN, "unit_price": "10.5"}])) == [
        ("payload.rate_plans.0.unit_price", "too_many_decimals")
    ]
    assert codes(command(rate_plans=[{**PLAN, "unit_price": "-1.00"}])) == [
        ("payload.rate_plans.0.unit_price", "negative")
    ]
    assert codes(command(rate_plans=[{**PLAN, "quantity": "0"}])) == [
        ("payload.rate_plans.0.quantity", "not_positive")
    ]
    assert codes(command(rate_plans=[{**PLAN, "end_date": "2025-12-01"}])) == [
        ("payload.rate_plans.0.end_date", "end_before_start")
    ]
    assert codes(command(rate_plans=[{**PLAN, "product_code": "A\x85B"}])) == [
        ("payload.rate_plans.0.product_code", "control_character")
    ]
    assert codes(command(subscription_key="K" * 81)) == [("payload.subscription_key", "too_long")]


def test_plans_outside_the_subscription_are_refused() -> None:
    early = {**PLAN, "start_date": "2025-12-31"}
    late = {**PLAN, "product_code": "LATE", "start_date": "2026-03-01"}
    assert codes(command(end_date="2026-02-28", rate_plans=[early, late])) == [
        ("payload.rate_plans.0.start_date", "outside_subscription"),
        ("payload.rate_plans.1.start_date", "outside_subscription"),
    ]


def test_every_number_derived_from_the_longest_key_is_an_identifier() -> None:
    """Invoices `{key}-{period}` and credit notes `{key}-{period}-CR-{yyyymmdd}-{n}` of a
    key of the longest length allowed fit the identifier limit (docs/invoices.md)."""
    longest = "K" * MAX_SUBSCRIPTION_KEY_LENGTH
    assert codes(command(subscription_key=longest)) == []
    assert codes(command(subscription_key=longest + "K")) == [
        ("payload.subscription_key", "too_long")
    ]
    identifier = TypeAdapter(Identifier)
    number = domain.invoice_number(longest, MAX_PERIOD_INDEX)
    credit = domain.credit_note_number(number, MAX_DATE, MAX_PERIOD_CREDIT_NOTES - 1)
    assert identifier.validate_python(number) == number
    assert identifier.validate_python(credit) == credit
    assert len(credit) == 100  # the room reserved is the room needed


def test_no_subscription_has_more_periods_than_the_limit_reserves() -> None:
    """One period a day from the first date a message may carry: the period after
    MAX_PERIOD_INDEX starts after the last date, so it is never billed."""
    daily = BillingInterval(unit=IntervalUnit.DAY, count=1)
    assert domain.period_start(MIN_DATE, daily, MAX_PERIOD_INDEX) == MAX_DATE
    assert domain.period_start(MIN_DATE, daily, MAX_PERIOD_INDEX + 1) > MAX_DATE
    assert len(str(MAX_PERIOD_INDEX)) == 6
    assert domain.credit_note_number("S-1", date(2026, 2, 1), 0) == "S-1-CR-20260201"
    assert domain.credit_note_number("S-1", date(2026, 2, 1), 2) == "S-1-CR-20260201-3"
