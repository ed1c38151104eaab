"""A merchant's settings and the rules that read them (pure; docs/invoices.md "Merchant
settings").

- the time zone: a step is due at midnight of its day there (`local_midnight`);
- the default culture: an invoice without a culture of its own or its debtor's takes
  it (`invoice_culture`);
- the sender name: the notifier puts it on the merchant's messages (the invoice service
  carries it in SendMessage).

The handlers load the settings through the repository and pass them in; a merchant that
never set any has `MerchantSettings()` (UTC, no default culture, no sender name).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict

from contracts.envelope import FieldError
from contracts.invoice import (
    DEFAULT_CULTURE,
    DEFAULT_TIME_ZONE,
    InvoiceFields,
    UpdateMerchantSettings,
)


class MerchantSettings(BaseModel):
    """What a merchant set with UpdateMerchantSettings (stored as JSON)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    time_zone: str = DEFAULT_TIME_ZONE
    default_culture: str | None = None
    sender_name: str | None = None

    @classmethod
    def of(cls, cmd: UpdateMerchantSettings) -> MerchantSettings:
        return cls(
            time_zone=cmd.time_zone,
            default_culture=cmd.default_culture,
            sender_name=cmd.sender_name,
        )


@lru_cache(maxsize=1)
def _iana_names() -> frozenset[str]:
    # What the time zone database holds, without its files that are no zone names
    # (`posixrules`, the `posix/` and `right/` copies; `localtime`, which some systems
    # keep beside it, is this machine's zone, not a name).
    return frozenset(available_timezones()) - {"localtime"}


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; raises `ZoneInfoNotFoundError` when there is none."""
    if name not in _iana_names():
        raise ZoneInfoNotFoundError(name)
    return ZoneInfo(name)


def settings_errors(cmd: UpdateMerchantSettings) -> list[FieldError]:
    """Why the settings cannot be stored, per field (empty when they can)."""
    try:
        zone(cmd.time_zone)
    except ZoneInfoNotFoundError:
        return [
            FieldError(
                "payload.time_zone",
                "unknown_time_zone",
                f"{cmd.time_zone!r} is not an IANA time zone (e.g. Europe/Amsterdam)",
            )
        ]
    return []


def local_midnight(day: date, time_zone: str) -> datetime:
    """The first moment of `day` in `time_zone`, in UTC.

    Midnight where a DST change skips it (the clocks jump from 00:00 to 01:00) is read
    with the offset before the change, which is the first moment that day has."""
    return datetime.combine(day, time(0), tzinfo=zone(time_zone)).astimezone(UTC)


def local_day(moment: datetime, time_zone: str) -> date:
    """The day `moment` falls on in `time_zone`."""
    return moment.astimezone(zone(time_zone)).date()


def invoice_culture(cmd: InvoiceFields, settings: MerchantSettings) -> str:
    """An invoice's culture: its own, else its debtor's (a person's), else the merchant's
    default, else the contract's `nl-NL` (docs/invoices.md, "The culture default")."""
    person = cmd.debtor.person.culture if cmd.debtor.person else None
    return cmd.culture or person or settings.default_culture or DEFAULT_CULTURE
