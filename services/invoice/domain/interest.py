"""Statutory interest on an invoice (pure; docs/interest.md).

The invoice keeps its money over time: after every change (`Result.add`) the totals
that changed since the last change are written down with the merchant's local day
(`record_money`). From that history, the debtor kind (a person owes the wettelijke
rente, 6:119 BW, a company the handelsrente, 6:119a BW) and the due date,
`contracts.interest.statutory_interest` computes the interest; the invoice keeps what
had accrued on the day of its last change (`interest_accrued`, in its snapshot).

A scheme opts in with an AdminCostIncrease step whose `admin_cost` is `interest`: it
adds the interest accrued so far, less what earlier interest steps added, as admin
costs (`interest_booked` keeps how much of the admin costs is interest).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from typing import Protocol

from contracts.fields import minor_unit
from contracts.interest import (
    InterestKind,
    InterestResult,
    Movement,
    MovementKind,
    money,
    rates,
    statutory_interest,
)
from services.invoice.domain.merchant import local_day
from services.invoice.domain.model import ZERO, Invoice, MoneyDay, S

#: The money the history records: principal, costs (not booked interest), paid, refunded.
Totals = tuple[Decimal, Decimal, Decimal, Decimal]
#: The `Reason` of the IncreasedAdminFee such a step emits.
INTEREST_REASON = "statutory_interest"
#: Invoices that accrue no interest: never active (90), or no longer applying (91).
NO_INTEREST = frozenset({S.REJECTED, S.CANCELLED})


class MoneyTotals(Protocol):
    """What the money history is written from: an `Invoice`, or an `InvoiceSnapshot` as
    an event carries it (the console rebuilds the history from those)."""

    @property
    def amount_debit(self) -> Decimal: ...
    @property
    def amount_credit_notes(self) -> Decimal: ...
    @property
    def amount_admin_costs(self) -> Decimal: ...
    @property
    def interest_booked(self) -> Decimal: ...
    @property
    def amount_paid(self) -> Decimal: ...
    @property
    def amount_credit(self) -> Decimal: ...


def money_totals(invoice: MoneyTotals) -> Totals:
    """What the history records: the principal (debit less credit notes), costs other
    than booked interest, payments, refunds."""
    return (
        invoice.amount_debit - invoice.amount_credit_notes,
        invoice.amount_admin_costs - invoice.interest_booked,
        invoice.amount_paid,
        invoice.amount_credit,
    )


def history_of(points: Iterable[tuple[date, Totals]]) -> list[MoneyDay]:
    """The money history from the totals (`money_totals`) after each change, in order,
    with the day of each: what `record_money` writes down change by change (one entry per
    day, what changed since the change before)."""
    history: list[MoneyDay] = []
    before: Totals = (ZERO, ZERO, ZERO, ZERO)
    for day, totals in points:
        if totals != before:
            history = _added(history, day, _minus(totals, before))
        before = totals
    return history


def _minus(totals: Totals, before: Totals) -> Totals:
    return (
        totals[0] - before[0],
        totals[1] - before[1],
        totals[2] - before[2],
        totals[3] - before[3],
    )


def _unrecorded(invoice: Invoice) -> Totals | None:
    """What changed in the money since the history's last entry, None when nothing did
    (the hot path: most changes move no money)."""
    principal = costs = paid = refunded = ZERO
    for entry in invoice.money_history:
        principal += entry.principal
        costs += entry.costs
        paid += entry.paid
        refunded += entry.refunded
    now_principal, now_costs, now_paid, now_refunded = money_totals(invoice)
    if (
        now_principal == principal
        and now_costs == costs
        and now_paid == paid
        and now_refunded == refunded
    ):
        return None
    return (
        now_principal - principal,
        now_costs - costs,
        now_paid - paid,
        now_refunded - refunded,
    )


def record_money(invoice: Invoice, day: date) -> None:
    """Write down what changed in the invoice's money since its last change, on `day`
    (one entry per day: a second change on the same day adds to it)."""
    deltas = _unrecorded(invoice)
    if deltas is not None:
        _record(invoice, day, deltas)


def _record(invoice: Invoice, day: date, deltas: Totals) -> None:
    invoice.money_history = _added(invoice.money_history, day, deltas)


def _added(entries: list[MoneyDay], day: date, deltas: Totals) -> list[MoneyDay]:
    """The history with `deltas` written down on `day` (added to the last entry when it
    is of the same day)."""
    history = list(entries)
    if history and history[-1].day == day:
        last = history[-1]
        history[-1] = MoneyDay(
            day=day,
            principal=last.principal + deltas[0],
            costs=last.costs + deltas[1],
            paid=last.paid + deltas[2],
            refunded=last.refunded + deltas[3],
        )
    else:
        history.append(
            MoneyDay(
                day=day, principal=deltas[0], costs=deltas[1], paid=deltas[2], refunded=deltas[3]
            )
        )
    return history


def movements(invoice: Invoice) -> list[Movement]:
    """The invoice's history as the interest function reads it (`history_movements`)."""
    return history_movements(invoice.money_history)


