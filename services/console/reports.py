"""The reports' rules: which invoices count and where they fall. Pure functions; the SQL
in repository.py is built from the same table (`BUCKETS`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from contracts.fields import with_minor_unit
from services.invoice.domain.interest import INTEREST_REASON
from services.invoice.dunning import STATUTORY_COSTS, STATUTORY_NOT_IN_EUR

ZERO = Decimal(0)


def _csv_text(header: list[str], rows: Iterable[list[Any]]) -> str:
    """A CSV document (RFC 4180 line ends) with its header line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


@dataclass(frozen=True)
class Bucket:
    """Invoices `low`..`high` days past their due date (inclusive; None: no bound)."""

    key: str
    label: str
    low: int | None
    high: int | None


#: The aging buckets: not yet due (or due today), 1-30, 31-60, 61-90, over 90 days overdue.
BUCKETS: tuple[Bucket, ...] = (
    Bucket("current", "Current", None, 0),
    Bucket("1-30", "1-30 days", 1, 30),
    Bucket("31-60", "31-60 days", 31, 60),
    Bucket("61-90", "61-90 days", 61, 90),
    Bucket("90+", "Over 90 days", 91, None),
)

#: Invoice statuses whose open amount no longer ages: written off, rejected, cancelled.
CLOSED_STATUSES = (80, 90, 91)


def counts_for_aging(*, is_test: bool, status_code: int, open_amount: Decimal) -> bool:
    """An invoice is in the aging report when it is real, not closed and something is open
    (principal plus admin costs)."""
    return not is_test and status_code not in CLOSED_STATUSES and open_amount > 0


def bucket_of(days_overdue: int) -> Bucket:
    for bucket in BUCKETS:
        if bucket.high is None or days_overdue <= bucket.high:
            return bucket
    raise AssertionError("the last bucket has no upper bound")


