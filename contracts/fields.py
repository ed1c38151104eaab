"""Field types and building blocks shared by the message modules.

Two kinds of nested block exist, mirroring `Command` and `Event`:

- `Part`: a block inside a command. Unknown fields are refused, so a typo deep inside a
  debtor address is a parse error naming its path (`payload.debtor.address.stret`).
- `SnapshotPart`: a block inside an event or a snapshot. Unknown fields are ignored,
  so an older consumer keeps reading what a newer producer writes.

Where one block appears on both sides (the debtor, invoice lines, key/value pairs) the
snapshot twin subclasses the command block and only relaxes its configuration.

Every constraint here is parse-level (type, length, shape). Business rules (signs,
whether a currency exists, decimals beyond the currency's minor unit) are checked by the
owning service and answered with `CommandRejected` or a Rejected invoice.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

#: An aggregate key chosen by the merchant (invoice number, debtor code, scheme key, …).
#: A colon is refused because keys are joined with colons into Kafka keys
#: (`{website_key}:debtor:{debtor_code}`); control characters are refused too.
Identifier = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^:\x00-\x1f\x7f]+$")]

#: An ISO 4217 currency code by shape only (three upper-case letters). Whether the
#: currency exists or is supported is a business rule (a Rejected invoice).
Currency = Annotated[str, Field(min_length=3, max_length=3, pattern=r"^[A-Z]{3}$")]

#: A culture (BCP 47 language tag) such as `nl-NL` or `en`.
Culture = Annotated[
    str, Field(min_length=2, max_length=35, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
]

#: An ISO 3166-1 alpha-2 country code such as `NL`.
CountryCode = Annotated[str, Field(min_length=2, max_length=2, pattern=r"^[A-Z]{2}$")]

#: An e-mail address, checked for shape only (something@something, no spaces).
Email = Annotated[str, Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")]

#: Free text of one line or a paragraph (descriptions, reasons, names).
Text = Annotated[str, Field(max_length=2000)]

#: A non-money decimal (quantity, VAT percentage): like `Money`, a JSON number or string
#: in, `Decimal` inside, a string out; at most 4 decimals.
Decimal4 = Annotated[
    Decimal,
    Field(max_digits=20, decimal_places=4, allow_inf_nan=False),
    PlainSerializer(lambda value: format(value, "f"), return_type=str, when_used="json"),
]

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

    key: str = Field(min_length=1, max_length=100, description="The parameter's name.")
    value: str = Field(max_length=2000, description="The parameter's value, as text.")


class KeyValueSnapshot(KeyValue):
    """A key/value pair as reported in an event (unknown fields ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
