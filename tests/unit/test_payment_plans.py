"""Payment plans (docs/invoices.md "Payment plans"): the installment
schedule, forwarding installment payments to the originals and taking refunds back, and
CreatePaymentPlan's validation."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from contracts.fields import Identifier
from contracts.invoice import (
    EventCategory,
    InvoiceEventName,
    InvoiceStatus,
    InvoiceType,
    StepAction,
)
from contracts.limits import MAX_IDENTIFIER_LENGTH, MAX_INSTALLMENTS
from services.invoice import domain
from tests.support import invoice_domain

S = InvoiceStatus
D = Decimal
ZERO = D(0)
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def make_invoice(
    number: str = "INV-1", status: InvoiceStatus = S.ACTIVE, **overrides: Any
) -> domain.Invoice:
    fields = {"invoice_number": number, "invoice_key": f"KEY-{number}", "debtor_code": "D-1"}
    return invoice_domain.make_invoice(status, **{**fields, **overrides})


def make_plan(**overrides: Any) -> domain.PaymentPlan:
    fields: dict[str, Any] = {
        "website_key": "shop",
        "dossier_number": "PP-1",
        "currency": "EUR",
        "original_numbers": ["A", "B"],
        "installment_numbers": ["PP-1-1", "PP-1-2"],
        "total": D("80.00"),
        "cost": D("10.00"),
    }
    fields.update(overrides)
    return domain.PaymentPlan(**fields)


def schedule(
    total: str | Decimal,
    count: int,
    *,
    initial: str | Decimal = "0",
    cost: str | Decimal = "0",
    start: date = date(2024, 4, 1),
    interval: str = "month",
    currency: str = "EUR",
) -> list[domain.InstallmentPlan]:
    return domain.plan_installments(
        dossier="PP-1",
        total=D(total),
        initial_amount=D(initial),
        cost=D(cost),
        count=count,
        start_date=start,
        interval=interval,
        currency=currency,
    )


# --- plan_installments ---------------------------------------------------------------------


def test_the_first_installment_is_the_initial_amount_plus_the_cost() -> None:
    items = schedule("100.00", 4, initial="10.00", cost="5.00")
    assert [i.amount for i in items] == [D("15.00"), D("30.00"), D("30.00"), D("30.00")]
    assert [i.number for i in items] == ["PP-1-1", "PP-1-2", "PP-1-3", "PP-1-4"]


def test_the_last_installment_absorbs_the_rounding() -> None:
    items = schedule("100.00", 4)
    assert [i.amount for i in items] == [D("0"), D("33.33"), D("33.33"), D("33.34")]
    items = schedule("100.01", 3, initial="0.01")
    assert [i.amount for i in items] == [D("0.01"), D("50.00"), D("50.00")]


def test_one_installment_is_the_total_plus_the_cost() -> None:
    assert [i.amount for i in schedule("80.00", 1, initial="20.00", cost="5.00")] == [D("85.00")]


def test_jpy_installments_are_whole_yen() -> None:
    items = schedule("1000", 4, initial="100", currency="JPY")
    assert [i.amount for i in items] == [D(100), D(300), D(300), D(300)]
    items = schedule("1001", 4, currency="JPY")
    assert [i.amount for i in items] == [D(0), D(333), D(333), D(335)]


cents = st.integers(0, 10_000_000)


@settings(max_examples=200, deadline=None)
@given(
    total_cents=cents,
    initial_share=st.integers(0, 100),
    cost_cents=st.integers(0, 100_000),
    count=st.integers(1, 60),
    currency=st.sampled_from(["EUR", "JPY", "KWD"]),
)
def test_installments_add_up_to_the_total_plus_the_cost(
    total_cents: int, initial_share: int, cost_cents: int, count: int, currency: str
) -> None:
    places = {"EUR": 2, "JPY": 0, "KWD": 3}[currency]
    total = D(total_cents).scaleb(-places)
    initial = D(total_cents * initial_share // 100).scaleb(-places)
    cost = D(cost_cents).scaleb(-places)
    items = schedule(total, count, initial=initial, cost=cost, currency=currency)
    amounts = [i.amount for i in items]
    assert len(items) == count
    assert [i.number for i in items] == [f"PP-1-{n}" for n in range(1, count + 1)]
    assert sum(amounts, ZERO) == total + cost
    quantum = D(1).scaleb(-places)
    for amount in amounts:
        assert amount >= ZERO
        assert amount == amount.quantize(quantum), amount
    if count == 1:
        assert amounts == [total + cost]
        return
    assert amounts[0] == initial + cost
    rest = amounts[1:]
    each = rest[0]
    assert all(a == each for a in rest[:-1])
    # the last takes what the even split left over: less than one minor unit per installment
    assert ZERO <= rest[-1] - each < quantum * len(rest)


def test_monthly_due_dates_clamp_to_the_end_of_the_month() -> None:
    items = schedule("100.00", 5, start=date(2024, 1, 31))
    assert [i.due_date for i in items] == [
        date(2024, 1, 31),
        date(2024, 2, 29),
        date(2024, 3, 31),
        date(2024, 4, 30),
        date(2024, 5, 31),
    ]
    items = schedule("100.00", 3, start=date(2024, 11, 30))
    assert [i.due_date for i in items] == [
        date(2024, 11, 30),
        date(2024, 12, 30),
        date(2025, 1, 30),
    ]
    items = schedule("100.00", 4, start=date(2024, 11, 29))
    assert [i.due_date for i in items][-1] == date(2025, 2, 28)
    items = schedule("100.00", 2, start=date(2024, 1, 15))
    assert [i.due_date for i in items] == [date(2024, 1, 15), date(2024, 2, 15)]


def test_weekly_due_dates() -> None:
    items = schedule("100.00", 4, start=date(2024, 12, 20), interval="week")
    assert [i.due_date for i in items] == [
        date(2024, 12, 20),
        date(2024, 12, 27),
        date(2025, 1, 3),
        date(2025, 1, 10),
    ]


@settings(max_examples=200, deadline=None)
@given(start=st.dates(date(2000, 1, 1), date(2100, 1, 1)), count=st.integers(1, 30))
def test_monthly_due_dates_keep_the_day_or_the_month_end(start: date, count: int) -> None:
    items = schedule("100.00", count, start=start)
    for n, item in enumerate(items):
        month_index = start.month - 1 + n
        assert (item.due_date.year, item.due_date.month) == (
            start.year + month_index // 12,
            month_index % 12 + 1,
        )
        next_day = item.due_date + timedelta(days=1)
        assert item.due_date.day == start.day or (
            item.due_date.day < start.day and next_day.day == 1
        )


# --- forward_payment / reverse_forwarded -----------------------------------------------------


def originals() -> tuple[domain.Invoice, domain.Invoice]:
    older = make_invoice("A", S.PAUSED_BY_PAYMENT_PLAN, amount_debit=D("50.00"))
    newer = make_invoice(
        "B",
        S.PAUSED_BY_PAYMENT_PLAN,
        amount_debit=D("30.00"),
        invoice_date=date(2024, 2, 1),
        due_date=date(2024, 2, 15),
    )
    return older, newer


def test_a_payment_goes_to_the_plan_cost_then_the_oldest_original() -> None:
    plan = make_plan()
    a, b = originals()
    shares = domain.forward_payment(plan, [b, a], D("70.00"), "T1")
    assert [(inv.invoice_number, share) for inv, share in shares] == [
        ("A", D("50.00")),
        ("B", D("10.00")),
    ]
    assert plan.cost_paid == D("10.00")
    assert plan.forwarded == {"T1": [("A", D("50.00")), ("B", D("10.00"))]}


def test_a_small_payment_only_pays_the_plan_cost() -> None:
    plan = make_plan()
    a, b = originals()
    assert domain.forward_payment(plan, [a, b], D("4.00"), "T1") == []
    assert plan.cost_paid == D("4.00")
    assert plan.forwarded == {"T1": []}
    shares = domain.forward_payment(plan, [a, b], D("8.00"), "T2")
    assert plan.cost_paid == D("10.00")
    assert [(inv.invoice_number, share) for inv, share in shares] == [("A", D("2.00"))]


def test_an_overpayment_goes_to_the_last_original() -> None:
    plan = make_plan(cost_paid=D("10.00"))
    a, b = originals()
    shares = domain.forward_payment(plan, [a, b], D("100.00"), "T1")
    assert [(inv.invoice_number, share) for inv, share in shares] == [
        ("A", D("50.00")),
        ("B", D("50.00")),
    ]
    # once booked, the next payment skips the paid original
    for inv, share in shares:
        domain.book_payment(inv, share)
    assert a.is_paid
    shares = domain.forward_payment(plan, [a, b], D("5.00"), "T2")
    assert [(inv.invoice_number, share) for inv, share in shares] == [("B", D("5.00"))]


def test_forwarding_counts_the_originals_admin_costs_and_orders_ties_by_number() -> None:
    plan = make_plan(cost=ZERO)
    b = make_invoice("B", amount_debit=D("10.00"))
    a = make_invoice("A", amount_debit=D("10.00"))
    domain.add_admin_costs(a, D("5.00"))
    shares = domain.forward_payment(plan, [b, a], D("20.00"), "T1")
    assert [(inv.invoice_number, share) for inv, share in shares] == [
        ("A", D("15.00")),
        ("B", D("5.00")),
    ]


@settings(max_examples=200, deadline=None)
@given(
    cost=st.integers(0, 5000),
    debits=st.lists(st.integers(1, 50_000), min_size=1, max_size=5),
    payments=st.lists(st.integers(1, 60_000), min_size=1, max_size=6),
)
def test_forwarding_never_loses_a_cent(cost: int, debits: list[int], payments: list[int]) -> None:
    plan = make_plan(cost=D(cost).scaleb(-2))
    invoices = [
        make_invoice(f"I{i}", amount_debit=D(d).scaleb(-2), invoice_date=date(2024, 1, 1 + i))
        for i, d in enumerate(debits)
    ]
    for n, paid in enumerate(payments):
        amount = D(paid).scaleb(-2)
        cost_before = plan.cost_paid
        shares = domain.forward_payment(plan, invoices, amount, f"T{n}")
        assert plan.cost_paid - cost_before + sum((s for _, s in shares), ZERO) == amount
        assert ZERO <= plan.cost_paid <= plan.cost
        for inv, share in shares:
            assert share > ZERO
            domain.book_payment(inv, share)
        # only the last original is ever overpaid
        assert all(inv.open_amount_incl_admin_costs >= ZERO for inv in invoices[:-1])


def test_a_refund_takes_back_the_newest_share_first_then_the_plan_cost() -> None:
    plan = make_plan()
    a, b = originals()
    domain.forward_payment(plan, [a, b], D("70.00"), "T1")
    taken = domain.reverse_forwarded(plan, D("15.00"), "T1")
    assert taken == [("B", D("10.00")), ("A", D("5.00"))]
    assert plan.forwarded["T1"] == [("A", D("45.00"))]
    assert plan.cost_paid == D("10.00")
    taken = domain.reverse_forwarded(plan, D("55.00"), "T1")
    assert taken == [("A", D("45.00"))]
    assert plan.forwarded["T1"] == []
    assert plan.cost_paid == ZERO


def test_a_partial_refund_of_the_last_share_keeps_the_rest() -> None:
    plan = make_plan()
    a, b = originals()
    domain.forward_payment(plan, [a, b], D("70.00"), "T1")
    assert domain.reverse_forwarded(plan, D("4.00"), "T1") == [("B", D("4.00"))]
    assert plan.forwarded["T1"] == [("A", D("50.00")), ("B", D("6.00"))]
    assert plan.cost_paid == D("10.00")


def test_a_refund_of_an_unforwarded_payment_takes_back_the_plan_cost() -> None:
    plan = make_plan(cost_paid=D("10.00"))
    assert domain.reverse_forwarded(plan, D("4.00"), "unknown") == []
    assert plan.cost_paid == D("6.00")
    assert domain.reverse_forwarded(plan, D("40.00"), "unknown") == []
    assert plan.cost_paid == ZERO


# --- start_payment_plan ---------------------------------------------------------------------


def start(
    originals: list[domain.Invoice],
    requested: list[str] | None = None,
    *,
    count: int = 3,
    initial: str = "20.00",
    cost: str = "5.00",
    scheme_version: int | None = 1,
    scheme_steps: list[domain.SchemeStepState] | None = None,
    start_date: date = date(2024, 3, 15),
    interval: str = "month",
    dossier: str = "PP-1",
):
    return domain.start_payment_plan(
        website_key="shop",
        dossier=dossier,
        originals=originals,
        requested=requested if requested is not None else [i.invoice_number for i in originals],
        installment_count=count,
        initial_amount=D(initial),
        cost=D(cost),
        start_date=start_date,
        interval=interval,
        scheme_key="PlanScheme",
        scheme_version=scheme_version,
        scheme_steps=scheme_steps or [],
        now=NOW,
        fingerprint="hash",
    )


def test_a_plan_pauses_the_originals_and_creates_the_installments() -> None:
    a, b = originals()
    a.status = S.ACTIVE
    b.status = S.PAUSED
    domain.add_admin_costs(a, D("15.00"))
    a = booked_payment(a, D("5.00"))  # pays 5 of the costs
    # open incl. costs: A 50 + 10 = 60, B 30 → total 90
    plan, outcomes, errors = start([b, a], start_date=date(2024, 2, 20))
    assert errors == []
    assert plan is not None
    assert plan.total == D("90.00")
    assert plan.cost == D("5.00")
    assert plan.original_numbers == ["B", "A"]
    assert plan.installment_numbers == ["PP-1-1", "PP-1-2", "PP-1-3"]
    assert plan.request_hash == "hash"
    paused = [o.invoice for o in outcomes[:2]]
    assert [(i.invoice_number, i.status, i.plan_dossier) for i in paused if i] == [
        ("B", S.PAUSED_BY_PAYMENT_PLAN, "PP-1"),
        ("A", S.PAUSED_BY_PAYMENT_PLAN, "PP-1"),
    ]
    assert [o.events[0].parameters["StatusCode"] for o in outcomes[:2]] == ["22", "22"]
    installments = [o.invoice for o in outcomes[2:]]
    assert all(i is not None for i in installments)
    assert [(i.invoice_number, i.amount_debit, i.due_date) for i in installments if i] == [
        ("PP-1-1", D("25.00"), date(2024, 2, 20)),
        ("PP-1-2", D("35.00"), date(2024, 3, 20)),
        ("PP-1-3", D("35.00"), date(2024, 4, 20)),
    ]
    for installment in installments:
        assert installment is not None
        assert installment.type == InvoiceType.PAYMENT_PLAN_INSTALLMENT
        assert installment.status == S.ACTIVE
        assert installment.plan_dossier == "PP-1"
        assert installment.scheme_key == "PlanScheme"
        assert installment.currency == "EUR"
        assert installment.debtor_code == "D-1"  # from the oldest original
        assert installment.invoice_date == min(NOW.date(), installment.due_date)
    for outcome in outcomes[2:]:
        assert [(e.name, e.parameters, e.category) for e in outcome.events] == [
            (InvoiceEventName.CHANGED_STATUS, {"StatusCode": "10"}, EventCategory.FINANCIAL_CHANGE)
        ]


def booked_payment(invoice: domain.Invoice, amount: Decimal) -> domain.Invoice:
    domain.book_payment(invoice, amount)
    return invoice


def codes(errors: list) -> list[tuple[str, str]]:
    return [(e.field, e.code) for e in errors]


def assert_refused(result: tuple, expected: list[tuple[str, str]]) -> None:
    plan, outcomes, errors = result
    assert plan is None
    assert outcomes == []
    assert codes(errors) == expected


def test_an_unknown_invoice_is_named_by_its_index() -> None:
    a, _ = originals()
    a.status = S.ACTIVE
    assert_refused(
        start([a], ["A", "NOPE"]),
        [("payload.included_invoice_numbers.1", "unknown_invoice")],
    )


def test_an_invoice_listed_twice_is_refused() -> None:
    a, _ = originals()
    a.status = S.ACTIVE
    assert_refused(start([a], ["A", "A"]), [("payload.included_invoice_numbers", "duplicate")])


@pytest.mark.parametrize("status", [s for s in S if s not in (S.NOT_SET, S.ACTIVE, S.PAUSED)])
def test_only_active_or_paused_invoices_join_a_plan(status: InvoiceStatus) -> None:
    a, b = originals()
    a.status = S.ACTIVE
    b.status = status
    assert_refused(start([a, b]), [("payload.included_invoice_numbers.1", "invalid_status")])


def test_a_paid_invoice_cannot_join_a_plan() -> None:
    a, b = originals()
    a.status = b.status = S.ACTIVE
    booked_payment(b, D("30.00"))
    assert_refused(start([a, b]), [("payload.included_invoice_numbers.1", "already_paid")])


def test_a_plan_has_one_currency() -> None:
    a, b = originals()
    a.status = b.status = S.ACTIVE
    b.currency = "USD"
    assert_refused(start([a, b]), [("payload.included_invoice_numbers", "mixed_currencies")])


def test_the_plan_scheme_must_exist() -> None:
    a, _ = originals()
    a.status = S.ACTIVE
    assert_refused(start([a], scheme_version=None), [("payload.scheme_key", "unknown_scheme")])


def test_the_plan_scheme_may_not_charge_statutory_costs() -> None:
    a, _ = originals()
    a.status = S.ACTIVE
    steps = [
        domain.SchemeStepState(index=1, action=StepAction.REMINDER, days=7),
        domain.SchemeStepState(
            index=2, action=StepAction.ADMIN_COST_INCREASE, days=30, admin_cost="statutory"
        ),
    ]
    assert_refused(
        start([a], scheme_steps=steps), [("payload.scheme_key", "statutory_costs_in_plan")]
    )
    fixed = [domain.SchemeStepState(index=1, action=StepAction.ADMIN_COST_INCREASE, days=30,
                                    admin_cost="7.50")]  # fmt: skip
    plan, _, errors = start([a], scheme_steps=fixed)
    assert errors == []
    assert plan is not None


@pytest.mark.parametrize(
    ("initial", "cost", "expected"),
    [
        ("-1.00", "0", [("payload.initial_amount", "negative")]),
        ("1.001", "0", [("payload.initial_amount", "too_many_decimals")]),
        ("10.00", "-0.01", [("payload.payment_plan_cost_amount", "negative")]),
        ("10.00", "0.005", [("payload.payment_plan_cost_amount", "too_many_decimals")]),
        ("50.01", "0", [("payload.initial_amount", "exceeds_total")]),
    ],
)
def test_plan_amounts_are_checked(initial: str, cost: str, expected: list) -> None:
    a, _ = originals()
    a.status = S.ACTIVE
    assert_refused(start([a], initial=initial, cost=cost), expected)


def test_the_initial_amount_may_be_the_whole_total() -> None:
    a, _ = originals()
    a.status = S.ACTIVE
    plan, outcomes, errors = start([a], initial="50.00", cost="0", count=2)
    assert errors == []
    assert plan is not None
    amounts = [o.invoice.amount_debit for o in outcomes[1:] if o.invoice]
    assert amounts[0] == D("50.00")
    assert sum(amounts, ZERO) == D("50.00")


def test_the_originals_are_not_mutated_by_a_plan() -> None:
    a, _ = originals()
    a.status = S.ACTIVE
    start([a])
    assert a.status == S.ACTIVE
    assert a.plan_dossier is None


# --- derived numbers fit an identifier (docs/invoices.md "Installment numbers") ----------


def test_a_dossier_number_too_long_for_its_installment_numbers_is_refused() -> None:
    a, _ = originals()
    a.status = S.ACTIVE
    # 12 installments: `{dossier}-12` needs 3 characters of the 100
    assert_refused(start([a], count=12, dossier="P" * 98), [("payload.dossier_number", "too_long")])
    plan, _, errors = start([a], count=12, dossier="P" * 97)
    assert errors == []
    assert plan is not None
    assert max(len(number) for number in plan.installment_numbers) == 100


def test_every_installment_number_of_an_accepted_dossier_parses_as_an_identifier() -> None:
    identifier = TypeAdapter(Identifier)
    for count in (1, 9, 10, 99, 100, MAX_INSTALLMENTS):
        longest = next(n for n in range(100, 0, -1) if not domain.dossier_errors("P" * n, count))
        assert domain.dossier_errors("P" * (longest + 1), count) != []
        numbers = domain.installment_numbers("P" * longest, count)
        assert [identifier.validate_python(number) for number in numbers] == numbers
        assert len(numbers[-1]) == MAX_IDENTIFIER_LENGTH  # no room is wasted either
