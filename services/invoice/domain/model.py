"""The invoice as the service keeps it, and what its state reads as (pure).

Amounts follow docs/invoices.md "Amounts"; the schedule readings (next step, when it is
due, whether the invoice is held) follow docs/dunning.md "When a step runs". The changes
themselves live in the modules named for their concern (amounts, status, schedule, plans).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from contracts.invoice import (
    DEFAULT_TIME_ZONE,
    INTEREST_COST,
    InvoiceStatus,
    InvoiceType,
    StepAction,
)
from contracts.payments import TransactionStatus
from services.invoice.domain.merchant import local_midnight

ZERO = Decimal(0)
S = InvoiceStatus
#: Test invoices whose description starts with one of these, in any case, run their
#: scheme's steps: Buckaroo's documents name `buckarooschema_test` and write
#: `buckaroo_schema_test_…` in their example; `schema_test` is the platform's own.
SCHEMA_TEST_PREFIXES = ("buckarooschema_test", "buckaroo_schema_test", "schema_test")
#: Statuses in which the invoice is held: its schedule does not run and held time counts.
HELD = frozenset({S.PAUSED, S.PAUSED_BY_DISPUTE, S.PAUSED_BY_PAYMENT_PLAN, S.EMERGENCY})


class Booking(BaseModel):
    """One transaction on an invoice and what it booked."""

    model_config = ConfigDict(extra="ignore")

    key: str
    service: str
    amount: Decimal
    status: TransactionStatus
    is_slow: bool = False
    #: The mandate the payment engine named for it (a recollection collects with it).
    mandate_reference: str | None = None
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
    admin_cost: str | None = None  # an amount as text, "statutory" or "interest"
    channels: list[str] = Field(default_factory=list)
    template_key: str | None = None
    threshold_amount: str | None = None
    agency_code: str | None = None
    message: str | None = None
    states_costs: bool = False


class MoneyDay(BaseModel):
    """What changed in an invoice's money on one (merchant-local) day: the principal
    (debit less credit notes), costs other than booked interest, payments, refunds
    (services/invoice/domain/interest.py; the statutory interest is computed from it)."""

    model_config = ConfigDict(extra="ignore")

    day: date
    principal: Decimal = Decimal(0)
    costs: Decimal = Decimal(0)
    paid: Decimal = Decimal(0)
    refunded: Decimal = Decimal(0)


class RecollectionState(BaseModel):
    """A scheme version's SEPA recollection as the invoice keeps it (its copy)."""

    model_config = ConfigDict(extra="ignore")

    attempts: int
    days_between: int


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
    #: The scheme version's SEPA recollection (None: off) and the recollections asked
    #: for so far (services/invoice/domain/recollect.py).
    recollection: RecollectionState | None = None
    recollect_attempts: int = 0
    #: The status SetEmergency took the invoice from, while it is in Emergency (99):
    #: UnpauseInvoice returns a pending transfer (70) there (status.unpause_target).
    emergency_from: InvoiceStatus | None = None

    credit_notes: list[CreditNote] = Field(default_factory=list)
    amount_admin_costs: Decimal = ZERO
    amount_paid: Decimal = ZERO
    amount_credit: Decimal = ZERO
    amount_admin_costs_paid: Decimal = ZERO
    transactions: dict[str, Booking] = Field(default_factory=dict)
    #: The invoice's money over time, one entry per day it changed, and the statutory
    #: interest: what had accrued on the day of the last change (rounded to the
    #: currency's digits) and how much of `amount_admin_costs` interest steps added
    #: (services/invoice/domain/interest.py; docs/interest.md). An invoice stored before
    #: the history existed writes all its money down on the day of its next change.
    money_history: list[MoneyDay] = Field(default_factory=list)
    interest_accrued: Decimal = ZERO
    interest_booked: Decimal = ZERO

    previous_step_index: int | None = None
    previous_step_date_time: datetime | None = None
    schedule_version: int = 0
    held_since: datetime | None = None
    held_seconds: int = 0
    #: The merchant's time zone: steps are due at midnight there. The repository reads
    #: every invoice with its merchant's current setting, so a change of the setting
    #: moves an invoice's next step from its next change on (docs/invoices.md).
    time_zone: str = DEFAULT_TIME_ZONE
    #: The step timer the scheduler holds for this invoice (None: no timer), and when
    #: the step is due (before a due time in the past is moved to "now" for the timer).
    #: Kept equal to `desired_timer()` by `schedule.plan_timer` after every change.
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

    # --- amounts (docs/invoices.md "Amounts") ---

    # The sums start with a test for nothing to add: most invoices have no credit note
    # and no pending transaction, and these are read several times per change.

    @property
    def amount_credit_notes(self) -> Decimal:
        if not self.credit_notes:
            return ZERO
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
        if not self.transactions:
            return ZERO
        return sum(
            (
                b.amount
                for b in self.transactions.values()
                if b.is_slow and b.status == TransactionStatus.PENDING
            ),
            ZERO,
        )

    @property
    def interest_claimed(self) -> bool:
        """Its scheme version adds the statutory interest (an `interest` cost step)."""
        return any(step.admin_cost == INTEREST_COST for step in self.scheme_steps)

    @property
    def creditable(self) -> Decimal:
        """What credit notes may still take off: AmountDebit - AmountCreditNotes."""
        return self.amount_debit - self.amount_credit_notes

    # --- the schedule (docs/dunning.md "When a step runs") ---

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
        """Step n is due at midnight of its date in the merchant's time zone, shifted by
        the time the invoice was held."""
        base = self.invoice_date if step.action == StepAction.PAYMENT_INVITATION else self.due_date
        due = local_midnight(base + timedelta(days=step.days), self.time_zone)
        return due + timedelta(seconds=self.held_seconds)

    @property
    def runs_steps(self) -> bool:
        """Test invoices run steps only when their description starts with a
        SCHEMA_TEST_PREFIXES prefix, in any case (`Buckaroo_Schema_Test …`)."""
        return not self.is_test or (self.description or "").casefold().startswith(
            SCHEMA_TEST_PREFIXES
        )

    @property
    def slow_payment_covers(self) -> bool:
        """A pending slow payment covering what is open holds the scheme."""
        open_amount = self.open_amount_incl_admin_costs
        return open_amount > ZERO and self.amount_pending_slow >= open_amount

    @property
    def held(self) -> bool:
        return self.status in HELD or self.slow_payment_covers

    @property
    def may_run_steps(self) -> bool:
        """Active, unpaid, running steps and not held by a covering slow payment."""
        return (
            self.status == S.ACTIVE
            and not self.is_paid
            and self.runs_steps
            and not self.slow_payment_covers
        )

    def desired_timer(self) -> tuple[int, datetime] | None:
        """The step the invoice waits for and when it is due, or None."""
        step = self.next_step
        if step is None or not self.may_run_steps:
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
