"""Dutch statutory interest (art. 6:119 BW wettelijke rente, art. 6:119a BW wettelijke
handelsrente): the rate table and one pure function for the whole platform
(docs/interest.md).

- `RateTable`: the rates per kind and period, loaded from
  `contracts/data/statutory_interest_rates.json` and, when the operator names one in
  `CM_INTEREST_RATES`, a later table version that adds or corrects periods
  (`load_rates`, `rates`).
- `statutory_interest`: the interest on an invoice from the day after its due date to
  an as-of day, from its money over time (`Movement`s), day by day over the rate
  periods, compounded at each yearly anniversary of the due date, payments allocated
  costs → interest → principal (art. 6:44 BW). Decimal throughout; nothing is rounded
  until `money` rounds what is shown or booked.

The result carries a per-period breakdown (`InterestPeriod`) for whoever shows it (a
merchant console's invoice page; the invoice snapshot carries the total only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

#: The shipped table (docs/interest.md "The rate table").
RATES_FILE = Path(__file__).parent / "data" / "statutory_interest_rates.json"
#: The environment variable naming an operator's later table version (a JSON file of the
#: same shape whose periods are added to, or replace, the shipped ones).
RATES_ENV = "CM_INTEREST_RATES"
#: Digits the computation keeps (well beyond any cent: rounding happens at the end only).
PRECISION = 40
ZERO = Decimal(0)
HUNDRED = Decimal(100)


class InterestKind(StrEnum):
    """Which statutory interest: a consumer debtor owes the wettelijke rente (6:119), a
    business debtor the wettelijke handelsrente (6:119a)."""

    CONSUMER = "consumer"
    COMMERCIAL = "commercial"

    @classmethod
    def of_debtor(cls, is_person: bool) -> InterestKind:
        return cls.CONSUMER if is_person else cls.COMMERCIAL


# --- the rate table ------------------------------------------------------------------------


@dataclass(frozen=True)
class RatePeriod:
    """A yearly rate (percent) from `start` until the next period of its kind."""

    kind: InterestKind
    start: date
    percent: Decimal
    source: str
    verify: bool = False
    note: str | None = None


def _half_year_after(day: date) -> date:
    """The first day of the half year after the one `day` is in."""
    return date(day.year, 7, 1) if day.month < 7 else date(day.year + 1, 1, 1)


@dataclass(frozen=True)
class RateTable:
    """The rates of both kinds, each kind's periods in order of their start."""

    version: int
    periods: Mapping[InterestKind, tuple[RatePeriod, ...]]

    def of(self, kind: InterestKind) -> tuple[RatePeriod, ...]:
        return self.periods.get(kind, ())

    def starts(self, kind: InterestKind) -> date:
        """The first day the table has a rate for."""
        periods = self.of(kind)
        if not periods:
            raise ValueError(f"the rate table has no {kind.value} rates")
        return periods[0].start

    def published_until(self, kind: InterestKind) -> date:
        """The first day after the half year of the last period: from this day on the
        last rate is carried forward (`provisional`) until a table adds the next one."""
        return _half_year_after(self.of(kind)[-1].start)

    def period_on(self, kind: InterestKind, day: date) -> RatePeriod:
        found: RatePeriod | None = None
        for period in self.of(kind):
            if period.start > day:
                break
            found = period
        if found is None:
            raise ValueError(f"no {kind.value} rate before {self.starts(kind).isoformat()}")
        return found

    def next_start(self, kind: InterestKind, day: date) -> date | None:
        """The start of the first period after `day`, None when there is none."""
        return next((p.start for p in self.of(kind) if p.start > day), None)


def _periods(rows: Iterable[Mapping[str, Any]], where: str) -> list[RatePeriod]:
    periods = []
    for i, row in enumerate(rows):
        at = f"{where}: rates[{i}]"
        try:
            period = RatePeriod(
                kind=InterestKind(row["kind"]),
                start=date.fromisoformat(row["from"]),
                percent=Decimal(str(row["percent"])),
                source=str(row["source"]),
                verify=bool(row.get("verify", False)),
                note=row.get("note"),
            )
        except (KeyError, ValueError, ArithmeticError) as exc:
            raise ValueError(f"{at}: {exc!r}") from exc
        if not period.percent.is_finite() or period.percent < ZERO or period.percent > HUNDRED:
            raise ValueError(f"{at}: percent must be between 0 and 100")
        if not period.source.strip():
            raise ValueError(f"{at}: every rate names its source")
        periods.append(period)
    return periods


