"""The envelope every message travels in, the money type, and parsing by `type`.

Commands reject unknown fields (a typo must not pass silently); events ignore unknown
fields so that an older consumer keeps reading what a newer producer writes.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from contracts.fields import (
    BusinessDateTime,
    construct_complete,
    may_hold_unstorable,
    unstorable_strings,
)
from contracts.limits import MAX_AMOUNT, MAX_TOTAL_DIGITS

#: An amount the platform computes (snapshot totals, a case's amount): a JSON number or
#: string in, `Decimal` inside, a string out; at most 20 digits, 4 of them decimals.
MoneyTotal = Annotated[
    Decimal,
    Field(max_digits=MAX_TOTAL_DIGITS, decimal_places=4, allow_inf_nan=False),
    PlainSerializer(lambda value: format(value, "f"), return_type=str, when_used="json"),
]

#: Money a client states (amounts, prices, payments, costs): like `MoneyTotal`, and at
#: most `MAX_AMOUNT` either way, so that sums of many of them still fit a `MoneyTotal`.
#: More than 4 decimals is a parse error; the currency's minor unit is a business rule.
Money = Annotated[MoneyTotal, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]

#: A merchant (tenant) key as it appears in every message and every Kafka key.
WebsiteKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
#: The same rule, for reading the header of a message that does not parse (and a Kafka
#: key's website part): use with `fullmatch`.
WEBSITE_KEY_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class Message(BaseModel):
    """Base of every payload. `TYPE` is the envelope's `type` discriminator."""

    TYPE: ClassVar[str] = ""
    model_config = ConfigDict(frozen=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("TYPE"):
            cls.TYPE = cls.__name__


class Command(Message):
    """An instruction to a service. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Event(Message):
    """A fact a service announces. Unknown fields are ignored (tolerant reader)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


P = TypeVar("P", bound=Message)


class Envelope(BaseModel, Generic[P]):
    """The frame of every message body (except the merchant push)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: uuid.UUID = Field(description="Unique per message; the deduplication key.")
    type: str = Field(max_length=100, description="Which payload this is, e.g. `CreateInvoice`.")
    website_key: WebsiteKey = Field(description="The merchant (tenant) the message belongs to.")
    occurred_at: BusinessDateTime = Field(
        description="Business time of the message; a timezone offset is required, years 1900..2999."
    )
    correlation_id: uuid.UUID | None = Field(
        default=None,
        description="The message_id of the command that started the chain "
        "(defaults to this message's own id).",
    )
    causation_id: uuid.UUID | None = Field(
        default=None, description="The message_id of the message that caused this one."
    )
    payload: P

    @model_validator(mode="after")
    def _default_correlation(self) -> Envelope[P]:
        if self.correlation_id is None:
            object.__setattr__(self, "correlation_id", self.message_id)
        return self

    @property
    def correlation(self) -> uuid.UUID:
        return self.correlation_id or self.message_id

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


# --- the registry of payload types ------------------------------------------------------

_REGISTRY: dict[str, type[Message]] = {}


def register(*classes: type[Message]) -> None:
    """Make payload classes parseable by their `TYPE`."""
    for cls in classes:
        existing = _REGISTRY.get(cls.TYPE)
        if existing is not None and existing is not cls:
            raise ValueError(f"message type {cls.TYPE!r} registered twice")
        _REGISTRY[cls.TYPE] = cls


def registered_types() -> dict[str, type[Message]]:
    return dict(_REGISTRY)


def payload_class(type_name: str) -> type[Message] | None:
    return _REGISTRY.get(type_name)


@dataclass(frozen=True)
class FieldError:
    """One reason a message was refused, named by its dotted field path."""

    field: str
    code: str
    message: str


@dataclass
class ParseError(Exception):
    """A message body that is not a valid envelope of a known type.

    `message_id`, `website_key` and `type` are filled in when they were readable, so the
    error can be attributed to a command (CommandRejected) as well as dead-lettered.
    """

    errors: list[FieldError]
    message_id: uuid.UUID | None = None
    website_key: str | None = None
    type: str | None = None
    correlation_id: uuid.UUID | None = None
    raw_fields: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return "; ".join(f"{e.field}: {e.code}: {e.message}" for e in self.errors)

    @property
    def attributable(self) -> bool:
        return self.message_id is not None and self.website_key is not None


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """Turn pydantic's errors into field-level errors with dotted paths."""
    result = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in error["loc"])
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        result.append(FieldError(field=path or "$", code=error["type"], message=error["msg"]))
    return result


