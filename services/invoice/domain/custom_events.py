"""Custom events: a merchant's message (or a CustomEvent step's), its `[Tag]`s filled in
with the invoice's values (pure; docs/invoices.md "Statuses", CreateCustomEvent)."""

from __future__ import annotations

from datetime import datetime

from contracts import tags
from contracts.invoice import InvoiceEventName
from services.invoice.domain.interest import accrue
from services.invoice.domain.model import ZERO, Invoice
from services.invoice.domain.outcome import EventOut, Outcome


def tag_values(invoice: Invoice) -> dict[str, str]:
    return {
        "InvoiceNumber": invoice.invoice_number,
        "InvoiceKey": invoice.invoice_key,
        "DebtorCode": invoice.debtor_code or "",
        "Currency": invoice.currency,
        "AmountDebit": str(invoice.amount_debit),
        "OpenAmount": str(invoice.open_amount),
        "OpenAmountInclAdminCosts": str(invoice.open_amount_incl_admin_costs),
        "InvoiceDate": invoice.invoice_date.isoformat(),
        "DueDate": invoice.due_date.isoformat(),
        "PayLink": invoice.pay_link or "",
        "InterestAccrued": str(invoice.interest_accrued),
        "OpenAmountInclInterest": str(
            invoice.open_amount_incl_admin_costs
            + max(ZERO, invoice.interest_accrued - invoice.interest_booked)
        ),
    }


def fill_tags(message: str, invoice: Invoice) -> str:
    """Replace known `[Tag]`s (in any case, or an alias such as `[InvoiceAmountOpen]`)
    with the invoice's values; unknown tags stay as written."""
    return tags.fill(message, tags.lookup(tag_values(invoice)))


def custom_event(invoice: Invoice, message: str, now: datetime | None = None) -> Outcome:
    """The message with its tags filled in; `[InterestAccrued]` as of `now` when given."""
    updated = invoice.changed()
    if now is not None:
        accrue(updated, now)
    event = EventOut(
        InvoiceEventName.CUSTOM_EVENT, {"CustomEventMessage": fill_tags(message, updated)}
    )
    return Outcome(invoice=updated, events=[event])
