"""The status machine (pure; docs/invoices.md "Statuses"): one table of moves per
command, one of the collection service's answers, and the move itself."""

from __future__ import annotations

from datetime import datetime

from contracts.invoice import InvoiceEventName, InvoiceStatus
from services.invoice.domain.model import Invoice, S
from services.invoice.domain.outcome import EventOut, Outcome, reject
from services.invoice.domain.schedule import refresh_hold

#: Final statuses: nothing but payments changes them.
FINAL = frozenset({S.WRITTEN_OFF, S.REJECTED, S.CANCELLED})

_WRITE_OFF_FROM = (
    S.ACTIVE,
    S.PAUSED,
    S.PAUSED_BY_DISPUTE,
    S.PAUSED_BY_PAYMENT_PLAN,
    S.PENDING_TRANSFER_TO_COLLECTION_AGENCY,
    S.TRANSFERRED_TO_COLLECTION_AGENCY,
    S.ACCEPTED_BY_COLLECTION_AGENCY,
    S.PROCESSED_BY_COLLECTION_AGENCY_INCOMPLETE,
    S.REFUSED_BY_COLLECTION_AGENCY,
    S.EMERGENCY,
)

#: command → {from status: to status}. Everything else is refused. A row named after a
#: message type on cm.invoice.commands is that status command (services/invoice/app.py);
#: the others are the payment plan's own moves.
TRANSITIONS: dict[str, dict[InvoiceStatus, InvoiceStatus]] = {
    "PauseInvoice": {S.ACTIVE: S.PAUSED},
    "UnpauseInvoice": {S.PAUSED: S.ACTIVE, S.EMERGENCY: S.ACTIVE},
    "RegisterDispute": {S.ACTIVE: S.PAUSED_BY_DISPUTE, S.PAUSED: S.PAUSED_BY_DISPUTE},
    "ResolveDispute": {S.PAUSED_BY_DISPUTE: S.ACTIVE},
    "WriteOffInvoice": dict.fromkeys(_WRITE_OFF_FROM, S.WRITTEN_OFF),
    "CancelInvoice": {
        s: S.CANCELLED for s in (S.ACTIVE, S.PAUSED, S.PAUSED_BY_DISPUTE, S.EMERGENCY)
    },
    "SetEmergency": {
        s: S.EMERGENCY
        for s in (S.ACTIVE, S.PAUSED, S.PAUSED_BY_DISPUTE, S.PENDING_TRANSFER_TO_COLLECTION_AGENCY)
    },
    # Internal: the payment plan.
    "StartPaymentPlan": {S.ACTIVE: S.PAUSED_BY_PAYMENT_PLAN, S.PAUSED: S.PAUSED_BY_PAYMENT_PLAN},
    "EndPaymentPlan": {S.PAUSED_BY_PAYMENT_PLAN: S.ACTIVE},
    "CancelInstallment": {
        s: S.CANCELLED for s in (S.ACTIVE, S.PAUSED, S.PAUSED_BY_DISPUTE, S.EMERGENCY)
    },
}

#: The collection service's answers: status now → statuses it may move to.
COLLECTION_TRANSITIONS: dict[InvoiceStatus, frozenset[InvoiceStatus]] = {
    # A case opened outside dunning (a chargeback, or by hand) hands over an active invoice.
    S.ACTIVE: frozenset({S.TRANSFERRED_TO_COLLECTION_AGENCY}),
    S.PENDING_TRANSFER_TO_COLLECTION_AGENCY: frozenset({S.TRANSFERRED_TO_COLLECTION_AGENCY}),
    S.REFUSED_BY_COLLECTION_AGENCY: frozenset({S.TRANSFERRED_TO_COLLECTION_AGENCY}),
    S.TRANSFERRED_TO_COLLECTION_AGENCY: frozenset(
        {
            S.ACCEPTED_BY_COLLECTION_AGENCY,
            S.REFUSED_BY_COLLECTION_AGENCY,
            S.PROCESSED_BY_COLLECTION_AGENCY,
            S.PROCESSED_BY_COLLECTION_AGENCY_INCOMPLETE,
        }
    ),
    S.ACCEPTED_BY_COLLECTION_AGENCY: frozenset(
        {S.PROCESSED_BY_COLLECTION_AGENCY, S.PROCESSED_BY_COLLECTION_AGENCY_INCOMPLETE}
    ),
}