def _readable_header(data: dict[str, Any]) -> dict[str, Any]:
    """The attributable parts of a broken envelope, each only when it is valid."""
    found: dict[str, Any] = {}
    for key in ("message_id", "correlation_id"):
        with contextlib.suppress(ValueError):
            found[key] = uuid.UUID(str(data.get(key)))
    website_key = data.get("website_key")
    if isinstance(website_key, str) and WEBSITE_KEY_RE.fullmatch(website_key):
        found["website_key"] = website_key
    if isinstance(data.get("type"), str):
        found["type"] = data["type"]
    return found


def parse_envelope(raw: bytes | str, allowed: set[str] | None = None) -> Envelope[Any]:
    """Parse a message body into an envelope with its typed payload.

    `allowed` limits the types a consumer accepts on a topic; anything else is a
    parse error (`unknown_type`). Raises `ParseError`.
    """
    try:
        # Parsed once; numbers with a fraction become Decimal, never float.
        data = json.loads(raw, parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParseError([FieldError("$", "invalid_json", str(exc))]) from None
    if not isinstance(data, dict):
        raise ParseError([FieldError("$", "not_an_object", "the body must be a JSON object")])
    header = _readable_header(data)
    type_name = data.get("type")
    cls = payload_class(type_name) if isinstance(type_name, str) else None
    if cls is None or (allowed is not None and type_name not in allowed):
        raise ParseError(
            [FieldError("type", "unknown_type", _unknown_type_message(type_name))],
            **header,
        )
    # Strings PostgreSQL cannot store, wherever they are (typed fields, ignored fields,
    # a timer's message): named by their path, in place of other errors on that path.
    unstorable = [
        FieldError(path, error.type, error.message())
        for path, error in (unstorable_strings(data) if may_hold_unstorable(raw) else ())
    ]
    try:
        envelope = envelope_class(cls).model_validate(data)
    except ValidationError as exc:
        errors = [error for error in field_errors(exc) if not _said(error, unstorable)]
        raise ParseError(unstorable + errors, **header) from None
    if unstorable:
        raise ParseError(unstorable, **header)
    return envelope


#: What a message type name looks like; anything else is not repeated in an answer (a
#: hostile `type` may hold personal data).
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")


def _unknown_type_message(type_name: object) -> str:
    if isinstance(type_name, str) and _TYPE_NAME.fullmatch(type_name):
        return f"unknown message type {type_name!r}"
    return "the type is not a message type name"


def _said(error: FieldError, unstorable: list[FieldError]) -> bool:
    """Whether `error` repeats what an unstorable string already explains: an error on
    the same field, or the same code on a field that contains it."""
    return any(
        error.field == found.field
        or (error.code == found.code and found.field.startswith(f"{error.field}."))
        for found in unstorable
    )


_ENVELOPE_CLASSES: dict[type[Message], type[Envelope[Any]]] = {}


def envelope_class(cls: type[Message]) -> type[Envelope[Any]]:
    """`Envelope[cls]`, built once per payload class."""
    found = _ENVELOPE_CLASSES.get(cls)
    if found is None:
        found = _ENVELOPE_CLASSES[cls] = Envelope[cls]  # type: ignore[valid-type]
    return found


def new_envelope(
    payload: P,
    *,
    website_key: str,
    occurred_at: datetime,
    caused_by: Envelope[Any] | None = None,
    message_id: uuid.UUID | None = None,
) -> Envelope[P]:
    """Build an envelope for `payload`, chaining correlation from the causing message."""
    mid = message_id or uuid.uuid4()
    # Built from trusted values: skip re-validating the payload model.
    return construct_complete(  # type: ignore[return-value]
        envelope_class(type(payload)),
        {
            "message_id": mid,
            "type": payload.TYPE,
            "website_key": website_key,
            "occurred_at": occurred_at,
            "correlation_id": caused_by.correlation if caused_by else mid,
            "causation_id": caused_by.message_id if caused_by else None,
            "payload": payload,
        },
    )
