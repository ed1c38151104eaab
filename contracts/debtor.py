"""The debtor block: who owes the money and how to reach them.

Used by CreateInvoice, AddOrUpdateDebtor and CreateSubscription (strict: `Debtor`) and
reported in snapshots (tolerant: `DebtorSnapshot`, with the `unreachable` flags).
A debtor is either a person (a consumer: the Dutch 14-day letter applies before
statutory costs) or a company; exactly one of the two is given.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, model_validator

from contracts.fields import CountryCode, Culture, Email, Identifier, OneLine, Part


class Person(Part):
    """A consumer debtor."""

    first_name: OneLine = Field(min_length=1, max_length=100, description="Given name.")
    last_name: OneLine = Field(min_length=1, max_length=100, description="Family name.")
    culture: Culture | None = Field(
        default=None, description="Preferred culture for messages, e.g. `nl-NL`."
    )


class Company(Part):
    """A business debtor (owes statutory costs without a 14-day letter)."""

    name: OneLine = Field(min_length=1, max_length=200, description="Registered name.")
    chamber_of_commerce: OneLine | None = Field(
        default=None, max_length=50, description="Chamber of commerce (KvK) number."
    )


class Phone(Part):
    """Phone numbers, as the merchant knows them (E.164 recommended)."""

    mobile: OneLine | None = Field(
        default=None, min_length=3, max_length=32, description="Mobile number, for SMS."
    )
    landline: OneLine | None = Field(
        default=None, min_length=3, max_length=32, description="Landline number."
    )


class Address(Part):
    """A postal address, for letters."""

    street: OneLine = Field(min_length=1, max_length=200, description="Street name.")
    house_number: OneLine | None = Field(
        default=None, max_length=20, description="House number with any addition."
    )
    postal_code: OneLine | None = Field(default=None, max_length=20, description="Postal code.")
    city: OneLine = Field(min_length=1, max_length=100, description="City.")
    country: CountryCode = Field(description="ISO 3166-1 alpha-2 country code, e.g. `NL`.")


class UnreachableFlags(Part):
    """Contact methods known not to work; a step skips them (event 6 when none remain).

    Sent as a whole: a flag left out means that method is reachable.
    """

    email: bool = Field(default=False, description="The e-mail address bounces.")
    mobile: bool = Field(default=False, description="The mobile number cannot take SMS.")
    landline: bool = Field(default=False, description="The landline cannot be reached.")
    address: bool = Field(default=False, description="Letters to the address come back.")


class Debtor(Part):
    """The debtor of an invoice or subscription: a person or a company, with contacts."""

    code: Identifier = Field(description="The merchant's debtor code, e.g. `D-1`.")
    person: Person | None = Field(default=None, description="Set when the debtor is a person.")
    company: Company | None = Field(default=None, description="Set when the debtor is a company.")
    email: Email | None = Field(default=None, description="E-mail address.")
    phone: Phone | None = Field(default=None, description="Phone numbers.")
    address: Address | None = Field(default=None, description="Postal address.")

    @model_validator(mode="after")
    def _person_or_company(self) -> Debtor:
        if (self.person is None) == (self.company is None):
            raise ValueError("give exactly one of `person` and `company`")
        return self


class PersonSnapshot(Person):
    """A consumer debtor as reported in a snapshot."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class CompanySnapshot(Company):
    """A business debtor as reported in a snapshot."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class PhoneSnapshot(Phone):
    """Phone numbers as reported in a snapshot."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class AddressSnapshot(Address):
    """A postal address as reported in a snapshot."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class UnreachableFlagsSnapshot(UnreachableFlags):
    """Unreachable contact methods as reported in a snapshot."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class DebtorSnapshot(Debtor):
    """The debtor as the invoice knows it now, with its unreachable contact methods."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    person: PersonSnapshot | None = Field(
        default=None, description="Set when the debtor is a person."
    )
    company: CompanySnapshot | None = Field(
        default=None, description="Set when the debtor is a company."
    )
    phone: PhoneSnapshot | None = Field(default=None, description="Phone numbers.")
    address: AddressSnapshot | None = Field(default=None, description="Postal address.")
    unreachable: UnreachableFlagsSnapshot = Field(
        default_factory=UnreachableFlagsSnapshot,
        description="Contact methods known not to work.",
    )
