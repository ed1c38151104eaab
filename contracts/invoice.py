"""Messages of the invoice service: its commands (`cm.invoice.commands`) and its event
(`cm.invoice.events`), with the status codes, event codes and scheme steps they use.

Kafka keys (see `contracts.catalog.key_for`): `{website_key}:{invoice_number}` unless a
command says otherwise in its docstring.

Parse-level checks only: a CreateInvoice whose amounts are negative, whose due date is
before its invoice date, whose VAT exceeds its amount or whose currency is unknown
parses fine and becomes a Rejected (90) invoice (docs/invoices.md).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, ConfigDict, Field, model_validator

from contracts.debtor import Debtor, DebtorSnapshot, UnreachableFlags
from contracts.envelope import Command, Event, Money, MoneyTotal, register
from contracts.fields import (
    BusinessDate,
    Culture,
    Currency,
    Decimal4,
    Email,
    Identifier,
    KeyValue,
    KeyValueSnapshot,
    OneLine,
    Part,
    Quantity,
    SnapshotPart,
    Text,
    VatPercentage,
    check_line_total,
    pad_amounts,
)
from contracts.interest import InterestKind
from contracts.limits import (
    MAX_ALLOWED_SERVICES,
    MAX_CHANNELS,
    MAX_CUSTOM_PARAMETERS,
    MAX_INSTALLMENTS,
    MAX_INT,
    MAX_INVOICE_LINES,
    MAX_PLAN_INVOICES,
    MAX_RECOLLECT_ATTEMPTS,
    MAX_RECOLLECT_DAYS,
    MAX_SCHEME_STEPS,
    MAX_STEP_DAYS,
    MAX_URL_LENGTH,
)
from contracts.payments import Transaction

#: The scheme an invoice follows when CreateInvoice names none.
DEFAULT_SCHEME_KEY = "DefaultCM1"
#: The built-in scheme without steps.
NO_STEPS_SCHEME_KEY = "DefaultNone"
#: The time zone of a merchant that never sent UpdateMerchantSettings (docs/decisions.md
#: "Merchant settings (issue 13)").
DEFAULT_TIME_ZONE = "UTC"
#: The longest name a merchant's messages may give as their sender.
MAX_SENDER_NAME_LENGTH = 100
#: The culture of an invoice whose CreateInvoice names none, directly or by its debtor,
#: and whose merchant set no default culture.
DEFAULT_CULTURE = "nl-NL"


# --- codes and names ---------------------------------------------------------------------


class InvoiceStatus(IntEnum):
    """Invoice status codes (docs/invoices.md). Paid is not a status: see `is_paid`."""

    NOT_SET = 0
    ACTIVE = 10
    PAUSED = 20
    PAUSED_BY_DISPUTE = 21
    PAUSED_BY_PAYMENT_PLAN = 22
    PENDING_TRANSFER_TO_COLLECTION_AGENCY = 70
    TRANSFERRED_TO_COLLECTION_AGENCY = 71
    ACCEPTED_BY_COLLECTION_AGENCY = 72
    PROCESSED_BY_COLLECTION_AGENCY = 73
    PROCESSED_BY_COLLECTION_AGENCY_INCOMPLETE = 74
    REFUSED_BY_COLLECTION_AGENCY = 79
    WRITTEN_OFF = 80
    REJECTED = 90
    CANCELLED = 91
    EMERGENCY = 99

    @property
    def display_name(self) -> str:
        """The name as Buckaroo writes it, e.g. `PausedByDispute`."""
        return "".join(word.capitalize() for word in self.name.split("_"))


class CollectionStatusCode(IntEnum):
    """The invoice statuses the collection service may set (SetCollectionStatus)."""

    TRANSFERRED_TO_COLLECTION_AGENCY = 71
    ACCEPTED_BY_COLLECTION_AGENCY = 72
    PROCESSED_BY_COLLECTION_AGENCY = 73
    PROCESSED_BY_COLLECTION_AGENCY_INCOMPLETE = 74
    REFUSED_BY_COLLECTION_AGENCY = 79

    @property
    def invoice_status(self) -> InvoiceStatus:
        return InvoiceStatus(self.value)


class InvoiceType(StrEnum):
    """What kind of invoice this is (the push's `Type`)."""

    REGULAR_INVOICE = "RegularInvoice"
    CREDIT_NOTE = "CreditNote"
    PAYMENT_PLAN_INSTALLMENT = "PaymentPlanInstallment"
    SUBSCRIPTION_INVOICE = "SubscriptionInvoice"


class EventCategory(StrEnum):
    """Whether an invoice event changed the amounts."""

    FINANCIAL_CHANGE = "FinancialChange"
    OTHER = "Other"


class InvoiceEventName(StrEnum):
    """The name of an invoice event (docs/invoices.md), the push's `Event`."""

    CHANGED_TRANSACTION_STATUS = "ChangedTransactionStatus"
    CHANGED_STATUS = "ChangedStatus"
    CREATED_CREDIT_NOTE = "CreatedCreditNote"
    SENT_REMINDER_MESSAGE = "SentReminderMessage"
    SENT_BACKUP_REMINDER_MESSAGE = "SentBackupReminderMessage"
    SKIPPED_REMINDER_BECAUSE_NO_METHODS_REMAIN = "SkippedReminderBecauseNoMethodsRemain"
    INCREASED_ADMIN_FEE = "IncreasedAdminFee"
    TRANSFERRED_TO_COLLECTION_AGENCY = "TransferredToCollectionAgency"
    CREATED_RECOLLECT = "CreatedRecollect"
    SENT_PAYMENT_INVITATION_MESSAGE = "SentPaymentInvitationMessage"
    SENT_BACKUP_PAYMENT_INVITATION_MESSAGE = "SentBackupPaymentInvitationMessage"
    CUSTOM_EVENT = "CustomEvent"


class InvoiceEventCode(IntEnum):
    """The number of an invoice event; CustomEvent has none."""

    CHANGED_TRANSACTION_STATUS = 1
    CHANGED_STATUS = 2
    CREATED_CREDIT_NOTE = 3
    SENT_REMINDER_MESSAGE = 4
    SENT_BACKUP_REMINDER_MESSAGE = 5
    SKIPPED_REMINDER_BECAUSE_NO_METHODS_REMAIN = 6
    INCREASED_ADMIN_FEE = 7
    TRANSFERRED_TO_COLLECTION_AGENCY = 8
    CREATED_RECOLLECT = 9
    SENT_PAYMENT_INVITATION_MESSAGE = 10
    SENT_BACKUP_PAYMENT_INVITATION_MESSAGE = 11

    @property
    def event_name(self) -> InvoiceEventName:
        return InvoiceEventName[self.name]

    @property
    def category(self) -> EventCategory:
        """The usual category; ChangedStatus is FinancialChange only on creation."""
        return INVOICE_EVENTS[self.event_name][1]


#: Every invoice event: name → (code, category). ChangedStatus is listed as `Other`; it
#: is `FinancialChange` on creation (pass `category=` to `InvoiceEvent.of`).
INVOICE_EVENTS: dict[InvoiceEventName, tuple[InvoiceEventCode | None, EventCategory]] = {
    InvoiceEventName.CHANGED_TRANSACTION_STATUS: (
        InvoiceEventCode.CHANGED_TRANSACTION_STATUS,
        EventCategory.FINANCIAL_CHANGE,
    ),
    InvoiceEventName.CHANGED_STATUS: (InvoiceEventCode.CHANGED_STATUS, EventCategory.OTHER),
    InvoiceEventName.CREATED_CREDIT_NOTE: (
        InvoiceEventCode.CREATED_CREDIT_NOTE,
        EventCategory.FINANCIAL_CHANGE,
    ),
    InvoiceEventName.SENT_REMINDER_MESSAGE: (
        InvoiceEventCode.SENT_REMINDER_MESSAGE,
        EventCategory.OTHER,
    ),
    InvoiceEventName.SENT_BACKUP_REMINDER_MESSAGE: (
        InvoiceEventCode.SENT_BACKUP_REMINDER_MESSAGE,
        EventCategory.OTHER,
    ),
    InvoiceEventName.SKIPPED_REMINDER_BECAUSE_NO_METHODS_REMAIN: (
        InvoiceEventCode.SKIPPED_REMINDER_BECAUSE_NO_METHODS_REMAIN,
        EventCategory.OTHER,
    ),
    InvoiceEventName.INCREASED_ADMIN_FEE: (
        InvoiceEventCode.INCREASED_ADMIN_FEE,
        EventCategory.FINANCIAL_CHANGE,
    ),
    InvoiceEventName.TRANSFERRED_TO_COLLECTION_AGENCY: (
        InvoiceEventCode.TRANSFERRED_TO_COLLECTION_AGENCY,
        EventCategory.OTHER,
    ),
    InvoiceEventName.CREATED_RECOLLECT: (InvoiceEventCode.CREATED_RECOLLECT, EventCategory.OTHER),
    InvoiceEventName.SENT_PAYMENT_INVITATION_MESSAGE: (
        InvoiceEventCode.SENT_PAYMENT_INVITATION_MESSAGE,
        EventCategory.OTHER,
    ),
    InvoiceEventName.SENT_BACKUP_PAYMENT_INVITATION_MESSAGE: (
        InvoiceEventCode.SENT_BACKUP_PAYMENT_INVITATION_MESSAGE,
        EventCategory.OTHER,
    ),
    InvoiceEventName.CUSTOM_EVENT: (None, EventCategory.OTHER),
}


class StepAction(StrEnum):
    """What a scheme step does (docs/dunning.md)."""

    PAYMENT_INVITATION = "PaymentInvitation"
    REMINDER = "Reminder"
    ADMIN_COST_INCREASE = "AdminCostIncrease"
    TRANSFER_TO_COLLECTION_AGENCY = "TransferToCollectionAgency"
    THRESHOLD = "Threshold"
    STOP_SUBSCRIPTION = "StopSubscription"
    CUSTOM_EVENT = "CustomEvent"


class Channel(StrEnum):
    """A way to reach the debtor."""

    EMAIL = "email"
    SMS = "sms"
    LETTER = "letter"


class MessageOutcome(StrEnum):
    """What the notifier did with a step's message."""

    SENT = "sent"
    SENT_BACKUP = "sent_backup"
    SKIPPED_NO_METHODS = "skipped_no_methods"


class PlanInterval(StrEnum):
    """How far apart the installments of a payment plan fall due."""

    WEEK = "week"
    MONTH = "month"


# --- blocks ------------------------------------------------------------------------------


class InvoiceLine(Part):
    """One line of an invoice. Informational: `amount_debit` is the amount owed."""

    sku: OneLine | None = Field(default=None, max_length=100, description="Article code.")
    description: Text = Field(description="What was sold.")
    quantity: Quantity = Field(description="How many (may be fractional, e.g. hours).")
    unit_price: Money = Field(description="Price per unit, excluding VAT.")
    vat_percentage: VatPercentage = Field(description="VAT rate in percent, e.g. `21`.")

    @model_validator(mode="after")
    def _total_fits(self) -> InvoiceLine:
        if self.model_config.get("extra") == "forbid":  # not in the snapshot twin
            check_line_total(self.quantity, self.unit_price, self.vat_percentage)
        return self


class InvoiceLineSnapshot(InvoiceLine):
    """An invoice line as reported in a snapshot: read as it was stored (the limits on
    numbers apply to new lines only)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    quantity: Decimal4 = Field(description="How many (may be fractional, e.g. hours).")
    unit_price: MoneyTotal = Field(description="Price per unit, excluding VAT.")
    vat_percentage: Decimal4 = Field(description="VAT rate in percent, e.g. `21`.")


#: `admin_cost: "statutory"`: the Dutch statutory scale of collection costs.
Statutory = Literal["statutory"]
#: `admin_cost: "interest"`: the Dutch statutory interest accrued so far (art. 6:119 /
#: 6:119a BW; docs/interest.md).
Interest = Literal["interest"]
INTEREST_COST: Interest = "interest"


class SchemeStep(Part):
    """One step of a dunning scheme. Which fields matter depends on `action`."""

    index: int = Field(ge=1, le=MAX_SCHEME_STEPS, description="Position in the scheme, 1..n.")
    action: StepAction = Field(description="What the step does.")
    days: int = Field(
        ge=-MAX_STEP_DAYS,
        le=MAX_STEP_DAYS,
        description="Offset in days from the due date (from the invoice date for a "
        f"PaymentInvitation); may be negative; at most {MAX_STEP_DAYS} either way.",
    )
    channels: list[Channel] = Field(
        default_factory=list,
        max_length=MAX_CHANNELS,
        description="Ordered channels for messages: the first is primary, the rest are backups.",
    )
    template_key: Identifier | None = Field(
        default=None, description="The notifier template for the step's message."
    )
    admin_cost: Money | Statutory | Interest | None = Field(
        default=None,
        description="AdminCostIncrease: an amount, `statutory` for the Dutch scale, or "
        "`interest` for the Dutch statutory interest accrued so far (docs/interest.md).",
    )
    threshold_amount: Money | None = Field(
        default=None,
        description="Threshold: no further step runs when the open amount is below this.",
    )
    agency_code: Identifier | None = Field(
        default=None, description="TransferToCollectionAgency: the preferred agency."
    )
    message: Text | None = Field(
        default=None,
        description="CustomEvent: the message; tags like `[InvoiceNumber]` are filled in.",
    )
    states_costs: bool = Field(
        default=False,
        description="Reminder: the message announces the statutory costs (14-day letter).",
    )


class Recollection(Part):
    """SEPA recollection (docs/invoices.md "SEPA recollection"): a failed direct debit
    is collected again with its mandate, up to `attempts` times per invoice."""

    attempts: int = Field(
        ge=1,
        le=MAX_RECOLLECT_ATTEMPTS,
        description="How many times one invoice's failed direct debits are collected again.",
    )
    days_between: int = Field(
        ge=1,
        le=MAX_RECOLLECT_DAYS,
        description="Days from a failed direct debit to the day it is collected again; "
        "no recollection when that day is not before the invoice's next step.",
    )


# --- commands ----------------------------------------------------------------------------


class InvoiceFields(Command):
    """The fields CreateInvoice and CreateCombinedInvoice share (not a message itself)."""

    invoice_number: Identifier = Field(description="The merchant's invoice number.")
    invoice_date: BusinessDate = Field(description="The invoice date.")
    due_date: BusinessDate = Field(description="The due date (on or after the invoice date).")
    currency: Currency = Field(description="ISO 4217 currency of every amount.")
    amount_debit: Money = Field(description="The invoice amount, including VAT.")
    amount_vat: Money = Field(description="The VAT included in `amount_debit`.")
    description: Text | None = Field(
        default=None,
        description="Free text. On a test invoice, a description starting with "
        "`buckarooschema_test`, `buckaroo_schema_test` or `schema_test` (in any case) makes "
        "the scheme run.",
    )
    scheme_key: Identifier = Field(
        default=DEFAULT_SCHEME_KEY, description="The dunning scheme to follow."
    )
    max_step_index: int | None = Field(
        default=None, ge=0, le=MAX_SCHEME_STEPS, description="Run no scheme step beyond this index."
    )
    culture: Culture | None = Field(
        default=None,
        description="Culture of the invoice's messages, e.g. `nl-NL`. When omitted the "
        "invoice service uses the person's culture, else the merchant's default culture "
        f"(UpdateMerchantSettings), else `{DEFAULT_CULTURE}`.",
    )
    is_test: bool = Field(default=False, description="A test invoice (runs no steps).")
    pay_link: OneLine | None = Field(
        default=None, max_length=MAX_URL_LENGTH, description="Where the debtor can pay."
    )
    allowed_services: list[Annotated[OneLine, Field(min_length=1, max_length=64)]] | None = Field(
        default=None,
        max_length=MAX_ALLOWED_SERVICES,
        description="Payment methods the debtor may use; all when omitted.",
    )
    lines: list[InvoiceLine] = Field(
        default_factory=list, max_length=MAX_INVOICE_LINES, description="Invoice lines."
    )
    debtor: Debtor = Field(description="Who owes the invoice.")
    subscription_key: Identifier | None = Field(
        default=None, description="The subscription this invoice bills, if any."
    )
    custom_parameters: list[KeyValue] = Field(
        default_factory=list,
        max_length=MAX_CUSTOM_PARAMETERS,
        description="Merchant key/value pairs, echoed in pushes.",
    )


class CreateInvoice(InvoiceFields):
    """Register an invoice; it follows its scheme from its invoice date."""


class CreateCombinedInvoice(InvoiceFields):
    """Register an invoice and its first transaction in one step."""

    transaction: Transaction = Field(description="The invoice's first transaction.")


class CreateCreditNote(Command):
    """Reduce the debt of an invoice (event 3 on the original).

    Kafka key: the original invoice's, `{website_key}:{original_invoice_number}`.
    """

    original_invoice_number: Identifier = Field(description="The invoice being credited.")
    credit_note_number: Identifier = Field(description="The credit note's own number.")
    amount: Money = Field(description="The credited amount, including VAT.")
    description: Text | None = Field(default=None, description="Free text.")


class AddOrUpdateDebtor(Command):
    """Set a debtor's details and unreachable contact methods.

    Changes the debtor on the debtor's open invoices; they emit no push but carry the
    new debtor in their next snapshot. Kafka key: `{website_key}:debtor:{debtor.code}`.
    """

    debtor: Debtor = Field(description="The debtor's details, replacing the stored ones.")
    unreachable: UnreachableFlags = Field(
        default_factory=UnreachableFlags,
        description="Contact methods known not to work; omitted flags mean reachable.",
    )


class CreatePaymentPlan(Command):
    """Pause invoices (22) and split what they owe into installment invoices.

    Kafka key: `{website_key}:plan:{dossier_number}`.
    """

    dossier_number: Identifier = Field(
        description="The plan's number; installments are `{dossier_number}-1..n`, so it "
        "leaves room for `-{installment_count}` within 100 characters (else `too_long`)."
    )
    included_invoice_numbers: list[Identifier] = Field(
        min_length=1, max_length=MAX_PLAN_INVOICES, description="The invoices the plan pays off."
    )
    installment_count: int = Field(ge=1, le=MAX_INSTALLMENTS, description="How many installments.")
    initial_amount: Money = Field(description="The first installment (before plan costs).")
    start_date: BusinessDate = Field(description="Due date of the first installment.")
    interval: PlanInterval = Field(description="Time between installment due dates.")
    payment_plan_cost_amount: Money = Field(
        default=Decimal(0), description="Costs of the plan, added to the first installment."
    )
    recipient_email: Email | None = Field(
        default=None, description="Where installment messages go; the debtor's when omitted."
    )
    scheme_key: Identifier = Field(
        description="The scheme of the installments (no `statutory` step allowed)."
    )


class TerminatePaymentPlan(Command):
    """Cancel (91) a plan's open installments and reactivate its invoices.

    Kafka key: `{website_key}:plan:{dossier_number}`.
    """

    dossier_number: Identifier = Field(description="The plan to terminate.")


class InvoiceStateCommand(Command):
    """The fields of the commands that only change an invoice's status (not a message)."""

    invoice_number: Identifier = Field(description="The invoice.")
    reason: Text | None = Field(default=None, description="Why, for the event log.")


class PauseInvoice(InvoiceStateCommand):
    """Stop the invoice's scheme (status 20) until UnpauseInvoice."""


class UnpauseInvoice(InvoiceStateCommand):
    """Resume a paused invoice's scheme; its steps shift by the time paused."""


class RegisterDispute(InvoiceStateCommand):
    """The debtor disputes the invoice: pause it (21)."""


class ResolveDispute(InvoiceStateCommand):
    """The dispute is over: resume the invoice's scheme."""


class WriteOffInvoice(InvoiceStateCommand):
    """The merchant gives up on the open amount (80)."""


class CancelInvoice(InvoiceStateCommand):
    """The invoice no longer applies (91)."""


class SetEmergency(InvoiceStateCommand):
    """Disable the invoice by hand (99)."""


class TriggerNextStep(Command):
    """Run the next scheme step of a test invoice now (test invoices only)."""

    invoice_number: Identifier = Field(description="The test invoice.")


class CreateCustomEvent(Command):
    """Emit a CustomEvent on an invoice (pushed to the merchant)."""

    invoice_number: Identifier = Field(description="The invoice.")
    message: Text = Field(
        min_length=1,
        description="The message; tags are filled in, e.g. "
        "`Call customer [DebtorCode] about [InvoiceNumber]`.",
    )


class UpsertScheme(Command):
    """Create a merchant scheme or a new version of it; invoices keep their version.

    Kafka key: `{website_key}:scheme:{scheme_key}`.
    """

    scheme_key: Identifier = Field(description="The scheme's key.")
    name: OneLine = Field(min_length=1, max_length=200, description="Display name.")
    steps: list[SchemeStep] = Field(
        max_length=MAX_SCHEME_STEPS,
        description="The steps in order of `index` (may be empty: a scheme that only "
        "tracks payments).",
    )
    recollection: Recollection | None = Field(
        default=None,
        description="SEPA recollection of failed direct debits; none when omitted.",
    )


class UpdateMerchantSettings(Command):
    """Set the merchant's settings, replacing the stored ones (an omitted field takes its
    default): the time zone its invoices' steps run in, the culture of invoices that
    name none, and the sender name of its messages to debtors.

    Steps already planned keep their time until the invoice's next change
    (docs/invoices.md "Merchant settings"). Kafka key: `{website_key}:merchant`.
    """

    time_zone: str = Field(
        default=DEFAULT_TIME_ZONE,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$",
        description="An IANA time zone name, e.g. `Europe/Amsterdam`: steps run at "
        "midnight there. Whether the zone exists is checked by the invoice service "
        "(`unknown_time_zone`).",
    )
    default_culture: Culture | None = Field(
        default=None,
        description="The culture of an invoice that names none and whose debtor names none.",
    )
    sender_name: OneLine | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SENDER_NAME_LENGTH,
        description="Who the debtor's messages come from: the e-mail's From name, the "
        "letter's sender line, the SMS sender, `[CompanyName]` when the invoice has no "
        "`CompanyName` parameter.",
    )


