"""One function per collection message: load (locked), call the domain, save, emit, in
one transaction. The rules are in docs/collection.md."""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import date
from decimal import Decimal
from typing import Any

from babel.numbers import list_currencies
from pydantic import ValidationError

from contracts import topics
from contracts.catalog import key_for_payload
from contracts.collection import (
    AddCollectedAmount,
    AgencyAccepted,
    AgencyProcessed,
    AgencyRefused,
    AttachDocument,
    BillingAddress,
    CaseEnvironment,
    CaseEvent,
    CaseEventName,
    CaseSnapshot,
    CaseState,
    CloseCase,
    CreateCase,
    Document,
    MarkAsPrepared,
    RecallCase,
    ReviewCase,
    TransferCase,
    UpsertDebtCollectorConfiguration,
)
from contracts.debtor import DebtorSnapshot
from contracts.envelope import FieldError, Message
from contracts.fields import decimals_of, minor_unit
from contracts.invoice import (
    InvoiceEvent,
    InvoiceEventName,
    InvoiceLine,
    InvoiceStatus,
    RegisterCollectedAmount,
    SetCollectionStatus,
)
from contracts.limits import MAX_DOCUMENTS
from contracts.payments import TransactionStatus
from services.collection import domain
from services.collection.repository import CollectionRepository, StoredCase
from services.runtime.consumer import HandlerContext

_CURRENCIES = frozenset(list_currencies())
#: The documents of one case together, at most (they travel in one TransferCase).
MAX_DOCUMENT_BYTES_PER_CASE = 700_000
#: Namespace of the ids of what the service sends for a message (booking, status, ...).
_IDS = uuid.UUID("2f6b8d1e-4a3c-4e5f-9b7a-1c3d5e7f9a2b")
#: Namespace of the keys of automatic cases (one per merchant and invoice).
_AUTO_CASES = uuid.UUID("7d9f1b3a-5c7e-4a9b-8d1f-3b5d7f9a1c3e")
#: Invoice statuses after which an open case is recalled and closed.
_SETTLED = {
    InvoiceStatus.WRITTEN_OFF: "the invoice was written off",
    InvoiceStatus.CANCELLED: "the invoice was cancelled",
    InvoiceStatus.EMERGENCY: "the invoice was emergency-stopped",
}


def _repo(ctx: HandlerContext) -> CollectionRepository:
    return CollectionRepository(ctx.conn, ctx.website_key)


def _unknown(key: str) -> list[FieldError]:
    return [FieldError("payload.case_key", "unknown_case", f"no case {key} for this merchant")]


def _id(ctx: HandlerContext, what: str) -> uuid.UUID:
    """The id of what this message sends (stable when the message is handled again)."""
    return uuid.uuid5(_IDS, f"{ctx.envelope.message_id}:{what}")


def _emit(ctx: HandlerContext, topic: str, payload: Message, what: str) -> None:
    """Send `payload` with the catalog's Kafka key and the stable id of `what`."""
    ctx.emit(topic, key_for_payload(payload, ctx.website_key), payload, message_id=_id(ctx, what))


# --- configurations ------------------------------------------------------------------------


async def upsert_configuration(ctx: HandlerContext, cmd: UpsertDebtCollectorConfiguration) -> None:
    errors = [
        FieldError(f"payload.conditions.{i}.min_amount", "negative", "an amount is not negative")
        for i, c in enumerate(cmd.conditions)
        if c.min_amount < 0
    ]
    amounts = [c.min_amount for c in cmd.conditions]
    if len(set(amounts)) != len(amounts):
        errors.append(
            FieldError("payload.conditions", "duplicate_min_amount", "one condition per amount")
        )
    if errors:
        ctx.reject(errors)
        return
    await _repo(ctx).upsert_configuration(
        domain.Configuration(
            key=cmd.configuration_key,
            agency_code=cmd.agency_code,
            conditions=tuple(domain.Condition(c.min_amount, c.action) for c in cmd.conditions),
            priority=cmd.priority,
            is_default=cmd.is_default,
            open_cases_for_chargebacks=cmd.open_cases_for_chargebacks,
        )
    )
    ctx.accept(configuration_key=cmd.configuration_key)


# --- snapshots and effects -----------------------------------------------------------------


