"""Statutory interest (contracts/interest.py; docs/interest.md): the rate table, the
worked examples of docs/interest.md computed by hand with exact fractions, and the
properties the issue asks for."""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import ROUND_CEILING, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.interest import (
    RATES_FILE,
    InterestKind,
    Movement,
    MovementKind,
    RateTable,
    anniversary,
    load_rates,
    money,
    statutory_interest,
    table_from,
)

TABLE = load_rates()
CONSUMER, COMMERCIAL = InterestKind.CONSUMER, InterestKind.COMMERCIAL


def debit(day: date, amount: str) -> Movement:
    return Movement(day, MovementKind.PRINCIPAL, Decimal(amount))


def paid(day: date, amount: str | Decimal) -> Movement:
    return Movement(day, MovementKind.PAYMENT, Decimal(amount))


def cents(value: Fraction) -> Decimal:
    """A hand-computed fraction to the cent (half up), as `money` rounds."""
    return money(Decimal(value.numerator) / Decimal(value.denominator))


# --- the table ---------------------------------------------------------------------------


def test_the_shipped_table_has_every_half_year_from_2012_for_both_kinds_with_a_source() -> None:
    raw = json.loads(RATES_FILE.read_text(encoding="utf-8"))
    assert raw["sources"] and "by hand" in raw["entered"]
    for kind in InterestKind:
        periods = TABLE.of(kind)
        assert periods[0].start == date(2012, 1, 1)
        starts = {p.start for p in periods}
        day = date(2012, 1, 1)
        while day < TABLE.published_until(kind):
            assert day in starts, (kind, day)
            day = date(day.year, 7, 1) if day.month == 1 else date(day.year + 1, 1, 1)
        for period in periods:
            for name in period.source.split("; "):
                assert name in raw["sources"]


def test_published_rates_the_examples_use() -> None:
    consumer = {p.start: p.percent for p in TABLE.of(CONSUMER)}
    assert consumer[date(2015, 1, 1)] == 2  # Stb. 2014, 491
    assert consumer[date(2015, 7, 1)] == 2
    assert consumer[date(2022, 7, 1)] == 2
    assert consumer[date(2023, 1, 1)] == 4
    assert consumer[date(2023, 7, 1)] == 6
    assert consumer[date(2024, 1, 1)] == 7
    commercial = {p.start: p.percent for p in TABLE.of(COMMERCIAL)}
    assert commercial[date(2022, 7, 1)] == 8  # ECB 0.00 + 8
    assert commercial[date(2023, 1, 1)] == Decimal("10.5")  # ECB 2.50 + 8
    assert commercial[date(2023, 7, 1)] == 12  # ECB 4.00 + 8
    assert commercial[date(2024, 1, 1)] == Decimal("12.5")  # ECB 4.50 + 8
    assert commercial[date(2024, 7, 1)] == Decimal("12.25")  # ECB 4.25 + 8


def _document(rows: list[dict[str, Any]], version: int = 2) -> dict[str, Any]:
    return {"version": version, "rates": rows}


