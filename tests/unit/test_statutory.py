"""The Dutch statutory scale (contracts/statutory.py): its bands, minimum and maximum,
exact to the cent, and the one function both the invoice service and the notifier use."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from contracts.statutory import (
    STATUTORY_MAXIMUM,
    STATUTORY_MINIMUM,
    applies_to,
    statutory_costs,
)
from services.invoice import dunning
from services.notifier import templates


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        ("0", "40.00"),  # the minimum
        ("266.66", "40.00"),  # 39.999: still the minimum
        ("266.74", "40.01"),  # 40.011: the first band above the minimum
        ("2500", "375.00"),  # the end of the 15% band
        ("2500.10", "375.01"),  # 375 + 10% of 0.10
        ("5000", "625.00"),  # the end of the 10% band: 375 + 250
        ("10000", "875.00"),  # the end of the 5% band: 625 + 250
        ("200000", "2775.00"),  # the end of the 1% band: 875 + 1,900
        ("999998", "6774.99"),  # 2,775 + 0.5% of 799,998
        ("999999", "6775.00"),  # 6,774.995 → half-even
        ("1000000", "6775.00"),  # exactly the maximum
        ("12345678.90", "6775.00"),  # capped
    ],
)
def test_the_scale_band_by_band(principal: str, expected: str) -> None:
    amount = statutory_costs(D(principal), "EUR")
    assert amount == D(expected)
    assert str(amount) == expected  # written with cents


def test_the_scale_is_bounded_by_its_minimum_and_maximum() -> None:
    assert (D(40), D(6775)) == (STATUTORY_MINIMUM, STATUTORY_MAXIMUM)
    assert statutory_costs(D("-1000"), "EUR") == STATUTORY_MINIMUM
    assert statutory_costs(D(10) ** 9, "EUR") == STATUTORY_MAXIMUM


def test_the_scale_rounds_half_even_to_the_currency_minor_unit() -> None:
    assert statutory_costs(D("300.30"), "EUR") == D("45.04")  # 45.045 → even
    assert statutory_costs(D("300.10"), "EUR") == D("45.02")  # 45.015 → even
    assert str(statutory_costs(D(290), "JPY")) == "44"  # 43.5 → 44, no decimals


def test_the_invoice_service_charges_what_the_notifier_states() -> None:
    assert dunning.statutory_costs is statutory_costs
    assert templates.statutory_costs is statutory_costs


def test_the_scale_applies_to_euro_invoices_only() -> None:
    assert applies_to("EUR")
    assert not any(applies_to(currency) for currency in ("JPY", "USD", "GBP", "KWD", "eur"))