async def _snapshot(
    repo: CollectionRepository, stored: StoredCase, case: domain.Case
) -> CaseSnapshot:
    return CaseSnapshot(
        case_key=case.key,
        state=case.state,
        invoice_number=case.invoice_number,
        external_id=stored.data["external_id"],
        configuration_key=case.configuration_key,
        agency_code=case.agency_code,
        currency=case.currency,
        due_date=date.fromisoformat(stored.data["due_date"]),
        amount=case.amount,
        collected_amount=case.collected_amount,
        document_names=await repo.document_names(case.key),
        environment=case.environment,
        reference=stored.data.get("reference"),
        agency_reference=case.agency_reference,
    )


async def _apply(
    ctx: HandlerContext, repo: CollectionRepository, stored: StoredCase, outcome: domain.Outcome
) -> bool:
    """Save the case and send everything the outcome means. False when it was refused
    (the command is answered with its errors)."""
    if outcome.errors:
        ctx.reject(list(outcome.errors))
        return False
    before, case = stored.case, outcome.case
    if case is None:
        return True  # nothing changes
    await repo.save(before, case)
    snapshot = await _snapshot(repo, stored, case)
    for i, (name, reason) in enumerate(outcome.events):
        _emit(
            ctx,
            topics.COLLECTION_EVENTS,
            CaseEvent(event=name, case=snapshot, reason=reason),
            f"{case.key}:event:{i}",
        )
    # A test case plays its moves without an agency: nothing goes to an adapter.
    live = case.environment == CaseEnvironment.PRODUCTION
    if outcome.transfer and live:
        assert case.agency_code is not None
        await _send_transfer(ctx, repo, stored, case)
    if outcome.recall is not None and before.agency_code is not None and live:
        _emit(
            ctx,
            topics.AGENCY_REQUESTS,
            RecallCase(case_key=case.key, agency_code=before.agency_code, reason=outcome.recall),
            f"{case.key}:recall",
        )
    if case.touches_invoice and case.invoice_number is not None:
        if outcome.collection_status is not None:
            _emit(
                ctx,
                topics.INVOICE_INTERNAL,
                SetCollectionStatus(
                    invoice_number=case.invoice_number,
                    status_code=outcome.collection_status,
                    case_key=case.key,
                ),
                f"{case.key}:status",
            )
        if outcome.booked > 0:
            _emit(
                ctx,
                topics.INVOICE_INTERNAL,
                RegisterCollectedAmount(
                    invoice_number=case.invoice_number, amount=outcome.booked, case_key=case.key
                ),
                f"{case.key}:booked",
            )
    return True


async def _send_transfer(
    ctx: HandlerContext, repo: CollectionRepository, stored: StoredCase, case: domain.Case
) -> None:
    data = stored.data
    assert case.agency_code is not None
    _emit(
        ctx,
        topics.AGENCY_REQUESTS,
        TransferCase(
            case_key=case.key,
            invoice_number=case.invoice_number,
            external_id=data["external_id"],
            billing_address=BillingAddress.model_validate(data["billing_address"]),
            line_items=[InvoiceLine.model_validate(item) for item in data["line_items"]],
            currency=case.currency,
            due_date=date.fromisoformat(data["due_date"]),
            amount=case.amount,
            contract_date=data.get("contract_date"),
            language=data.get("language"),
            reference=data.get("reference"),
            environment=case.environment,
            agency_code=case.agency_code,
            documents=[
                Document(name=d.name, content_type=d.content_type, content_base64=d.content_base64)
                for d in await repo.documents(case.key)
            ],
        ),
        f"{case.key}:transfer",
    )


async def _case(ctx: HandlerContext, key: str) -> tuple[CollectionRepository, StoredCase | None]:
    repo = _repo(ctx)
    stored = await repo.get(key)
    if stored is None:
        ctx.reject(_unknown(key))
    return repo, stored


# --- CreateCase ----------------------------------------------------------------------------


def create_errors(cmd: CreateCase, configuration_keys: set[str]) -> list[FieldError]:
    errors: list[FieldError] = []
    if cmd.currency not in _CURRENCIES:
        errors.append(
            FieldError("payload.currency", "unknown_currency", f"{cmd.currency} is not ISO 4217")
        )
    elif decimals_of(cmd.amount) > minor_unit(cmd.currency):
        errors.append(
            FieldError(
                "payload.amount",
                "too_many_decimals",
                f"{cmd.currency} has {minor_unit(cmd.currency)} decimals",
            )
        )
    if cmd.amount <= 0:
        errors.append(FieldError("payload.amount", "not_positive", "a case amount is positive"))
    if cmd.configuration_key is not None and cmd.configuration_key not in configuration_keys:
        errors.append(
            FieldError(
                "payload.configuration_key", "unknown_configuration", "no such configuration"
            )
        )
    if cmd.currency in _CURRENCIES:
        mismatch = domain.line_items_error(
            [domain.LineItem(i.quantity, i.unit_price, i.vat_percentage) for i in cmd.line_items],
            cmd.amount,
            minor_unit(cmd.currency),
        )
        if mismatch is not None:
            errors.append(mismatch)
    return errors


