"""Bill runs: periods, billing dates, prorated lines, period invoices and early-stop credits.

Pure: no I/O, no clock. Every function takes a `BillingState` (what the subscription
service keeps about a subscription's billing) and a period index or a date, and returns
what that means. Handlers load the state, call these, save and enqueue. The rules are
written out in docs/subscriptions.md; the rounding choices in docs/decisions.md.

- Periods are numbered from 1. Period `i` starts `i - 1` intervals after the start date;
  months (and quarters, years) are counted from the start date itself and clamped to the
  month's last day, so Jan 31 + 1 month = Feb 28/29 and + 2 months = Mar 31.
- Money is `Decimal`; the exact arithmetic in between is `Fraction`, so no Decimal
  context (precision, traps) can round an intermediate result.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from contracts.fields import minor_unit
from contracts.subscription import BillingInterval, BillingTiming, IntervalUnit

ZERO = Decimal(0)
ONE_DAY = timedelta(days=1)
#: Months per interval unit for the month-based units.
_MONTHS: dict[IntervalUnit, int] = {
    IntervalUnit.MONTH: 1,
    IntervalUnit.QUARTER: 3,
    IntervalUnit.YEAR: 12,
}
#: Days per interval unit for the day-based units.
_DAYS: dict[IntervalUnit, int] = {IntervalUnit.DAY: 1, IntervalUnit.WEEK: 7}
#: Payment term (invoice date to due date) when the subscription names none.
DEFAULT_PAYMENT_TERM_DAYS = 14


# --- state ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanVersion:
    """A rate plan's terms from one period on.

    A price or quantity change adds a version with `effective_from_period` = the first
    unbilled period (`change_plan`); a period is billed with the plan's version of the
    highest `effective_from_period` not above its index. Billed periods keep their
    version, so an invoice (and the credit for an early stop) can always be recomputed.
    The dates (`start_date`, `end_date`, both inclusive) are the plan's and shared by
    all its versions.

    `billed_from_period` is the first period whose invoice carries the plan: 1 for the
    plans a subscription starts with; for a plan added later, the first period not yet
    billed then. Its days inside periods billed before (an advance period that runs
    when the plan starts) are caught up on that invoice, as lines of their own.
    """

    product_code: str
    description: str
    unit_price: Decimal
    quantity: Decimal
    vat_percentage: Decimal
    start_date: date
    end_date: date | None = None
    effective_from_period: int = 1
    billed_from_period: int = 1


@dataclass(frozen=True)
class BillingState:
    """What a bill run needs to know about one subscription."""

    subscription_key: str
    currency: str
    interval: BillingInterval
    timing: BillingTiming
    start_date: date
    #: The last day billed (inclusive), if set.
    end_date: date | None = None
    #: The day of the period on which it is invoiced (1 = its first day); see `billing_date`.
    billing_day: int | None = None
    payment_term_days: int = DEFAULT_PAYMENT_TERM_DAYS
    plans: tuple[PlanVersion, ...] = ()
    #: Periods `1 .. next_period_index - 1` are billed; bill runs bill in order.
    next_period_index: int = 1


# --- periods -------------------------------------------------------------------------------


def add_months(start: date, months: int) -> date:
    """`start` + `months`, on the start's day of the month, clamped to the month's end."""
    year, month0 = divmod(start.month - 1 + months, 12)
    year += start.year
    day = min(start.day, calendar.monthrange(year, month0 + 1)[1])
    return date(year, month0 + 1, day)


def period_start(start: date, interval: BillingInterval, index: int) -> date:
    """The first day of period `index` (from 1): anchored on `start`, never cumulative."""
    if index < 1:
        raise ValueError(f"period indices start at 1, not {index}")
    steps = (index - 1) * interval.count
    if interval.unit in _MONTHS:
        return add_months(start, steps * _MONTHS[interval.unit])
    return start + timedelta(days=steps * _DAYS[interval.unit])


def period_bounds(start: date, interval: BillingInterval, index: int) -> tuple[date, date]:
    """Period `index` as `(first day, first day of the next period)`: end exclusive."""
    return period_start(start, interval, index), period_start(start, interval, index + 1)


def _bounds(state: BillingState, index: int) -> tuple[date, date]:
    return period_bounds(state.start_date, state.interval, index)


# --- billing dates -------------------------------------------------------------------------


def billing_date(state: BillingState, index: int) -> date:
    """The day period `index` is invoiced.

    - `advance`: on the period's first day; with a billing day `d`, on its `d`-th day.
    - `arrears`: on the day after the period's last day (the next period's first day);
      with a billing day `d`, on the `d`-th day of the period that follows.

    A billing day beyond the period it falls in is clamped to that period's last day
    (billing day 31 in a monthly subscription is the last day of February in February).
    Billing dates strictly increase with the index.
    """
    if state.timing == BillingTiming.ADVANCE:
        first, end = _bounds(state, index)
    else:
        first, end = _bounds(state, index + 1)
    if state.billing_day is None:
        return first
    return min(first + timedelta(days=state.billing_day - 1), end - ONE_DAY)


def is_billable(state: BillingState, index: int) -> bool:
    """Whether period `index` is within the subscription: it starts on or before the end
    date (the end date is the last day billed, so a period starting on it has one day)."""
    return state.end_date is None or period_start(state.start_date, state.interval, index) <= (
        state.end_date
    )


def due_periods(state: BillingState, as_of: date, limit: int | None = None) -> list[int]:
    """Every unbilled period whose billing date is on or before `as_of` and that lies
    within the subscription, in order: a run after missed runs catches up all of them.
    `limit` caps how many one run returns (the rest are due on the next run)."""
    due: list[int] = []
    index = state.next_period_index
    while (limit is None or len(due) < limit) and is_billable(state, index):
        if billing_date(state, index) > as_of:
            break  # billing dates increase with the index: none later is due either
        due.append(index)
        index += 1
    return due


def next_billing_date(state: BillingState) -> date | None:
    """When the next unbilled period is invoiced (the bill-run timer); None when the end
    date leaves no period to bill."""
    index = state.next_period_index
    return billing_date(state, index) if is_billable(state, index) else None


# --- rounding ------------------------------------------------------------------------------


def round_to_minor(value: Fraction, currency: str) -> Decimal:
    """`value` rounded half-even to the currency's minor unit, exactly."""
    digits = minor_unit(currency)
    units = round(value * 10**digits)  # round() of a Fraction is exact and half-even
    return Decimal(units).scaleb(-digits)