def test_an_operator_table_version_adds_and_corrects_periods(tmp_path: Path) -> None:
    later = tmp_path / "rates.json"
    row = {"kind": "consumer", "from": "2031-01-01", "percent": "5", "source": "Stb. 2030, 1"}
    fix = {"kind": "commercial", "from": "2025-07-01", "percent": "10.15", "source": "checked"}
    later.write_text(json.dumps(_document([row, fix])), encoding="utf-8")
    table = load_rates(later)
    assert table.version == 2
    assert table.of(CONSUMER)[-1].start == date(2031, 1, 1)
    assert table.period_on(COMMERCIAL, date(2025, 8, 1)).source == "checked"
    assert len(table.of(COMMERCIAL)) == len(TABLE.of(COMMERCIAL))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"kind": "consumer", "from": "2031-01-01", "percent": "5", "source": " "}, "source"),
        ({"kind": "consumer", "from": "2031-01-01", "percent": "-1", "source": "x"}, "percent"),
        ({"kind": "person", "from": "2031-01-01", "percent": "5", "source": "x"}, "rates[0]"),
        ({"kind": "consumer", "from": "1 jan", "percent": "5", "source": "x"}, "rates[0]"),
        ({"kind": "consumer", "from": "2031-01-01", "source": "x"}, "rates[0]"),
    ],
)
def test_a_bad_table_row_is_refused_by_its_place(row: dict[str, Any], message: str) -> None:
    base = json.loads(RATES_FILE.read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        table_from([base, _document([row])])


def test_an_older_table_version_is_refused() -> None:
    base = json.loads(RATES_FILE.read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match="older"):
        table_from([{**base, "version": 3}, _document([], version=2)])


def test_days_before_the_table_have_no_rate() -> None:
    with pytest.raises(ValueError, match="no consumer rate before 2012-01-01"):
        statutory_interest(
            [debit(date(2011, 1, 1), "100")], CONSUMER, date(2011, 6, 1), date(2012, 1, 2), TABLE
        )


def test_anniversaries_of_29_february() -> None:
    assert anniversary(date(2024, 2, 29), 1) == date(2025, 2, 28)
    assert anniversary(date(2024, 2, 29), 4) == date(2028, 2, 29)


# --- worked examples (docs/interest.md "Worked examples") --------------------------------


def test_consumer_example_two_years_over_four_rates_compounded_once() -> None:
    """€1,000.00 due 2022-06-30, a person: interest from 2022-07-01 to 2024-03-31."""
    result = statutory_interest(
        [debit(date(2022, 6, 1), "1000.00")], CONSUMER, date(2022, 6, 30), date(2024, 3, 31), TABLE
    )
    p1 = Fraction(1000)
    # Year 1, 2022-07-01 .. 2023-06-30 (365 days):
    a = p1 * Fraction(2, 100) * 184 / 365  # 2022-07-01 .. 12-31, 184 days at 2%
    b = p1 * Fraction(4, 100) * 181 / 365  # 2023-01-01 .. 06-30, 181 days at 4%
    # The anniversary 2023-06-30: the year's interest joins the principal.
    p2 = p1 + a + b  # 1,029.917808...
    # Year 2, 2023-07-01 .. 2024-06-30 (366 days: it holds 2024-02-29):
    c = p2 * Fraction(6, 100) * 184 / 366  # 2023-07-01 .. 12-31, 184 days at 6%
    d = p2 * Fraction(7, 100) * 91 / 366  # 2024-01-01 .. 03-31, 91 days at 7%
    rows = [
        (p.start, p.end, p.percent, p.days, p.year_days, money(p.base), money(p.interest))
        for p in result.periods
    ]
    assert rows == [
        (date(2022, 7, 1), date(2022, 12, 31), 2, 184, 365, Decimal("1000.00"), cents(a)),
        (date(2023, 1, 1), date(2023, 6, 30), 4, 181, 365, Decimal("1000.00"), cents(b)),
        (date(2023, 7, 1), date(2023, 12, 31), 6, 184, 366, cents(p2), cents(c)),
        (date(2024, 1, 1), date(2024, 3, 31), 7, 91, 366, cents(p2), cents(d)),
    ]
    # The figures docs/interest.md shows, from the fractions above:
    assert [cents(x) for x in (a, b, c, d)] == [
        Decimal("10.08"),
        Decimal("19.84"),
        Decimal("31.07"),
        Decimal("17.93"),
    ]
    assert money(result.capitalised) == cents(a + b) == Decimal("29.92")
    assert money(result.total) == cents(a + b + c + d) == Decimal("78.91")
    assert money(result.open) == cents(c + d) == Decimal("48.99")
    assert money(result.principal) == Decimal("1029.92")
    assert not result.provisional


def test_business_example_compounded_and_a_payment_to_interest_first() -> None:
    """€10,000.00 due 2022-11-15, a company; €2,000.00 paid on 2023-12-01; interest to
    2024-09-30."""
    result = statutory_interest(
        [debit(date(2022, 11, 1), "10000.00"), paid(date(2023, 12, 1), "2000.00")],
        COMMERCIAL,
        date(2022, 11, 15),
        date(2024, 9, 30),
        TABLE,
    )
    p1 = Fraction(10000)
    # Year 1, 2022-11-16 .. 2023-11-15 (365 days):
    a = p1 * Fraction(8, 100) * 46 / 365  # .. 2022-12-31, 46 days at 8%
    b = p1 * Fraction(105, 1000) * 181 / 365  # 2023-01-01 .. 06-30, 181 days at 10.5%
    c = p1 * Fraction(12, 100) * 138 / 365  # 2023-07-01 .. 11-15, 138 days at 12%
    p2 = p1 + a + b + c  # capitalised on 2023-11-15
    # Year 2, 2023-11-16 .. 2024-11-15 (366 days):
    d = p2 * Fraction(12, 100) * 16 / 366  # 2023-11-16 .. 12-01, 16 days at 12%
    # The payment of 2023-12-01 pays d (the open interest) first, the rest the principal.
    p3 = p2 - (2000 - d)
    e = p3 * Fraction(12, 100) * 30 / 366  # 2023-12-02 .. 12-31, 30 days at 12%
    f = p3 * Fraction(125, 1000) * 182 / 366  # 2024-01-01 .. 06-30, 182 days at 12.5%
    g = p3 * Fraction(1225, 10000) * 92 / 366  # 2024-07-01 .. 09-30, 92 days at 12.25%
    assert [money(p.interest) for p in result.periods] == [cents(x) for x in (a, b, c, d, e, f, g)]
    assert [money(p.base) for p in result.periods] == [cents(p1)] * 3 + [cents(p2)] + [
        cents(p3)
    ] * 3
    assert [cents(x) for x in (a, b, c, d, e, f, g)] == [
        Decimal(v) for v in ("100.82", "520.68", "453.70", "58.10", "89.84", "567.71", "281.24")
    ]
    assert money(result.capitalised) == cents(a + b + c) == Decimal("1075.21")
    assert money(result.paid) == cents(d) == Decimal("58.10")
    assert money(result.principal) == cents(p3) == Decimal("9133.30")
    assert money(result.total) == cents(a + b + c + d + e + f + g) == Decimal("2072.09")
    assert money(result.open) == cents(e + f + g) == Decimal("938.78")


def test_costs_are_paid_before_interest_and_a_refund_takes_back_principal_first() -> None:
    due = date(2024, 1, 15)
    base = [debit(date(2024, 1, 1), "100.00"), Movement(due, MovementKind.COSTS, Decimal(40))]
    # 2024-01-16 .. 2024-03-15: 60 days at 7% on 100 in a 366-day year.
    interest = Fraction(100) * Fraction(7, 100) * 60 / 366
    result = statutory_interest(
        [*base, paid(date(2024, 3, 15), "41.00")], CONSUMER, due, date(2024, 3, 15), TABLE
    )
    assert result.costs == 0
    assert money(result.open) == cents(interest - 1)  # 1.00 of the 41.00 went to interest
    assert result.principal == 100
    refunded = statutory_interest(
        [
            *base,
            paid(date(2024, 3, 15), "200.00"),
            Movement(date(2024, 3, 16), MovementKind.REFUND, Decimal("100.00")),
        ],
        CONSUMER,
        due,
        date(2024, 3, 16),
        TABLE,
    )
    # 200 paid 40 costs, the interest, and the principal (overpaid); the refund took back
    # 100 of the principal paid: the principal is open again by what was overpaid less.
    assert refunded.costs == 0 and refunded.open == 0
    assert money(refunded.principal) == money(Decimal(100) - (Decimal(160) - _dec(interest)) + 100)


def _dec(value: Fraction) -> Decimal:
    return Decimal(value.numerator) / Decimal(value.denominator)


def test_a_movement_counts_from_the_next_day_and_nothing_runs_before_the_due_date() -> None:
    due = date(2024, 1, 15)
    nothing = statutory_interest([debit(due, "100")], CONSUMER, due, due, TABLE)
    assert nothing.total == 0 and nothing.periods == ()
    one_day = statutory_interest(
        [debit(due, "100"), paid(due + timedelta(days=1), "100")],
        CONSUMER,
        due,
        due + timedelta(days=5),
        TABLE,
    )
    # The day of the payment still bears interest on 100 (7%, a 366-day year) ...
    first = one_day.periods[0]
    assert (first.start, first.end, first.base) == (due + timedelta(days=1),) * 2 + (100,)
    assert money(first.interest, 20) == money(Decimal(100) * 7 / (100 * 366), 20)
    # ... and the payment paid that interest first (art. 6:44 BW), so as much of the
    # principal stays open and bears interest from the next day.
    assert one_day.periods[1].start == due + timedelta(days=2)
    assert money(one_day.periods[1].base, 20) == money(first.interest, 20)
    assert one_day.periods[1].base == one_day.principal


def test_after_the_table_the_last_rate_is_carried_and_marked_provisional() -> None:
    last = TABLE.of(CONSUMER)[-1]
    until = TABLE.published_until(CONSUMER)
    result = statutory_interest(
        [debit(date(2024, 1, 1), "100")], CONSUMER, until - timedelta(days=10), until, TABLE
    )
    assert result.provisional
    assert [p.provisional for p in result.periods] == [False, True]
    assert result.periods[-1].percent == last.percent


# --- properties --------------------------------------------------------------------------

amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(1_000_000), places=2)
due_dates = st.dates(min_value=date(2012, 1, 1), max_value=date(2025, 6, 1))
kinds = st.sampled_from(list(InterestKind))