class StepDue(Command):
    """A scheme step's timer fired (scheduler → invoice).

    Ignored when `scheme_version` or `schedule_version` no longer match the invoice, so
    late or duplicated timers are harmless.
    """

    invoice_number: Identifier = Field(description="The invoice.")
    step_index: int = Field(ge=1, le=MAX_SCHEME_STEPS, description="The step that is due.")
    scheme_version: int = Field(
        ge=1, le=MAX_INT, description="The scheme version the timer was set for."
    )
    schedule_version: int = Field(
        ge=0, le=MAX_INT, description="The invoice's schedule version then."
    )


class RecordMessageOutcome(Command):
    """What the notifier did with a step's message (notifier → invoice)."""

    invoice_number: Identifier = Field(description="The invoice.")
    step_index: int = Field(
        ge=1, le=MAX_SCHEME_STEPS, description="The step whose message this was."
    )
    outcome: MessageOutcome = Field(description="Sent, sent on a backup channel, or skipped.")
    channel: Channel | None = Field(
        default=None, description="The channel it went out on; null when skipped."
    )


class SetCollectionStatus(Command):
    """The collection service moves the invoice to a collection status."""

    invoice_number: Identifier = Field(description="The invoice.")
    status_code: CollectionStatusCode = Field(description="One of 71, 72, 73, 74, 79.")
    case_key: Identifier = Field(description="The collection case.")


