"""The merchant invoice push (`cm.push.invoice` and webhooks): Buckaroo's format.

Unlike every other message this one is not enveloped and keeps Buckaroo's PascalCase
field names, so existing push handlers work unchanged: `{"Invoice": {...}}`.

Wire details:
- Amounts are JSON numbers written with at least the currency's minor-unit digits
  (`121.00`, never `"121.00"` and never a float approximation); an amount with more
  decimals than the currency has keeps them rather than being rounded.
- `InvoiceDate` and `DueDate` are `YYYY-MM-DDT00:00:00` (no offset, as Buckaroo writes
  them); `PreviousStepDateTime` and `EventDateTime` are ISO 8601 with offset.
- Every field is always present; unknown values are `null`, except `PreviousStepIndex`,
  which is `0` before any step ran (as Buckaroo sends it: merchants' parsers expect a
  number).
- `EventDateTime` is the InvoiceEvent envelope's `occurred_at` and `EventSequence` its
  `sequence`, which orders two events with the same EventDateTime.
- On Kafka the header `message-id` is the InvoiceEvent's message_id; webhooks carry it
  as `webhook-id`.

Use `InvoicePush.to_json()` for the body: pydantic's `model_dump_json()` cannot write a
`Decimal` as an exact JSON number and writes amounts as floats.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, ClassVar

import pydantic_core
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_pascal

from contracts.envelope import Envelope
from contracts.fields import KeyValueSnapshot, pad_amounts
from contracts.invoice import (
    EventCategory,
    InvoiceEvent,
    InvoiceEventName,
    InvoiceSnapshot,
    InvoiceType,
)

#: The Kafka header carrying the InvoiceEvent's message_id.
MESSAGE_ID_HEADER = "message-id"

#: An amount in the push: a JSON number (see `InvoicePush.to_json`).
PushAmount = Annotated[
    Decimal,
    Field(allow_inf_nan=False),
    PlainSerializer(float, return_type=float, when_used="json"),
    WithJsonSchema({"type": "number"}),
]

#: A date in the push: `YYYY-MM-DDT00:00:00`.
PushDate = Annotated[
    date,
    PlainSerializer(lambda value: f"{value.isoformat()}T00:00:00", return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d{4}-\d{2}-\d{2}T00:00:00$",
            "examples": ["2026-11-01T00:00:00"],
        }
    ),
]

#: A step index in the push: a number, `0` before any step (a stored `null` reads as 0).
PushStepIndex = Annotated[int, BeforeValidator(lambda value: 0 if value is None else value)]

#: A timestamp in the push: ISO 8601 with offset, e.g. `2026-11-22T00:00:00+00:00`.
PushTimestamp = Annotated[
    AwareDatetime,
    PlainSerializer(lambda value: value.isoformat(), return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class PushModel(BaseModel):
    """PascalCase on the wire, snake_case in Python; tolerant of unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_pascal,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        frozen=True,
    )


class PushParameter(PushModel):
    """A key/value pair (`{"Key": …, "Value": …}`)."""

    key: str = Field(description="The parameter's name.")
    value: str = Field(description="The parameter's value, as text.")


class PushInvoice(PushModel):
    """The invoice of a push, after the event. Field order follows Buckaroo's."""

    AMOUNT_FIELDS: ClassVar[tuple[str, ...]] = InvoiceSnapshot.AMOUNT_FIELDS

    invoice_key: str = Field(description="The platform's id of the invoice.")
    invoice_number: str = Field(description="The merchant's invoice number.")
    website_key: str = Field(description="The merchant.")
    debtor_code: str | None = Field(description="The merchant's debtor code.")
    debtor_guid: str | None = Field(description="The platform's debtor id.")
    scheme_key: str = Field(description="The scheme the invoice follows.")
    is_test: bool = Field(description="A test invoice.")
    type: InvoiceType = Field(description="RegularInvoice, CreditNote, … .")
    culture: str | None = Field(description="Culture of the invoice's messages.")
    invoice_date: PushDate = Field(description="The invoice date, `YYYY-MM-DDT00:00:00`.")
    due_date: PushDate = Field(description="The due date, `YYYY-MM-DDT00:00:00`.")
    invoice_status_code: int = Field(description="The status code (docs/invoices.md).")
    previous_step_index: PushStepIndex = Field(
        description="The last step that ran; 0 before the first."
    )
    previous_step_date_time: PushTimestamp | None = Field(description="When it ran.")
    invoice_pay_link: str | None = Field(description="Where the debtor can pay.")
    event: InvoiceEventName = Field(description="The event's name.")
    event_category: EventCategory = Field(description="FinancialChange or Other.")
    event_date_time: PushTimestamp = Field(description="When the event happened.")
    event_sequence: int = Field(description="Per invoice, strictly increasing from 1.")
    event_parameters: list[PushParameter] = Field(description="Event details.")
    currency: str = Field(description="ISO 4217 currency.")
    amount_debit: PushAmount = Field(description="The invoice amount including VAT.")
    amount_credit: PushAmount = Field(description="Refunds and chargebacks.")
    amount_admin_costs: PushAmount = Field(description="Sum of admin cost increases.")
    amount_credit_notes: PushAmount = Field(description="Sum of credit notes.")
    amount_paid: PushAmount = Field(description="Sum of successful transactions.")
    amount_admin_costs_paid: PushAmount = Field(description="Payments allocated to costs.")
    amount_pending_slow: PushAmount = Field(description="Pending slow (SEPA) transactions.")
    open_amount: PushAmount = Field(description="Open principal; negative when overpaid.")
    open_amount_admin_costs: PushAmount = Field(description="Open admin costs.")
    open_amount_incl_admin_costs: PushAmount = Field(description="Open principal plus costs.")
    is_paid: bool = Field(description="OpenAmountInclAdminCosts ≤ 0.")
    custom_parameters: list[PushParameter] = Field(description="The merchant's parameters.")
    additional_parameters: list[PushParameter] = Field(description="Platform parameters.")

    @model_validator(mode="after")
    def _pad_amounts(self) -> PushInvoice:
        pad_amounts(self, self.AMOUNT_FIELDS, self.currency)
        return self


