"""The dunning engine (docs/dunning.md; docs/invoices.md "Events"; the contracts StepDue,
RecordMessageOutcome, UpsertScheme and SendMessage in contracts/).

Pure unit tests of `services.invoice.dunning`: the statutory scale, scheme validation,
step timing, the step timer (`domain.plan_timer`), what a due step does (`step_due`), message
outcomes and TriggerNextStep. The expected figures are written out from the pages, not
computed with the code under test.

`fire()` plays the part of the scheduler and the handler: it delivers the StepDue the
planned timer carries (at its due time) and plans the timer again afterwards, as
`domain.Result.add` does after every outcome.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.invoice import (
    INVOICE_EVENTS,
    InvoiceEventName,
    InvoiceStatus,
    MessageOutcome,
    SchemeStep,
    StepAction,
)
from contracts.payments import TransactionStatus
from services.invoice import domain, dunning
from tests.support import invoice_domain

S = InvoiceStatus
A = StepAction
O = MessageOutcome  # noqa: E741
E = InvoiceEventName
T = TransactionStatus
D = Decimal

MIGRATION = (
    Path(__file__).resolve().parents[2] / "services" / "invoice" / "migrations" / "001_invoices.sql"
)


def default_cm1_json() -> list[dict[str, Any]]:
    """DefaultCM1's steps exactly as the migration seeds them."""
    sql = MIGRATION.read_text()
    match = re.search(r"'DefaultCM1',\s*1,\s*'[^']*',\s*'(\[.*?\])'\s*\)", sql, re.S)
    assert match, "DefaultCM1 not found in the migration"
    return json.loads(match.group(1))


CM1 = [domain.SchemeStepState.model_validate(s) for s in default_cm1_json()]

INVOICE_DATE = date(2026, 11, 1)
DUE_DATE = date(2026, 11, 15)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


#: DefaultCM1 on an invoice of 2026-11-01, due 2026-11-15 (docs/dunning.md "Schemes").
CM1_DUE = {
    1: at(2026, 11, 1),  # invoice date + 0
    2: at(2026, 11, 22),  # due + 7
    3: at(2026, 12, 6),  # due + 21
    4: at(2026, 12, 23),  # due + 38
    5: at(2027, 1, 6),  # due + 52
}


def make_invoice(status: InvoiceStatus = S.ACTIVE, **overrides: Any) -> domain.Invoice:
    fields: dict[str, Any] = {
        "invoice_date": INVOICE_DATE,
        "due_date": DUE_DATE,
        "amount_debit": D("121.00"),
        "debtor_code": "D-1",
        "scheme_steps": CM1,
        "created_at": at(2026, 11, 1, 9),
    }
    return invoice_domain.make_invoice(status, **{**fields, **overrides})


def step(index: int, action: StepAction, days: int = 0, **fields: Any) -> domain.SchemeStepState:
    return domain.SchemeStepState(index=index, action=action, days=days, **fields)


def codes(outcome: domain.Outcome) -> list[int | None]:
    return [
        None if INVOICE_EVENTS[e.name][0] is None else int(INVOICE_EVENTS[e.name][0])  # type: ignore[arg-type]
        for e in outcome.events
    ]


def errors_of(outcome: domain.Outcome) -> list[tuple[str, str]]:
    return [(e.field, e.code) for e in outcome.errors]


def planned(invoice: domain.Invoice, now: datetime) -> domain.Invoice:
    """The invoice after the handler planned its timer (mutated in place, returned)."""
    domain.plan_timer(invoice, now)
    return invoice


def fire(
    invoice: domain.Invoice, now: datetime | None = None
) -> tuple[domain.Outcome, domain.Invoice]:
    """Deliver the StepDue of the invoice's timer (at its due time unless `now` is given:
    a timer planned for a step already due fires at once), then plan again."""
    assert invoice.timer_step is not None and invoice.timer_due_at is not None, "no timer set"
    now = now or invoice.timer_due_at
    outcome = dunning.step_due(
        invoice,
        step_index=invoice.timer_step,
        scheme_version=invoice.scheme_version,
        schedule_version=invoice.schedule_version,
        now=now,
    )
    after = outcome.invoice if outcome.invoice is not None else invoice
    domain.plan_timer(after, now)
    return outcome, after


def slow_pending(
    invoice: domain.Invoice, amount: str, status: TransactionStatus = T.PENDING
) -> domain.Invoice:
    outcome = domain.apply_transaction(
        invoice,
        transaction_key="SEPA-1",
        service="sepadirectdebit",
        amount=D(amount),
        status=status,
        is_slow=True,
    )
    assert outcome.invoice is not None
    return outcome.invoice


# =========================================================================================
# 1. The statutory scale
# =========================================================================================


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        ("0", "40.00"),  # the minimum
        ("100", "40.00"),
        ("266.66", "40.00"),  # 39.999 → the minimum
        ("267", "40.05"),  # just above the minimum: 15%
        ("1000", "150.00"),
        ("2500", "375.00"),  # end of the 15% band
        ("3000", "425.00"),  # 375 + 10% of 500
        ("5000", "625.00"),  # 375 + 250
        ("7500", "750.00"),  # 625 + 5% of 2,500
        ("10000", "875.00"),  # 625 + 250
        ("20000", "975.00"),  # 875 + 1% of 10,000
        ("200000", "2775.00"),  # 875 + 1,900
        ("300000", "3275.00"),  # 2,775 + 0.5% of 100,000
        ("1000000", "6775.00"),  # 2,775 + 4,000: exactly the maximum
        ("1000001", "6775.00"),  # capped
        ("5000000", "6775.00"),
    ],
)
def test_statutory_scale_worked_examples(principal: str, expected: str) -> None:
    amount = dunning.statutory_costs(D(principal), "EUR")
    assert amount == D(expected)
    assert str(amount) == expected  # written with cents


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        ("300.30", "45.04"),  # 45.045 → even (half-up would give 45.05)
        ("300.10", "45.02"),  # 45.015 → even
        ("2500.05", "375.00"),  # 375.005 → even
        ("2500.15", "375.02"),  # 375.015 → even
        ("10000.50", "875.00"),  # 875.005 → even
        ("10001.50", "875.02"),  # 875.015 → even
        ("300.01", "45.00"),  # 45.0015
    ],
)
def test_statutory_scale_rounds_half_even_to_cents(principal: str, expected: str) -> None:
    assert dunning.statutory_costs(D(principal), "EUR") == D(expected)


def test_statutory_scale_rounds_to_the_currency_minor_unit() -> None:
    # 270 * 15% = 40.5: half-even to whole yen → 40
    assert dunning.statutory_costs(D(270), "JPY") == D(40)
    assert dunning.statutory_costs(D(290), "JPY") == D(44)  # 43.5 → 44