class RegisterCollectedAmount(Command):
    """Money an agency collected, booked on the invoice as a payment."""

    invoice_number: Identifier = Field(description="The invoice.")
    amount: Money = Field(description="The amount collected.")
    case_key: Identifier = Field(description="The collection case.")


# --- the event ---------------------------------------------------------------------------


class InvoiceSnapshot(SnapshotPart):
    """An invoice as it stands after a change: every field of the push, in snake_case,
    plus scheme, schedule, lines and the full debtor.

    Amounts are padded to the currency's minor-unit digits on construction (`121` in
    EUR is written `"121.00"`; never rounded). The formulas are in docs/invoices.md (Amounts).
    """

    AMOUNT_FIELDS: ClassVar[tuple[str, ...]] = (
        "amount_debit",
        "amount_credit",
        "amount_admin_costs",
        "amount_credit_notes",
        "amount_paid",
        "amount_admin_costs_paid",
        "amount_pending_slow",
        "open_amount",
        "open_amount_admin_costs",
        "open_amount_incl_admin_costs",
    )
    #: The statutory interest's amounts (docs/interest.md), padded like the others; not
    #: part of the push's amounts.
    INTEREST_FIELDS: ClassVar[tuple[str, ...]] = ("interest_accrued", "interest_booked")

    invoice_key: str = Field(min_length=1, description="The platform's id of the invoice.")
    invoice_number: Identifier = Field(description="The merchant's invoice number.")
    website_key: str = Field(description="The merchant.")
    type: InvoiceType = Field(description="Regular, credit note, installment, subscription.")
    status_code: InvoiceStatus = Field(description="The status code (docs/invoices.md).")
    is_test: bool = Field(description="A test invoice.")
    culture: str | None = Field(description="Culture of the invoice's messages.")
    invoice_date: date = Field(description="The invoice date.")
    due_date: date = Field(description="The due date.")
    description: str | None = Field(default=None, description="Free text.")
    pay_link: str | None = Field(default=None, description="Where the debtor can pay.")
    debtor_code: str | None = Field(description="The merchant's debtor code.")
    debtor_guid: str | None = Field(default=None, description="The platform's debtor id.")
    debtor: DebtorSnapshot | None = Field(
        default=None, description="The debtor, with unreachable contact methods."
    )
    scheme_key: str = Field(description="The scheme the invoice follows.")
    scheme_version: int = Field(
        ge=0, le=MAX_INT, description="The scheme version it was created with."
    )
    previous_step_index: int | None = Field(
        default=None, ge=0, le=MAX_INT, description="The last step that ran; null before the first."
    )
    previous_step_date_time: AwareDatetime | None = Field(
        default=None, description="When the last step ran (business time)."
    )
    next_step_index: int | None = Field(
        default=None, ge=0, le=MAX_INT, description="The next step; null when none will run."
    )
    next_step_due_at: AwareDatetime | None = Field(
        default=None, description="When the next step is due, shifted by paused time."
    )
    currency: str = Field(description="ISO 4217 currency of every amount.")
    amount_debit: MoneyTotal = Field(description="The invoice amount including VAT.")
    amount_credit: MoneyTotal = Field(description="Refunds and chargebacks.")
    amount_admin_costs: MoneyTotal = Field(description="Sum of admin cost increases.")
    amount_credit_notes: MoneyTotal = Field(description="Sum of credit notes.")
    amount_paid: MoneyTotal = Field(description="Sum of successful transactions.")
    amount_admin_costs_paid: MoneyTotal = Field(description="What payments allocated to costs.")
    amount_pending_slow: MoneyTotal = Field(description="Pending slow (SEPA) transactions.")
    open_amount: MoneyTotal = Field(description="Open principal; negative when overpaid.")
    open_amount_admin_costs: MoneyTotal = Field(description="Open admin costs.")
    open_amount_incl_admin_costs: MoneyTotal = Field(description="Open principal plus costs.")
    is_paid: bool = Field(description="`open_amount_incl_admin_costs` ≤ 0.")
    interest_accrued: MoneyTotal = Field(
        default=Decimal(0),
        description="Dutch statutory interest (art. 6:119 / 6:119a BW) accrued from the day "
        "after the due date up to the event's day (in the merchant's time zone), rounded to "
        "the currency's digits; 0 before it is overdue and for a Rejected or Cancelled "
        "invoice (docs/interest.md).",
    )
    interest_booked: MoneyTotal = Field(
        default=Decimal(0),
        description="How much of `amount_admin_costs` the scheme's interest steps added.",
    )
    interest_kind: InterestKind | None = Field(
        default=None,
        description="Which statutory interest the invoice accrues: `consumer` (art. 6:119 "
        "BW, a person debtor when the invoice was created) or `commercial` (art. 6:119a BW, a "
        "company); null in snapshots from before the field existed (docs/interest.md).",
    )
    time_zone: str | None = Field(
        default=None,
        description="The merchant's IANA time zone the invoice's days are counted in (steps "
        "run at midnight there; `interest_accrued` runs up to the event's day there); null in "
        "snapshots from before the field existed.",
    )
    interest_claimed: bool = Field(
        default=False,
        description="The invoice's scheme version adds the statutory interest (an "
        "AdminCostIncrease step with `admin_cost` `interest`): a collection case claims "
        "`interest_accrued` less `interest_booked` on top of the open amount.",
    )
    custom_parameters: list[KeyValueSnapshot] = Field(
        default_factory=list, description="The merchant's key/value pairs."
    )
    additional_parameters: list[KeyValueSnapshot] = Field(
        default_factory=list, description="Platform key/value pairs for the push."
    )
    subscription_key: str | None = Field(
        default=None, description="The subscription this invoice bills, if any."
    )
    lines: list[InvoiceLineSnapshot] = Field(default_factory=list, description="Lines.")

    @model_validator(mode="after")
    def _pad_amounts(self) -> InvoiceSnapshot:
        pad_amounts(self, self.AMOUNT_FIELDS + self.INTEREST_FIELDS, self.currency)
        return self

    @property
    def interest_not_booked(self) -> Decimal:
        """Statutory interest accrued that no interest step has added to the costs."""
        return max(Decimal(0), self.interest_accrued - self.interest_booked)

    @property
    def collection_amount(self) -> Decimal:
        """What a collection case claims (docs/collection.md "Automatic cases"): the open
        amount with costs, plus the interest not booked yet when the scheme opted in."""
        extra = self.interest_not_booked if self.interest_claimed else Decimal(0)
        return self.open_amount_incl_admin_costs + extra