def _data(cmd: CreateCase) -> dict[str, Any]:
    return cmd.model_dump(
        mode="json",
        include={
            "external_id",
            "billing_address",
            "line_items",
            "due_date",
            "contract_date",
            "language",
            "reference",
        },
    )


async def create_case(ctx: HandlerContext, cmd: CreateCase) -> None:
    repo = _repo(ctx)
    await repo.lock_key(cmd.case_key)
    fingerprint = hashlib.sha256(cmd.model_dump_json().encode()).hexdigest()
    existing = await repo.get(cmd.case_key)
    if existing is not None:
        if existing.request_hash == fingerprint:
            ctx.accept(case_key=cmd.case_key)
        else:
            ctx.reject(
                [
                    FieldError(
                        "payload.case_key",
                        "duplicate_case_key",
                        f"case {cmd.case_key} exists with other content",
                    )
                ]
            )
        return
    configurations = await repo.configurations()
    errors = create_errors(cmd, {c.key for c in configurations})
    if errors:
        ctx.reject(errors)
        return
    case = domain.Case(
        key=cmd.case_key,
        state=CaseState.PREPARING,
        currency=cmd.currency,
        amount=cmd.amount,
        invoice_number=cmd.invoice_number,
        environment=cmd.environment,
        configuration_key=cmd.configuration_key,
    )
    stored = StoredCase(case, fingerprint, _data(cmd))
    await repo.insert(stored)
    await _emit_created(ctx, repo, stored)
    ctx.accept(case_key=cmd.case_key)


async def _emit_created(
    ctx: HandlerContext, repo: CollectionRepository, stored: StoredCase
) -> None:
    _emit(
        ctx,
        topics.COLLECTION_EVENTS,
        CaseEvent(event=CaseEventName.CREATED, case=await _snapshot(repo, stored, stored.case)),
        f"{stored.case.key}:created",
    )


# --- the case's moves ----------------------------------------------------------------------


async def attach_document(ctx: HandlerContext, cmd: AttachDocument) -> None:
    repo, stored = await _case(ctx, cmd.case_key)
    if stored is None:
        return
    outcome = domain.attach_document(stored.case)
    if not outcome.errors:
        try:
            content = base64.b64decode(cmd.content_base64, validate=True)
        except (binascii.Error, ValueError):
            ctx.reject([FieldError("payload.content_base64", "not_base64", "not valid base64")])
            return
        count, used = await repo.document_usage(cmd.case_key)
        if count >= MAX_DOCUMENTS:
            ctx.reject(
                [FieldError("payload.case_key", "too_many_documents", f"at most {MAX_DOCUMENTS}")]
            )
            return
        if used + len(content) > MAX_DOCUMENT_BYTES_PER_CASE:
            ctx.reject(
                [
                    FieldError(
                        "payload.content_base64",
                        "documents_too_large",
                        f"a case's documents hold at most {MAX_DOCUMENT_BYTES_PER_CASE} bytes",
                    )
                ]
            )
            return
        await repo.add_document(cmd.case_key, count, cmd.name, cmd.content_type, content)
    if await _apply(ctx, repo, stored, outcome):
        ctx.accept(case_key=cmd.case_key)


async def _move(
    ctx: HandlerContext, case_key: str, step: Callable[[domain.Case], domain.Outcome]
) -> None:
    """The case's move: load it (locked), let the domain decide, apply, answer."""
    repo, stored = await _case(ctx, case_key)
    if stored is not None and await _apply(ctx, repo, stored, step(stored.case)):
        ctx.accept(case_key=case_key)


async def mark_prepared(ctx: HandlerContext, cmd: MarkAsPrepared) -> None:
    configurations = await _repo(ctx).configurations()
    await _move(
        ctx,
        cmd.case_key,
        lambda case: domain.mark_prepared(
            case, domain.choose(configurations, case.amount, only=case.configuration_key)
        ),
    )


async def review_case(ctx: HandlerContext, cmd: ReviewCase) -> None:
    await _move(
        ctx, cmd.case_key, lambda c: domain.review(c, cmd.approve, cmd.agency_code, cmd.reason)
    )


