"""Proration, VAT, period invoices, plan changes and early-stop credits of bill runs
(services/subscription/domain.py)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.fields import minor_unit
from contracts.subscription import BillingInterval, BillingTiming, IntervalUnit
from services.subscription.domain import (
    BillingState,
    PlanVersion,
    allocated,
    change_plan,
    credit_for_early_stop,
    invoice_for_period,
    mark_billed,
    period_bounds,
    stop_plan,
    vat_of,
)

CURRENCIES = ["JPY", "EUR", "KWD"]  # 0, 2 and 3 decimals


def money(currency: str, low: int = 0) -> st.SearchStrategy[Decimal]:
    digits = minor_unit(currency)
    return st.integers(low, 10**9).map(lambda units: Decimal(units).scaleb(-digits))


quantities = st.integers(1, 10**6).map(lambda q: Decimal(q).scaleb(-2))
vat_rates = st.sampled_from([Decimal(0), Decimal(9), Decimal(21), Decimal("5.5"), Decimal(100)])


def plan(code: str = "basic", **changes: object) -> PlanVersion:
    values: dict[str, object] = {
        "product_code": code,
        "description": code.title(),
        "unit_price": Decimal("30.00"),
        "quantity": Decimal(1),
        "vat_percentage": Decimal(21),
        "start_date": date(2024, 4, 1),
    }
    values.update(changes)
    return PlanVersion(**values)  # type: ignore[arg-type]


def subscription(*plans: PlanVersion, **changes: object) -> BillingState:
    values: dict[str, object] = {
        "subscription_key": "sub-1",
        "currency": "EUR",
        "interval": BillingInterval(unit=IntervalUnit.MONTH, count=1),
        "timing": BillingTiming.ADVANCE,
        "start_date": date(2024, 4, 1),
        "payment_term_days": 30,
        "plans": plans or (plan(),),
    }
    values.update(changes)
    return BillingState(**values)  # type: ignore[arg-type]


# --- allocation ----------------------------------------------------------------------------


@settings(max_examples=300)
@given(
    data=st.data(),
    currency=st.sampled_from(CURRENCIES),
    period_days=st.integers(1, 3660),
    parts=st.integers(1, 12),
)
def test_prorated_parts_add_up_to_the_whole(
    data: st.DataObject, currency: str, period_days: int, parts: int
) -> None:
    price = data.draw(money(currency))
    quantity = data.draw(quantities)
    total = Fraction(price) * Fraction(quantity)
    cuts = sorted(
        data.draw(st.lists(st.integers(0, period_days), min_size=parts - 1, max_size=parts - 1))
    )
    bounds = [0, *cuts, period_days]
    amounts = [
        allocated(total, b, period_days, currency) - allocated(total, a, period_days, currency)
        for a, b in itertools.pairwise(bounds)
    ]
    whole = allocated(total, period_days, period_days, currency)
    assert sum(amounts) == whole
    assert whole == (price * quantity).quantize(
        Decimal(1).scaleb(-minor_unit(currency)), rounding=ROUND_HALF_EVEN
    )
    assert all(amount >= 0 for amount in amounts)
    assert all(-amount.as_tuple().exponent <= minor_unit(currency) for amount in amounts)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("total", "days", "period_days", "currency", "expected"),
    [
        (Fraction("10"), 1, 3, "EUR", Decimal("3.33")),
        (Fraction("10"), 2, 3, "EUR", Decimal("6.67")),
        (Fraction("0.05"), 1, 2, "EUR", Decimal("0.02")),  # 0.025: half to even
        (Fraction("0.07"), 1, 2, "EUR", Decimal("0.04")),  # 0.035: half to even
        (Fraction("1000"), 15, 30, "JPY", Decimal("500")),
        (Fraction("1"), 1, 2, "JPY", Decimal("0")),  # 0.5 -> 0
        (Fraction("3"), 1, 2, "JPY", Decimal("2")),  # 1.5 -> 2
        (Fraction("1"), 1, 3, "KWD", Decimal("0.333")),
    ],
)
def test_allocation_examples(
    total: Fraction, days: int, period_days: int, currency: str, expected: Decimal
) -> None:
    assert allocated(total, days, period_days, currency) == expected


# --- VAT -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("net", "rate", "currency", "expected"),
    [
        (Decimal("10.50"), Decimal(21), "EUR", Decimal("2.20")),  # 2.205 -> 2.20
        (Decimal("10.70"), Decimal(21), "EUR", Decimal("2.25")),  # 2.247
        (Decimal("0.50"), Decimal(9), "EUR", Decimal("0.04")),  # 0.045 -> 0.04
        (Decimal("1.50"), Decimal(9), "EUR", Decimal("0.14")),  # 0.135 -> 0.14
        (Decimal("50"), Decimal(21), "JPY", Decimal("10")),  # 10.5 -> 10
        (Decimal("150"), Decimal(21), "JPY", Decimal("32")),  # 31.5 -> 32
        (Decimal("0.500"), Decimal(5), "KWD", Decimal("0.025")),
        (Decimal("0.010"), Decimal(25), "KWD", Decimal("0.002")),  # 0.0025 -> 0.002
        (Decimal("99.99"), Decimal(0), "EUR", Decimal("0.00")),
    ],
)
def test_vat_half_even_examples(
    net: Decimal, rate: Decimal, currency: str, expected: Decimal
) -> None:
    assert vat_of(net, rate, currency) == expected


@settings(max_examples=300)
@given(data=st.data(), currency=st.sampled_from(CURRENCIES))
def test_vat_is_the_rounded_exact_product(data: st.DataObject, currency: str) -> None:
    net = data.draw(money(currency))
    rate = data.draw(
        st.integers(0, 1_000_000).map(lambda r: Decimal(r).scaleb(-4))  # 0..100, 4 decimals
    )
    with localcontext(prec=60):
        exact = net * rate / 100
        expected = exact.quantize(
            Decimal(1).scaleb(-minor_unit(currency)), rounding=ROUND_HALF_EVEN
        )
    vat = vat_of(net, rate, currency)
    assert vat == expected
    assert abs(vat - exact) <= Decimal(1).scaleb(-minor_unit(currency)) / 2


# --- period invoices -----------------------------------------------------------------------


def test_invoice_of_a_full_period() -> None:
    invoice = invoice_for_period(subscription(), 2)
    assert invoice.invoice_number == "sub-1-2"
    assert (invoice.period_start, invoice.period_end) == (date(2024, 5, 1), date(2024, 6, 1))
    assert invoice.invoice_date == date(2024, 5, 1)
    assert invoice.due_date == date(2024, 5, 31)
    [line] = invoice.lines
    assert not line.is_prorated
    assert (line.net_amount, line.vat_amount) == (Decimal("30.00"), Decimal("6.30"))
    assert (invoice.amount_net, invoice.amount_vat, invoice.amount_debit) == (
        Decimal("30.00"),
        Decimal("6.30"),
        Decimal("36.30"),
    )


def test_plan_starting_mid_period_is_prorated() -> None:
    # April has 30 days; the seat plan runs April 21..30: 10 days of 30
    state = subscription(plan(), plan("seat", quantity=Decimal(3), start_date=date(2024, 4, 21)))
    invoice = invoice_for_period(state, 1)
    basic, seat = invoice.lines
    assert (seat.active_from, seat.active_until, seat.active_days) == (
        date(2024, 4, 21),
        date(2024, 4, 30),
        10,
    )
    assert seat.net_amount == Decimal("30.00")  # 90.00 * 10/30
    assert seat.vat_amount == Decimal("6.30")
    assert invoice.amount_debit == Decimal("72.60")
    assert basic.active_days == 30


def test_plan_ending_mid_period_is_prorated_and_not_billed_after() -> None:
    state = subscription(plan(end_date=date(2024, 5, 10)))  # May: 10 days of 31
    line = invoice_for_period(state, 2).lines[0]
    assert (line.active_days, line.period_days) == (10, 31)
    assert line.net_amount == Decimal("9.68")  # 30 * 10/31 = 9.677…
    assert invoice_for_period(state, 3).lines == ()
    assert invoice_for_period(state, 3).amount_debit == Decimal("0.00")


def test_subscription_end_date_cuts_the_last_period() -> None:
    state = subscription(end_date=date(2024, 6, 15))
    line = invoice_for_period(state, 3).lines[0]
    assert line.active_days == 15
    assert line.net_amount == Decimal("15.00")


def test_price_change_applies_from_the_next_unbilled_period() -> None:
    state = mark_billed(mark_billed(subscription(), 1), 2)
    changed = change_plan(state, "basic", unit_price=Decimal("40.00"))
    assert invoice_for_period(changed, 2).amount_net == Decimal("30.00")  # billed: as it was
    assert invoice_for_period(changed, 3).amount_net == Decimal("40.00")
    again = change_plan(changed, "basic", quantity=Decimal(2))  # replaces the pending change
    assert invoice_for_period(again, 3).amount_net == Decimal("80.00")
    assert len(again.plans) == 2
    with pytest.raises(KeyError):
        change_plan(state, "missing", unit_price=Decimal(1))


@settings(max_examples=200)
@given(
    data=st.data(),
    currency=st.sampled_from(CURRENCIES),
    unit=st.sampled_from(list(IntervalUnit)),
    count=st.integers(1, 3),
    index=st.integers(1, 24),
    cuts=st.lists(st.integers(0, 1200), max_size=6),
)
def test_consecutive_plans_over_a_period_bill_the_whole_period(
    data: st.DataObject,
    currency: str,
    unit: IntervalUnit,
    count: int,
    index: int,
    cuts: list[int],
) -> None:
    """A plan replaced by the same plan on a later day (same price) costs what one
    plan over the whole period costs: proration never gains or loses a minor unit."""
    every = BillingInterval(unit=unit, count=count)
    start = data.draw(st.dates(min_value=date(2000, 1, 1), max_value=date(2060, 12, 31)))
    first, end = period_bounds(start, every, index)
    days = (end - first).days
    offsets = sorted({cut % days for cut in cuts} - {0})
    edges = [first + timedelta(days=o) for o in [0, *offsets]] + [end]
    price = data.draw(money(currency))
    vat = data.draw(vat_rates)
    pieces = tuple(
        plan(
            f"p{n}",
            unit_price=price,
            vat_percentage=vat,
            start_date=a,
            end_date=b - timedelta(days=1),
        )
        for n, (a, b) in enumerate(itertools.pairwise(edges))
    )
    whole = plan("whole", unit_price=price, vat_percentage=vat, start_date=start)
    base = dict(interval=every, start_date=start, currency=currency)
    split = invoice_for_period(subscription(*pieces, **base), index)
    single = invoice_for_period(subscription(whole, **base), index)
    assert sum(line.net_amount for line in split.lines) == single.amount_net
    assert sum(line.active_days for line in split.lines) == days
    assert all(line.net_amount >= 0 for line in split.lines)
    for line in split.lines:
        assert line.vat_amount == vat_of(line.net_amount, vat, currency)


# --- early stops ---------------------------------------------------------------------------


def test_credit_for_an_early_stop_example() -> None:
    state = mark_billed(subscription(), 1)
    billed = invoice_for_period(state, 1)  # April, 36.30
    stopped = replace(state, end_date=date(2024, 4, 10))  # 10 of 30 days used
    credit = credit_for_early_stop(billed, stopped)
    assert credit is not None
    assert credit.invoice_number == "sub-1-1"
    [line] = credit.lines
    assert line.unused_days == 20
    assert (credit.amount_net, credit.amount_vat) == (Decimal("20.00"), Decimal("4.20"))
    assert credit.amount_credit == Decimal("24.20")
    assert credit_for_early_stop(billed, state) is None  # nothing stopped, nothing back


@settings(max_examples=300)
@given(
    data=st.data(),
    currency=st.sampled_from(CURRENCIES),
    unit=st.sampled_from(list(IntervalUnit)),
    count=st.integers(1, 3),
    index=st.integers(1, 12),
    stop_plan_only=st.booleans(),
)
def test_credit_and_used_part_add_up_to_the_billed_amount(
    data: st.DataObject,
    currency: str,
    unit: IntervalUnit,
    count: int,
    index: int,
    stop_plan_only: bool,
) -> None:
    every = BillingInterval(unit=unit, count=count)
    start = data.draw(st.dates(min_value=date(2000, 1, 1), max_value=date(2060, 12, 31)))
    plans = (
        plan("a", unit_price=data.draw(money(currency)), quantity=data.draw(quantities),
             vat_percentage=data.draw(vat_rates), start_date=start),
        plan("b", unit_price=data.draw(money(currency)), vat_percentage=data.draw(vat_rates),
             start_date=start),
    )  # fmt: skip
    state = subscription(*plans, interval=every, start_date=start, currency=currency)
    for n in range(1, index + 1):
        state = mark_billed(state, n)
    billed = invoice_for_period(state, index)
    first, end = period_bounds(start, every, index)
    stop = first + timedelta(days=data.draw(st.integers(0, (end - first).days - 1)))
    stopped = stop_plan(state, "a", stop) if stop_plan_only else replace(state, end_date=stop)
    used = invoice_for_period(stopped, index)
    credit = credit_for_early_stop(billed, stopped)
    credited_net = credit.amount_net if credit else Decimal(0)
    credited_vat = credit.amount_vat if credit else Decimal(0)
    assert used.amount_net + credited_net == billed.amount_net
    assert used.amount_vat + credited_vat == billed.amount_vat
    assert credited_net >= 0
    if credit:
        assert all(line.unused_days > 0 for line in credit.lines)
        expected_unused = (end - stop).days - 1
        assert all(line.unused_days == expected_unused for line in credit.lines)


@given(
    start_offset=st.integers(1, 29),
    stop_offset=st.integers(0, 60),
    price=money("EUR", low=1),
)
@settings(max_examples=200, deadline=None)
def test_a_plan_added_inside_a_billed_period_is_caught_up_on_the_next_invoice(
    start_offset: int, stop_offset: int, price: Decimal
) -> None:
    # April (period 1) is billed in advance; a plan starting inside it is added then.
    state = mark_billed(subscription(plan()), 1)
    added = plan("extra", unit_price=price, start_date=date(2024, 4, 1) + timedelta(start_offset))
    late = replace(state, plans=(*state.plans, replace(added, billed_from_period=2)))
    # Had it been there from the start, April would have billed exactly these days.
    from_start = replace(state, plans=(*state.plans, added))
    may = invoice_for_period(late, 2)
    assert [(line.product_code, line.for_period) for line in may.lines] == [
        ("basic", 2),
        ("extra", 2),
        ("extra", 1),
    ]
    [april_part] = [
        line for line in invoice_for_period(from_start, 1).lines if line.key[0] == "extra"
    ]
    assert may.lines[2] == april_part
    assert [line.key for line in invoice_for_period(late, 1).lines] == [("basic", 1)]
    assert [line.key for line in invoice_for_period(late, 3).lines] == [("basic", 3), ("extra", 3)]
    # A stop afterwards credits May's invoice: billed minus what is used, line by line.
    end = date(2024, 4, 1) + timedelta(stop_offset)
    stopped = replace(mark_billed(late, 2), end_date=end)
    credit = credit_for_early_stop(may, stopped)
    used = invoice_for_period(stopped, 2)
    assert may.amount_debit - (credit.amount_credit if credit else 0) == used.amount_debit
