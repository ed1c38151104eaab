"""Money on an invoice: payments, refunds, admin costs, credit notes (pure).

docs/invoices.md "Amounts": a payment is allocated when it is booked, first to the admin
costs open at that moment (art. 6:44 BW), then to the principal; a refund or chargeback
takes back from the principal first, then from the admin costs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from babel.numbers import list_currencies

from contracts.envelope import FieldError
from contracts.fields import decimals_of, minor_unit
from contracts.invoice import InvoiceEventName
from contracts.payments import TransactionStatus
from services.invoice.domain.model import ZERO, Booking, CreditNote, Invoice, S
from services.invoice.domain.outcome import EventOut, Outcome, reject

CURRENCIES = frozenset(list_currencies())


# --- booking money -------------------------------------------------------------------------


def book_payment(invoice: Invoice, amount: Decimal) -> None:
    """A payment: first to the admin costs open now, the rest to the principal."""
    to_costs = min(amount, max(ZERO, invoice.open_amount_admin_costs))
    invoice.amount_admin_costs_paid += to_costs
    invoice.amount_paid += amount


def book_credit(invoice: Invoice, amount: Decimal) -> None:
    """A refund or chargeback: takes back from the principal first, then the costs."""
    principal_paid = invoice.net_paid - invoice.amount_admin_costs_paid
    from_principal = min(amount, max(ZERO, principal_paid))
    from_costs = min(amount - from_principal, invoice.amount_admin_costs_paid)
    invoice.amount_admin_costs_paid -= from_costs
    invoice.amount_credit += amount


def add_admin_costs(invoice: Invoice, amount: Decimal) -> None:
    """Admin costs added later are not settled from an earlier overpayment."""
    invoice.amount_admin_costs += amount


def money_errors(
    name: str, amount: Decimal, currency: str, *, allow_zero: bool = True
) -> list[FieldError]:
    errors = []
    if amount < ZERO or (not allow_zero and amount == ZERO):
        errors.append(
            FieldError(
                name,
                "negative" if amount < ZERO else "not_positive",
                "the amount must be positive"
                if not allow_zero
                else "the amount must not be negative",
            )
        )
    if currency in CURRENCIES and decimals_of(amount) > minor_unit(currency):
        errors.append(
            FieldError(name, "too_many_decimals", f"{currency} has {minor_unit(currency)} decimals")
        )
    return errors


# --- transactions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Transaction:
    """A transaction's status as the invoice books it: from the payment engine, the first
    transaction of a combined invoice, an installment payment forwarded to an original,
    money an agency collected, or one kept until its invoice exists (`stored`)."""

    key: str
    service: str
    amount: Decimal
    status: TransactionStatus
    is_slow: bool = False
    mandate_reference: str | None = None

    def stored(self) -> dict[str, Any]:
        """As an early transaction is kept until its invoice is created (JSON)."""
        return {
            "transaction_key": self.key,
            "service": self.service,
            "amount": str(self.amount),
            "status": self.status.value,
            "is_slow": self.is_slow,
            "mandate_reference": self.mandate_reference,
        }

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> Transaction:
        return cls(
            key=str(data["transaction_key"]),
            service=str(data["service"]),
            amount=Decimal(str(data["amount"])),
            status=TransactionStatus(str(data["status"])),
            is_slow=bool(data.get("is_slow", False)),
            mandate_reference=data.get("mandate_reference"),
        )


#: A transaction's statuses in the order they can follow each other; a status that
#: would move a transaction backwards (a late `pending`, `success` after a refund) is
#: stale and ignored.
_STAGE = {
    TransactionStatus.PENDING: 0,
    TransactionStatus.SUCCESS: 1,
    TransactionStatus.FAILED: 1,
    TransactionStatus.REFUNDED: 2,
    TransactionStatus.CHARGEBACK: 2,
}
_CREDITS = (TransactionStatus.REFUNDED, TransactionStatus.CHARGEBACK)


def book_transaction(invoice: Invoice, transaction: Transaction) -> Outcome:
    return apply_transaction(
        invoice,
        transaction_key=transaction.key,
        service=transaction.service,
        amount=transaction.amount,
        status=transaction.status,
        is_slow=transaction.is_slow,
        mandate_reference=transaction.mandate_reference,
    )


def apply_transaction(
    invoice: Invoice,
    *,
    transaction_key: str,
    service: str,
    amount: Decimal,
    status: TransactionStatus,
    is_slow: bool,
    mandate_reference: str | None = None,
) -> Outcome:
    """A transaction changed status: book it (any invoice status; payments are never
    dropped) and emit ChangedTransactionStatus (1). A repeated or stale status is a no-op.

    One key is one transaction: `pending → success` books one payment, `success →
    failed` reverses it, `refunded`/`chargeback` takes back at most what the
    transaction paid (a new key with a refund status is a refund of its amount).
    """
    if amount < ZERO:
        return reject("payload.amount", "negative", "a transaction amount is positive")
    before = invoice.transactions.get(transaction_key)
    if before is not None:
        if before.status == status and (
            status != TransactionStatus.PENDING or before.amount == amount
        ):
            return Outcome()
        if _STAGE[status] < _STAGE[before.status] or before.status in _CREDITS:
            return Outcome()
    updated = invoice.changed()
    booking = updated.transactions.get(transaction_key) or Booking(
        key=transaction_key, service=service, amount=amount, status=status, is_slow=is_slow
    )
    held = booking.paid - booking.credited  # what this transaction has paid and kept
    if status == TransactionStatus.SUCCESS:
        book_payment(updated, amount)
        booking.paid += amount
    elif status in _CREDITS:
        credit = min(amount, held) if booking.paid > ZERO else amount
        if credit > ZERO:
            book_credit(updated, credit)
            booking.credited += credit
    elif status == TransactionStatus.FAILED and held > ZERO:
        book_credit(updated, held)  # a payment that failed after all
        booking.credited += held
    booking.status = status
    booking.amount = amount
    booking.is_slow = is_slow
    booking.service = service
    booking.mandate_reference = mandate_reference or booking.mandate_reference
    updated.transactions[transaction_key] = booking
    event = EventOut(
        InvoiceEventName.CHANGED_TRANSACTION_STATUS,
        {
            "TransactionKey": transaction_key,
            "Status": status.value,
            "Amount": str(amount),
            "Service": service,
        },
    )
    return Outcome(invoice=updated, events=[event])


# --- credit notes --------------------------------------------------------------------------


def create_credit_note(
    invoice: Invoice, *, number: str, amount: Decimal, description: str | None
) -> Outcome:
    """A credit note reduces the debt of its original (event 3); never more than is left."""
    existing = next((n for n in invoice.credit_notes if n.number == number), None)
    if existing is not None:
        if existing.amount == amount:
            return Outcome()  # the same credit note again: nothing to do
        return reject(
            "payload.credit_note_number",
            "duplicate_credit_note_number",
            f"credit note {number} exists with another amount",
        )
    if invoice.status == S.REJECTED:
        return reject(
            "payload.original_invoice_number",
            "invoice_rejected",
            "a rejected invoice cannot be credited",
        )
    errors = money_errors("payload.amount", amount, invoice.currency, allow_zero=False)
    if errors:
        return Outcome(errors=errors)
    if amount > invoice.creditable:
        return reject(
            "payload.amount",
            "exceeds_creditable",
            f"at most {invoice.creditable} is left to credit",
        )
    updated = invoice.changed()
    updated.credit_notes.append(CreditNote(number=number, amount=amount, description=description))
    event = EventOut(
        InvoiceEventName.CREATED_CREDIT_NOTE, {"CreditNoteNumber": number, "Amount": str(amount)}
    )
    return Outcome(invoice=updated, events=[event])