def table_from(documents: Sequence[Mapping[str, Any]]) -> RateTable:
    """A table from one or more table documents in version order: a later document's
    period replaces an earlier one with the same kind and start, and adds the rest."""
    merged: dict[tuple[InterestKind, date], RatePeriod] = {}
    version = 0
    for n, document in enumerate(documents):
        doc_version = int(document["version"])
        if doc_version < version:
            raise ValueError(f"table {n}: version {doc_version} is older than {version}")
        version = doc_version
        for period in _periods(document["rates"], f"table {n}"):
            key = (period.kind, period.start)
            merged[key] = period
    by_kind: dict[InterestKind, tuple[RatePeriod, ...]] = {}
    for kind in InterestKind:
        by_kind[kind] = tuple(sorted((p for p in merged.values() if p.kind == kind), key=_start))
    return RateTable(version=version, periods=by_kind)


def _start(period: RatePeriod) -> date:
    return period.start


def load_rates(extra: Path | None = None) -> RateTable:
    """The shipped table, with an operator's later version (`extra`) over it."""
    documents = [json.loads(RATES_FILE.read_text(encoding="utf-8"))]
    if extra is not None:
        documents.append(json.loads(extra.read_text(encoding="utf-8")))
    return table_from(documents)


@cache
def rates() -> RateTable:
    """The table the services use: the shipped one, with the file `CM_INTEREST_RATES`
    names over it (read once per process)."""
    extra = os.environ.get(RATES_ENV)
    return load_rates(Path(extra) if extra else None)


# --- money over time -----------------------------------------------------------------------


class MovementKind(StrEnum):
    """What a dated amount does to the debt.

    - `principal`: the principal changes by the (signed) amount: the invoice amount
      (+), a credit note (-).
    - `costs`: costs are added (collection or admin costs; they bear no interest here).
    - `payment`: money paid, allocated costs → interest → principal (art. 6:44 BW).
    - `refund`: money given back (a refund, a chargeback, a failed payment): it takes
      back what payments allocated, principal first, then interest, then costs; what is
      left increases the principal.
    """

    PRINCIPAL = "principal"
    COSTS = "costs"
    PAYMENT = "payment"
    REFUND = "refund"


@dataclass(frozen=True)
class Movement:
    """An amount on a day. It counts from the next day: interest for the day itself is
    on the debt as it was (a payment on the day it is made still bears that day)."""

    day: date
    kind: MovementKind
    amount: Decimal


@dataclass(frozen=True)
class InterestPeriod:
    """Days with one rate and one base: `days` days from `start` to `end` (inclusive)
    at `percent` a year on `base`, a day being 1/`year_days` of the year (the days of the
    interest year the days are in). `interest` is exact (unrounded). `provisional`: the
    days lie after the table's last published half year (the last rate carried on)."""

    start: date
    end: date
    percent: Decimal
    days: int
    year_days: int
    base: Decimal
    interest: Decimal
    provisional: bool = False


@dataclass(frozen=True)
class InterestResult:
    """Interest from the day after the due date to `as_of`, exact (round with `money`).

    - `total`: all interest accrued; the sum of `periods`' interest.
    - `capitalised`: interest added to the principal at yearly anniversaries.
    - `paid`: what payments allocated to interest before it was capitalised.
    - `open`: interest accrued, not paid and not yet capitalised.
    - `principal`: the principal on `as_of`, capitalised interest included (negative
      when overpaid); `costs`: the costs still open.
    """

    kind: InterestKind
    due_date: date
    as_of: date
    total: Decimal = ZERO
    capitalised: Decimal = ZERO
    paid: Decimal = ZERO
    open: Decimal = ZERO
    principal: Decimal = ZERO
    costs: Decimal = ZERO
    periods: tuple[InterestPeriod, ...] = field(default_factory=tuple)

    @property
    def provisional(self) -> bool:
        """Part of the interest is on a carried-forward rate (docs/interest.md)."""
        return any(p.provisional for p in self.periods)


def money(amount: Decimal, digits: int = 2) -> Decimal:
    """An amount as shown or booked: rounded half up to `digits` decimals (the cent for
    EUR). The one rounding rule of the interest (docs/interest.md "Rounding")."""
    return amount.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)


def anniversary(due_date: date, years: int) -> date:
    """The due date `years` years on; 29 February becomes 28 February in other years."""
    try:
        return due_date.replace(year=due_date.year + years)
    except ValueError:
        return due_date.replace(year=due_date.year + years, day=28)


