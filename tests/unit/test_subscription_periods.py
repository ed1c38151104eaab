"""Period arithmetic and billing dates of bill runs (services/subscription/domain.py)."""

from __future__ import annotations

import calendar
from datetime import date, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.limits import MAX_INTERVAL_COUNT
from contracts.subscription import BillingInterval, BillingTiming, IntervalUnit
from services.subscription.domain import (
    BillingState,
    PlanVersion,
    add_months,
    billing_date,
    due_periods,
    mark_billed,
    next_billing_date,
    period_bounds,
    period_start,
)

MONTHS = {IntervalUnit.MONTH: 1, IntervalUnit.QUARTER: 3, IntervalUnit.YEAR: 12}
DAYS = {IntervalUnit.DAY: 1, IntervalUnit.WEEK: 7}

starts = st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31))


@st.composite
def intervals(draw: st.DrawFn, max_count: int | None = None) -> BillingInterval:
    unit = draw(st.sampled_from(list(IntervalUnit)))
    limit = MAX_INTERVAL_COUNT[unit.value]
    count = draw(st.integers(1, min(limit, max_count) if max_count else limit))
    return BillingInterval(unit=unit, count=count)


def interval(unit: str, count: int = 1) -> BillingInterval:
    return BillingInterval(unit=IntervalUnit(unit), count=count)


def state(**changes: object) -> BillingState:
    values: dict[str, object] = {
        "subscription_key": "sub-1",
        "currency": "EUR",
        "interval": interval("month"),
        "timing": BillingTiming.ADVANCE,
        "start_date": date(2024, 1, 31),
        "plans": (
            PlanVersion(
                product_code="basic",
                description="Basic",
                unit_price=Decimal("10.00"),
                quantity=Decimal(1),
                vat_percentage=Decimal(21),
                start_date=date(2024, 1, 31),
            ),
        ),
    }
    values.update(changes)
    return BillingState(**values)  # type: ignore[arg-type]


# --- examples ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "unit", "count", "index", "expected"),
    [
        (date(2024, 1, 31), "month", 1, 2, date(2024, 2, 29)),  # leap year
        (date(2023, 1, 31), "month", 1, 2, date(2023, 2, 28)),
        (date(2024, 1, 31), "month", 1, 3, date(2024, 3, 31)),  # anchored, not Mar 29
        (date(2024, 1, 31), "month", 1, 4, date(2024, 4, 30)),
        (date(2024, 1, 31), "month", 1, 5, date(2024, 5, 31)),
        (date(2024, 1, 31), "month", 2, 2, date(2024, 3, 31)),
        (date(2024, 11, 30), "quarter", 1, 2, date(2025, 2, 28)),
        (date(2024, 11, 30), "quarter", 1, 3, date(2025, 5, 30)),
        (date(2024, 2, 29), "year", 1, 2, date(2025, 2, 28)),
        (date(2024, 2, 29), "year", 1, 5, date(2028, 2, 29)),  # back on the 29th
        (date(2024, 2, 29), "year", 4, 2, date(2028, 2, 29)),
        (date(2024, 12, 31), "day", 1, 2, date(2025, 1, 1)),
        (date(2024, 2, 28), "day", 3, 2, date(2024, 3, 2)),
        (date(2024, 2, 26), "week", 1, 2, date(2024, 3, 4)),
        (date(2024, 2, 26), "week", 2, 3, date(2024, 3, 25)),
        (date(2024, 5, 15), "month", 1, 1, date(2024, 5, 15)),
    ],
)
def test_period_start_examples(
    start: date, unit: str, count: int, index: int, expected: date
) -> None:
    assert period_start(start, interval(unit, count), index) == expected


def test_period_indices_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        period_start(date(2024, 1, 1), interval("month"), 0)


def test_february_period_of_a_month_end_subscription() -> None:
    assert period_bounds(date(2024, 1, 31), interval("month"), 2) == (
        date(2024, 2, 29),
        date(2024, 3, 31),
    )


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=300)
@given(start=starts, every=intervals(), index=st.integers(1, 40))
def test_periods_are_contiguous_and_not_empty(
    start: date, every: BillingInterval, index: int
) -> None:
    first, end = period_bounds(start, every, index)
    next_first, _ = period_bounds(start, every, index + 1)
    assert first < end  # at least one day
    assert end == next_first  # no gap, no overlap
    assert period_start(start, every, 1) == start


@settings(max_examples=300)
@given(start=starts, every=intervals(), index=st.integers(1, 40))
def test_period_length_matches_the_interval(
    start: date, every: BillingInterval, index: int
) -> None:
    first, end = period_bounds(start, every, index)
    days = (end - first).days
    if every.unit in DAYS:
        assert days == every.count * DAYS[every.unit]
    else:
        months = every.count * MONTHS[every.unit]
        assert 28 * months - 3 <= days <= 31 * months + 3
        # the start's day of month, clamped to the month's length: never cumulative
        last = calendar.monthrange(first.year, first.month)[1]
        assert first.day == min(start.day, last)


