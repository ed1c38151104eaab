"""Payment plans (pure; docs/invoices.md "Payment plans"): the installment schedule,
pausing the originals, forwarding installment payments to them and taking refunds back,
settling and terminating the plan."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from contracts.envelope import FieldError
from contracts.fields import minor_unit
from contracts.invoice import EventCategory, InvoiceEventName, InvoiceType
from contracts.limits import MAX_IDENTIFIER_LENGTH
from contracts.payments import TransactionStatus
from services.invoice.domain.amounts import Transaction, money_errors
from services.invoice.domain.creation import new_invoice_key
from services.invoice.domain.model import ZERO, Invoice, S, SchemeStepState
from services.invoice.domain.outcome import EventOut, Outcome
from services.invoice.domain.status import FINAL, change_status, status_name


class PaymentPlan(BaseModel):
    """A payment plan: the originals it pauses and the installments that pay them."""

    model_config = ConfigDict(extra="ignore")

    website_key: str
    dossier_number: str
    status: str = "active"  # active | paid | terminated
    currency: str
    original_numbers: list[str]
    installment_numbers: list[str]
    total: Decimal
    cost: Decimal
    cost_paid: Decimal = ZERO
    #: transaction key on an installment → [(original number, amount forwarded)]
    forwarded: dict[str, list[tuple[str, Decimal]]] = Field(default_factory=dict)
    request_hash: str = ""


@dataclass
class PlanInvoices:
    """A payment plan and its invoices, as a change that touches them loads them."""

    plan: PaymentPlan
    originals: list[Invoice]
    installments: list[Invoice]


@dataclass(frozen=True)
class InstallmentPlan:
    number: str
    amount: Decimal
    due_date: date


def installment_numbers(dossier: str, count: int) -> list[str]:
    """A plan's installments are numbered `{dossier}-1..n`."""
    return [f"{dossier}-{i + 1}" for i in range(count)]


def dossier_errors(dossier: str, count: int) -> list[FieldError]:
    """A dossier number leaves room for its installments' numbers: `{dossier}-{count}`,
    the longest, must fit an identifier, or its events would not parse downstream."""
    room = MAX_IDENTIFIER_LENGTH - len(f"-{count}")
    if len(dossier) <= room:
        return []
    return [
        FieldError(
            "payload.dossier_number",
            "too_long",
            f"with {count} installments a dossier number has at most {room} characters, so "
            f"that the installment numbers `{{dossier_number}}-1..{count}` fit "
            f"{MAX_IDENTIFIER_LENGTH}",
        )
    ]


def add_interval(start: date, interval: str, count: int) -> date:
    if interval == "week":
        return start + timedelta(weeks=count)
    month_index = start.month - 1 + count
    year, month = start.year + month_index // 12, month_index % 12 + 1
    for day in range(start.day, 27, -1):  # the 31st becomes the month's last day
        try:
            return date(year, month, day)
        except ValueError:
            continue
    return date(year, month, min(start.day, 28))


def plan_installments(
    *,
    dossier: str,
    total: Decimal,
    initial_amount: Decimal,
    cost: Decimal,
    count: int,
    start_date: date,
    interval: str,
    currency: str,
) -> list[InstallmentPlan]:
    """The first installment is `initial_amount` + the plan cost; the rest split the
    remainder evenly, the last absorbing the rounding."""
    quantum = Decimal(1).scaleb(-minor_unit(currency))
    if count == 1:
        amounts = [total + cost]
    else:
        rest = total - initial_amount
        each = (rest / (count - 1)).quantize(quantum, rounding="ROUND_DOWN")
        amounts = [initial_amount + cost] + [each] * (count - 2) + [rest - each * (count - 2)]
    return [
        InstallmentPlan(number, amount, add_interval(start_date, interval, i))
        for i, (number, amount) in enumerate(
            zip(installment_numbers(dossier, count), amounts, strict=True)
        )
    ]


# --- installment payments ------------------------------------------------------------------


def forward_payment(
    plan: PaymentPlan, originals: list[Invoice], amount: Decimal, transaction_key: str
) -> list[tuple[Invoice, Decimal]]:
    """Split a payment on an installment: the plan cost first, then the originals,
    oldest first, each up to what it has open (an overpayment stays on the last)."""
    to_cost = min(amount, max(ZERO, plan.cost - plan.cost_paid))
    plan.cost_paid += to_cost
    remaining = amount - to_cost
    shares: list[tuple[Invoice, Decimal]] = []
    ordered = sorted(originals, key=lambda inv: (inv.invoice_date, inv.invoice_number))
    for i, original in enumerate(ordered):
        if remaining <= ZERO:
            break
        last = i == len(ordered) - 1
        share = (
            remaining if last else min(remaining, max(ZERO, original.open_amount_incl_admin_costs))
        )
        if share > ZERO:
            shares.append((original, share))
            remaining -= share
    plan.forwarded[transaction_key] = [(inv.invoice_number, share) for inv, share in shares]
    return shares