def test_statutory_scale_of_a_negative_principal_is_the_minimum() -> None:
    assert dunning.statutory_costs(D("-50"), "EUR") == D("40.00")


def reference_scale(principal: Decimal) -> Decimal:
    """docs/dunning.md's scale written as a sum of clamped bands."""

    def band(lower: int, upper: int | None) -> Decimal:
        above = max(D(0), principal - lower)
        return above if upper is None else min(above, D(upper - lower))

    total = (
        band(0, 2500) * D("0.15")
        + band(2500, 5000) * D("0.10")
        + band(5000, 10000) * D("0.05")
        + band(10000, 200000) * D("0.01")
        + band(200000, None) * D("0.005")
    )
    total = min(max(total, D(40)), D(6775))
    return total.quantize(D("0.01"), rounding=ROUND_HALF_EVEN)


principals = st.decimals(
    min_value=0, max_value=3_000_000, places=2, allow_nan=False, allow_infinity=False
)


@given(principals, principals)
def test_statutory_scale_is_monotonic_and_bounded(a: Decimal, b: Decimal) -> None:
    low, high = sorted((a, b))
    cost_low = dunning.statutory_costs(low, "EUR")
    cost_high = dunning.statutory_costs(high, "EUR")
    assert cost_low <= cost_high
    for cost in (cost_low, cost_high):
        assert D(40) <= cost <= D(6775)
        assert cost == cost.quantize(D("0.01"))


@given(principals)
def test_statutory_scale_matches_the_bands(principal: Decimal) -> None:
    assert dunning.statutory_costs(principal, "EUR") == reference_scale(principal)


# =========================================================================================
# 2. Scheme validation (UpsertScheme)
# =========================================================================================


def scheme_step(index: int, action: StepAction, days: int = 0, **fields: Any) -> SchemeStep:
    return SchemeStep(index=index, action=action, days=days, **fields)


def found(steps: list[SchemeStep], key: str = "MyScheme") -> list[tuple[str, str]]:
    return [(e.field, e.code) for e in dunning.scheme_errors(key, steps)]


CM1_AS_COMMAND = [SchemeStep.model_validate(s) for s in default_cm1_json()]


def test_default_cm1_steps_are_a_valid_scheme() -> None:
    assert found(CM1_AS_COMMAND) == []


def test_an_empty_scheme_is_valid() -> None:
    assert found([]) == []


@pytest.mark.parametrize("key", ["DefaultCM1", "DefaultNone"])
def test_built_in_schemes_cannot_be_changed(key: str) -> None:
    assert found(CM1_AS_COMMAND, key) == [("payload.scheme_key", "built_in_scheme")]
    assert found([], key) == [("payload.scheme_key", "built_in_scheme")]


def reminder(index: int, days: int, **fields: Any) -> SchemeStep:
    return scheme_step(index, A.REMINDER, days, channels=["email"], **fields)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            [reminder(1, 7), reminder(3, 14)],
            [("payload.steps.1.index", "step_order")],
            id="step_order_gap",
        ),
        pytest.param(
            [reminder(2, 7)], [("payload.steps.0.index", "step_order")], id="step_order_start"
        ),
        pytest.param(
            [reminder(1, 14), reminder(2, 7)],
            [("payload.steps.1.days", "offset_order")],
            id="offset_order",
        ),
        pytest.param(
            [scheme_step(1, A.PAYMENT_INVITATION, -1, channels=["email"])],
            [("payload.steps.0.days", "negative")],
            id="negative_invitation_days",
        ),
        pytest.param(
            [scheme_step(1, A.REMINDER, 7)],
            [("payload.steps.0.channels", "channels_required")],
            id="channels_required_reminder",
        ),
        pytest.param(
            [scheme_step(1, A.PAYMENT_INVITATION, 0)],
            [("payload.steps.0.channels", "channels_required")],
            id="channels_required_invitation",
        ),
        pytest.param(
            [scheme_step(1, A.REMINDER, 7, channels=["email", "sms", "email"])],
            [("payload.steps.0.channels", "duplicate_channel")],
            id="duplicate_channel",
        ),
        pytest.param(
            [scheme_step(1, A.CUSTOM_EVENT, 7, channels=["email"], message="hi")],
            [("payload.steps.0.channels", "not_a_message")],
            id="not_a_message",
        ),
        pytest.param(
            [scheme_step(1, A.PAYMENT_INVITATION, 0, channels=["email"], states_costs=True)],
            [("payload.steps.0.states_costs", "not_a_reminder")],
            id="not_a_reminder_invitation",
        ),
        pytest.param(
            [scheme_step(1, A.ADMIN_COST_INCREASE, 7, admin_cost=D("10"), states_costs=True)],
            [("payload.steps.0.states_costs", "not_a_reminder")],
            id="not_a_reminder_cost_step",
        ),
        pytest.param(
            [scheme_step(1, A.ADMIN_COST_INCREASE, 7)],
            [("payload.steps.0.admin_cost", "required")],
            id="admin_cost_required",
        ),
        pytest.param(
            [scheme_step(1, A.ADMIN_COST_INCREASE, 7, admin_cost=D("0"))],
            [("payload.steps.0.admin_cost", "not_positive")],
            id="admin_cost_zero",
        ),
        pytest.param(
            [scheme_step(1, A.ADMIN_COST_INCREASE, 7, admin_cost=D("-5.00"))],
            [("payload.steps.0.admin_cost", "not_positive")],
            id="admin_cost_negative",
        ),
        pytest.param(
            [reminder(1, 7, admin_cost=D("5.00"))],
            [("payload.steps.0.admin_cost", "not_a_cost_step")],
            id="not_a_cost_step",
        ),
        pytest.param(
            [scheme_step(1, A.THRESHOLD, 7)],
            [("payload.steps.0.threshold_amount", "required")],
            id="threshold_amount_required",
        ),
        pytest.param(
            [scheme_step(1, A.CUSTOM_EVENT, 7)],
            [("payload.steps.0.message", "required")],
            id="message_required",
        ),
        pytest.param(
            [scheme_step(1, A.CUSTOM_EVENT, 7, message="")],
            [("payload.steps.0.message", "required")],
            id="message_empty",
        ),
        pytest.param(
            [
                reminder(1, 21, states_costs=True),
                scheme_step(2, A.ADMIN_COST_INCREASE, 37, admin_cost="statutory"),
            ],
            [("payload.steps.1.admin_cost", "statutory_without_14_day_letter")],
            id="statutory_16_days_after_letter",
        ),
        pytest.param(
            [
                reminder(1, 7),
                scheme_step(2, A.ADMIN_COST_INCREASE, 60, admin_cost="statutory"),
            ],
            [("payload.steps.1.admin_cost", "statutory_without_14_day_letter")],
            id="statutory_without_states_costs_reminder",
        ),
        pytest.param(
            [scheme_step(1, A.ADMIN_COST_INCREASE, 60, admin_cost="statutory")],
            [("payload.steps.0.admin_cost", "statutory_without_14_day_letter")],
            id="statutory_alone",
        ),
    ],
)
def test_scheme_errors(steps: list[SchemeStep], expected: list[tuple[str, str]]) -> None:
    assert found(steps) == expected


