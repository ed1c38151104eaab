"""Field types and building blocks shared by the message modules.

Two kinds of nested block exist, mirroring `Command` and `Event`:

- `Part`: a block inside a command. Unknown fields are refused, so a typo deep inside a
  debtor address is a parse error naming its path (`payload.debtor.address.stret`).
- `SnapshotPart`: a block inside an event or a snapshot. Unknown fields are ignored,
  so an older consumer keeps reading what a newer producer writes.

Where one block appears on both sides (the debtor, invoice lines, key/value pairs) the
snapshot twin subclasses the command block and only relaxes its configuration.

Every constraint here is parse-level (type, length, shape, range). Business rules
(signs, whether a currency exists, decimals beyond the currency's minor unit) are checked
by the owning service and answered with `CommandRejected` or a Rejected invoice. The
ranges and lengths are in `contracts.limits`: whatever parses can be stored and computed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal, localcontext
from email.headerregistry import Address
from functools import cache, lru_cache
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from contracts.limits import (
    MAX_AMOUNT,
    MAX_IDENTIFIER_LENGTH,
    MAX_QUANTITY,
    MAX_REPORTED_STRINGS,
    MAX_TEXT_LENGTH,
    MAX_VAT_PERCENTAGE,
    MAX_YEAR,
    MIN_YEAR,
)

# --- text PostgreSQL can store ---------------------------------------------------------------


def storable_error(value: str) -> PydanticCustomError | None:
    """Why PostgreSQL `text`/`jsonb` cannot store `value`, or None when it can.

    A NUL character (`\\u0000` in JSON) is refused by both column types; a lone surrogate
    (`"\\ud800"` in JSON parses to a `str` that has no UTF-8 form) fails every encoder.
    """
    if "\x00" in value:
        return PydanticCustomError(
            "nul_character", "the text contains a NUL character (U+0000), which cannot be stored"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return PydanticCustomError(
                "string_unicode", "the text contains a lone surrogate: it is not valid Unicode"
            )
    return None


def _storable(value: str) -> str:
    error = storable_error(value)
    if error is not None:
        raise error
    return value


#: Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: what
#: would end or break a line in a mail header, an SMS or a file name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _strict(info: ValidationInfo) -> bool:
    """Whether the model being validated refuses unknown fields: a command or one of its
    blocks. Events and snapshot twins are tolerant readers: a value stored under older
    rules must still read, so they check only what every reader needs (storable text)."""
    return info.config is not None and info.config.get("extra_fields_behavior") == "forbid"


def _one_line(value: str, info: ValidationInfo) -> str:
    _storable(value)
    if _strict(info) and _CONTROL.search(value):
        raise PydanticCustomError(
            "control_character",
            "the text must be one line without control characters (CR, LF, TAB, …)",
        )
    return value


#: Text that may span lines (descriptions, reasons, messages): no NUL, valid Unicode.
Text = Annotated[str, Field(max_length=MAX_TEXT_LENGTH), AfterValidator(_storable)]

#: Text of one line (names, subjects, codes, file names): in a command also no CR, LF or
#: other control character, so it can go into a mail header or a file name as it is.
#: Fields give the length.
OneLine = Annotated[str, AfterValidator(_one_line)]

#: Text of any length that PostgreSQL can store, for fields of events (tolerant readers).
StorableStr = Annotated[str, AfterValidator(_storable)]


def unstorable_strings(data: Any) -> list[tuple[str, PydanticCustomError]]:
    """Every string (key or value) in parsed JSON that PostgreSQL cannot store, with its
    dotted path (`payload.lines.0.description`), in document order; at most
    `MAX_REPORTED_STRINGS`. Iterative: any depth json.loads returns is walked."""
    found: list[tuple[str, PydanticCustomError]] = []
    stack: list[tuple[str, Any]] = [("", data)]
    while stack and len(found) < MAX_REPORTED_STRINGS:
        path, node = stack.pop()
        if isinstance(node, str):
            error = storable_error(node)
            if error is not None:
                found.append((path or "$", error))
        elif isinstance(node, dict):
            children = []
            for key, value in node.items():
                child = f"{path}.{_printable(key)}" if path else _printable(key)
                error = storable_error(key)
                if error is not None:
                    found.append((child, error))
                children.append((child, value))
            stack.extend(reversed(children))
        elif isinstance(node, list):
            stack.extend(
                (f"{path}.{index}" if path else str(index), value)
                for index, value in reversed(list(enumerate(node)))
            )
    return found[:MAX_REPORTED_STRINGS]


def _printable(key: str) -> str:
    """A JSON key as it can appear in a field path (NUL and lone surrogates escaped)."""
    if storable_error(key) is None:
        return key
    return key.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()


#: A JSON escape that may stand for a NUL or a surrogate (pairs are fine; the walk decides).
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_SUSPECT_ESCAPE_BYTES = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def may_hold_unstorable(raw: bytes | str) -> bool:
    """Whether a JSON body may hold a string PostgreSQL cannot store (cheap; no false
    negatives). A literal NUL is not valid JSON, so in UTF-8 it can only be an escape."""
    if isinstance(raw, str):
        if _SUSPECT_ESCAPE.search(raw):
            return True
        return storable_error(raw) is not None
    if json.detect_encoding(raw) not in ("utf-8", "utf-8-sig"):
        return True  # UTF-16/32 JSON: the escapes are not ASCII bytes; walk it
    return _SUSPECT_ESCAPE_BYTES.search(raw) is not None


# --- e-mail addresses ------------------------------------------------------------------------


#: An address the header parser certainly carries as written: a dot-atom of letters,
#: digits and `_%+-` before the `@`, dot-separated labels of letters, digits and `-` after
#: it (most real addresses). `_header_address` answers these without the parser (~70 µs
#: each); tests/unit/test_fast_paths.py checks that the parser agrees.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9_%+\-]+(?:\.[A-Za-z0-9_%+\-]+)*@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*"
)


def _header_address(value: str) -> bool:
    """Whether a mail header can carry `value` as its address exactly as written."""
    if _PLAIN_ADDRESS.fullmatch(value):
        return True
    return _header_address_parsed(value)


@lru_cache(maxsize=4096)
def _header_address_parsed(value: str) -> bool:
    """`_header_address` by the standard library's header parser (the reference)."""
    local, _, domain = value.rpartition("@")
    # Non-ASCII letters are legal in an address (SMTPUTF8) but the header parser knows
    # only ASCII local parts: check the syntax with each of them standing in as `x`.
    spec = "".join(char if char.isascii() else "x" for char in local) + "@" + domain
    try:
        return bool(Address(addr_spec=spec).addr_spec == spec)
    except Exception:  # the parser raises ValueError, HeaderParseError, IndexError, …
        return False