@st.composite
def debts(draw: st.DrawFn) -> tuple[list[Movement], InterestKind, date]:
    """An invoice: its amount before the due date, maybe costs and credit notes on later
    days (never a payment)."""
    due = draw(due_dates)
    movements = [debit(due - timedelta(days=14), str(draw(amounts)))]
    for _ in range(draw(st.integers(0, 3))):
        day = due + timedelta(days=draw(st.integers(-10, 900)))
        if draw(st.booleans()):
            movements.append(Movement(day, MovementKind.COSTS, draw(amounts)))
        else:
            movements.append(debit(day, str(-draw(amounts) / 10)))
    return movements, draw(kinds), due


@settings(max_examples=150, deadline=None)
@given(debts(), st.integers(0, 1200), st.integers(0, 400))
def test_interest_never_decreases_while_nothing_is_paid(
    debt: tuple[list[Movement], InterestKind, date], offset: int, more: int
) -> None:
    movements, kind, due = debt
    earlier = statutory_interest(movements, kind, due, due + timedelta(days=offset), TABLE)
    later = statutory_interest(movements, kind, due, due + timedelta(days=offset + more), TABLE)
    assert later.total >= earlier.total
    assert later.paid == 0  # nothing was paid: all interest is open or capitalised
    assert money(later.total - later.capitalised - later.open, 20) == 0