async def agency_accepted(ctx: HandlerContext, cmd: AgencyAccepted) -> None:
    await _move(ctx, cmd.case_key, lambda c: domain.agency_accepted(c, cmd.agency_reference))


async def agency_refused(ctx: HandlerContext, cmd: AgencyRefused) -> None:
    await _move(ctx, cmd.case_key, lambda c: domain.agency_refused(c, cmd.reason))


async def agency_processed(ctx: HandlerContext, cmd: AgencyProcessed) -> None:
    await _move(
        ctx,
        cmd.case_key,
        lambda c: domain.agency_processed(c, cmd.complete, cmd.collected_amount),
    )


async def add_collected_amount(ctx: HandlerContext, cmd: AddCollectedAmount) -> None:
    await _move(
        ctx,
        cmd.case_key,
        lambda c: domain.add_collected(c, cmd.amount, cmd.collection_reference),
    )


async def close_case(ctx: HandlerContext, cmd: CloseCase) -> None:
    await _move(ctx, cmd.case_key, lambda c: domain.close(c, cmd.reason))


# --- invoice events ------------------------------------------------------------------------


def _billing_address(evt: InvoiceEvent) -> BillingAddress | None:
    debtor = evt.invoice.debtor
    if debtor is None or debtor.address is None:
        return None
    person, company = debtor.person, debtor.company
    name = company.name if company else f"{person.first_name} {person.last_name}" if person else ""
    if not name:
        return None
    try:
        return _address(debtor, name)
    except ValidationError:
        # A snapshot reads data stored under older, looser rules: what the agency's
        # address cannot carry opens no case rather than failing the event.
        return None


def _address(debtor: DebtorSnapshot, name: str) -> BillingAddress:
    person, company, address = debtor.person, debtor.company, debtor.address
    assert address is not None
    return BillingAddress(
        name=name[:200],
        given_name=person.first_name if person else None,
        family_name=person.last_name if person else None,
        organization_name=company.name if company else None,
        mobile_phone=debtor.phone.mobile if debtor.phone else None,
        street=address.street,
        house_number=address.house_number,
        postal_code=address.postal_code,
        city=address.city,
        country=address.country,
        email=debtor.email,
    )


def auto_case_key(website_key: str, invoice_number: str) -> str:
    return f"case-{uuid.uuid5(_AUTO_CASES, f'{website_key}:{invoice_number}')}"


async def invoice_event(ctx: HandlerContext, evt: InvoiceEvent) -> None:
    """Status 70 opens the invoice's case (once) and prepares it; an invoice settled
    elsewhere (paid, written off, cancelled, emergency) recalls and closes its open case."""
    invoice = evt.invoice
    if invoice.is_test:
        return
    if invoice.status_code == InvoiceStatus.PENDING_TRANSFER_TO_COLLECTION_AGENCY:
        await _open_automatic_case(ctx, evt)
        return
    if _chargeback(evt) is not None:
        await _open_chargeback_case(ctx, evt)
        return
    reason = _SETTLED.get(invoice.status_code)
    if reason is None and invoice.is_paid:
        reason = "the invoice was paid"
    if reason is None:
        return
    repo = _repo(ctx)
    for key in await repo.open_case_keys(invoice.invoice_number):
        stored = await repo.get(key)
        if stored is None or stored.case.environment != CaseEnvironment.PRODUCTION:
            continue
        if invoice.is_paid and stored.case.collected_amount >= stored.case.amount:
            continue  # paid by the agency's own collections: its AgencyProcessed closes it
        await _apply(ctx, repo, stored, domain.invoice_settled(stored.case, reason))


def _parameter(evt: InvoiceEvent, key: str) -> str | None:
    return next((p.value for p in evt.event_parameters if p.key == key), None)


def _chargeback(evt: InvoiceEvent) -> str | None:
    """The transaction key of a chargeback this event reports, if it does."""
    if evt.event != InvoiceEventName.CHANGED_TRANSACTION_STATUS:
        return None
    if _parameter(evt, "Status") != TransactionStatus.CHARGEBACK:
        return None
    return _parameter(evt, "TransactionKey")


async def _open_chargeback_case(ctx: HandlerContext, evt: InvoiceEvent) -> None:
    """A chargeback opens a case for what it took back (at most what is open), when one
    of the merchant's configurations says so; those configurations decide."""
    repo = _repo(ctx)
    configurations = [c for c in await repo.configurations() if c.open_cases_for_chargebacks]
    transaction = _chargeback(evt)
    if not configurations or transaction is None:
        return
    number = evt.invoice.invoice_number
    amount = min(
        Decimal(_parameter(evt, "Amount") or "0"),
        Decimal(str(evt.invoice.open_amount_incl_admin_costs)),
    )
    key = f"case-{uuid.uuid5(_AUTO_CASES, f'{ctx.website_key}:{number}:chargeback:{transaction}')}"

    async def choice() -> domain.Choice:
        return domain.choose(configurations, amount)

    await _open_case(ctx, evt, key, amount, choice)