def history_movements(history: Iterable[MoneyDay]) -> list[Movement]:
    """A money history as the interest function reads it; within a day: the principal
    and costs first, then payments, then refunds."""
    out = []
    for entry in history:
        for kind, amount in (
            (MovementKind.PRINCIPAL, entry.principal),
            (MovementKind.COSTS, entry.costs),
            (MovementKind.PAYMENT, entry.paid),
            (MovementKind.REFUND, entry.refunded),
        ):
            if amount:
                out.append(Movement(entry.day, kind, amount))
    return out


def interest_on(invoice: Invoice, day: date) -> InterestResult | None:
    """The invoice's statutory interest up to and including `day`, None when it accrues
    none (`interest_of`)."""
    return interest_of(
        invoice.money_history,
        InterestKind.of_debtor(invoice.debtor_is_person),
        invoice.due_date,
        invoice.status,
        day,
    )


def interest_of(
    history: Iterable[MoneyDay], kind: InterestKind, due_date: date, status: int, day: date
) -> InterestResult | None:
    """The statutory interest on a money history up to and including `day`, None when it
    accrues none: Rejected or Cancelled, not overdue on `day`, or due before the rate
    table starts (docs/interest.md). The invoice service's rule, and the console's."""
    if status in NO_INTEREST or day <= due_date:
        return None
    table = rates()
    if due_date < table.starts(kind):
        return None
    return statutory_interest(history_movements(history), kind, due_date, day, table)


def accrue(invoice: Invoice, now: datetime) -> None:
    """After a change: the money history written down on the merchant's day of `now`,
    and the interest accrued up to that day (rounded to the currency's digits)."""
    deltas = _unrecorded(invoice)
    if deltas is None and now.date() < invoice.due_date:
        # Nothing to write down, and not overdue in any time zone: no zone's day is more
        # than one day after UTC's, so the merchant's day is at most the due date.
        invoice.interest_accrued = ZERO
        return
    day = local_day(now, invoice.time_zone)
    if deltas is not None:
        _record(invoice, day, deltas)
    result = interest_on(invoice, day)
    accrued = ZERO if result is None else money(result.total, minor_unit(invoice.currency))
    invoice.interest_accrued = accrued


def book_interest(invoice: Invoice, now: datetime) -> dict[str, str]:
    """An interest step: add the interest accrued up to the merchant's day of `now`,
    rounded, less what interest steps added before (never below zero), to the admin
    costs. Returns the IncreasedAdminFee's parameters: `Amount` (what was added),
    `Reason` `statutory_interest`, `InterestAccrued` (all interest so far), `InterestUntil`
    (the last day counted) and `InterestKind` (`consumer` 6:119, `commercial` 6:119a)."""
    day = local_day(now, invoice.time_zone)
    record_money(invoice, day)
    result = interest_on(invoice, day)
    digits = minor_unit(invoice.currency)
    accrued = ZERO if result is None else money(result.total, digits)
    amount = money(max(ZERO, accrued - invoice.interest_booked), digits)
    invoice.amount_admin_costs += amount
    invoice.interest_booked += amount
    invoice.interest_accrued = accrued
    return {
        "Amount": str(amount),
        "Reason": INTEREST_REASON,
        "InterestAccrued": str(accrued),
        "InterestUntil": day.isoformat(),
        "InterestKind": InterestKind.of_debtor(invoice.debtor_is_person).value,
    }