@dataclass
class _Debt:
    """The running state: principal (capitalised interest included), open costs, open
    interest, and what payments allocated to each (a refund takes it back)."""

    principal: Decimal = ZERO
    costs: Decimal = ZERO
    interest: Decimal = ZERO
    paid_principal: Decimal = ZERO
    paid_interest: Decimal = ZERO
    paid_costs: Decimal = ZERO
    interest_paid_total: Decimal = ZERO

    def apply(self, movement: Movement) -> None:
        amount = movement.amount
        if movement.kind == MovementKind.PRINCIPAL:
            self.principal += amount
        elif movement.kind == MovementKind.COSTS:
            self.costs += amount
        elif movement.kind == MovementKind.PAYMENT:
            to_costs = min(amount, max(ZERO, self.costs))
            to_interest = min(amount - to_costs, max(ZERO, self.interest))
            to_principal = amount - to_costs - to_interest
            self.costs -= to_costs
            self.interest -= to_interest
            self.principal -= to_principal
            self.paid_costs += to_costs
            self.paid_interest += to_interest
            self.paid_principal += to_principal
            self.interest_paid_total += to_interest
        else:  # refund
            from_principal = min(amount, max(ZERO, self.paid_principal))
            from_interest = min(amount - from_principal, self.paid_interest)
            from_costs = min(amount - from_principal - from_interest, self.paid_costs)
            rest = amount - from_principal - from_interest - from_costs
            self.paid_principal -= from_principal
            self.paid_interest -= from_interest
            self.paid_costs -= from_costs
            self.interest_paid_total -= from_interest
            self.principal += from_principal + rest
            self.interest += from_interest
            self.costs += from_costs

    def capitalise(self) -> Decimal:
        """The year's open interest joins the principal (art. 6:119 lid 2 BW)."""
        added = self.interest
        self.principal += added
        self.interest = ZERO
        # Interest paid before capitalising stays interest paid; a later refund takes
        # back principal first, so nothing moves it back.
        return added


def statutory_interest(
    movements: Iterable[Movement],
    kind: InterestKind,
    due_date: date,
    as_of: date,
    table: RateTable,
) -> InterestResult:
    """The statutory interest owed on `as_of` (docs/interest.md "The computation").

    Interest runs from the day after `due_date` up to and including `as_of`, on the
    principal (never below zero), at the rate of each day's period, a day being
    1/365 or 1/366 of a year as the interest year it falls in has 365 or 366 days. At
    the end of each interest year (the due date's anniversary) the open interest is
    added to the principal. A movement counts from the day after its day; movements
    after `as_of` are ignored. Raises ValueError when the table has no rate for a day.
    """
    with localcontext() as context:
        context.prec = PRECISION
        return _compute(sorted(movements, key=_day), kind, due_date, as_of, table)


def _day(movement: Movement) -> date:
    return movement.day


def _compute(
    movements: list[Movement], kind: InterestKind, due_date: date, as_of: date, table: RateTable
) -> InterestResult:
    debt = _Debt()
    pending = [m for m in movements if m.day <= as_of]
    i = 0
    while i < len(pending) and pending[i].day <= due_date:
        debt.apply(pending[i])
        i += 1
    periods: list[InterestPeriod] = []
    total = capitalised = ZERO
    day = due_date + timedelta(days=1)
    year = 0
    year_start, year_end = due_date, anniversary(due_date, 1)
    if day <= as_of and day < table.starts(kind):
        raise ValueError(f"no {kind.value} rate before {table.starts(kind).isoformat()}")
    published_until = table.published_until(kind) if table.of(kind) else day
    while day <= as_of:
        period = table.period_on(kind, day)
        ends = [as_of, year_end]
        next_rate = table.next_start(kind, day)
        if next_rate is not None:
            ends.append(next_rate - timedelta(days=1))
        if day < published_until:
            ends.append(published_until - timedelta(days=1))
        if i < len(pending):
            ends.append(pending[i].day)
        end = min(ends)
        days = (end - day).days + 1
        year_days = (year_end - year_start).days
        base = max(ZERO, debt.principal)
        interest = base * period.percent * days / (HUNDRED * year_days)
        periods.append(
            InterestPeriod(
                start=day,
                end=end,
                percent=period.percent,
                days=days,
                year_days=year_days,
                base=base,
                interest=interest,
                provisional=day >= published_until,
            )
        )
        debt.interest += interest
        total += interest
        while i < len(pending) and pending[i].day <= end:
            debt.apply(pending[i])
            i += 1
        if end == year_end:
            capitalised += debt.capitalise()
            year += 1
            year_start, year_end = year_end, anniversary(due_date, year + 1)
        day = end + timedelta(days=1)
    return InterestResult(
        kind=kind,
        due_date=due_date,
        as_of=as_of,
        total=total,
        capitalised=capitalised,
        paid=debt.interest_paid_total,
        open=debt.interest,
        principal=debt.principal,
        costs=debt.costs,
        periods=tuple(periods),
    )