def test_statutory_exactly_17_days_after_the_letter_is_valid() -> None:
    steps = [
        reminder(1, 21, states_costs=True),
        scheme_step(2, A.ADMIN_COST_INCREASE, 38, admin_cost="statutory"),
    ]
    assert found(steps) == []


def test_statutory_counts_from_an_earlier_letter_not_a_later_one() -> None:
    # The letter must come before the statutory step in the scheme.
    steps = [
        reminder(1, 0),
        scheme_step(2, A.ADMIN_COST_INCREASE, 20, admin_cost="statutory"),
        reminder(3, 40, states_costs=True),
    ]
    assert found(steps) == [("payload.steps.1.admin_cost", "statutory_without_14_day_letter")]


def test_a_fixed_admin_cost_needs_no_letter() -> None:
    assert found([scheme_step(1, A.ADMIN_COST_INCREASE, 5, admin_cost=D("12.50"))]) == []


def test_an_invitation_counts_from_the_invoice_date_so_it_is_not_ordered_by_days() -> None:
    steps = [
        scheme_step(1, A.PAYMENT_INVITATION, 30, channels=["email"]),
        reminder(2, 0),
    ]
    assert found(steps) == []


def test_reminders_may_have_negative_offsets() -> None:
    assert found([reminder(1, -3), reminder(2, -3)]) == []


def test_every_error_is_reported_with_its_own_path() -> None:
    steps = [
        scheme_step(1, A.REMINDER, 10),
        scheme_step(3, A.THRESHOLD, 5),
    ]
    assert found(steps) == [
        ("payload.steps.0.channels", "channels_required"),
        ("payload.steps.1.index", "step_order"),
        ("payload.steps.1.days", "offset_order"),
        ("payload.steps.1.threshold_amount", "required"),
    ]


# =========================================================================================
# 3. Timing on DefaultCM1
# =========================================================================================


def test_default_cm1_is_what_the_domain_page_says() -> None:
    assert [(s.index, s.action, s.days) for s in CM1] == [
        (1, A.PAYMENT_INVITATION, 0),
        (2, A.REMINDER, 7),
        (3, A.REMINDER, 21),
        (4, A.ADMIN_COST_INCREASE, 38),
        (5, A.TRANSFER_TO_COLLECTION_AGENCY, 52),
    ]
    assert CM1[0].channels == ["email"]
    assert CM1[1].channels == CM1[2].channels == ["email", "letter"]
    assert CM1[2].states_costs and not CM1[1].states_costs
    assert CM1[3].admin_cost == "statutory"


@pytest.mark.parametrize("index", [1, 2, 3, 4, 5])
def test_default_cm1_step_due_times(index: int) -> None:
    invoice = make_invoice(previous_step_index=index - 1 or None)
    assert invoice.step_due_at(CM1[index - 1]) == CM1_DUE[index]
    assert invoice.desired_timer() == (index, CM1_DUE[index])
    assert invoice.next_step_due_at == CM1_DUE[index]


@pytest.mark.parametrize("index", [1, 2, 3, 4, 5])
def test_held_time_shifts_every_step(index: int) -> None:
    invoice = make_invoice(previous_step_index=index - 1 or None, held_seconds=10 * 86400)
    assert invoice.desired_timer() == (index, CM1_DUE[index] + timedelta(days=10))


def test_pausing_ten_days_shifts_the_next_steps_by_ten_days() -> None:
    invoice = planned(make_invoice(previous_step_index=1), at(2026, 11, 2))
    assert (invoice.timer_step, invoice.timer_due_at) == (2, CM1_DUE[2])
    paused = domain.change_status(invoice, "PauseInvoice", at(2026, 11, 20)).invoice
    assert paused is not None
    plan = domain.plan_timer(paused, at(2026, 11, 20))
    assert plan is not None and plan.step_index is None  # cancelled while paused
    unpaused = domain.change_status(paused, "UnpauseInvoice", at(2026, 11, 30)).invoice
    assert unpaused is not None
    plan = domain.plan_timer(unpaused, at(2026, 11, 30))
    assert plan is not None
    assert (plan.step_index, plan.due_at) == (2, at(2026, 12, 2))
    assert unpaused.held_seconds == 10 * 86400
    later = make_invoice(previous_step_index=2, held_seconds=unpaused.held_seconds)
    assert later.desired_timer() == (3, at(2026, 12, 16))


@pytest.mark.parametrize(
    ("max_step_index", "previous", "expected"),
    [
        (4, 3, (4, CM1_DUE[4])),
        (4, 4, None),  # the transfer is left out
        (3, 2, (3, CM1_DUE[3])),
        (3, 3, None),
        (0, None, None),  # no steps at all
    ],
)
def test_max_step_index_cuts_the_scheme(
    max_step_index: int, previous: int | None, expected: tuple[int, datetime] | None
) -> None:
    invoice = make_invoice(max_step_index=max_step_index, previous_step_index=previous)
    assert invoice.desired_timer() == expected


def test_a_finished_scheme_has_no_timer() -> None:
    assert make_invoice(previous_step_index=5).desired_timer() is None
    assert make_invoice(scheme_key="DefaultNone", scheme_steps=[]).desired_timer() is None


def test_a_paid_invoice_has_no_timer() -> None:
    assert make_invoice(amount_paid=D("121.00")).desired_timer() is None
    assert make_invoice(amount_paid=D("200.00")).desired_timer() is None  # overpaid
    assert make_invoice(amount_paid=D("120.99")).desired_timer() == (1, CM1_DUE[1])


@pytest.mark.parametrize("status", [s for s in S if s not in (S.ACTIVE, S.NOT_SET)])
def test_a_non_active_invoice_has_no_timer(status: InvoiceStatus) -> None:
    assert make_invoice(status).desired_timer() is None


@pytest.mark.parametrize(
    "description", [None, "", "a test", " schema_test", "buckaroo schema_test", "schematest"]
)
def test_a_test_invoice_without_the_prefix_runs_no_steps(description: str | None) -> None:
    invoice = make_invoice(is_test=True, description=description)
    assert not invoice.runs_steps
    assert invoice.desired_timer() is None