#: Why a move is refused, when there is a more helpful answer than "not allowed".
_REFUSALS: dict[tuple[str, InvoiceStatus], tuple[str, str]] = {
    ("UnpauseInvoice", S.PAUSED_BY_PAYMENT_PLAN): (
        "paused_by_payment_plan",
        "only TerminatePaymentPlan (or paying the plan) lifts it",
    ),
    ("UnpauseInvoice", S.PAUSED_BY_DISPUTE): (
        "paused_by_dispute",
        "a disputed invoice resumes with ResolveDispute",
    ),
    ("PauseInvoice", S.PAUSED_BY_PAYMENT_PLAN): (
        "paused_by_payment_plan",
        "the invoice is in a payment plan",
    ),
}


def status_name(status: InvoiceStatus) -> str:
    return f"{int(status)} ({status.display_name})"


#: What UnpauseInvoice lifts an Emergency (99) to, by the status SetEmergency took the
#: invoice from: a pending transfer to the agency (70) is kept; everything else resumes
#: its scheme (10). docs/decisions.md "Emergency on a pending transfer".
_AFTER_EMERGENCY = {
    S.PENDING_TRANSFER_TO_COLLECTION_AGENCY: S.PENDING_TRANSFER_TO_COLLECTION_AGENCY
}


def _target(invoice: Invoice, command: str) -> InvoiceStatus | None:
    """Where `command` takes `invoice` (None: not allowed from its status)."""
    to = TRANSITIONS[command].get(invoice.status)
    if command == "UnpauseInvoice" and invoice.emergency_from is not None:
        return _AFTER_EMERGENCY.get(invoice.emergency_from, to)
    return to


def move(invoice: Invoice, to: InvoiceStatus, now: datetime) -> Invoice:
    """A copy of `invoice` in status `to`: held time counted, the schedule renewed; an
    Emergency remembers the status it was set from."""
    updated = invoice.changed()
    updated.emergency_from = invoice.status if to == S.EMERGENCY else None
    updated.status = to
    refresh_hold(updated, now)
    updated.schedule_version += 1
    return updated


def change_status(
    invoice: Invoice, command: str, now: datetime, reason: str | None = None
) -> Outcome:
    """Apply a status command through the transition table (ChangedStatus, event 2)."""
    allowed = TRANSITIONS[command]
    to = _target(invoice, command)
    if to is None:
        if invoice.status in allowed.values() and command not in ("CancelInstallment",):
            return Outcome()  # already there: a repeat changes nothing
        code, message = _REFUSALS.get(
            (command, invoice.status),
            (
                "invalid_transition",
                f"{command} is not possible for an invoice in status {status_name(invoice.status)}",
            ),
        )
        if invoice.status == S.REJECTED:
            code, message = "invoice_rejected", "a rejected invoice was never active"
        return reject("payload.invoice_number", code, message)
    updated = move(invoice, to, now)
    parameters = {"StatusCode": str(int(to))}
    if reason:
        parameters["Reason"] = reason
    return Outcome(invoice=updated, events=[EventOut(InvoiceEventName.CHANGED_STATUS, parameters)])


def set_collection_status(
    invoice: Invoice, to: InvoiceStatus, case_key: str, now: datetime
) -> Outcome:
    if invoice.status == to:
        return Outcome()
    if to not in COLLECTION_TRANSITIONS.get(invoice.status, frozenset()):
        return reject(
            "payload.status_code",
            "invalid_transition",
            f"cannot move from {status_name(invoice.status)} to {status_name(to)}",
        )
    updated = move(invoice, to, now)
    event = EventOut(
        InvoiceEventName.CHANGED_STATUS, {"StatusCode": str(int(to)), "CaseKey": case_key}
    )
    return Outcome(invoice=updated, events=[event])
