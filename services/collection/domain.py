"""Debt collection cases, pure: where a case may go, which configuration decides, and
what money is booked. Every function takes a `Case` (and the command's data) and returns
an `Outcome`: the case after the change, the events, the requests to the agency and the
commands to the invoice service it means, or the errors that refuse it. The rules are in
docs/collection.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from contracts.collection import CaseEnvironment, CaseEventName, CaseState, ConditionAction
from contracts.envelope import FieldError
from contracts.invoice import CollectionStatusCode

ZERO = Decimal(0)

#: Where each case command may be applied (any other state refuses it: `wrong_state`).
ALLOWED: dict[str, frozenset[CaseState]] = {
    "AttachDocument": frozenset({CaseState.PREPARING}),
    "MarkAsPrepared": frozenset({CaseState.PREPARING}),
    "ReviewCase": frozenset({CaseState.REVIEWING}),
    "AgencyAccepted": frozenset({CaseState.PROCESSING}),
    "AgencyRefused": frozenset({CaseState.PROCESSING}),
    "AgencyProcessed": frozenset({CaseState.PROCESSING}),
    "AddCollectedAmount": frozenset({CaseState.PROCESSING}),
    "CloseCase": frozenset({CaseState.PREPARING, CaseState.REVIEWING, CaseState.PROCESSING}),
}

#: A case in these states is over: nothing moves it any more.
FINAL = frozenset({CaseState.FAILED, CaseState.CLOSED})


@dataclass(frozen=True)
class Condition:
    min_amount: Decimal
    action: ConditionAction


@dataclass(frozen=True)
class Configuration:
    """A merchant's debt collector configuration."""

    key: str
    agency_code: str
    conditions: tuple[Condition, ...] = ()
    priority: int = 100
    is_default: bool = False
    open_cases_for_chargebacks: bool = False


@dataclass(frozen=True)
class Choice:
    """What the configurations decide for a case: the agency (None when no configuration
    names one) and whether it is transferred at once or reviewed first."""

    configuration_key: str | None
    agency_code: str | None
    action: ConditionAction


def choose(
    configurations: Sequence[Configuration], amount: Decimal, only: str | None = None
) -> Choice:
    """The configuration that decides a case of `amount`: tried from the lowest priority
    (then by key), the first with a condition the amount meets decides, with the action
    of the highest `min_amount` it meets. When none matches, the default configuration's
    agency, for review; with no configuration at all, review without an agency. `only`
    limits the choice to one configuration (a CreateCase that names it)."""
    candidates = [c for c in configurations if only is None or c.key == only]
    for config in sorted(candidates, key=lambda c: (c.priority, c.key)):
        met = [c for c in config.conditions if amount >= c.min_amount]
        if met:
            decisive = max(met, key=lambda c: c.min_amount)
            return Choice(config.key, config.agency_code, decisive.action)
    fallback = next((c for c in candidates if c.is_default), None)
    if fallback is None and only is not None and candidates:
        fallback = candidates[0]
    if fallback is not None:
        return Choice(fallback.key, fallback.agency_code, ConditionAction.REVIEW)
    return Choice(None, None, ConditionAction.REVIEW)


@dataclass(frozen=True)
class Case:
    """A case as the domain needs it (addresses, lines and documents stay with the
    repository: no rule reads them)."""

    key: str
    state: CaseState
    currency: str
    amount: Decimal
    invoice_number: str | None = None
    environment: CaseEnvironment = CaseEnvironment.PRODUCTION
    configuration_key: str | None = None
    agency_code: str | None = None
    agency_reference: str | None = None
    #: What AddCollectedAmount (and AgencyProcessed above it) booked so far.
    collected_amount: Decimal = ZERO
    #: The agency's collection references already booked (a repeat is booked once).
    collection_references: frozenset[str] = frozenset()
    #: Whether the agency holds the case (a TransferCase went out and no answer ended it).
    transferred: bool = False

    @property
    def touches_invoice(self) -> bool:
        """Only a production case about a platform invoice changes that invoice."""
        return self.invoice_number is not None and self.environment == CaseEnvironment.PRODUCTION


@dataclass(frozen=True)
class Outcome:
    """Everything a change means: the case after it (None when refused), the events,
    whether a TransferCase / RecallCase goes to the agency, the invoice's collection
    status and the money booked on it."""

    case: Case | None = None
    events: tuple[tuple[CaseEventName, str | None], ...] = ()
    transfer: bool = False
    recall: str | None = None
    collection_status: CollectionStatusCode | None = None
    booked: Decimal = ZERO
    errors: tuple[FieldError, ...] = ()


def refuse(field_name: str, code: str, message: str) -> Outcome:
    return Outcome(errors=(FieldError(field_name, code, message),))


def _wrong_state(case: Case, command: str) -> Outcome | None:
    if case.state in ALLOWED[command]:
        return None
    allowed = ", ".join(sorted(s.value for s in ALLOWED[command]))
    return refuse(
        "payload.case_key", "wrong_state", f"{command} needs the case {allowed}; it is {case.state}"
    )


def _status(case: Case, code: CollectionStatusCode) -> CollectionStatusCode | None:
    return code if case.touches_invoice else None


def _transfer(
    case: Case, agency_code: str, events: list[tuple[CaseEventName, str | None]]
) -> Outcome:
    moved = replace(case, state=CaseState.PROCESSING, agency_code=agency_code, transferred=True)
    events.append((CaseEventName.TRANSFERRED, None))
    return Outcome(
        case=moved,
        events=tuple(events),
        transfer=True,
        collection_status=_status(case, CollectionStatusCode.TRANSFERRED_TO_COLLECTION_AGENCY),
    )