@pytest.mark.parametrize(
    "description",
    [
        "schema_test",
        "schema_test run 1",
        "buckaroo_schema_test",
        # the prefixes of Buckaroo's documents, in any case (docs/invoices.md)
        "buckarooschema_test",
        "buckaroo_schema_test_reminders",
        "BuckarooSchema_Test 2",
        "BUCKAROO_SCHEMA_TEST",
        "Schema_test x",
    ],
)
def test_a_schema_test_invoice_runs_its_steps(description: str) -> None:
    invoice = make_invoice(is_test=True, description=description)
    assert invoice.runs_steps
    assert invoice.desired_timer() == (1, CM1_DUE[1])


def test_a_covering_slow_pending_payment_holds_the_scheme() -> None:
    covering = slow_pending(make_invoice(previous_step_index=1), "121.00")
    assert covering.slow_payment_covers and covering.held
    assert covering.desired_timer() is None
    partial = slow_pending(make_invoice(previous_step_index=1), "100.00")
    assert not partial.slow_payment_covers
    assert partial.desired_timer() == (2, CM1_DUE[2])


# =========================================================================================
# 4. plan_timer
# =========================================================================================


def test_the_first_plan_schedules_step_1_and_bumps_the_schedule_version() -> None:
    invoice = make_invoice(created_at=at(2026, 10, 30, 9))
    plan = domain.plan_timer(invoice, at(2026, 10, 30, 9))
    assert plan == domain.TimerPlan(1, CM1_DUE[1], 1)
    assert (invoice.timer_step, invoice.timer_due_at, invoice.schedule_version) == (
        1,
        CM1_DUE[1],
        1,
    )


def test_a_step_already_due_at_registration_is_timed_for_now() -> None:
    # Registered at 09:00 on the invoice date: the invitation (due 00:00) runs at once.
    invoice = make_invoice()
    plan = domain.plan_timer(invoice, at(2026, 11, 1, 9))
    assert plan == domain.TimerPlan(1, at(2026, 11, 1, 9), 1)
    # the invoice remembers when the step was due, so a replan changes nothing
    assert (invoice.timer_step, invoice.timer_due_at) == (1, CM1_DUE[1])
    assert domain.plan_timer(invoice, at(2026, 11, 1, 10)) is None


def test_an_invoice_registered_late_plays_out_its_overdue_steps_now() -> None:
    registered = at(2026, 11, 30, 10)
    invoice = planned(make_invoice(created_at=registered), registered)
    outcome = dunning.step_due(
        invoice, step_index=1, scheme_version=1, schedule_version=1, now=registered
    )
    assert outcome.requests == [domain.SendStepMessage(CM1[0])]
    assert outcome.invoice is not None
    assert outcome.invoice.previous_step_date_time == registered
    plan = domain.plan_timer(outcome.invoice, registered)
    assert plan == domain.TimerPlan(2, registered, 2)  # due 2026-11-22: at once
    assert outcome.invoice.timer_due_at == CM1_DUE[2]


def test_an_unchanged_state_plans_nothing() -> None:
    invoice = planned(make_invoice(), at(2026, 11, 1, 9))
    assert domain.plan_timer(invoice, at(2026, 11, 1, 10)) is None
    assert invoice.schedule_version == 1


def test_becoming_paid_cancels_the_timer() -> None:
    invoice = planned(make_invoice(previous_step_index=1), at(2026, 11, 2))
    assert invoice.schedule_version == 1
    paid = domain.apply_transaction(
        invoice,
        transaction_key="P1",
        service="ideal",
        amount=D("121.00"),
        status=T.SUCCESS,
        is_slow=False,
    ).invoice
    assert paid is not None
    plan = domain.plan_timer(paid, at(2026, 11, 5))
    assert plan == domain.TimerPlan(None, None, 2)
    assert (paid.timer_step, paid.timer_due_at) == (None, None)
    assert domain.plan_timer(paid, at(2026, 11, 6)) is None  # nothing more to cancel


def test_a_covering_slow_payment_holds_and_its_failure_reschedules_shifted() -> None:
    invoice = planned(make_invoice(previous_step_index=1), at(2026, 11, 2))
    held = slow_pending(invoice, "121.00")
    plan = domain.plan_timer(held, at(2026, 11, 10))
    assert plan == domain.TimerPlan(None, None, 2)
    assert held.held_since == at(2026, 11, 10)
    released = slow_pending(held, "121.00", T.FAILED)
    assert not released.slow_payment_covers
    plan = domain.plan_timer(released, at(2026, 11, 20))
    assert plan == domain.TimerPlan(2, CM1_DUE[2] + timedelta(days=10), 3)
    assert released.held_since is None
    assert released.held_seconds == 10 * 86400


def test_a_settled_slow_payment_cancels_for_good() -> None:
    invoice = planned(make_invoice(previous_step_index=1), at(2026, 11, 2))
    held = planned(slow_pending(invoice, "121.00"), at(2026, 11, 10))
    settled = slow_pending(held, "121.00", T.SUCCESS)
    assert settled.is_paid
    assert domain.plan_timer(settled, at(2026, 11, 13)) is None  # already cancelled
    assert settled.held_since is None
    assert settled.held_seconds == 3 * 86400


# =========================================================================================
# 5. step_due
# =========================================================================================


def scheduled(**overrides: Any) -> domain.Invoice:
    return planned(make_invoice(**overrides), at(2026, 11, 1, 9))


@pytest.mark.parametrize(
    "stale",
    [
        {"scheme_version": 2},
        {"schedule_version": 0},
        {"schedule_version": 2},
        {"step_index": 2},
    ],
)
def test_a_stale_step_due_is_ignored(stale: dict[str, int]) -> None:
    invoice = scheduled()
    arguments = {"step_index": 1, "scheme_version": 1, "schedule_version": 1, **stale}
    outcome = dunning.step_due(invoice, now=CM1_DUE[1], **arguments)
    assert outcome == domain.Outcome()
    assert outcome.invoice is None


def test_a_repeated_step_due_is_ignored() -> None:
    invoice = scheduled()
    first, after = fire(invoice)
    assert first.requests
    again = dunning.step_due(
        after, step_index=1, scheme_version=1, schedule_version=1, now=CM1_DUE[1]
    )
    assert again == domain.Outcome()


def test_the_payment_invitation_asks_for_a_message() -> None:
    invoice = scheduled()
    outcome = dunning.step_due(
        invoice, step_index=1, scheme_version=1, schedule_version=1, now=CM1_DUE[1]
    )
    assert outcome.requests == [domain.SendStepMessage(CM1[0])]
    assert outcome.events == []  # the event comes with the notifier's outcome
    assert outcome.errors == []
    updated = outcome.invoice
    assert updated is not None
    assert updated.previous_step_index == 1
    assert updated.previous_step_date_time == CM1_DUE[1]
    assert updated.timer_step is None  # the timer is spent
    assert invoice.previous_step_index is None  # the input is not changed