@settings(max_examples=150, deadline=None)
@given(debts(), st.integers(0, 1200), st.integers(1, 800))
def test_paying_everything_stops_the_interest(
    debt: tuple[list[Movement], InterestKind, date], offset: int, more: int
) -> None:
    movements, kind, due = debt
    day = due + timedelta(days=offset)
    before = statutory_interest(movements, kind, due, day, TABLE)
    everything = (max(Decimal(0), before.principal) + before.open + before.costs).quantize(
        Decimal("0.01"), rounding=ROUND_CEILING
    )
    # Credit notes after `day` could only lower what is owed: keep the ones up to it.
    settled = [m for m in movements if m.day <= day] + [paid(day, everything)]
    after = statutory_interest(settled, kind, due, day + timedelta(days=more), TABLE)
    assert after.total == before.total
    assert after.open == 0 and after.principal <= 0


def _split(table: RateTable, kind: InterestKind, day: date) -> RateTable:
    """The table with one more period starting `day`, at the rate already in force."""
    rows = [
        {
            "kind": p.kind.value,
            "from": p.start.isoformat(),
            "percent": str(p.percent),
            "source": "x",
        }
        for k in InterestKind
        for p in table.of(k)
    ]
    current = table.period_on(kind, day)
    rows.append(
        {
            "kind": kind.value,
            "from": day.isoformat(),
            "percent": str(current.percent),
            "source": "x",
        }
    )
    return table_from([{"version": 1, "rates": rows}])


@settings(max_examples=150, deadline=None)
@given(debts(), st.integers(1, 1200), st.integers(1, 1200))
def test_splitting_a_period_at_any_day_gives_the_same_total_to_the_cent(
    debt: tuple[list[Movement], InterestKind, date], length: int, at: int
) -> None:
    movements, kind, due = debt
    as_of = due + timedelta(days=length)
    split_day = due + timedelta(days=at)
    whole = statutory_interest(movements, kind, due, as_of, TABLE)
    split = statutory_interest(movements, kind, due, as_of, _split(TABLE, kind, split_day))
    assert money(split.total) == money(whole.total)
    if due < split_day <= as_of:
        assert any(p.start == split_day for p in split.periods)


# --- the operator's commands (cm interest-rates, cm interest) ----------------------------


def test_cm_interest_prints_the_worked_example_per_period(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cmcli.__main__ import main  # noqa: PLC0415

    argv = ["interest", "--kind", "consumer", "--amount", "1000.00"]
    assert main([*argv, "--due", "2022-06-30", "--as-of", "2024-03-31"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:5] == [
        "2022-07-01\t2022-12-31\t2%\t184\t365\t1000.00\t10.08",
        "2023-01-01\t2023-06-30\t4%\t181\t365\t1000.00\t19.84",
        "2023-07-01\t2023-12-31\t6%\t184\t366\t1029.92\t31.07",
        "2024-01-01\t2024-03-31\t7%\t91\t366\t1029.92\t17.93",
    ]
    assert out[5].startswith("total 78.91; capitalised 29.92;")


def test_cm_interest_rates_checks_an_operator_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cmcli.__main__ import main  # noqa: PLC0415

    good = tmp_path / "good.json"
    row = {"kind": "consumer", "from": "2031-01-01", "percent": "5", "source": "Stb. 2030, 1"}
    good.write_text(json.dumps(_document([row])), encoding="utf-8")
    assert main(["interest-rates", str(good)]) == 0
    assert "consumer\t2031-01-01\t5%\tStb. 2030, 1" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_document([{**row, "source": ""}])), encoding="utf-8")
    assert main(["interest-rates", str(bad)]) == 2
    assert "every rate names its source" in capsys.readouterr().err