async def _open_automatic_case(ctx: HandlerContext, evt: InvoiceEvent) -> None:
    invoice = evt.invoice
    amount = Decimal(str(invoice.collection_amount))
    agency = _parameter(evt, "AgencyCode")

    async def choice() -> domain.Choice:
        chosen = domain.choose(await _repo(ctx).configurations(), amount)
        return chosen if agency is None else replace(chosen, agency_code=agency)

    key = auto_case_key(ctx.website_key, invoice.invoice_number)
    if evt.event == InvoiceEventName.CHANGED_STATUS:
        # Back to 70 when an Emergency set on a pending transfer is lifted (the
        # Emergency closed the first case; docs/decisions.md "Emergency on a pending
        # transfer"): a case of its own, once per return.
        key = auto_case_key(ctx.website_key, f"{invoice.invoice_number}:{evt.sequence}")
    await _open_case(ctx, evt, key, amount, choice)


def _line_items(evt: InvoiceEvent, amount: Decimal) -> list[InvoiceLine]:
    """The invoice's lines (or one for its amount when it has none), its open admin
    costs, and one line for what was paid, credited or otherwise settled, so that the
    items add up to the case amount exactly (an invoice's lines are informational and
    need not match its amount). Only the case amount's line when the invoice's lines
    cannot be carried over."""
    invoice = evt.invoice
    digits = Decimal(1).scaleb(-minor_unit(invoice.currency))
    try:
        lines = [
            InvoiceLine(
                sku=line.sku,
                description=line.description,
                quantity=line.quantity,
                unit_price=line.unit_price,
                vat_percentage=line.vat_percentage,
            )
            for line in invoice.lines
        ] or [_one(f"Invoice {invoice.invoice_number}", Decimal(str(invoice.amount_debit)))]
        costs = Decimal(str(invoice.open_amount_admin_costs))
        if costs > 0:
            lines.append(_one("Administration costs", costs))
        interest = invoice.interest_not_booked if invoice.interest_claimed else Decimal(0)
        if interest > 0:  # accrued since the last interest step (docs/interest.md)
            lines.append(_one("Statutory interest (art. 6:119/6:119a BW)", interest))
        total = sum(
            (
                (li.quantity * li.unit_price * (1 + li.vat_percentage / 100)).quantize(digits)
                for li in lines
            ),
            Decimal(0),
        )
        if total != amount:
            lines.append(_one("Paid, credited or otherwise settled", amount - total))
        return lines
    except ValidationError:
        return [_one(f"Invoice {invoice.invoice_number}: open amount incl. costs", amount)]


def _one(description: str, amount: Decimal) -> InvoiceLine:
    return InvoiceLine(
        description=description, quantity=Decimal(1), unit_price=amount, vat_percentage=Decimal(0)
    )


async def _open_case(
    ctx: HandlerContext,
    evt: InvoiceEvent,
    key: str,
    amount: Decimal,
    choice: Callable[[], Awaitable[domain.Choice]],
) -> None:
    """Open the invoice's case `key` for `amount` (once: a key that exists is left as
    it is, before anything else is read) and prepare it with what `choice` decides."""
    invoice = evt.invoice
    repo = _repo(ctx)
    await repo.lock_key(key)
    if await repo.get(key) is not None:
        return  # opened before (the event again, or another event at status 70)
    address = _billing_address(evt)
    if address is None or amount <= 0:
        return  # nothing an agency could collect from
    case = domain.Case(
        key=key,
        state=CaseState.PREPARING,
        currency=invoice.currency,
        amount=amount,
        invoice_number=invoice.invoice_number,
    )
    stored = StoredCase(
        case,
        None,
        {
            "external_id": invoice.invoice_number,
            "billing_address": address.model_dump(mode="json"),
            "line_items": [line.model_dump(mode="json") for line in _line_items(evt, amount)],
            "due_date": invoice.due_date.isoformat(),
            "contract_date": None,
            "language": invoice.culture,
            "reference": invoice.invoice_number,
        },
    )
    await repo.insert(stored)
    await _emit_created(ctx, repo, stored)
    await _apply(ctx, repo, stored, domain.mark_prepared(case, await choice()))