def test_a_reminder_asks_for_a_message_and_the_next_step_is_planned() -> None:
    invoice = planned(make_invoice(previous_step_index=1), at(2026, 11, 2))
    outcome, after = fire(invoice)
    assert outcome.requests == [domain.SendStepMessage(CM1[1])]
    assert outcome.events == []
    assert after.previous_step_index == 2
    assert after.previous_step_date_time == CM1_DUE[2]
    assert (after.timer_step, after.timer_due_at) == (3, CM1_DUE[3])
    assert after.schedule_version == 2


def test_the_whole_default_scheme_for_a_business_debtor() -> None:
    invoice = scheduled(debtor_is_person=False, amount_debit=D("3000.00"))
    seen: list[tuple[int, list[int | None], int]] = []
    while invoice.timer_step is not None:
        index = invoice.timer_step
        outcome, invoice = fire(invoice)
        seen.append((index, codes(outcome), len(outcome.requests)))
    assert seen == [(1, [], 1), (2, [], 1), (3, [], 1), (4, [7], 0), (5, [8], 0)]
    assert invoice.amount_admin_costs == D("425.00")
    assert invoice.status == S.PENDING_TRANSFER_TO_COLLECTION_AGENCY


@pytest.mark.parametrize(
    ("status", "overrides"),
    [
        (S.ACTIVE, {"amount_paid": D("121.00")}),
        (S.ACTIVE, {"is_test": True}),
    ],
)
def test_a_step_due_that_may_not_run_only_spends_the_timer(
    status: InvoiceStatus, overrides: dict[str, Any]
) -> None:
    # A timer set before the invoice got paid / before it was marked as test data
    invoice = scheduled()
    for name, value in overrides.items():
        setattr(invoice, name, value)
    outcome = dunning.step_due(
        invoice, step_index=1, scheme_version=1, schedule_version=1, now=CM1_DUE[1]
    )
    assert outcome.events == outcome.requests == []
    assert outcome.invoice is not None
    assert outcome.invoice.previous_step_index is None
    assert outcome.invoice.timer_step is None


def fixed_cost_invoice(**overrides: Any) -> domain.Invoice:
    steps = [step(1, A.ADMIN_COST_INCREASE, 10, admin_cost="15.00")]
    return scheduled(scheme_key="Fees", scheme_steps=steps, **overrides)


def test_a_fixed_admin_cost_increase() -> None:
    outcome, after = fire(fixed_cost_invoice())
    assert codes(outcome) == [7]
    assert outcome.events == [
        domain.EventOut(E.INCREASED_ADMIN_FEE, {"StepIndex": "1", "Amount": "15.00"})
    ]
    assert after.amount_admin_costs == D("15.00")
    assert after.open_amount_incl_admin_costs == D("136.00")
    assert after.previous_step_index == 1
    assert after.previous_step_date_time == at(2026, 11, 25)


def test_a_fixed_admin_cost_needs_no_letter_for_a_person() -> None:
    outcome, _ = fire(fixed_cost_invoice(debtor_is_person=True))
    assert codes(outcome) == [7]


def at_statutory_step(**overrides: Any) -> domain.Invoice:
    """DefaultCM1 with steps 1-3 done, planned on the day after step 3."""
    return planned(make_invoice(previous_step_index=3, **overrides), at(2026, 12, 7))


def test_statutory_costs_for_a_business_are_charged_at_once() -> None:
    invoice = at_statutory_step(debtor_is_person=False, amount_debit=D("3000.00"))
    assert invoice.timer_due_at == CM1_DUE[4]
    outcome, after = fire(invoice)
    assert outcome.events == [
        domain.EventOut(
            E.INCREASED_ADMIN_FEE,
            {"StepIndex": "4", "Amount": "425.00", "Reason": "statutory_costs"},
        )
    ]
    assert after.amount_admin_costs == D("425.00")
    assert after.previous_step_index == 4
    assert (after.timer_step, after.timer_due_at) == (5, CM1_DUE[5])


def test_statutory_costs_are_computed_on_the_open_principal() -> None:
    invoice = at_statutory_step(
        debtor_is_person=False, amount_debit=D("3000.00"), amount_paid=D("500.00")
    )
    outcome, after = fire(invoice)
    assert outcome.events[0].parameters["Amount"] == "375.00"
    assert after.amount_admin_costs == D("375.00")


def test_statutory_costs_for_a_person_without_a_letter_are_skipped() -> None:
    # The 14-day letter's outcome came back: no method was left, nothing went out.
    invoice = at_statutory_step(debtor_is_person=True, outcomes_recorded=[1, 2, 3])
    outcome, after = fire(invoice)
    assert outcome.events == []
    assert outcome.requests == []
    assert after.amount_admin_costs == D(0)
    assert after.previous_step_index == 4
    assert after.waiting_step is None
    assert (after.timer_step, after.timer_due_at) == (5, CM1_DUE[5])


@pytest.mark.parametrize(
    ("currency", "amount_debit", "zero"),
    [("JPY", "3000", "0"), ("USD", "3000.00", "0.00"), ("KWD", "3000.000", "0.000")],
)
@pytest.mark.parametrize("person", [False, True])
def test_statutory_costs_are_skipped_on_an_invoice_not_in_euros(
    currency: str, amount_debit: str, zero: str, person: bool
) -> None:
    """The Dutch scale is in euros (a JPY invoice got a 40-yen minimum): on another
    currency the step charges nothing and says why (docs/invoices.md)."""
    invoice = at_statutory_step(
        currency=currency,
        amount_debit=D(amount_debit),
        debtor_is_person=person,
        cost_letter_sent_at=CM1_DUE[3],
        cost_letter_channel="email",
    )
    outcome, after = fire(invoice)
    assert outcome.events == [
        domain.EventOut(
            E.INCREASED_ADMIN_FEE,
            {"StepIndex": "4", "Amount": zero, "Reason": "statutory_costs_only_in_eur"},
        )
    ]
    assert after.amount_admin_costs == D(0)
    assert after.previous_step_index == 4
    assert after.waiting_step is None
    assert (after.timer_step, after.timer_due_at) == (5, CM1_DUE[5])


def test_a_forced_statutory_step_on_a_yen_invoice_charges_nothing() -> None:
    invoice = make_invoice(
        is_test=True,
        previous_step_index=3,
        debtor_is_person=False,
        currency="JPY",
        amount_debit=D("290"),
    )
    outcome = dunning.trigger_next_step(invoice, at(2026, 12, 7))
    assert [e.parameters.get("Reason") for e in outcome.events] == ["statutory_costs_only_in_eur"]
    assert outcome.invoice is not None
    assert outcome.invoice.amount_admin_costs == D(0)