def reverse_forwarded(
    plan: PaymentPlan, amount: Decimal, transaction_key: str
) -> list[tuple[str, Decimal]]:
    """Take a refund on an installment back from the originals it paid (newest share
    first), then from the plan cost."""
    taken: list[tuple[str, Decimal]] = []
    remaining = amount
    shares = plan.forwarded.get(transaction_key, [])
    kept: list[tuple[str, Decimal]] = list(shares)
    for number, share in reversed(shares):
        if remaining <= ZERO:
            break
        take = min(remaining, share)
        taken.append((number, take))
        remaining -= take
        kept.remove((number, share))
        if share - take > ZERO:
            kept.append((number, share - take))
    plan.forwarded[transaction_key] = kept
    plan.cost_paid -= min(remaining, plan.cost_paid)
    return taken


def forwarded_transactions(
    members: PlanInvoices, before: Invoice, after: Invoice, transaction: Transaction
) -> list[tuple[str, Transaction]]:
    """What a transaction booked on an installment books on the originals (by number):
    what it paid beyond the plan cost, or what a refund takes back, as a transaction
    `plan:{dossier}:{transaction key}` on each."""
    plan = members.plan
    key = f"plan:{plan.dossier_number}:{transaction.key}"
    paid = after.amount_paid - before.amount_paid
    credited = after.amount_credit - before.amount_credit
    bookings: list[tuple[str, Transaction]] = []
    if paid > ZERO:
        for original, share in forward_payment(plan, members.originals, paid, transaction.key):
            bookings.append(
                (
                    original.invoice_number,
                    Transaction(key, transaction.service, share, TransactionStatus.SUCCESS),
                )
            )
    if credited > ZERO:
        for number, amount in reverse_forwarded(plan, credited, transaction.key):
            bookings.append(
                (number, Transaction(key, transaction.service, amount, TransactionStatus.REFUNDED))
            )
    return bookings


def settle(
    plan: PaymentPlan, installments: list[Invoice], originals: list[Invoice], now: datetime
) -> dict[str, Outcome]:
    """A plan is paid when every installment is; a refund makes it active again.
    Returns the status moves of the originals (by number) this means.

    Paid, the plan lifts its originals' 22 (to 10): paid with the plan, they run no
    step, and a later chargeback or refund on one reopens it where its scheme stopped,
    like any paid invoice. Active again (a refund or chargeback on an installment), the
    plan pauses (22) those of its originals that are active again: the installments
    carry the debt once more. An original elsewhere (written off, at an agency) stays.
    """
    all_paid = all(inv.is_paid for inv in installments)
    if plan.status == "active" and all_paid:
        plan.status = "paid"
        command, frm, reason = "EndPaymentPlan", S.PAUSED_BY_PAYMENT_PLAN, "paid"
    elif plan.status == "paid" and not all_paid:
        plan.status = "active"
        command, frm, reason = "StartPaymentPlan", S.ACTIVE, "open again"
    else:
        return {}
    return {
        inv.invoice_number: change_status(
            inv, command, now, f"payment plan {plan.dossier_number} {reason}"
        )
        for inv in originals
        if inv.status == frm and inv.plan_dossier == plan.dossier_number
    }


# --- ending a plan -------------------------------------------------------------------------


def terminate(members: PlanInvoices, now: datetime) -> list[Outcome]:
    """Cancel (91) the open installments and reactivate (10) the originals, no longer
    in the plan."""
    outcomes = [
        change_status(installment, "CancelInstallment", now)
        for installment in members.installments
        if not installment.is_paid and installment.status not in FINAL
    ]
    for original in members.originals:
        if original.status == S.PAUSED_BY_PAYMENT_PLAN:
            outcome = change_status(original, "EndPaymentPlan", now)
            if outcome.invoice is not None:
                outcome.invoice.plan_dossier = None
            outcomes.append(outcome)
    members.plan.status = "terminated"
    return outcomes


# --- starting a plan -----------------------------------------------------------------------