def allocated(total: Fraction, days: int, period_days: int, currency: str) -> Decimal:
    """The rounded share of `total` for the first `days` of a period of `period_days`.

    A part of the period (days `a` up to `b`) is charged `allocated(b) - allocated(a)`:
    consecutive parts then always add up to `allocated(period_days)`, the whole period's
    rounded amount, and no part has the opposite sign of the total.
    """
    return round_to_minor(total * days / period_days, currency)


def vat_of(net: Decimal, vat_percentage: Decimal, currency: str) -> Decimal:
    """The VAT of a rounded net amount: `net * rate / 100`, rounded half-even."""
    return round_to_minor(Fraction(net) * Fraction(vat_percentage) / 100, currency)


# --- period invoices -----------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodLine:
    """One rate plan's line on a period invoice."""

    product_code: str
    description: str
    unit_price: Decimal
    quantity: Decimal
    vat_percentage: Decimal
    #: The days of the period the plan was active: `active_from` .. `active_until`,
    #: both inclusive, `active_days` of the period's `period_days`.
    active_from: date
    active_until: date
    active_days: int
    period_days: int
    net_amount: Decimal
    vat_amount: Decimal
    #: The period whose days the line bills: the invoice's own, or an earlier one for
    #: the catch-up line of a plan added after that period was billed.
    for_period: int = 1

    @property
    def amount(self) -> Decimal:
        """The line's amount including VAT."""
        return self.net_amount + self.vat_amount

    @property
    def is_prorated(self) -> bool:
        return self.active_days < self.period_days

    @property
    def key(self) -> tuple[str, int]:
        """Identifies the line within its invoice."""
        return (self.product_code, self.for_period)


class _LineTotals:
    """Net and VAT totals of a document's lines, in its currency (a mixin of the
    invoice and the credit of a period)."""

    currency: str
    lines: tuple[Any, ...]

    @property
    def amount_net(self) -> Decimal:
        return sum((line.net_amount for line in self.lines), _zero(self.currency))

    @property
    def amount_vat(self) -> Decimal:
        return sum((line.vat_amount for line in self.lines), _zero(self.currency))