@pytest.mark.parametrize(
    ("channel", "term_ends"),
    [("email", at(2026, 12, 25)), ("sms", at(2026, 12, 25)), ("letter", at(2026, 12, 27))],
)
def test_statutory_costs_wait_for_the_14_day_term(channel: str, term_ends: datetime) -> None:
    # The 14-day letter went out late (day D = 2026-12-10), so step 4 (2026-12-23) waits
    # until D+15 (e-mail/SMS) or D+17 (letter), 00:00 UTC.
    invoice = at_statutory_step(
        debtor_is_person=True,
        cost_letter_sent_at=at(2026, 12, 10, 14, 30),
        cost_letter_channel=channel,
    )
    assert dunning.letter_term_ends(invoice) == term_ends
    version_at_step_4 = invoice.schedule_version
    waiting, after = fire(invoice)
    assert waiting.events == waiting.requests == []
    assert after.waiting_step == 4
    assert after.waiting_until == term_ends
    assert after.previous_step_index == 3
    assert after.amount_admin_costs == D(0)
    # the handler plans the timer again: the step is now due when the term ends
    assert after.desired_timer() == (4, term_ends)
    assert after.next_step_due_at == term_ends
    assert (after.timer_step, after.timer_due_at) == (4, term_ends)
    assert after.schedule_version == version_at_step_4 + 1
    # the first timer, delivered again, is stale now
    assert (
        dunning.step_due(
            after,
            step_index=4,
            scheme_version=1,
            schedule_version=version_at_step_4,
            now=CM1_DUE[4],
        )
        == domain.Outcome()
    )
    charged, done = fire(after)
    assert charged.events == [
        domain.EventOut(
            E.INCREASED_ADMIN_FEE,
            {"StepIndex": "4", "Amount": "40.00", "Reason": "statutory_costs"},
        )
    ]
    assert done.amount_admin_costs == D("40.00")
    assert done.previous_step_index == 4
    assert done.previous_step_date_time == term_ends
    assert (done.waiting_step, done.waiting_until) == (None, None)
    assert (done.timer_step, done.timer_due_at) == (5, CM1_DUE[5])


def test_statutory_costs_after_a_timely_letter_do_not_wait() -> None:
    # The letter of step 3 went out by e-mail on its day (2026-12-06): the term ends
    # 2026-12-21, before step 4 is due.
    invoice = at_statutory_step(
        debtor_is_person=True, cost_letter_sent_at=CM1_DUE[3], cost_letter_channel="email"
    )
    outcome, after = fire(invoice)
    assert codes(outcome) == [7]
    assert after.amount_admin_costs == D("40.00")


def test_statutory_costs_charge_on_the_day_the_term_ends_not_before() -> None:
    # letter sent 2026-12-06 by letter → term ends 2026-12-23, the day step 4 is due
    invoice = at_statutory_step(cost_letter_sent_at=CM1_DUE[3], cost_letter_channel="letter")
    assert dunning.letter_term_ends(invoice) == CM1_DUE[4]
    outcome, _ = fire(invoice)
    assert codes(outcome) == [7]


@pytest.mark.parametrize(
    ("sent_at", "channel", "expected"),
    [
        (at(2026, 12, 6, 23, 59), "email", at(2026, 12, 21)),
        (at(2026, 12, 6, 0, 0), "sms", at(2026, 12, 21)),
        (at(2026, 12, 6, 12), "letter", at(2026, 12, 23)),
        (at(2026, 12, 6, 12), None, at(2026, 12, 23)),  # unknown channel: as a letter
        # 00:30 in Amsterdam is still the day before in UTC
        (
            datetime.fromisoformat("2026-12-07T00:30:00+01:00"),
            "email",
            at(2026, 12, 21),
        ),
    ],
)
def test_letter_term_ends(sent_at: datetime, channel: str | None, expected: datetime) -> None:
    invoice = make_invoice(cost_letter_sent_at=sent_at, cost_letter_channel=channel)
    assert dunning.letter_term_ends(invoice) == expected


def test_letter_term_ends_without_a_letter() -> None:
    assert dunning.letter_term_ends(make_invoice()) is None


def test_the_transfer_step_marks_the_invoice_for_the_agency() -> None:
    invoice = planned(make_invoice(previous_step_index=4), at(2026, 12, 24))
    before = invoice.schedule_version
    outcome, after = fire(invoice)
    assert codes(outcome) == [8]
    assert outcome.events == [
        domain.EventOut(E.TRANSFERRED_TO_COLLECTION_AGENCY, {"StepIndex": "5", "StatusCode": "70"})
    ]
    assert after.status == S.PENDING_TRANSFER_TO_COLLECTION_AGENCY
    assert after.previous_step_index == 5
    assert after.schedule_version > before
    assert (after.timer_step, after.timer_due_at) == (None, None)
    assert after.desired_timer() is None


def test_the_transfer_step_names_its_preferred_agency() -> None:
    steps = [step(1, A.TRANSFER_TO_COLLECTION_AGENCY, 30, agency_code="AGENCY-1")]
    outcome, _ = fire(scheduled(scheme_key="Agency", scheme_steps=steps))
    assert outcome.events[0].parameters == {
        "StepIndex": "1",
        "StatusCode": "70",
        "AgencyCode": "AGENCY-1",
    }


THRESHOLD_STEPS = [
    step(1, A.THRESHOLD, 7, threshold_amount="50.00"),
    step(2, A.REMINDER, 14, channels=["email"]),
    step(3, A.TRANSFER_TO_COLLECTION_AGENCY, 30),
]


def test_below_the_threshold_the_scheme_ends() -> None:
    invoice = scheduled(
        scheme_key="T", scheme_steps=THRESHOLD_STEPS, amount_debit=D("121.00"), amount_paid=D("80")
    )
    outcome, after = fire(invoice)
    assert outcome.events == outcome.requests == []
    assert after.next_step is None
    assert after.desired_timer() is None
    assert (after.timer_step, after.timer_due_at) == (None, None)


@pytest.mark.parametrize("paid", ["0", "71.00"])  # 121.00 open, and exactly 50.00 open
def test_at_or_above_the_threshold_the_scheme_goes_on(paid: str) -> None:
    invoice = scheduled(scheme_key="T", scheme_steps=THRESHOLD_STEPS, amount_paid=D(paid))
    outcome, after = fire(invoice)
    assert outcome.events == outcome.requests == []
    assert after.previous_step_index == 1
    assert after.next_step == THRESHOLD_STEPS[1]
    assert (after.timer_step, after.timer_due_at) == (2, at(2026, 11, 29))