def _email_address(value: str, info: ValidationInfo) -> str:
    _one_line(value, info)
    if _strict(info) and not _header_address(value):
        raise PydanticCustomError(
            "email_address",
            "not an address a mail header can carry as written (no comments, quotes or "
            "special characters outside the rules of RFC 5322)",
        )
    return value


# --- dates ---------------------------------------------------------------------------------

_D = TypeVar("_D", date, datetime)


def _in_years(value: _D) -> _D:
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise PydanticCustomError(
            "date_out_of_range",
            "the year must lie in {min_year}..{max_year}",
            {"min_year": MIN_YEAR, "max_year": MAX_YEAR},
        )
    return value


#: A date of a command (invoice date, due date, start date, …): years 1900..2999, so that
#: every offset the platform adds stays a valid date.
BusinessDate = Annotated[date, AfterValidator(_in_years)]

#: A timestamp with a timezone offset (`occurred_at`, `due_at`, `as_of`): years
#: 1900..2999 as written (in its own offset).
BusinessDateTime = Annotated[AwareDatetime, AfterValidator(_in_years)]

#: An aggregate key chosen by the merchant (invoice number, debtor code, scheme key, …).
#: A colon is refused because keys are joined with colons into Kafka keys
#: (`{website_key}:debtor:{debtor_code}`); control characters are refused too.
Identifier = Annotated[
    str, Field(min_length=1, max_length=MAX_IDENTIFIER_LENGTH, pattern=r"^[^:\x00-\x1f\x7f]+$")
]

#: An ISO 4217 currency code by shape only (three upper-case letters). Whether the
#: currency exists or is supported is a business rule (a Rejected invoice).
Currency = Annotated[str, Field(min_length=3, max_length=3, pattern=r"^[A-Z]{3}$")]