@dataclass(frozen=True)
class PeriodInvoice(_LineTotals):
    """What the bill run invoices for one period."""

    subscription_key: str
    period_index: int
    invoice_number: str
    invoice_date: date
    due_date: date
    currency: str
    #: The period: `period_start` up to `period_end` (exclusive: the next period's start).
    period_start: date
    period_end: date
    lines: tuple[PeriodLine, ...] = field(default=())

    @property
    def amount_debit(self) -> Decimal:
        """The invoice amount including VAT."""
        return self.amount_net + self.amount_vat


def _zero(currency: str) -> Decimal:
    return Decimal(0).scaleb(-minor_unit(currency))


def invoice_number(subscription_key: str, index: int) -> str:
    """Period `index`'s invoice: `{key}-{index}`. It fits an identifier for every key of
    at most MAX_SUBSCRIPTION_KEY_LENGTH and every index up to MAX_PERIOD_INDEX
    (contracts/limits.py reserves the room)."""
    return f"{subscription_key}-{index}"


def credit_note_number(invoice_number: str, end: date, earlier: int) -> str:
    """A credit note for the days after `end` on a period's invoice: `{invoice}-CR-{yyyymmdd}`,
    and `-{n}` for the invoice's n-th credit note (`earlier` came before it). It fits an
    identifier up to MAX_PERIOD_CREDIT_NOTES (contracts/limits.py)."""
    return f"{invoice_number}-CR-{end.strftime('%Y%m%d')}" + (f"-{earlier + 1}" if earlier else "")


def plan_version(state: BillingState, product_code: str, index: int) -> PlanVersion | None:
    """The version of a plan that period `index` is billed with."""
    versions = [
        plan
        for plan in state.plans
        if plan.product_code == product_code and plan.effective_from_period <= index
    ]
    return max(versions, key=lambda plan: plan.effective_from_period, default=None)


def _product_codes(state: BillingState) -> list[str]:
    return list(dict.fromkeys(plan.product_code for plan in state.plans))


def period_line(state: BillingState, plan: PlanVersion, index: int) -> PeriodLine | None:
    """The plan's line for period `index`, prorated by days; None when the plan is not
    active on any day of the period (or of the subscription within it)."""
    first, end = _bounds(state, index)
    last_days = [end - ONE_DAY]
    if plan.end_date is not None:
        last_days.append(plan.end_date)
    if state.end_date is not None:
        last_days.append(state.end_date)
    active_from = max(first, plan.start_date, state.start_date)
    active_until = min(last_days)
    if active_until < active_from:
        return None
    period_days = (end - first).days
    days_before = (active_from - first).days
    days_through = (active_until - first).days + 1
    total = Fraction(plan.unit_price) * Fraction(plan.quantity)
    net = allocated(total, days_through, period_days, state.currency) - allocated(
        total, days_before, period_days, state.currency
    )
    return PeriodLine(
        product_code=plan.product_code,
        description=plan.description,
        unit_price=plan.unit_price,
        quantity=plan.quantity,
        vat_percentage=plan.vat_percentage,
        active_from=active_from,
        active_until=active_until,
        active_days=days_through - days_before,
        period_days=period_days,
        net_amount=net,
        vat_amount=vat_of(net, plan.vat_percentage, state.currency),
        for_period=index,
    )


def catch_up_lines(state: BillingState, product_code: str, index: int) -> list[PeriodLine]:
    """The lines of a plan added when period `index` was the first unbilled one, for
    its days in the periods billed before (in period order)."""
    lines = []
    earlier = index - 1
    while earlier >= 1:
        plan = plan_version(state, product_code, earlier)
        if plan is None:
            break
        line = period_line(state, plan, earlier)
        if line is None:
            break  # the plan starts in a later period: nothing before this one either
        lines.append(line)
        earlier -= 1
    return lines[::-1]