@dataclass
class AgingRow:
    """One currency's open amounts by bucket."""

    currency: str
    amounts: dict[str, Decimal] = field(
        default_factory=lambda: {b.key: Decimal(0) for b in BUCKETS}
    )
    counts: dict[str, int] = field(default_factory=lambda: {b.key: 0 for b in BUCKETS})

    @property
    def total(self) -> Decimal:
        return sum(self.amounts.values(), Decimal(0))

    @property
    def chart_values(self) -> list[str]:
        """The amounts in bucket order, as exact decimal strings."""
        return [f"{self.amounts[b.key]:f}" for b in BUCKETS]

    @property
    def count(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class AgingReport:
    as_of: date
    rows: list[AgingRow]


def aging_from_sums(as_of: date, sums: Iterable[tuple[str, str, int, Decimal]]) -> AgingReport:
    """The report from (currency, bucket key, invoices, amount) sums."""
    rows: dict[str, AgingRow] = {}
    for currency, key, count, amount in sums:
        row = rows.setdefault(currency, AgingRow(currency))
        row.amounts[key] += amount
        row.counts[key] += count
    return AgingReport(as_of, [rows[c] for c in sorted(rows)])


def aging_csv(report: AgingReport) -> str:
    day = report.as_of.isoformat()
    return _csv_text(
        ["as_of", "currency", "bucket", "invoices", "open_amount"],
        (
            line
            for row in report.rows
            for line in (
                *(
                    [day, row.currency, b.key, row.counts[b.key], f"{row.amounts[b.key]:f}"]
                    for b in BUCKETS
                ),
                [day, row.currency, "total", row.count, f"{row.total:f}"],
            )
        ),
    )


def aging_json(report: AgingReport) -> dict[str, Any]:
    return {
        "as_of": report.as_of.isoformat(),
        "buckets": [b.key for b in BUCKETS],
        "currencies": [
            {
                "currency": row.currency,
                "amounts": {k: f"{v:f}" for k, v in row.amounts.items()},
                "invoices": row.counts,
                "total": f"{row.total:f}",
            }
            for row in report.rows
        ],
    }


# --- the step funnel --------------------------------------------------------------------

#: Invoices the funnel leaves out: rejected (90) invoices never ran a step.
NOT_IN_FUNNEL = (90,)


@dataclass(frozen=True)
class FunnelStep:
    """Step `step` of a scheme (0: before the first step): how many invoices reached it,
    and how many of those were paid before the next step."""

    step: int
    reached: int
    paid_after: int


@dataclass(frozen=True)
class Funnel:
    scheme_key: str
    steps: list[FunnelStep]


def funnel(counts: Iterable[tuple[str, int, bool, int]]) -> list[Funnel]:
    """The funnel per scheme from (scheme, step reached or 0, paid, invoices): an
    invoice at step k reached every step up to k, and counts as paid after step k when
    it is paid and k is the last step it reached."""
    by_scheme: dict[str, dict[int, tuple[int, int]]] = {}
    for scheme, step, paid, count in counts:
        at = by_scheme.setdefault(scheme, {})
        total, paid_count = at.get(step, (0, 0))
        at[step] = (total + count, paid_count + (count if paid else 0))
    out = []
    for scheme in sorted(by_scheme):
        at = by_scheme[scheme]
        last = max(at)
        steps = [
            FunnelStep(
                step=k,
                reached=sum(total for s, (total, _) in at.items() if s >= k),
                paid_after=at.get(k, (0, 0))[1],
            )
            for k in range(last + 1)
        ]
        out.append(Funnel(scheme, steps))
    return out


def funnel_csv(funnels: list[Funnel]) -> str:
    return _csv_text(
        ["scheme", "step", "reached", "paid_after"],
        ([f.scheme_key, s.step, s.reached, s.paid_after] for f in funnels for s in f.steps),
    )


def funnel_json(funnels: list[Funnel]) -> dict[str, Any]:
    return {
        "schemes": [
            {
                "scheme_key": f.scheme_key,
                "steps": [
                    {"step": s.step, "reached": s.reached, "paid_after": s.paid_after}
                    for s in f.steps
                ],
            }
            for f in funnels
        ]
    }


# --- costs ------------------------------------------------------------------------------


#: The kinds of costs, in the report's order: flat admin costs (a fixed amount, its
#: IncreasedAdminFee has no `Reason`), the Dutch statutory collection costs (`Reason`
#: `statutory_costs`) and statutory interest booked as costs (`statutory_interest`).
COST_KINDS = ("admin", "statutory", "interest")
COST_KIND_LABELS = {
    "admin": "Flat admin costs",
    "statutory": "Statutory collection costs",
    "interest": "Statutory interest",
}


def cost_kind(reason: str | None) -> str:
    """The kind of costs an IncreasedAdminFee with this `Reason` charged (docs/invoices.md:
    the names are the invoice service's own; any other reason counts as flat costs)."""
    if reason in (STATUTORY_COSTS, STATUTORY_NOT_IN_EUR):
        return "statutory"
    if reason == INTEREST_REASON:
        return "interest"
    return "admin"


@dataclass(frozen=True)
class CostKind:
    """One kind of costs of one currency's real invoices: charged, paid, open."""

    kind: str
    invoices: int
    charged: Decimal
    paid: Decimal

    @property
    def label(self) -> str:
        return COST_KIND_LABELS[self.kind]

    @property
    def open(self) -> Decimal:
        return self.charged - self.paid


@dataclass(frozen=True)
class Costs:
    """Admin and statutory costs of one currency's real invoices, per kind (`kinds`, in
    COST_KINDS order) and in all: charged, paid, open."""

    currency: str
    invoices: int
    kinds: tuple[CostKind, ...]

    @property
    def charged(self) -> Decimal:
        return with_minor_unit(sum((k.charged for k in self.kinds), ZERO), self.currency)

    @property
    def paid(self) -> Decimal:
        return with_minor_unit(sum((k.paid for k in self.kinds), ZERO), self.currency)

    @property
    def open(self) -> Decimal:
        return self.charged - self.paid


#: (currency, reason, whole currency?, invoices, charged, paid): `repository.cost_sums`.
CostRow = tuple[str, str | None, bool, int, Decimal, Decimal]


def costs(rows: Iterable[CostRow]) -> list[Costs]:
    """Per currency: the sums per `Reason` merged into the kinds (every kind listed, zero
    when none was charged), and the currency's invoice count from its whole-currency row."""
    invoices: dict[str, int] = {}
    sums: dict[str, dict[str, list[Any]]] = {}
    for currency, reason, whole, count, charged, paid in rows:
        if whole:
            invoices[currency] = count
            continue
        kinds = sums.setdefault(currency, {k: [0, ZERO, ZERO] for k in COST_KINDS})
        into = kinds[cost_kind(reason)]
        into[0] += count
        into[1] += charged
        into[2] += paid
    return [
        Costs(
            currency,
            invoices.get(currency, 0),
            tuple(
                CostKind(
                    kind,
                    int(count),
                    with_minor_unit(charged, currency),
                    with_minor_unit(paid, currency),
                )
                for kind, (count, charged, paid) in sums[currency].items()
            ),
        )
        for currency in sorted(sums)
    ]


COST_FIELDS = ["invoices", "charged", "paid", "open"]


def _cost_values(part: Costs | CostKind) -> list[Any]:
    """A kind's or a currency's sums as CSV cells and JSON values (COST_FIELDS)."""
    return [part.invoices, f"{part.charged:f}", f"{part.paid:f}", f"{part.open:f}"]


def costs_csv(rows: list[Costs]) -> str:
    """One line per currency and kind, then the currency's `total`."""
    return _csv_text(
        ["currency", "kind", *COST_FIELDS],
        (
            line
            for c in rows
            for line in (
                *([c.currency, k.kind, *_cost_values(k)] for k in c.kinds),
                [c.currency, "total", *_cost_values(c)],
            )
        ),
    )


def costs_json(rows: list[Costs]) -> dict[str, Any]:
    return {
        "currencies": [
            {
                "currency": c.currency,
                **dict(zip(COST_FIELDS, _cost_values(c), strict=True)),
                "kinds": [
                    {"kind": k.kind, **dict(zip(COST_FIELDS, _cost_values(k), strict=True))}
                    for k in c.kinds
                ],
            }
            for c in rows
        ]
    }


# --- collection results -------------------------------------------------------------------

#: The case states in the order of a case's life.
CASE_STATES = ("preparing", "reviewing", "processing", "failed", "closed")


@dataclass(frozen=True)
class CaseTotals:
    state: str
    cases: int
    amount: Decimal
    collected: Decimal


@dataclass(frozen=True)
class CollectionResults:
    """One currency's production cases by state: how many, to collect, collected."""

    currency: str
    states: list[CaseTotals]

    @property
    def collected(self) -> Decimal:
        return sum((s.collected for s in self.states), Decimal(0))

    @property
    def amount(self) -> Decimal:
        return sum((s.amount for s in self.states), Decimal(0))


def collection_results(
    sums: Iterable[tuple[str, str, int, Decimal, Decimal]],
) -> list[CollectionResults]:
    by_currency: dict[str, dict[str, CaseTotals]] = {}
    for currency, state, count, amount, collected in sums:
        by_currency.setdefault(currency, {})[state] = CaseTotals(state, count, amount, collected)
    return [
        CollectionResults(
            currency,
            [
                by_currency[currency].get(state, CaseTotals(state, 0, Decimal(0), Decimal(0)))
                for state in CASE_STATES
            ],
        )
        for currency in sorted(by_currency)
    ]


def collection_csv(rows: list[CollectionResults]) -> str:
    return _csv_text(
        ["currency", "state", "cases", "amount", "collected"],
        (
            [r.currency, s.state, s.cases, f"{s.amount:f}", f"{s.collected:f}"]
            for r in rows
            for s in r.states
        ),
    )


def collection_json(rows: list[CollectionResults]) -> dict[str, Any]:
    return {
        "currencies": [
            {
                "currency": r.currency,
                "states": [
                    {
                        "state": s.state,
                        "cases": s.cases,
                        "amount": f"{s.amount:f}",
                        "collected": f"{s.collected:f}",
                    }
                    for s in r.states
                ],
                "collected": f"{r.collected:f}",
            }
            for r in rows
        ]
    }


# --- days sales outstanding ---------------------------------------------------------------


def months_until(last: date, count: int) -> list[date]:
    """The first days of `count` months, oldest first, ending with `last`'s month."""
    months = []
    year, month = last.year, last.month
    for _ in range(count):
        months.append(date(year, month, 1))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months[::-1]


def next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def month_end(first: date) -> datetime:
    """The moment a month ends (UTC): the start of the next."""
    following = next_month(first)
    return datetime(following.year, following.month, following.day, tzinfo=UTC)


@dataclass(frozen=True)
class DsoMonth:
    """One month of one currency: open receivables at its end, sales invoiced in it, and
    DSO = receivables / sales x days in the month (None without sales)."""

    month: date
    receivables: Decimal
    sales: Decimal

    @property
    def days(self) -> int:
        return (next_month(self.month) - self.month).days

    @property
    def dso(self) -> Decimal | None:
        if self.sales <= 0:
            return None
        return (self.receivables / self.sales * self.days).quantize(Decimal("0.1"))


def dso_series(
    months: list[date],
    receivables: dict[date, dict[str, Decimal]],
    sales: dict[date, dict[str, Decimal]],
) -> dict[str, list[DsoMonth]]:
    currencies = sorted({c for per in (*receivables.values(), *sales.values()) for c in per})
    return {
        currency: [
            DsoMonth(
                m,
                receivables.get(m, {}).get(currency, Decimal(0)),
                sales.get(m, {}).get(currency, Decimal(0)),
            )
            for m in months
        ]
        for currency in currencies
    }


def _dso_values(m: DsoMonth) -> list[Any]:
    """A month as its CSV cells and JSON values: month, receivables, sales, days, DSO."""
    return [
        m.month.strftime("%Y-%m"),
        f"{m.receivables:f}",
        f"{m.sales:f}",
        m.days,
        None if m.dso is None else f"{m.dso:f}",
    ]


DSO_FIELDS = ["month", "receivables", "sales", "days", "dso"]


def dso_csv(series: dict[str, list[DsoMonth]]) -> str:
    return _csv_text(
        ["currency", *DSO_FIELDS],
        ([currency, *_dso_values(m)] for currency, months in series.items() for m in months),
    )


def dso_json(series: dict[str, list[DsoMonth]]) -> dict[str, Any]:
    return {
        "currencies": [
            {
                "currency": currency,
                "months": [dict(zip(DSO_FIELDS, _dso_values(m), strict=True)) for m in months],
            }
            for currency, months in series.items()
        ]
    }