def start_payment_plan(
    *,
    website_key: str,
    dossier: str,
    originals: list[Invoice],
    requested: list[str],
    installment_count: int,
    initial_amount: Decimal,
    cost: Decimal,
    start_date: date,
    interval: str,
    scheme_key: str,
    scheme_version: int | None,
    scheme_steps: list[SchemeStepState],
    now: datetime,
    fingerprint: str,
) -> tuple[PaymentPlan | None, list[Outcome], list[FieldError]]:
    """Pause the originals (22) and create the installment invoices."""
    errors = dossier_errors(dossier, installment_count)
    found = {inv.invoice_number for inv in originals}
    for i, number in enumerate(requested):
        if number not in found:
            errors.append(
                FieldError(
                    f"payload.included_invoice_numbers.{i}",
                    "unknown_invoice",
                    f"no invoice {number}",
                )
            )
    if len(set(requested)) != len(requested):
        errors.append(
            FieldError(
                "payload.included_invoice_numbers", "duplicate", "an invoice is listed twice"
            )
        )
    for inv in originals:
        i = requested.index(inv.invoice_number)
        if inv.status not in (S.ACTIVE, S.PAUSED):
            errors.append(
                FieldError(
                    f"payload.included_invoice_numbers.{i}",
                    "invalid_status",
                    f"{inv.invoice_number} is in status {status_name(inv.status)}",
                )
            )
        elif inv.is_paid:
            errors.append(
                FieldError(
                    f"payload.included_invoice_numbers.{i}",
                    "already_paid",
                    f"{inv.invoice_number} is paid",
                )
            )
    currencies = {inv.currency for inv in originals}
    if len(currencies) > 1:
        errors.append(
            FieldError(
                "payload.included_invoice_numbers",
                "mixed_currencies",
                "all invoices of a plan share one currency",
            )
        )
    if scheme_version is None:
        errors.append(
            FieldError(
                "payload.scheme_key",
                "unknown_scheme",
                f"no scheme {scheme_key!r} for this merchant",
            )
        )
    elif any(step.admin_cost == "statutory" for step in scheme_steps):
        errors.append(
            FieldError(
                "payload.scheme_key",
                "statutory_costs_in_plan",
                "a plan's scheme may not charge statutory costs again",
            )
        )
    currency = next(iter(currencies)) if len(currencies) == 1 else "EUR"
    errors += money_errors("payload.initial_amount", initial_amount, currency)
    errors += money_errors("payload.payment_plan_cost_amount", cost, currency)
    if errors:
        return None, [], errors
    total = sum((inv.open_amount_incl_admin_costs for inv in originals), ZERO)
    if initial_amount > total:
        return (
            None,
            [],
            [FieldError("payload.initial_amount", "exceeds_total", f"the plan's total is {total}")],
        )
    schedule = plan_installments(
        dossier=dossier,
        total=total,
        initial_amount=initial_amount,
        cost=cost,
        count=installment_count,
        start_date=start_date,
        interval=interval,
        currency=currency,
    )
    outcomes = [change_status(inv, "StartPaymentPlan", now) for inv in originals]
    for outcome in outcomes:
        if outcome.invoice is not None:
            outcome.invoice.plan_dossier = dossier
    first = min(originals, key=lambda inv: (inv.invoice_date, inv.invoice_number))
    for i, item in enumerate(schedule):
        installment = Invoice(
            website_key=website_key,
            invoice_number=item.number,
            invoice_key=new_invoice_key(),
            type=InvoiceType.PAYMENT_PLAN_INSTALLMENT,
            status=S.ACTIVE,
            is_test=first.is_test,
            culture=first.culture,
            time_zone=first.time_zone,  # the merchant's, as its invoices are read
            invoice_date=min(now.date(), item.due_date),
            due_date=item.due_date,
            description=f"Installment {i + 1} of {len(schedule)}, payment plan {dossier}",
            pay_link=first.pay_link,
            currency=currency,
            amount_debit=item.amount,
            debtor_code=first.debtor_code,
            scheme_key=scheme_key,
            scheme_version=scheme_version or 1,
            scheme_steps=scheme_steps,
            plan_dossier=dossier,
            created_at=now,
        )
        outcomes.append(
            Outcome(
                invoice=installment,
                events=[
                    EventOut(
                        InvoiceEventName.CHANGED_STATUS,
                        {"StatusCode": str(int(S.ACTIVE))},
                        EventCategory.FINANCIAL_CHANGE,
                    )
                ],
            )
        )
    plan = PaymentPlan(
        website_key=website_key,
        dossier_number=dossier,
        currency=currency,
        original_numbers=[inv.invoice_number for inv in originals],
        installment_numbers=[item.number for item in schedule],
        total=total,
        cost=cost,
        request_hash=fingerprint,
    )
    return plan, outcomes, []