#: A culture (BCP 47 language tag) such as `nl-NL` or `en`.
Culture = Annotated[
    str, Field(min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
]

#: An ISO 3166-1 alpha-2 country code such as `NL`.
CountryCode = Annotated[str, Field(min_length=2, max_length=2, pattern=r"^[A-Z]{2}$")]

#: An e-mail address: one `@`, no whitespace or control characters, and a syntax a mail
#: header can carry as written. Non-ASCII addresses (`müller@example.de`) are accepted:
#: sending them needs SMTPUTF8, which is the notifier's business.
Email = Annotated[
    str,
    Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$"),
    AfterValidator(_email_address),
]

#: A non-money decimal: like `Money`, a JSON number or string in, `Decimal` inside, a
#: string out; at most 4 decimals.
Decimal4 = Annotated[
    Decimal,
    Field(max_digits=20, decimal_places=4, allow_inf_nan=False),
    PlainSerializer(lambda value: format(value, "f"), return_type=str, when_used="json"),
]

#: A quantity (invoice lines, rate plans): at most 4 decimals, magnitude at most
#: `MAX_QUANTITY`; negative for a returned item.
Quantity = Annotated[Decimal4, Field(ge=-MAX_QUANTITY, le=MAX_QUANTITY)]

#: A VAT rate in percent, 0..100, at most 4 decimals.
VatPercentage = Annotated[Decimal4, Field(ge=0, le=MAX_VAT_PERCENTAGE)]


def check_line_total(quantity: Decimal, unit_price: Decimal, vat_percentage: Decimal) -> None:
    """Refuse a line whose total including VAT (`quantity * unit_price * (1 + VAT/100)`)
    is beyond `MAX_AMOUNT`: the totals computed from it (a message's line amounts, a
    bill run's invoice amount) then always fit an amount and never overflow."""
    with localcontext(prec=60):  # exact for any inputs within the limits
        total = quantity * unit_price * (1 + vat_percentage / 100)
    if abs(total) > MAX_AMOUNT:
        raise PydanticCustomError(
            "line_total_too_large",
            "quantity * unit_price including VAT is beyond {max_amount}",
            {"max_amount": f"{MAX_AMOUNT:f}"},
        )


#: ISO 4217 minor units that differ from 2. Used to write amounts with the currency's
#: digits (`"121.00"`, `1500` for JPY); currencies not listed have 2.
_MINOR_UNITS: dict[str, int] = {
    "BHD": 3,
    "BIF": 0,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "IQD": 3,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "PYG": 0,
    "RWF": 0,
    "TND": 3,
    "UGX": 0,
    "UYI": 0,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
}


def minor_unit(currency: str) -> int:
    """The number of decimals of a currency (ISO 4217 exponent; 2 when not listed)."""
    return _MINOR_UNITS.get(currency, 2)


def decimals_of(amount: Decimal) -> int:
    """How many decimals `amount` really has (`Decimal("10.50")` has 1, `10` has 0)."""
    exponent = amount.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def with_minor_unit(amount: Decimal, currency: str) -> Decimal:
    """`amount` written with at least the currency's decimals: pads, never rounds.

    `Decimal("121")` in EUR becomes `Decimal("121.00")`; an amount that carries more
    decimals than the currency has keeps them, so nothing is silently dropped.
    """
    digits = minor_unit(currency)
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and -exponent < digits:
        return amount.quantize(Decimal(1).scaleb(-digits))
    return amount


def pad_amounts(model: BaseModel, names: Iterable[str], currency: str) -> None:
    """Pad the named amount fields of a (frozen) model with `with_minor_unit`.

    Meant for `model_validator(mode="after")` of models that carry a currency.
    """
    for name in names:
        object.__setattr__(model, name, with_minor_unit(getattr(model, name), currency))


class Part(BaseModel):
    """A nested block of a command: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SnapshotPart(BaseModel):
    """A nested block of an event or snapshot: unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class KeyValue(Part):
    """A merchant-defined key/value pair, echoed unchanged in pushes."""

    key: OneLine = Field(min_length=1, max_length=100, description="The parameter's name.")
    value: Text = Field(description="The parameter's value, as text.")


class KeyValueSnapshot(KeyValue):
    """A key/value pair as reported in an event (unknown fields ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# --- building models from trusted values ------------------------------------------------

_M = TypeVar("_M", bound=BaseModel)


@cache
def _plain_fields(cls: type[BaseModel]) -> frozenset[str] | None:
    """The field names of a model whose `model_construct`, given every field, does nothing
    but set them (no alias, no extra kept, no post-init, not a root model); else None."""
    if (
        cls.__pydantic_root_model__
        or cls.__pydantic_post_init__
        or cls.__private_attributes__
        or cls.model_config.get("extra") == "allow"
    ):
        return None
    fields = cls.__pydantic_fields__
    if any(f.alias is not None or f.validation_alias is not None for f in fields.values()):
        return None
    return frozenset(fields)


def construct_complete(cls: type[_M], values: dict[str, Any]) -> _M:
    """`cls.model_construct(**values)` for values the service computed itself, without
    pydantic's per-field walk when `values` names every field exactly (the hot path's
    envelopes and snapshots); otherwise `model_construct` itself. The instance is the one
    `model_construct` builds (tests/unit/test_fast_paths.py compares them)."""
    names = _plain_fields(cls)
    if names is None or values.keys() != names:
        return cls.model_construct(**values)
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", {name: values[name] for name in cls.__pydantic_fields__})
    object.__setattr__(model, "__pydantic_fields_set__", set(names))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model
