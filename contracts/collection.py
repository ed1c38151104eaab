"""Messages of the collection service (`cm.collection.commands`, `cm.collection.events`)
and its request to agency adapters (`cm.agency.requests`).

A case moves `preparing` → MarkAsPrepared → `reviewing` (when a condition says so) →
`processing` (TransferCase sent; invoice 71) → the agency answers: AgencyAccepted (72),
AgencyRefused (79, case `failed`), AgencyProcessed complete (73) or incomplete (74),
case `closed`.

Kafka keys: `{website_key}:{case_key}`; configurations
`{website_key}:collector:{configuration_key}`; agency requests
`{agency_code}:{case_key}`.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated

from pydantic import Field, model_validator

from contracts.envelope import Command, Event, Money, MoneyTotal, register
from contracts.fields import (
    BusinessDate,
    CountryCode,
    Culture,
    Currency,
    Email,
    Identifier,
    OneLine,
    Part,
    SnapshotPart,
    Text,
    pad_amounts,
)
from contracts.invoice import InvoiceLine
from contracts.limits import MAX_COLLECTOR_CONDITIONS, MAX_DOCUMENTS, MAX_INVOICE_LINES

#: A document's content, base64. Capped at 512,000 characters so a TransferCase with a
#: document stays under Kafka's default 1 MB message size.
ContentBase64 = Annotated[str, Field(max_length=512_000, pattern=r"^[A-Za-z0-9+/]*={0,2}$")]
#: A MIME type such as `application/pdf`.
ContentType = Annotated[str, Field(max_length=255, pattern=r"^[\w.+-]+/[\w.+-]+$")]
#: A file name such as `invoice.pdf`.
DocumentName = Annotated[OneLine, Field(min_length=1, max_length=255)]


class ConditionAction(StrEnum):
    """What happens to a case that meets a condition."""

    TRANSFER = "transfer"
    REVIEW = "review"


class CaseEnvironment(StrEnum):
    """A `test` case never reaches an agency's production adapter nor changes a real
    invoice; `production` is the real thing."""

    TEST = "test"
    PRODUCTION = "production"


class Gender(StrEnum):
    """As the agency records it."""

    FEMALE = "female"
    MALE = "male"
    OTHER = "other"


class CaseState(StrEnum):
    """Where a case stands."""

    PREPARING = "preparing"
    REVIEWING = "reviewing"
    PROCESSING = "processing"
    FAILED = "failed"
    CLOSED = "closed"


class CaseEventName(StrEnum):
    """What happened to a case."""

    CREATED = "CaseCreated"
    DOCUMENT_ATTACHED = "DocumentAttached"
    PREPARED = "CasePrepared"
    APPROVED = "CaseApproved"
    REJECTED = "CaseRejected"
    TRANSFERRED = "CaseTransferred"
    ACCEPTED = "CaseAccepted"
    REFUSED = "CaseRefused"
    PROCESSED = "CaseProcessed"
    COLLECTED_AMOUNT_ADDED = "CollectedAmountAdded"
    RECALLED = "CaseRecalled"
    CLOSED = "CaseClosed"


class CollectorCondition(Part):
    """A rule on the case amount: the highest `min_amount` the case reaches decides."""

    min_amount: Money = Field(description="Applies to cases of at least this amount.")
    action: ConditionAction = Field(description="`transfer` at once, or `review` first.")


class BillingAddress(Part):
    """Who the agency collects from."""

    name: OneLine = Field(min_length=1, max_length=200, description="Person or company name.")
    given_name: OneLine | None = Field(default=None, max_length=100, description="Given name.")
    family_name: OneLine | None = Field(default=None, max_length=100, description="Family name.")
    organization_name: OneLine | None = Field(
        default=None, max_length=200, description="Company name, for a company debtor."
    )
    gender: Gender | None = Field(default=None, description="female, male or other.")
    mobile_phone: OneLine | None = Field(
        default=None, max_length=32, description="Mobile number, international format."
    )
    postal_state: OneLine | None = Field(
        default=None, max_length=100, description="State or province, where there is one."
    )
    street: OneLine = Field(min_length=1, max_length=200, description="Street name.")
    house_number: OneLine | None = Field(default=None, max_length=20, description="House number.")
    postal_code: OneLine | None = Field(default=None, max_length=20, description="Postal code.")
    city: OneLine = Field(min_length=1, max_length=100, description="City.")
    country: CountryCode = Field(description="ISO 3166-1 alpha-2 country code, e.g. `NL`.")
    email: Email | None = Field(default=None, description="E-mail address.")


class Document(Part):
    """A file sent along with a case."""

    name: DocumentName = Field(description="File name, e.g. `invoice.pdf`.")
    content_type: ContentType = Field(description="MIME type, e.g. `application/pdf`.")
    content_base64: ContentBase64 = Field(
        description="The file's bytes, base64 (at most 512,000 characters)."
    )


class UpsertDebtCollectorConfiguration(Command):
    """Name an agency and the conditions for sending cases to it.

    With no matching condition a case waits for review. Kafka key:
    `{website_key}:collector:{configuration_key}`.
    """

    configuration_key: Identifier = Field(description="The configuration's key.")
    agency_code: Identifier = Field(description="The agency cases go to.")
    conditions: list[CollectorCondition] = Field(
        default_factory=list,
        max_length=MAX_COLLECTOR_CONDITIONS,
        description="Rules on the case amount.",
    )
    priority: int = Field(
        default=100,
        ge=0,
        le=10_000,
        description="Configurations are tried from the lowest priority: the first with a "
        "condition the case amount meets decides.",
    )
    is_default: bool = Field(
        default=False,
        description="The merchant's default: used when no configuration's condition "
        "matches (its cases wait for review). Setting it moves the default here.",
    )
    open_cases_for_chargebacks: bool = Field(
        default=False,
        description="A chargeback on a paid invoice opens a case for the amount taken back.",
    )


class CaseFields(Command):
    """The fields CreateCase and TransferCase share (not a message itself)."""

    case_key: Identifier = Field(description="The case's key.")
    invoice_number: Identifier | None = Field(
        default=None, description="The platform invoice the case is about, if any."
    )
    external_id: OneLine = Field(
        min_length=1, max_length=100, description="The merchant's reference for the case."
    )
    billing_address: BillingAddress = Field(description="Who owes the money.")
    line_items: list[InvoiceLine] = Field(
        min_length=1, max_length=MAX_INVOICE_LINES, description="What is owed."
    )
    currency: Currency = Field(description="ISO 4217 currency.")
    due_date: BusinessDate = Field(description="When the debt was due.")
    amount: MoneyTotal = Field(
        description="The amount to collect (an invoice's open amount with its costs); "
        "the line items add up to it."
    )
    contract_date: BusinessDate | None = Field(
        default=None, description="When the debtor entered the contract, if known."
    )
    language: Culture | None = Field(
        default=None, description="The debtor's language for the agency, e.g. `nl-NL`."
    )
    reference: OneLine | None = Field(
        default=None, max_length=100, description="The merchant's reference shown to the debtor."
    )
    environment: CaseEnvironment = Field(
        default=CaseEnvironment.PRODUCTION,
        description="`test`: never sent to a production adapter, never changes an invoice.",
    )


class CaseCommand(Command):
    """The field every command about one existing case has (not a message itself)."""

    case_key: Identifier = Field(description="The case.")


class CreateCase(CaseFields):
    """Open a case by hand (cases for invoices reaching status 70 open by themselves)."""

    configuration_key: Identifier | None = Field(
        default=None, description="The configuration to use; the merchant's default if null."
    )


class AttachDocument(CaseCommand):
    """Add a document to a case in `preparing`."""

    name: DocumentName = Field(description="File name, e.g. `invoice.pdf`.")
    content_type: ContentType = Field(description="MIME type, e.g. `application/pdf`.")
    content_base64: ContentBase64 = Field(
        description="The file's bytes, base64 (at most 512,000 characters)."
    )


class MarkAsPrepared(CaseCommand):
    """The case is complete: review it or transfer it per the configuration."""


class ReviewCase(CaseCommand):
    """Approve (transfer) or reject a case in `reviewing`."""

    approve: bool = Field(description="True transfers the case; false fails it.")
    reason: Text | None = Field(default=None, description="Why, for the event log.")
    agency_code: Identifier | None = Field(
        default=None,
        description="The agency to transfer to, when the case has none yet (no "
        "configuration chose one) or another is wanted.",
    )


class AgencyAccepted(CaseCommand):
    """The agency took the case on (invoice 72). From the agency adapter."""

    agency_reference: OneLine | None = Field(
        default=None, max_length=100, description="The agency's own reference."
    )


class AgencyRefused(CaseCommand):
    """The agency did not accept the case (invoice 79, case `failed`)."""

    reason: Text = Field(description="The agency's reason.")


class AgencyProcessed(CaseCommand):
    """The agency finished (invoice 73 when complete, else 74; case `closed`).

    `collected_amount` is the agency's total for the case, including what was already
    reported by AddCollectedAmount: only the part above the amounts already added is
    booked on the invoice, so no euro is booked twice (docs/collection.md).
    """

    complete: bool = Field(description="Whether everything was collected.")
    collected_amount: MoneyTotal = Field(
        description="Total the agency collected for the case, all reports included."
    )


class AddCollectedAmount(CaseCommand):
    """Money collected by the agency, registered on the invoice as a payment."""

    amount: Money = Field(description="The amount collected now.")
    collection_reference: OneLine | None = Field(
        default=None,
        max_length=100,
        description="The agency's reference of this collection; a repeat with the same "
        "reference is booked once.",
    )


class CloseCase(CaseCommand):
    """Close a case by hand."""

    reason: Text = Field(description="Why the case is closed.")


class TransferCase(CaseFields):
    """Hand a case to an agency (collection → the agency's adapter).

    Kafka key: `{agency_code}:{case_key}`; the envelope's `website_key` is the merchant.
    The adapter answers with AgencyAccepted / AgencyRefused / AgencyProcessed.
    """

    agency_code: Identifier = Field(description="The agency.")
    documents: list[Document] = Field(
        default_factory=list, max_length=MAX_DOCUMENTS, description="Attached files."
    )


class RecallCase(CaseCommand):
    """Take a case back from the agency (collection → the agency's adapter): the invoice
    was paid directly, written off, credited to zero or emergency-stopped.

    Kafka key: `{agency_code}:{case_key}`.
    """

    agency_code: Identifier = Field(description="The agency holding it.")
    reason: Text = Field(description="Why the case is recalled.")


class CaseSnapshot(SnapshotPart):
    """A case as it stands after a change (documents by name only)."""

    case_key: str = Field(description="The case's key.")
    state: CaseState = Field(description="preparing, reviewing, processing, failed, closed.")
    invoice_number: str | None = Field(default=None, description="The invoice, if any.")
    external_id: str = Field(description="The merchant's reference.")
    configuration_key: str | None = Field(default=None, description="The configuration.")
    agency_code: str | None = Field(default=None, description="The agency, once chosen.")
    currency: str = Field(description="ISO 4217 currency.")
    due_date: date = Field(description="When the debt was due.")
    amount: MoneyTotal = Field(description="The amount to collect.")
    collected_amount: MoneyTotal = Field(description="What the agency collected so far.")
    document_names: list[str] = Field(default_factory=list, description="Attached files.")
    environment: CaseEnvironment = Field(
        default=CaseEnvironment.PRODUCTION, description="test or production."
    )
    reference: str | None = Field(default=None, description="The merchant's reference.")
    agency_reference: str | None = Field(
        default=None, description="The agency's own reference, once accepted."
    )

    @model_validator(mode="after")
    def _pad_amounts(self) -> CaseSnapshot:
        """Amounts with the currency's minor-unit digits (`0` in EUR is `0.00`)."""
        pad_amounts(self, ("amount", "collected_amount"), self.currency)
        return self


class CaseEvent(Event):
    """Something happened to a case; `case` is the state after it."""

    event: CaseEventName = Field(description="What happened.")
    case: CaseSnapshot = Field(description="The case after it.")
    reason: str | None = Field(default=None, description="A reason given, if any.")


register(
    UpsertDebtCollectorConfiguration,
    CreateCase,
    AttachDocument,
    MarkAsPrepared,
    ReviewCase,
    AgencyAccepted,
    AgencyRefused,
    AgencyProcessed,
    AddCollectedAmount,
    CloseCase,
    TransferCase,
    RecallCase,
    CaseEvent,
)