def attach_document(case: Case) -> Outcome:
    refused = _wrong_state(case, "AttachDocument")
    if refused:
        return refused
    return Outcome(case=case, events=((CaseEventName.DOCUMENT_ATTACHED, None),))


def mark_prepared(case: Case, choice: Choice) -> Outcome:
    """`preparing` → `processing` (transferred at once) when the configuration says
    transfer and names an agency, else `reviewing`."""
    refused = _wrong_state(case, "MarkAsPrepared")
    if refused:
        return refused
    case = replace(case, configuration_key=choice.configuration_key)
    events: list[tuple[CaseEventName, str | None]] = [(CaseEventName.PREPARED, None)]
    if choice.action == ConditionAction.TRANSFER and choice.agency_code is not None:
        return _transfer(case, choice.agency_code, events)
    reviewed = replace(case, state=CaseState.REVIEWING, agency_code=choice.agency_code)
    return Outcome(case=reviewed, events=tuple(events))


def review(case: Case, approve: bool, agency_code: str | None, reason: str | None) -> Outcome:
    """Approve: transferred (to `agency_code`, or the case's); reject: `failed`."""
    refused = _wrong_state(case, "ReviewCase")
    if refused:
        return refused
    if not approve:
        return Outcome(
            case=replace(case, state=CaseState.FAILED),
            events=((CaseEventName.REJECTED, reason),),
        )
    agency = agency_code or case.agency_code
    if agency is None:
        return refuse(
            "payload.agency_code", "agency_required", "no configuration named an agency: name one"
        )
    return _transfer(case, agency, [(CaseEventName.APPROVED, reason)])


def agency_accepted(case: Case, reference: str | None) -> Outcome:
    refused = _wrong_state(case, "AgencyAccepted")
    if refused:
        return refused
    return Outcome(
        case=replace(case, agency_reference=reference or case.agency_reference),
        events=((CaseEventName.ACCEPTED, None),),
        collection_status=_status(case, CollectionStatusCode.ACCEPTED_BY_COLLECTION_AGENCY),
    )


def agency_refused(case: Case, reason: str) -> Outcome:
    refused = _wrong_state(case, "AgencyRefused")
    if refused:
        return refused
    return Outcome(
        case=replace(case, state=CaseState.FAILED, transferred=False),
        events=((CaseEventName.REFUSED, reason),),
        collection_status=_status(case, CollectionStatusCode.REFUSED_BY_COLLECTION_AGENCY),
    )


def add_collected(case: Case, amount: Decimal, reference: str | None) -> Outcome:
    """Money the agency collected: booked on the invoice once (a repeated reference is
    not booked again)."""
    refused = _wrong_state(case, "AddCollectedAmount")
    if refused:
        return refused
    if amount <= ZERO:
        return refuse("payload.amount", "not_positive", "a collected amount is positive")
    if reference is not None and reference in case.collection_references:
        return Outcome(case=case)  # booked before
    references = case.collection_references | ({reference} if reference else set())
    return Outcome(
        case=replace(
            case,
            collected_amount=case.collected_amount + amount,
            collection_references=frozenset(references),
        ),
        events=((CaseEventName.COLLECTED_AMOUNT_ADDED, None),),
        booked=amount,
    )


def agency_processed(case: Case, complete: bool, total: Decimal) -> Outcome:
    """The agency is done: `closed`, invoice 73 (complete) or 74. `total` is all it
    collected for the case; only what lies above the amounts already added is booked."""
    refused = _wrong_state(case, "AgencyProcessed")
    if refused:
        return refused
    rest = max(ZERO, total - case.collected_amount)
    return Outcome(
        case=replace(
            case,
            state=CaseState.CLOSED,
            transferred=False,
            collected_amount=case.collected_amount + rest,
        ),
        events=((CaseEventName.PROCESSED, None), (CaseEventName.CLOSED, None)),
        collection_status=_status(
            case,
            CollectionStatusCode.PROCESSED_BY_COLLECTION_AGENCY
            if complete
            else CollectionStatusCode.PROCESSED_BY_COLLECTION_AGENCY_INCOMPLETE,
        ),
        booked=rest,
    )


def close(case: Case, reason: str) -> Outcome:
    """Close by hand; a case the agency holds is recalled."""
    refused = _wrong_state(case, "CloseCase")
    if refused:
        return refused
    return _closed(case, reason)


def invoice_settled(case: Case, reason: str) -> Outcome:
    """The invoice no longer needs collecting (paid directly, written off, credited to
    zero, emergency-stopped): an open case is recalled (when the agency holds it) and
    closed; a case that is over stays as it is."""
    if case.state in FINAL:
        return Outcome()
    return _closed(case, reason)


def _closed(case: Case, reason: str) -> Outcome:
    events: list[tuple[CaseEventName, str | None]] = []
    recalled = None
    if case.transferred:
        recalled = reason
        events.append((CaseEventName.RECALLED, reason))
    events.append((CaseEventName.CLOSED, reason))
    return Outcome(
        case=replace(case, state=CaseState.CLOSED, transferred=False),
        events=tuple(events),
        recall=recalled,
    )


@dataclass(frozen=True)
class LineItem:
    quantity: Decimal
    unit_price: Decimal
    vat_percentage: Decimal


def line_items_error(items: Sequence[LineItem], amount: Decimal, digits: int) -> FieldError | None:
    """The line items (quantity times unit price, plus VAT, each rounded to the currency's
    digits) must add up to the case amount."""
    exponent = Decimal(1).scaleb(-digits)
    total = sum(
        (
            (i.quantity * i.unit_price * (1 + i.vat_percentage / 100)).quantize(exponent)
            for i in items
        ),
        ZERO,
    )
    if total == amount:
        return None
    return FieldError(
        "payload.line_items", "total_mismatch", f"the line items add up to {total}, not {amount}"
    )
