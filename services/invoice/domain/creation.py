"""A new invoice: the business rules of a request and the invoice it makes (pure;
docs/invoices.md "Creating an invoice")."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime

from pydantic import BaseModel

from contracts.envelope import FieldError
from contracts.fields import decimals_of, minor_unit
from contracts.invoice import (
    DEFAULT_CULTURE,
    EventCategory,
    InvoiceEventName,
    InvoiceFields,
    InvoiceType,
)
from services.invoice.domain.amounts import CURRENCIES, money_errors
from services.invoice.domain.model import ZERO, Invoice, S, SchemeStepState
from services.invoice.domain.outcome import EventOut, Outcome


def invoice_errors(cmd: InvoiceFields, scheme_known: bool) -> list[FieldError]:
    """Business rules of a new invoice: each failing field, named."""
    errors: list[FieldError] = []
    if cmd.currency not in CURRENCIES:
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
        if cmd.currency in CURRENCIES and decimals_of(line.unit_price) > minor_unit(cmd.currency):
            errors.append(
                FieldError(
                    f"payload.lines.{i}.unit_price",
                    "too_many_decimals",
                    f"{cmd.currency} has {minor_unit(cmd.currency)} decimals",
                )
            )
    return errors


def invoice_culture(cmd: InvoiceFields) -> str:
    """The culture of the invoice's messages: the request's, else the person's, else the
    contract's default `nl-NL` (docs/invoices.md, "The culture default")."""
    person = cmd.debtor.person
    return cmd.culture or (person.culture if person else None) or DEFAULT_CULTURE


def request_hash(payload: BaseModel) -> str:
    """A fingerprint of a request's content, to tell a repeat from a conflict."""
    # The model's own JSON is canonical: fields in declaration order, values normalised.
    return hashlib.sha256(payload.model_dump_json().encode()).hexdigest()


def new_invoice_key() -> str:
    return uuid.uuid4().hex.upper()


def create_invoice(
    cmd: InvoiceFields,
    *,
    website_key: str,
    now: datetime,
    scheme_version: int | None,
    scheme_steps: list[SchemeStepState],
) -> Outcome:
    """A new invoice: Active (10), or Rejected (90) with its errors when a rule is broken.

    Either way the invoice is stored and a ChangedStatus event is emitted; a Rejected
    outcome carries `errors` so the handler answers CommandRejected.
    """
    errors = invoice_errors(cmd, scheme_version is not None)
    status = S.REJECTED if errors else S.ACTIVE
    culture = invoice_culture(cmd)
    invoice = Invoice(
        website_key=website_key,
        invoice_number=cmd.invoice_number,
        invoice_key=new_invoice_key(),
        type=InvoiceType.SUBSCRIPTION_INVOICE
        if cmd.subscription_key
        else InvoiceType.REGULAR_INVOICE,
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
