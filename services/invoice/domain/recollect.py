"""SEPA recollection (pure; docs/invoices.md "SEPA recollection").

A scheme may enable recollection (`contracts.invoice.Recollection`: attempts, days
between); the invoice keeps its scheme version's copy. When a direct debit on the
invoice fails (a slow transaction that has a mandate), the invoice asks the payment
engine to collect it again with that mandate (`CollectPayment` with a `collect_date`)
and emits CreatedRecollect (9), when:

- the invoice is active (a paused, disputed, emergency-stopped, plan-paused or closed
  invoice is not collected) and money is open;
- it has attempts left (`recollect_attempts` < the scheme's `attempts`);
- the collect date (the failure's day + `days_between`) is before its next step is due
  (no next step: always).

The recollection's own transaction reports back like any other; when it fails, the same
rule decides on the next attempt.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from contracts.invoice import InvoiceEventName
from contracts.payments import TransactionStatus
from services.invoice.domain.model import ZERO, Invoice, S
from services.invoice.domain.outcome import CollectRequest, EventOut, Outcome
from services.invoice.domain.schedule import refresh_hold


def collect_date(invoice: Invoice, now: datetime) -> date | None:
    """The day a recollection would collect on, or None when none is due: no
    recollection, not active, nothing open, no attempt left, or not before the next step."""
    settings = invoice.recollection
    if settings is None or invoice.recollect_attempts >= settings.attempts:
        return None
    if invoice.status != S.ACTIVE or invoice.open_amount_incl_admin_costs <= ZERO:
        return None
    day = now.astimezone(UTC).date() + timedelta(days=settings.days_between)
    # The next step as it stands now: shifted by a hold this change ended (the failed
    # direct debit held the scheme while it was pending).
    probe = invoice.changed()
    refresh_hold(probe, now)
    next_due = probe.next_step_due_at
    if next_due is not None and datetime.combine(day, time(0), tzinfo=UTC) >= next_due:
        return None
    return day


def recollect(invoice: Invoice, transaction_key: str, now: datetime) -> Outcome:
    """After a transaction was booked on `invoice`: a failed direct debit is collected
    again when `collect_date` allows (an empty outcome otherwise)."""
    booking = invoice.transactions.get(transaction_key)
    if (
        booking is None
        or booking.status != TransactionStatus.FAILED
        or not booking.is_slow
        or booking.mandate_reference is None
    ):
        return Outcome()
    day = collect_date(invoice, now)
    if day is None:
        return Outcome()
    updated = invoice.changed()
    updated.recollect_attempts += 1
    amount = min(booking.amount, invoice.open_amount_incl_admin_costs)
    request = CollectRequest(
        amount=amount,
        service=booking.service,
        mandate_reference=booking.mandate_reference,
        collect_date=day,
        attempt=updated.recollect_attempts,
    )
    event = EventOut(
        InvoiceEventName.CREATED_RECOLLECT,
        {
            "TransactionKey": transaction_key,
            "Attempt": str(updated.recollect_attempts),
            "Amount": str(amount),
            "CollectDate": day.isoformat(),
        },
    )
    return Outcome(invoice=updated, events=[event], requests=[request])