def test_a_custom_event_step_fills_in_its_tags() -> None:
    steps = [step(1, A.CUSTOM_EVENT, 3, message="Call [DebtorCode] about [InvoiceNumber]: "
                  "[Currency] [OpenAmount] due [DueDate] [Unknown]")]  # fmt: skip
    outcome, after = fire(scheduled(scheme_key="C", scheme_steps=steps))
    assert codes(outcome) == [None]
    assert outcome.events == [
        domain.EventOut(
            E.CUSTOM_EVENT,
            {
                "CustomEventMessage": "Call D-1 about INV-1: EUR 121.00 due 2026-11-15 [Unknown]",
                "StepIndex": "1",
            },
        )
    ]
    assert after.previous_step_index == 1


def test_a_custom_event_fills_the_tags_of_buckaroos_examples_in_any_case() -> None:
    """`[invoicenumber]`, `[debtorcode]` and `[InvoiceAmountOpen]` (Buckaroo's documents)
    are `[InvoiceNumber]`, `[DebtorCode]` and `[OpenAmount]` (contracts/tags.py)."""
    invoice = scheduled()
    message = "[invoicenumber] [debtorcode] [InvoiceAmountOpen] [OPENAMOUNT] [invoiceamountopen]"
    outcome = domain.custom_event(invoice, message)
    assert outcome.events == [
        domain.EventOut(E.CUSTOM_EVENT, {"CustomEventMessage": "INV-1 D-1 121.00 121.00 121.00"})
    ]


STOP_STEPS = [step(1, A.STOP_SUBSCRIPTION, 10), step(2, A.REMINDER, 20, channels=["email"])]


def test_the_stop_subscription_step_asks_to_stop_the_subscription() -> None:
    outcome, after = fire(
        scheduled(scheme_key="S", scheme_steps=STOP_STEPS, subscription_key="SUB-1")
    )
    assert outcome.requests == [domain.StopSubscriptionRequest("SUB-1", 1)]
    assert outcome.events == []
    assert after.previous_step_index == 1
    assert after.timer_step == 2


def test_the_stop_subscription_step_without_a_subscription_does_nothing_but_go_on() -> None:
    outcome, after = fire(scheduled(scheme_key="S", scheme_steps=STOP_STEPS))
    assert outcome.requests == outcome.events == []
    assert after.previous_step_index == 1
    assert after.timer_step == 2


def test_a_step_due_while_a_slow_payment_covers_does_not_run() -> None:
    # The timer was set before the SEPA payment arrived and not yet cancelled.
    invoice = planned(make_invoice(previous_step_index=1), at(2026, 11, 2))
    covering = slow_pending(invoice, "121.00")
    outcome = dunning.step_due(
        covering,
        step_index=2,
        scheme_version=1,
        schedule_version=covering.schedule_version,
        now=CM1_DUE[2],
    )
    assert outcome.requests == outcome.events == []
    assert outcome.invoice is not None
    assert outcome.invoice.previous_step_index == 1


# =========================================================================================
# 6. Message outcomes (RecordMessageOutcome)
# =========================================================================================

SENT_AT = at(2026, 11, 22, 8)


@pytest.mark.parametrize(
    ("index", "outcome", "channel", "code"),
    [
        (1, O.SENT, "email", 10),
        (1, O.SENT_BACKUP, "sms", 11),
        (1, O.SKIPPED_NO_METHODS, None, 6),
        (2, O.SENT, "email", 4),
        (2, O.SENT_BACKUP, "letter", 5),
        (2, O.SKIPPED_NO_METHODS, None, 6),
    ],
)
def test_message_outcomes_become_events(
    index: int, outcome: MessageOutcome, channel: str | None, code: int
) -> None:
    invoice = make_invoice(previous_step_index=index)
    result = dunning.record_message_outcome(
        invoice, step_index=index, outcome=outcome, channel=channel, now=SENT_AT
    )
    assert result.errors == []
    assert codes(result) == [code]
    expected = {"StepIndex": str(index)}
    if channel:
        expected["Channel"] = channel
    assert result.events[0].parameters == expected
    assert result.invoice is not None
    assert result.invoice.outcomes_recorded == [index]
    assert invoice.outcomes_recorded == []  # the input is not changed
    # not the 14-day letter: nothing recorded about it
    assert result.invoice.cost_letter_sent_at is None


def test_a_skipped_outcome_with_a_channel_names_it() -> None:
    result = dunning.record_message_outcome(
        make_invoice(), step_index=2, outcome=O.SKIPPED_NO_METHODS, channel="letter", now=SENT_AT
    )
    assert result.events == [
        domain.EventOut(
            E.SKIPPED_REMINDER_BECAUSE_NO_METHODS_REMAIN, {"StepIndex": "2", "Channel": "letter"}
        )
    ]


def test_a_repeated_message_outcome_is_a_no_op() -> None:
    first = dunning.record_message_outcome(
        make_invoice(), step_index=2, outcome=O.SENT, channel="email", now=SENT_AT
    )
    assert first.invoice is not None
    for outcome in O:
        again = dunning.record_message_outcome(
            first.invoice, step_index=2, outcome=outcome, channel="letter", now=SENT_AT
        )
        assert again == domain.Outcome()


@pytest.mark.parametrize("index", [4, 5, 6, 0])
def test_an_outcome_for_a_step_that_sends_no_message_is_rejected(index: int) -> None:
    result = dunning.record_message_outcome(
        make_invoice(), step_index=index, outcome=O.SENT, channel="email", now=SENT_AT
    )
    assert result.errors
    assert errors_of(result) == [("payload.step_index", "not_a_message_step")]
    assert result.invoice is None and result.events == []


@pytest.mark.parametrize(("outcome", "channel"), [(O.SENT, "email"), (O.SENT_BACKUP, "letter")])
def test_a_sent_14_day_letter_is_recorded(outcome: MessageOutcome, channel: str) -> None:
    result = dunning.record_message_outcome(
        make_invoice(previous_step_index=3),
        step_index=3,
        outcome=outcome,
        channel=channel,
        now=at(2026, 12, 6, 7),
    )
    assert result.invoice is not None
    assert result.invoice.cost_letter_sent_at == at(2026, 12, 6, 7)
    assert result.invoice.cost_letter_channel == channel


def test_a_skipped_14_day_letter_is_not_recorded() -> None:
    result = dunning.record_message_outcome(
        make_invoice(previous_step_index=3),
        step_index=3,
        outcome=O.SKIPPED_NO_METHODS,
        channel=None,
        now=at(2026, 12, 6, 7),
    )
    assert codes(result) == [6]
    assert result.invoice is not None
    assert result.invoice.cost_letter_sent_at is None
    assert result.invoice.cost_letter_channel is None


