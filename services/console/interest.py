"""Statutory interest on the console's invoice page (pure; docs/console.md "Statutory
interest", docs/interest.md).

The console reads no invoice tables. Every invoice event it consumes carries the snapshot
after the change; the console keeps, per event, the money totals of that snapshot and the
day it happened in the merchant's time zone (`money_point`). From those it rebuilds the
money history the invoice service writes down change by change
(`services.invoice.domain.interest.history_of`, the same code), and computes the interest
with the same rule (`interest_of`, which calls `contracts.interest.statutory_interest`).

Before it shows a breakdown it checks it: the interest it computes up to the day of the
invoice's last event must be the snapshot's `interest_accrued` to the cent. When it is
not (events still arriving, an event from before the console kept the totals, an
invoice stored before the invoice service kept its money history), the page shows the
snapshot's figure only, as of its event, and says why there is no breakdown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from contracts.fields import minor_unit
from contracts.interest import InterestKind, InterestResult, money
from contracts.invoice import DEFAULT_TIME_ZONE, InvoiceSnapshot
from services.invoice.domain.interest import Totals, history_of, interest_of, money_totals
from services.invoice.domain.merchant import local_day

#: What the page calls each kind.
ARTICLES = {
    InterestKind.CONSUMER: ("wettelijke rente", "art. 6:119 BW"),
    InterestKind.COMMERCIAL: ("wettelijke handelsrente", "art. 6:119a BW"),
}
ZERO = Decimal(0)


@dataclass(frozen=True)
class MoneyPoint:
    """What one event's snapshot says about the money: the day of the event in the
    merchant's time zone and the totals the history is written from."""

    day: date
    principal: Decimal
    costs: Decimal
    paid: Decimal
    refunded: Decimal


def time_zone_of(snapshot: InvoiceSnapshot | Mapping[str, Any]) -> str:
    """The merchant's time zone the snapshot names (UTC, the invoice service's default,
    for a snapshot from before the field existed)."""
    if isinstance(snapshot, InvoiceSnapshot):
        return snapshot.time_zone or DEFAULT_TIME_ZONE
    return snapshot.get("time_zone") or DEFAULT_TIME_ZONE


def money_point(snapshot: InvoiceSnapshot, at: datetime) -> MoneyPoint:
    """An event's money, for its row of the timeline."""
    principal, costs, paid, refunded = money_totals(snapshot)
    return MoneyPoint(local_day(at, time_zone_of(snapshot)), principal, costs, paid, refunded)


@dataclass(frozen=True)
class InvoiceInterest:
    """The interest section of an invoice page.

    - `kind`: consumer (6:119) or commercial (6:119a); None when the snapshot does not say.
    - `as_of`, `result`, `accrued`: the console's computation up to and including `as_of`
      (today in the merchant's time zone unless asked otherwise); `result` None when the
      invoice accrues none then; all three None when there is no breakdown.
    - `reconciled`: the computation up to the last event's day gives the snapshot's figure.
    - `snapshot_accrued`, `snapshot_at`, `snapshot_day`: the invoice service's figure and
      the event (and its day) it is as of; `booked`, `claimed`: the snapshot's.
    """

    currency: str
    kind: InterestKind | None
    time_zone: str
    as_of: date | None
    result: InterestResult | None
    accrued: Decimal | None
    reconciled: bool
    why_not: str | None
    snapshot_accrued: Decimal
    snapshot_at: datetime
    snapshot_day: date
    booked: Decimal
    claimed: bool

    def rounded(self, amount: Decimal) -> Decimal:
        return money(amount, minor_unit(self.currency))

    def as_json(self) -> dict[str, Any]:
        result = self.result
        return {
            "kind": self.kind.value if self.kind else None,
            "article": ARTICLES[self.kind][1] if self.kind else None,
            "time_zone": self.time_zone,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "accrued": _text(self.accrued),
            "provisional": bool(result and result.provisional),
            "capitalised": _text(self.rounded(result.capitalised) if result else None),
            "paid": _text(self.rounded(result.paid) if result else None),
            "open": _text(self.rounded(result.open) if result else None),
            "periods": [
                {
                    "from": p.start.isoformat(),
                    "to": p.end.isoformat(),
                    "percent": f"{p.percent:f}",
                    "days": p.days,
                    "year_days": p.year_days,
                    "base": _text(self.rounded(p.base)),
                    "interest": _text(self.rounded(p.interest)),
                    "provisional": p.provisional,
                }
                for p in (result.periods if result else ())
            ],
            "reconciled": self.reconciled,
            "why_not": self.why_not,
            "snapshot": {
                "accrued": _text(self.snapshot_accrued),
                "booked": _text(self.booked),
                "claimed": self.claimed,
                "as_of_time": self.snapshot_at.isoformat(),
                "as_of_day": self.snapshot_day.isoformat(),
            },
        }


