"""The invoice snapshot carried by every InvoiceEvent (pure).

Its next step is the step timer planned for the invoice (`timer_step`, `timer_due_at`,
set by `domain.schedule.plan_timer` as every change is finished), so a snapshot shows the
step the scheduler will fire and the time it is due, before a past due time becomes "now".
"""

from __future__ import annotations

from typing import Any

from contracts.debtor import DebtorSnapshot
from contracts.fields import KeyValueSnapshot, construct_complete, with_minor_unit
from contracts.interest import InterestKind
from contracts.invoice import InvoiceLineSnapshot, InvoiceSnapshot
from services.invoice.domain import Invoice


def debtor_snapshot(
    data: dict[str, Any] | None, unreachable: dict[str, bool] | None
) -> DebtorSnapshot | None:
    if data is None:
        return None
    return DebtorSnapshot.model_validate({**data, "unreachable": unreachable or {}})


def invoice_snapshot_validated(
    invoice: Invoice, debtor: DebtorSnapshot | None, debtor_guid: str | None
) -> InvoiceSnapshot:
    return InvoiceSnapshot(
        invoice_key=invoice.invoice_key,
        invoice_number=invoice.invoice_number,
        website_key=invoice.website_key,
        type=invoice.type,
        status_code=invoice.status,
        is_test=invoice.is_test,
        culture=invoice.culture,
        invoice_date=invoice.invoice_date,
        due_date=invoice.due_date,
        description=invoice.description,
        pay_link=invoice.pay_link,
        debtor_code=invoice.debtor_code,
        debtor_guid=debtor_guid,
        debtor=debtor,
        scheme_key=invoice.scheme_key,
        scheme_version=invoice.scheme_version,
        previous_step_index=invoice.previous_step_index,
        previous_step_date_time=invoice.previous_step_date_time,
        next_step_index=invoice.timer_step,
        next_step_due_at=invoice.timer_due_at,
        currency=invoice.currency,
        amount_debit=invoice.amount_debit,
        amount_credit=invoice.amount_credit,
        amount_admin_costs=invoice.amount_admin_costs,
        amount_credit_notes=invoice.amount_credit_notes,
        amount_paid=invoice.amount_paid,
        amount_admin_costs_paid=invoice.amount_admin_costs_paid,
        amount_pending_slow=invoice.amount_pending_slow,
        open_amount=invoice.open_amount,
        open_amount_admin_costs=invoice.open_amount_admin_costs,
        open_amount_incl_admin_costs=invoice.open_amount_incl_admin_costs,
        is_paid=invoice.is_paid,
        interest_accrued=invoice.interest_accrued,
        interest_booked=invoice.interest_booked,
        interest_kind=InterestKind.of_debtor(invoice.debtor_is_person),
        time_zone=invoice.time_zone,
        interest_claimed=invoice.interest_claimed,
        custom_parameters=[KeyValueSnapshot(**p) for p in invoice.custom_parameters],
        additional_parameters=[KeyValueSnapshot(**p) for p in invoice.additional_parameters],
        subscription_key=invoice.subscription_key,
        lines=[InvoiceLineSnapshot.model_validate(line) for line in invoice.lines],
    )


def invoice_snapshot(
    invoice: Invoice, debtor: DebtorSnapshot | None, debtor_guid: str | None
) -> InvoiceSnapshot:
    """The snapshot, built without re-validating what the service itself computed (the
    hot path: one per event). Amounts are padded to the currency's digits as the
    validated model would pad them; `invoice_snapshot_validated` is the reference."""
    currency = invoice.currency
    values: dict[str, Any] = {
        "invoice_key": invoice.invoice_key,
        "invoice_number": invoice.invoice_number,
        "website_key": invoice.website_key,
        "type": invoice.type,
        "status_code": invoice.status,
        "is_test": invoice.is_test,
        "culture": invoice.culture,
        "invoice_date": invoice.invoice_date,
        "due_date": invoice.due_date,
        "description": invoice.description,
        "pay_link": invoice.pay_link,
        "debtor_code": invoice.debtor_code,
        "debtor_guid": debtor_guid,
        "debtor": debtor,
        "scheme_key": invoice.scheme_key,
        "scheme_version": invoice.scheme_version,
        "previous_step_index": invoice.previous_step_index,
        "previous_step_date_time": invoice.previous_step_date_time,
        "next_step_index": invoice.timer_step,
        "next_step_due_at": invoice.timer_due_at,
        "currency": currency,
        "is_paid": invoice.is_paid,
        "interest_kind": InterestKind.of_debtor(invoice.debtor_is_person),
        "time_zone": invoice.time_zone,
        "interest_claimed": invoice.interest_claimed,
        "custom_parameters": [
            construct_complete(KeyValueSnapshot, {"key": p["key"], "value": p["value"]})
            for p in invoice.custom_parameters
        ],
        "additional_parameters": [
            construct_complete(KeyValueSnapshot, {"key": p["key"], "value": p["value"]})
            for p in invoice.additional_parameters
        ],
        "subscription_key": invoice.subscription_key,
        "lines": [InvoiceLineSnapshot.model_validate(line) for line in invoice.lines],
    }
    amounts = {
        "amount_debit": invoice.amount_debit,
        "amount_credit": invoice.amount_credit,
        "amount_admin_costs": invoice.amount_admin_costs,
        "amount_credit_notes": invoice.amount_credit_notes,
        "amount_paid": invoice.amount_paid,
        "amount_admin_costs_paid": invoice.amount_admin_costs_paid,
        "amount_pending_slow": invoice.amount_pending_slow,
        "open_amount": invoice.open_amount,
        "open_amount_admin_costs": invoice.open_amount_admin_costs,
        "open_amount_incl_admin_costs": invoice.open_amount_incl_admin_costs,
        "interest_accrued": invoice.interest_accrued,
        "interest_booked": invoice.interest_booked,
    }
    for name, amount in amounts.items():
        values[name] = with_minor_unit(amount, currency)
    return construct_complete(InvoiceSnapshot, values)