def invoice_for_period(state: BillingState, index: int) -> PeriodInvoice:
    """The invoice of period `index`: one line per plan active in it, in the order the
    plans were added, each followed by its catch-up lines when it was added after
    earlier periods were billed (`PlanVersion.billed_from_period`). A period with no
    active plan has no lines (amount zero)."""
    first, end = _bounds(state, index)
    invoice_date = billing_date(state, index)
    lines = []
    for code in _product_codes(state):
        plan = plan_version(state, code, index)
        if plan is None or plan.billed_from_period > index:
            continue
        line = period_line(state, plan, index)
        if line is not None:
            lines.append(line)
        if plan.billed_from_period == index > 1:
            lines += catch_up_lines(state, code, index)
    return PeriodInvoice(
        subscription_key=state.subscription_key,
        period_index=index,
        invoice_number=invoice_number(state.subscription_key, index),
        invoice_date=invoice_date,
        due_date=invoice_date + timedelta(days=state.payment_term_days),
        currency=state.currency,
        period_start=first,
        period_end=end,
        lines=tuple(lines),
    )


# --- changes -------------------------------------------------------------------------------


def change_plan(
    state: BillingState,
    product_code: str,
    unit_price: Decimal | None = None,
    quantity: Decimal | None = None,
) -> BillingState:
    """A new price or quantity for a plan, from the first unbilled period on. A second
    change before that period is billed replaces the first."""
    current = plan_version(state, product_code, state.next_period_index)
    if current is None:
        raise KeyError(product_code)
    changed = replace(
        current,
        unit_price=current.unit_price if unit_price is None else unit_price,
        quantity=current.quantity if quantity is None else quantity,
        effective_from_period=state.next_period_index,
    )
    kept = tuple(
        plan
        for plan in state.plans
        if not (
            plan.product_code == product_code
            and plan.effective_from_period >= state.next_period_index
        )
    )
    return replace(state, plans=(*kept, changed))


def stop_plan(state: BillingState, product_code: str, end_date: date) -> BillingState:
    """An end date (last day billed) for a plan: every version shares it."""
    if not any(plan.product_code == product_code for plan in state.plans):
        raise KeyError(product_code)
    return replace(
        state,
        plans=tuple(
            replace(plan, end_date=end_date) if plan.product_code == product_code else plan
            for plan in state.plans
        ),
    )


def mark_billed(state: BillingState, index: int) -> BillingState:
    """The state after period `index`, the next unbilled one, is billed."""
    if index != state.next_period_index:
        raise ValueError(f"period {index} is not the next to bill ({state.next_period_index})")
    return replace(state, next_period_index=index + 1)


# --- early stops ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CreditLine:
    """What one line of a billed period gives back."""

    product_code: str
    description: str
    unused_days: int
    net_amount: Decimal
    vat_amount: Decimal

    @property
    def amount(self) -> Decimal:
        return self.net_amount + self.vat_amount


@dataclass(frozen=True)
class PeriodCredit(_LineTotals):
    """The credit for the days of a billed period that the subscription no longer runs."""

    invoice_number: str
    period_index: int
    currency: str
    lines: tuple[CreditLine, ...]

    @property
    def amount_credit(self) -> Decimal:
        """The credit note's amount including VAT."""
        return self.amount_net + self.amount_vat


def credit_for_early_stop(billed: PeriodInvoice, stopped: BillingState) -> PeriodCredit | None:
    """The credit for a billed period after an earlier end date (of the subscription or
    of plans) in `stopped`; None when nothing is given back.

    Each billed line gives back what was billed minus what the period costs now:
    `billed - credit` is exactly the prorated used part, net and VAT alike, because both
    are cut from the same cumulative allocation. Plans added after the period was billed
    are not in `billed` and give nothing back.
    """
    used = {line.key: line for line in invoice_for_period(stopped, billed.period_index).lines}
    lines = []
    for line in billed.lines:
        now = used.get(line.key)
        net = line.net_amount - (now.net_amount if now else ZERO)
        vat = line.vat_amount - (now.vat_amount if now else ZERO)
        if net or vat:
            lines.append(
                CreditLine(
                    product_code=line.product_code,
                    description=line.description,
                    unused_days=line.active_days - (now.active_days if now else 0),
                    net_amount=net,
                    vat_amount=vat,
                )
            )
    if not lines:
        return None
    return PeriodCredit(
        invoice_number=billed.invoice_number,
        period_index=billed.period_index,
        currency=billed.currency,
        lines=tuple(lines),
    )