def test_a_letter_by_post_makes_the_statutory_step_wait_17_days() -> None:
    """RecordMessageOutcome and StepDue together, as the handlers run them."""
    invoice = planned(make_invoice(previous_step_index=2), at(2026, 11, 23))
    _, invoice = fire(invoice)  # step 3: the 14-day letter is asked for
    assert invoice.previous_step_index == 3
    # e-mail bounced; the letter went out on the backup channel, two days late
    recorded = dunning.record_message_outcome(
        invoice, step_index=3, outcome=O.SENT_BACKUP, channel="letter", now=at(2026, 12, 8, 16)
    )
    assert codes(recorded) == [5]
    invoice = planned(recorded.invoice, at(2026, 12, 8, 16))  # type: ignore[arg-type]
    assert invoice.timer_due_at == CM1_DUE[4]
    waiting, invoice = fire(invoice)
    assert waiting.events == []
    assert invoice.timer_due_at == at(2026, 12, 25)  # 2026-12-08 + 17
    charged, invoice = fire(invoice)
    assert codes(charged) == [7]
    assert invoice.amount_admin_costs == D("40.00")
    assert invoice.timer_step == 5


# =========================================================================================
# 7. TriggerNextStep
# =========================================================================================

TRIGGERED_AT = at(2026, 11, 2, 12)


def test_trigger_refuses_a_real_invoice() -> None:
    outcome = dunning.trigger_next_step(make_invoice(), TRIGGERED_AT)
    assert errors_of(outcome) == [("payload.invoice_number", "not_a_test_invoice")]
    assert outcome.invoice is None


@pytest.mark.parametrize("status", [S.PAUSED, S.PAUSED_BY_DISPUTE, S.EMERGENCY, S.REJECTED])
def test_trigger_refuses_an_inactive_test_invoice(status: InvoiceStatus) -> None:
    outcome = dunning.trigger_next_step(make_invoice(status, is_test=True), TRIGGERED_AT)
    assert errors_of(outcome) == [("payload.invoice_number", "invalid_status")]


def test_trigger_refuses_when_no_step_is_left() -> None:
    outcome = dunning.trigger_next_step(
        make_invoice(is_test=True, previous_step_index=5), TRIGGERED_AT
    )
    assert errors_of(outcome) == [("payload.invoice_number", "no_next_step")]
    capped = dunning.trigger_next_step(
        make_invoice(is_test=True, max_step_index=2, previous_step_index=2), TRIGGERED_AT
    )
    assert errors_of(capped) == [("payload.invoice_number", "no_next_step")]


@pytest.mark.parametrize("description", [None, "schema_test"])
def test_trigger_runs_the_next_step_of_a_test_invoice_before_it_is_due(
    description: str | None,
) -> None:
    invoice = make_invoice(is_test=True, description=description, previous_step_index=1)
    outcome = dunning.trigger_next_step(invoice, TRIGGERED_AT)  # step 2 is due 2026-11-22
    assert outcome.errors == []
    assert outcome.requests == [domain.SendStepMessage(CM1[1])]
    assert outcome.invoice is not None
    assert outcome.invoice.previous_step_index == 2
    assert outcome.invoice.previous_step_date_time == TRIGGERED_AT
    assert invoice.previous_step_index == 1  # the input is not changed


def test_triggering_a_schema_test_invoice_replans_its_timer() -> None:
    invoice = planned(
        make_invoice(is_test=True, description="schema_test", previous_step_index=1),
        at(2026, 11, 2),
    )
    assert invoice.timer_step == 2
    outcome = dunning.trigger_next_step(invoice, TRIGGERED_AT)
    assert outcome.invoice is not None
    plan = domain.plan_timer(outcome.invoice, TRIGGERED_AT)
    assert plan == domain.TimerPlan(3, CM1_DUE[3], invoice.schedule_version + 1)


def test_forced_statutory_step_skips_the_wait_for_a_sent_letter() -> None:
    # The letter went out by e-mail today; the term would end 2026-12-22.
    invoice = make_invoice(
        is_test=True,
        previous_step_index=3,
        cost_letter_sent_at=at(2026, 12, 7, 9),
        cost_letter_channel="email",
    )
    outcome = dunning.trigger_next_step(invoice, at(2026, 12, 7, 10))
    assert codes(outcome) == [7]
    assert outcome.invoice is not None
    assert outcome.invoice.amount_admin_costs == D("40.00")
    assert outcome.invoice.previous_step_index == 4
    assert outcome.invoice.waiting_step is None


def test_forced_statutory_step_ends_a_wait_already_begun() -> None:
    invoice = make_invoice(
        is_test=True,
        description="schema_test",
        previous_step_index=3,
        cost_letter_sent_at=at(2026, 12, 10),
        cost_letter_channel="letter",
        waiting_step=4,
        waiting_until=at(2026, 12, 27),
    )
    outcome = dunning.trigger_next_step(invoice, at(2026, 12, 24))
    assert codes(outcome) == [7]
    assert outcome.invoice is not None
    assert (outcome.invoice.waiting_step, outcome.invoice.waiting_until) == (None, None)


def test_forced_statutory_step_without_a_letter_is_still_skipped() -> None:
    invoice = make_invoice(is_test=True, previous_step_index=3, outcomes_recorded=[1, 2, 3])
    outcome = dunning.trigger_next_step(invoice, at(2026, 12, 7))
    assert outcome.errors == outcome.events == []
    assert outcome.invoice is not None
    assert outcome.invoice.amount_admin_costs == D(0)
    assert outcome.invoice.previous_step_index == 4


def test_forced_statutory_step_for_a_business_charges() -> None:
    invoice = make_invoice(is_test=True, previous_step_index=3, debtor_is_person=False)
    outcome = dunning.trigger_next_step(invoice, at(2026, 12, 7))
    assert codes(outcome) == [7]


def test_trigger_refuses_a_paid_test_invoice() -> None:
    # A business debtor: the forced statutory step would charge the €40 minimum on a
    # paid invoice (the scale's minimum applies to a principal of 0).
    invoice = make_invoice(
        is_test=True, previous_step_index=3, amount_paid=D("121.00"), debtor_is_person=False
    )
    outcome = dunning.trigger_next_step(invoice, at(2026, 12, 7))
    assert outcome.events == []
    assert outcome.errors
    assert outcome.invoice is None


def test_a_cost_step_waits_for_the_outcome_of_its_14_day_letter() -> None:
    # Step 3 ran but the notifier has not answered yet (a 60-day jump of the clock).
    invoice = at_statutory_step(debtor_is_person=True, outcomes_recorded=[1, 2])
    outcome, after = fire(invoice)
    assert outcome.events == []
    assert after.previous_step_index == 3
    assert (after.waiting_step, after.waiting_until) == (4, None)
    assert after.desired_timer() is None
    recorded = dunning.record_message_outcome(
        after, step_index=3, outcome=MessageOutcome.SENT, channel="email", now=at(2026, 12, 6)
    )
    assert recorded.invoice is not None
    assert recorded.invoice.desired_timer() == (4, CM1_DUE[4])  # 12-06 + 15 = 12-21 < 12-23