class InvoicePush(PushModel):
    """One invoice event as Buckaroo's invoice push: `{"Invoice": {...}}`."""

    invoice: PushInvoice = Field(description="The invoice after the event.")

    def to_json(self) -> bytes:
        """The push body: compact UTF-8 JSON, amounts as exact JSON numbers."""
        # pydantic-core writes each Decimal as a string; the amounts (and only they are
        # Decimals here) then lose their quotes, so no digit passes through a float.
        text = pydantic_core.to_json(self.model_dump(mode="python"))
        return _QUOTED_AMOUNT.sub(rb'"\1":\2', text)


#: `"AmountDebit":"121.00"` → `"AmountDebit":121.00` (the push's amount fields).
_QUOTED_AMOUNT = re.compile(rb'"((?:Open)?Amount[A-Za-z]*)":"(-?[0-9]+(?:\.[0-9]+)?)"')


def encode_reference(value: Any) -> str:
    """JSON text of a python-mode dump, writing `Decimal` as an exact number (the slow,
    obviously right encoder that `to_json` is tested against)."""
    if isinstance(value, dict):
        items = (f"{json.dumps(str(key))}:{encode_reference(item)}" for key, item in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode_reference(item) for item in value) + "]"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, Enum):
        return encode_reference(value.value)
    if isinstance(value, datetime | date):  # not reached: the serializers write strings
        return json.dumps(value.isoformat())
    return json.dumps(value, ensure_ascii=False)


def _parameters(pairs: Sequence[KeyValueSnapshot]) -> list[PushParameter]:
    return [PushParameter(key=p.key, value=p.value) for p in pairs]


def push_from_event(envelope: Envelope[InvoiceEvent]) -> InvoicePush:
    """The merchant push of an InvoiceEvent envelope (pure)."""
    event = envelope.payload
    if not isinstance(event, InvoiceEvent):
        raise TypeError(f"expected an InvoiceEvent envelope, got {envelope.type!r}")
    snapshot = event.invoice
    return InvoicePush(
        invoice=PushInvoice(
            invoice_key=snapshot.invoice_key,
            invoice_number=snapshot.invoice_number,
            website_key=snapshot.website_key,
            debtor_code=snapshot.debtor_code,
            debtor_guid=snapshot.debtor_guid,
            scheme_key=snapshot.scheme_key,
            is_test=snapshot.is_test,
            type=snapshot.type,
            culture=snapshot.culture,
            invoice_date=snapshot.invoice_date,
            due_date=snapshot.due_date,
            invoice_status_code=int(snapshot.status_code),
            previous_step_index=snapshot.previous_step_index or 0,
            previous_step_date_time=snapshot.previous_step_date_time,
            invoice_pay_link=snapshot.pay_link,
            event=event.event,
            event_category=event.event_category,
            event_date_time=envelope.occurred_at,
            event_sequence=event.sequence,
            event_parameters=_parameters(event.event_parameters),
            currency=snapshot.currency,
            amount_debit=snapshot.amount_debit,
            amount_credit=snapshot.amount_credit,
            amount_admin_costs=snapshot.amount_admin_costs,
            amount_credit_notes=snapshot.amount_credit_notes,
            amount_paid=snapshot.amount_paid,
            amount_admin_costs_paid=snapshot.amount_admin_costs_paid,
            amount_pending_slow=snapshot.amount_pending_slow,
            open_amount=snapshot.open_amount,
            open_amount_admin_costs=snapshot.open_amount_admin_costs,
            open_amount_incl_admin_costs=snapshot.open_amount_incl_admin_costs,
            is_paid=snapshot.is_paid,
            custom_parameters=_parameters(snapshot.custom_parameters),
            additional_parameters=_parameters(snapshot.additional_parameters),
        )
    )
