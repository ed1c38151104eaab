"""The invoice: its state, amounts, status machine and the changes commands make.

Pure: no I/O, no clock. Every function takes the state and a command (and "now", from
the message) and returns an `Outcome`: the new state, the events to emit and, when a
business rule is broken, the errors. Handlers load, call these, save and enqueue.

Amounts follow DOMAIN.md "Amounts": a payment is allocated when it is booked, first to
the admin costs open at that moment (art. 6:44 BW), then to the principal; a refund or
chargeback takes back from the principal first, then from the admin costs.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from babel.numbers import list_currencies
from pydantic import BaseModel, ConfigDict, Field

from contracts.envelope import FieldError
from contracts.fields import decimals_of, minor_unit
from contracts.invoice import (
    EventCategory,
    InvoiceEventName,
    InvoiceFields,
    InvoiceStatus,
    InvoiceType,
    StepAction,
)
from contracts.payments import TransactionStatus

ZERO = Decimal(0)
S = InvoiceStatus
#: Test invoices whose description starts with one of these run their scheme's steps.
SCHEMA_TEST_PREFIXES = ("schema_test", "buckaroo_schema_test")

_CURRENCIES = frozenset(list_currencies())


# --- state -------------------------------------------------------------------------------


class Booking(BaseModel):
    """One transaction on an invoice and what it booked."""

    model_config = ConfigDict(extra="ignore")

    key: str
    service: str
    amount: Decimal
    status: TransactionStatus
    is_slow: bool = False
    #: What this transaction added to AmountPaid and AmountCredit.
    paid: Decimal = ZERO
    credited: Decimal = ZERO


class CreditNote(BaseModel):
    number: str
    amount: Decimal
    description: str | None = None


class SchemeStepState(BaseModel):
    """A scheme step as the invoice keeps it (its scheme version's copy)."""

    model_config = ConfigDict(extra="ignore")

    index: int
    action: StepAction
    days: int
    admin_cost: str | None = None  # an amount as text, or "statutory"
    channels: list[str] = Field(default_factory=list)
    template_key: str | None = None
    threshold_amount: str | None = None
    agency_code: str | None = None
    message: str | None = None
    states_costs: bool = False


class Invoice(BaseModel):
    """An invoice as the invoice service keeps it (stored as JSON)."""

    model_config = ConfigDict(extra="ignore", validate_assignment=False)

    website_key: str
    invoice_number: str
    invoice_key: str
    type: InvoiceType = InvoiceType.REGULAR_INVOICE
    status: InvoiceStatus
    is_test: bool = False
    culture: str | None = None
    invoice_date: date
    due_date: date
    description: str | None = None
    pay_link: str | None = None
    currency: str
    amount_debit: Decimal
    amount_vat: Decimal = ZERO
    debtor_code: str | None = None
    scheme_key: str
    scheme_version: int = 1
    max_step_index: int | None = None
    scheme_steps: list[SchemeStepState] = Field(default_factory=list)
    lines: list[dict[str, Any]] = Field(default_factory=list)
    custom_parameters: list[dict[str, str]] = Field(default_factory=list)
    additional_parameters: list[dict[str, str]] = Field(default_factory=list)
    allowed_services: list[str] | None = None
    subscription_key: str | None = None
    plan_dossier: str | None = None

    credit_notes: list[CreditNote] = Field(default_factory=list)
    amount_admin_costs: Decimal = ZERO
    amount_paid: Decimal = ZERO
    amount_credit: Decimal = ZERO
    amount_admin_costs_paid: Decimal = ZERO
    transactions: dict[str, Booking] = Field(default_factory=dict)

    previous_step_index: int | None = None
    previous_step_date_time: datetime | None = None
    schedule_version: int = 0
    held_since: datetime | None = None
    held_seconds: int = 0
    #: The step timer the scheduler holds for this invoice (None: no timer).
    timer_step: int | None = None
    timer_due_at: datetime | None = None
    #: A statutory cost step waiting for the 14-day letter's term: not before this.
    waiting_step: int | None = None
    waiting_until: datetime | None = None
    #: When and how the reminder that stated the costs (the 14-day letter) went out.
    cost_letter_sent_at: datetime | None = None
    cost_letter_channel: str | None = None
    debtor_is_person: bool = True
    #: A Threshold step ended the scheme early.
    scheme_ended: bool = False
    #: Steps whose message outcome was recorded (a repeated outcome changes nothing).
    outcomes_recorded: list[int] = Field(default_factory=list)

    sequence: int = 0
    created_at: datetime
    request_hash: str = ""
    rejection: list[dict[str, str]] = Field(default_factory=list)

    # --- amounts (DOMAIN.md) ---

    @property
    def amount_credit_notes(self) -> Decimal:
        return sum((note.amount for note in self.credit_notes), ZERO)

    @property
    def net_paid(self) -> Decimal:
        return self.amount_paid - self.amount_credit

    @property
    def open_amount_admin_costs(self) -> Decimal:
        return self.amount_admin_costs - self.amount_admin_costs_paid

    @property
    def open_amount(self) -> Decimal:
        principal_paid = self.net_paid - self.amount_admin_costs_paid
        return self.amount_debit - self.amount_credit_notes - principal_paid

    @property
    def open_amount_incl_admin_costs(self) -> Decimal:
        return self.open_amount + self.open_amount_admin_costs

    @property
    def is_paid(self) -> bool:
        return self.open_amount_incl_admin_costs <= ZERO

    @property
    def amount_pending_slow(self) -> Decimal:
        return sum(
            (
                b.amount
                for b in self.transactions.values()
                if b.is_slow and b.status == TransactionStatus.PENDING
            ),
            ZERO,
        )

    def changed(self) -> Invoice:
        """A copy to change, sharing what no change ever mutates (scheme steps, lines,
        parameters); a deep copy costs ten times as much on the hot path."""
        copy = self.model_copy()
        copy.credit_notes = list(self.credit_notes)
        copy.transactions = {
            key: booking.model_copy() for key, booking in self.transactions.items()
        }
        copy.outcomes_recorded = list(self.outcomes_recorded)
        return copy

    @property
    def creditable(self) -> Decimal:
        """What credit notes may still take off: AmountDebit - AmountCreditNotes."""
        return self.amount_debit - self.amount_credit_notes

    # --- schedule (the timers themselves belong to the dunning engine) ---

    @property
    def effective_steps(self) -> list[SchemeStepState]:
        steps = sorted(self.scheme_steps, key=lambda s: s.index)
        if self.max_step_index is not None:
            steps = [s for s in steps if s.index <= self.max_step_index]
        return steps

    @property
    def next_step(self) -> SchemeStepState | None:
        if self.scheme_ended:
            return None
        done = self.previous_step_index or 0
        return next((s for s in self.effective_steps if s.index > done), None)

    def step_due_at(self, step: SchemeStepState) -> datetime:
        """Step n is due at 00:00 UTC of its date, shifted by the time the invoice was held."""
        base = self.invoice_date if step.action == StepAction.PAYMENT_INVITATION else self.due_date
        due = datetime.combine(base + timedelta(days=step.days), time(0), tzinfo=UTC)
        return due + timedelta(seconds=self.held_seconds)

    @property
    def runs_steps(self) -> bool:
        """Test invoices run steps only when their description says `schema_test`."""
        return not self.is_test or (self.description or "").startswith(SCHEMA_TEST_PREFIXES)

    @property
    def slow_payment_covers(self) -> bool:
        """A pending slow payment covering what is open holds the scheme."""
        open_amount = self.open_amount_incl_admin_costs
        return open_amount > ZERO and self.amount_pending_slow >= open_amount

    @property
    def held(self) -> bool:
        return self.status in HELD or self.slow_payment_covers

    def desired_timer(self) -> tuple[int, datetime] | None:
        """The step the invoice waits for and when it is due, or None."""
        step = self.next_step
        if (
            step is None
            or self.status != S.ACTIVE
            or self.is_paid
            or not self.runs_steps
            or self.slow_payment_covers
        ):
            return None
        due = self.step_due_at(step)
        if self.waiting_step == step.index:
            if self.waiting_until is None:
                return None  # waiting for the 14-day letter's outcome
            due = max(due, self.waiting_until)
        return step.index, due

    @property
    def next_step_due_at(self) -> datetime | None:
        desired = self.desired_timer()
        return desired[1] if desired else None


@dataclass(frozen=True)
class EventOut:
    """An event to emit; the handler numbers it and attaches the snapshot."""

    name: InvoiceEventName
    parameters: dict[str, str] = field(default_factory=dict)
    category: EventCategory | None = None


@dataclass(frozen=True)
class SendStepMessage:
    """Ask the notifier to send a step's message (PaymentInvitation or Reminder)."""

    step: SchemeStepState


@dataclass(frozen=True)
class StopSubscriptionRequest:
    """Ask the subscription service to stop the invoice's subscription."""

    subscription_key: str
    step_index: int


Request = SendStepMessage | StopSubscriptionRequest


@dataclass
class Outcome:
    """What a command did: the new state (None: unchanged), events, requests to other
    services and errors."""

    invoice: Invoice | None = None
    events: list[EventOut] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        return bool(self.errors)


def reject(field_name: str, code: str, message: str) -> Outcome:
    return Outcome(errors=[FieldError(field_name, code, message)])


# --- amounts: booking money --------------------------------------------------------------


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


# --- validation ----------------------------------------------------------------------------


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
    if currency in _CURRENCIES and decimals_of(amount) > minor_unit(currency):
        errors.append(
            FieldError(name, "too_many_decimals", f"{currency} has {minor_unit(currency)} decimals")
        )
    return errors


def invoice_errors(cmd: InvoiceFields, scheme_known: bool) -> list[FieldError]:
    """Business rules of a new invoice (DOMAIN.md): each failing field, named."""
    errors: list[FieldError] = []
    if cmd.currency not in _CURRENCIES:
        errors.append(
            FieldError(
                "payload.currency",
                "unknown_currency",
                f"{cmd.currency} is not an ISO 4217 currency",
            )
        )
    if cmd.due_date < cmd.invoice_date:
        errors.append(
            FieldError(
                "payload.due_date", "before_invoice_date", "the due date is before the invoice date"
            )
        )
    errors += money_errors("payload.amount_debit", cmd.amount_debit, cmd.currency)
    errors += money_errors("payload.amount_vat", cmd.amount_vat, cmd.currency)
    if cmd.amount_vat > cmd.amount_debit and cmd.amount_debit >= ZERO:
        errors.append(
            FieldError(
                "payload.amount_vat", "vat_above_amount", "the VAT is more than the invoice amount"
            )
        )
    if not scheme_known:
        errors.append(
            FieldError(
                "payload.scheme_key",
                "unknown_scheme",
                f"no scheme {cmd.scheme_key!r} for this merchant",
            )
        )
    if cmd.max_step_index is not None and cmd.max_step_index < 0:
        errors.append(
            FieldError("payload.max_step_index", "negative", "max_step_index must not be negative")
        )
    for i, line in enumerate(cmd.lines):
        if cmd.currency in _CURRENCIES and decimals_of(line.unit_price) > minor_unit(cmd.currency):
            errors.append(
                FieldError(
                    f"payload.lines.{i}.unit_price",
                    "too_many_decimals",
                    f"{cmd.currency} has {minor_unit(cmd.currency)} decimals",
                )
            )
    return errors


def request_hash(payload: BaseModel) -> str:
    """A fingerprint of a request's content, to tell a repeat from a conflict."""
    # The model's own JSON is canonical: fields in declaration order, values normalised.
    return hashlib.sha256(payload.model_dump_json().encode()).hexdigest()


def new_invoice_key() -> str:
    return uuid.uuid4().hex.upper()


# --- creation ------------------------------------------------------------------------------


def create_invoice(
    cmd: InvoiceFields,
    *,
    website_key: str,
    now: datetime,
    scheme_version: int | None,
    scheme_steps: list[SchemeStepState],
    invoice_type: InvoiceType = InvoiceType.REGULAR_INVOICE,
    invoice_key: str | None = None,
    plan_dossier: str | None = None,
) -> Outcome:
    """A new invoice: Active (10), or Rejected (90) with its errors when a rule is broken.

    Either way the invoice is stored and a ChangedStatus event is emitted; a Rejected
    outcome carries `errors` so the handler answers CommandRejected.
    """
    errors = invoice_errors(cmd, scheme_version is not None)
    status = S.REJECTED if errors else S.ACTIVE
    culture = cmd.culture or (cmd.debtor.person.culture if cmd.debtor.person else None)
    invoice = Invoice(
        website_key=website_key,
        invoice_number=cmd.invoice_number,
        invoice_key=invoice_key or new_invoice_key(),
        type=InvoiceType.SUBSCRIPTION_INVOICE
        if cmd.subscription_key and invoice_type == InvoiceType.REGULAR_INVOICE
        else invoice_type,
        status=status,
        is_test=cmd.is_test,
        culture=culture,
        invoice_date=cmd.invoice_date,
        due_date=cmd.due_date,
        description=cmd.description,
        pay_link=cmd.pay_link,
        currency=cmd.currency,
        amount_debit=cmd.amount_debit,
        amount_vat=cmd.amount_vat,
        debtor_code=cmd.debtor.code,
        scheme_key=cmd.scheme_key,
        scheme_version=scheme_version or 1,
        max_step_index=cmd.max_step_index,
        scheme_steps=scheme_steps,
        lines=[line.model_dump(mode="json") for line in cmd.lines],
        custom_parameters=[p.model_dump(mode="json") for p in cmd.custom_parameters],
        allowed_services=cmd.allowed_services,
        subscription_key=cmd.subscription_key,
        plan_dossier=plan_dossier,
        debtor_is_person=cmd.debtor.person is not None,
        created_at=now,
        request_hash=request_hash(cmd),
        rejection=[{"field": e.field, "code": e.code, "message": e.message} for e in errors],
    )
    event = EventOut(
        InvoiceEventName.CHANGED_STATUS,
        {"StatusCode": str(int(status))},
        EventCategory.FINANCIAL_CHANGE,
    )
    return Outcome(invoice=invoice, events=[event], errors=errors)


# --- transactions --------------------------------------------------------------------------

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


def apply_transaction(
    invoice: Invoice,
    *,
    transaction_key: str,
    service: str,
    amount: Decimal,
    status: TransactionStatus,
    is_slow: bool,
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


# --- the status machine --------------------------------------------------------------------

#: Statuses in which the invoice is held: its schedule does not run and held time counts.
HELD = frozenset({S.PAUSED, S.PAUSED_BY_DISPUTE, S.PAUSED_BY_PAYMENT_PLAN, S.EMERGENCY})
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

#: command → {from status: to status}. Everything else is refused.
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
    # Internal: the payment plan and the collection service.
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


def refresh_hold(invoice: Invoice, now: datetime) -> None:
    """Start or stop counting held time (paused statuses, a covering slow payment)."""
    if invoice.held and invoice.held_since is None:
        invoice.held_since = now
    elif not invoice.held and invoice.held_since is not None:
        invoice.held_seconds += max(0, int((now - invoice.held_since).total_seconds()))
        invoice.held_since = None


def _move(invoice: Invoice, to: InvoiceStatus, now: datetime) -> Invoice:
    updated = invoice.changed()
    updated.status = to
    refresh_hold(updated, now)
    updated.schedule_version += 1
    return updated


def change_status(
    invoice: Invoice, command: str, now: datetime, reason: str | None = None
) -> Outcome:
    """Apply a status command through the transition table (ChangedStatus, event 2)."""
    allowed = TRANSITIONS[command]
    to = allowed.get(invoice.status)
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
    updated = _move(invoice, to, now)
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
    updated = _move(invoice, to, now)
    event = EventOut(
        InvoiceEventName.CHANGED_STATUS, {"StatusCode": str(int(to)), "CaseKey": case_key}
    )
    return Outcome(invoice=updated, events=[event])


# --- custom events -------------------------------------------------------------------------

_TAG = re.compile(r"\[([A-Za-z]+)\]")


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
    }


def fill_tags(message: str, invoice: Invoice) -> str:
    """Replace known `[Tag]`s with the invoice's values; unknown tags stay as written."""
    values = tag_values(invoice)
    return _TAG.sub(lambda m: values.get(m.group(1), m.group(0)), message)


def custom_event(invoice: Invoice, message: str) -> Outcome:
    updated = invoice.changed()
    event = EventOut(
        InvoiceEventName.CUSTOM_EVENT, {"CustomEventMessage": fill_tags(message, invoice)}
    )
    return Outcome(invoice=updated, events=[event])


# --- payment plans -------------------------------------------------------------------------


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


@dataclass(frozen=True)
class InstallmentPlan:
    number: str
    amount: Decimal
    due_date: date


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
        InstallmentPlan(f"{dossier}-{i + 1}", amount, add_interval(start_date, interval, i))
        for i, amount in enumerate(amounts)
    ]


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
    """Pause the originals (22) and create the installment invoices (DOMAIN.md)."""
    errors: list[FieldError] = []
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
    for outcome in outcomes[: len(originals)]:
        if outcome.invoice is not None:
            outcome.invoice.plan_dossier = dossier
    return plan, outcomes, []