def _text(amount: Decimal | None) -> str | None:
    return None if amount is None else f"{amount:f}"


def invoice_interest(
    snapshot: Mapping[str, Any],
    last_sequence: int,
    last_event_at: datetime,
    points: Sequence[tuple[int, MoneyPoint | None]],
    today: datetime | date,
) -> InvoiceInterest:
    """The interest section from the invoice's last snapshot (as the console stores it),
    the sequence and time of its last event, and the money of every event it has
    (`points`: sequence and money, None for an event stored before the console kept it).

    `today`: a moment (its day in the merchant's time zone is the day counted up to, but
    never a day before the last event's) or a day asked for explicitly.
    """
    currency = str(snapshot["currency"])
    digits = minor_unit(currency)
    time_zone = time_zone_of(snapshot)
    kind = InterestKind(snapshot["interest_kind"]) if snapshot.get("interest_kind") else None
    due_date = date.fromisoformat(str(snapshot["due_date"]))
    status = int(snapshot["status_code"])
    snapshot_accrued = Decimal(str(snapshot.get("interest_accrued", "0")))
    snapshot_day = local_day(last_event_at, time_zone)
    # Asked for a day: that day. Else today, never before the last event's day (a
    # business clock ahead of the wall clock, as in tests on the manual clock).
    as_of = today if not isinstance(today, datetime) else local_day(today, time_zone)
    as_of = max(as_of, snapshot_day) if isinstance(today, datetime) else as_of
    section = InvoiceInterest(
        currency=currency,
        kind=kind,
        time_zone=time_zone,
        as_of=None,
        result=None,
        accrued=None,
        reconciled=False,
        why_not=None,
        snapshot_accrued=snapshot_accrued,
        snapshot_at=last_event_at,
        snapshot_day=snapshot_day,
        booked=Decimal(str(snapshot.get("interest_booked", "0"))),
        claimed=bool(snapshot.get("interest_claimed", False)),
    )
    why_not = _gaps(kind, last_sequence, points)
    if why_not is not None or kind is None:
        return replace(section, why_not=why_not)
    history = history_of(
        (point.day, _totals(point)) for _, point in sorted(points, key=_sequence) if point
    )
    check = interest_of(history, kind, due_date, status, snapshot_day)
    computed = ZERO if check is None else money(check.total, digits)
    if computed != snapshot_accrued:
        why_not = (
            f"the events give {computed} up to {snapshot_day.isoformat()}, the invoice "
            f"service {snapshot_accrued}: its money history is not all in the events"
        )
        return replace(section, why_not=why_not)
    result = interest_of(history, kind, due_date, status, as_of)
    accrued = ZERO if result is None else money(result.total, digits)
    return replace(section, as_of=as_of, result=result, accrued=accrued, reconciled=True)


def _gaps(
    kind: InterestKind | None, last_sequence: int, points: Sequence[tuple[int, MoneyPoint | None]]
) -> str | None:
    """Why the events cannot give the history, None when they can: every event from the
    first to the last, each with its money, and the kind known."""
    if kind is None:
        return "the invoice's events do not say which interest it accrues"
    if sorted(seq for seq, _ in points) != list(range(1, last_sequence + 1)):
        return "not all of the invoice's events are here (yet)"
    if any(point is None for _, point in points):
        return "some of the invoice's events came before the console kept their money"
    return None


def _sequence(item: tuple[int, MoneyPoint | None]) -> int:
    return item[0]


def _totals(point: MoneyPoint) -> Totals:
    return (point.principal, point.costs, point.paid, point.refunded)