@settings(max_examples=300)
@given(start=starts, months=st.integers(0, 1200))
def test_month_arithmetic_is_anchored(start: date, months: int) -> None:
    shifted = add_months(start, months)
    assert (shifted.year - start.year) * 12 + shifted.month - start.month == months
    assert shifted.day == min(start.day, calendar.monthrange(shifted.year, shifted.month)[1])
    if start.day <= 28:
        assert shifted.day == start.day


@given(year=st.integers(1990, 2100).filter(calendar.isleap), years=st.integers(1, 40))
def test_february_29_anchor(year: int, years: int) -> None:
    shifted = period_start(date(year, 2, 29), interval("year"), years + 1)
    leap = calendar.isleap(year + years)
    assert shifted == date(year + years, 2, 29 if leap else 28)


# --- billing dates -------------------------------------------------------------------------


def test_advance_bills_at_the_start_and_arrears_the_day_after_the_end() -> None:
    assert billing_date(state(), 2) == date(2024, 2, 29)
    assert billing_date(state(timing=BillingTiming.ARREARS), 2) == date(2024, 3, 31)


@pytest.mark.parametrize(
    ("timing", "day", "index", "expected"),
    [
        (BillingTiming.ADVANCE, 1, 1, date(2024, 1, 31)),
        (BillingTiming.ADVANCE, 5, 2, date(2024, 3, 4)),  # Feb 29 + 4 days
        (BillingTiming.ADVANCE, 31, 2, date(2024, 3, 30)),  # clamped: last day of period 2
        (BillingTiming.ARREARS, 3, 1, date(2024, 3, 2)),  # 3rd day of period 2
        (BillingTiming.ARREARS, 31, 1, date(2024, 3, 30)),  # clamped to period 2's last day
    ],
)
def test_billing_day(timing: BillingTiming, day: int, index: int, expected: date) -> None:
    assert billing_date(state(timing=timing, billing_day=day), index) == expected


@settings(max_examples=200)
@given(
    start=starts,
    every=intervals(max_count=3),
    timing=st.sampled_from(list(BillingTiming)),
    day=st.none() | st.integers(1, 400),
    index=st.integers(1, 30),
)
def test_billing_dates_increase_and_stay_in_their_period(
    start: date, every: BillingInterval, timing: BillingTiming, day: int | None, index: int
) -> None:
    subscription = state(start_date=start, interval=every, timing=timing, billing_day=day)
    billed = billing_date(subscription, index)
    assert billed < billing_date(subscription, index + 1)
    in_period = index if timing == BillingTiming.ADVANCE else index + 1
    first, end = period_bounds(start, every, in_period)
    assert first <= billed < end


# --- due periods ---------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    start=starts,
    every=intervals(max_count=2),
    timing=st.sampled_from(list(BillingTiming)),
    day=st.none() | st.integers(1, 40),
    billed=st.integers(0, 5),
    missed=st.integers(0, 6),
)
def test_due_periods_catch_up_every_missed_period(
    start: date,
    every: BillingInterval,
    timing: BillingTiming,
    day: int | None,
    billed: int,
    missed: int,
) -> None:
    subscription = state(
        start_date=start,
        interval=every,
        timing=timing,
        billing_day=day,
        next_period_index=billed + 1,
    )
    expected = list(range(billed + 1, billed + 1 + missed))
    # the day before the next period after the missed ones is due
    as_of = billing_date(subscription, billed + 1 + missed) - timedelta(days=1)
    due = due_periods(subscription, as_of)
    assert due == expected
    assert all(index > billed for index in due)  # never a billed period
    assert due_periods(subscription, as_of, limit=2) == expected[:2]
    assert next_billing_date(subscription) == billing_date(subscription, billed + 1)


@settings(max_examples=200)
@given(
    start=starts,
    every=intervals(max_count=2),
    timing=st.sampled_from(list(BillingTiming)),
    offset=st.integers(0, 400),
)
def test_due_periods_respect_the_end_date(
    start: date, every: BillingInterval, timing: BillingTiming, offset: int
) -> None:
    end = start + timedelta(days=offset)
    subscription = state(start_date=start, interval=every, timing=timing, end_date=end)
    far = date(2999, 1, 1)
    due = due_periods(subscription, far)
    assert due  # the start is on or before the end: period 1 has at least a day
    assert all(period_start(start, every, index) <= end for index in due)
    assert period_start(start, every, due[-1] + 1) > end  # the next one starts after
    done = subscription
    for index in due:
        done = mark_billed(done, index)
    assert due_periods(done, far) == []
    assert next_billing_date(done) is None


def test_mark_billed_refuses_a_billed_or_skipped_period() -> None:
    once = mark_billed(state(), 1)
    with pytest.raises(ValueError, match="not the next"):
        mark_billed(once, 1)
    with pytest.raises(ValueError, match="not the next"):
        mark_billed(once, 3)