class InvoiceEvent(Event):
    """Something happened to an invoice; `invoice` is the snapshot after it.

    One event per code that applies, each with the invoice's next `sequence`.
    The push's EventDateTime is the envelope's `occurred_at`.
    """

    event: InvoiceEventName = Field(description="The event's name (docs/invoices.md).")
    event_code: InvoiceEventCode | None = Field(
        description="The event's number; null for CustomEvent."
    )
    event_category: EventCategory = Field(description="FinancialChange or Other.")
    event_parameters: list[KeyValueSnapshot] = Field(
        default_factory=list,
        description="Event details, e.g. `StepIndex`, `StatusCode`, `CustomEventMessage`.",
    )
    sequence: int = Field(ge=1, le=MAX_INT, description="Per invoice, strictly increasing from 1.")
    invoice: InvoiceSnapshot = Field(description="The invoice after the change.")

    @classmethod
    def of(
        cls,
        event: InvoiceEventName,
        *,
        invoice: InvoiceSnapshot,
        sequence: int,
        parameters: dict[str, str] | None = None,
        category: EventCategory | None = None,
    ) -> InvoiceEvent:
        """Build an event with its code and usual category from `INVOICE_EVENTS`."""
        code, usual_category = INVOICE_EVENTS[event]
        return cls(
            event=event,
            event_code=code,
            event_category=category or usual_category,
            event_parameters=[
                KeyValueSnapshot(key=key, value=value) for key, value in (parameters or {}).items()
            ],
            sequence=sequence,
            invoice=invoice,
        )


register(
    CreateInvoice,
    CreateCombinedInvoice,
    CreateCreditNote,
    AddOrUpdateDebtor,
    CreatePaymentPlan,
    TerminatePaymentPlan,
    PauseInvoice,
    UnpauseInvoice,
    RegisterDispute,
    ResolveDispute,
    WriteOffInvoice,
    CancelInvoice,
    SetEmergency,
    TriggerNextStep,
    CreateCustomEvent,
    UpsertScheme,
    UpdateMerchantSettings,
    StepDue,
    RecordMessageOutcome,
    SetCollectionStatus,
    RegisterCollectedAmount,
    InvoiceEvent,
)
