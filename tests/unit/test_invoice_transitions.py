"""The invoice status machine (docs/invoices.md "Status codes", "Statuses"): every status command
against every status, the collection service's answers, and what CreateInvoice makes of
a request (Active 10, or Rejected 90 with the broken rule named).

The expected matrices are written out here on purpose, independently of
`domain.TRANSITIONS` / `domain.COLLECTION_TRANSITIONS`: a wrong edit of either table
must fail a test.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from contracts.debtor import Debtor, Person
from contracts.invoice import (
    EventCategory,
    InvoiceEventName,
    InvoiceFields,
    InvoiceLine,
    InvoiceStatus,
)
from services.invoice import domain
from tests.support.invoice_domain import make_invoice

S = InvoiceStatus
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
HELD_AN_HOUR_AGO = NOW - timedelta(hours=1)
EARLIER_HELD_SECONDS = 100


# --- the expected matrix -------------------------------------------------------------------

#: Every status but NotSet, in the column order of the matrix below.
STATUSES = (10, 20, 21, 22, 70, 71, 72, 73, 74, 79, 80, 90, 91, 99)

#: The statuses in which an invoice is held (its schedule stops, held time counts).
HELD = {20, 21, 22, 99}

# Cells: an int is the status the command moves to; "=" a no-op (already there);
# "-" refused with invalid_transition; "R" refused with invoice_rejected (status 90);
# "PP" refused with paused_by_payment_plan; "PD" refused with paused_by_dispute.
# fmt: off
EXPECTED: dict[str, tuple[int | str, ...]] = {
    #                    10   20    21    22    70   71   72   73   74   79   80   90   91   99
    "PauseInvoice":     (20,  "=",  "-",  "PP", "-", "-", "-", "-", "-", "-", "-", "R", "-", "-"),
    "UnpauseInvoice":   ("=", 10,   "PD", "PP", "-", "-", "-", "-", "-", "-", "-", "R", "-", 10),
    "RegisterDispute":  (21,  21,   "=",  "-",  "-", "-", "-", "-", "-", "-", "-", "R", "-", "-"),
    "ResolveDispute":   ("=", "-",  10,   "-",  "-", "-", "-", "-", "-", "-", "-", "R", "-", "-"),
    "WriteOffInvoice":  (80,  80,   80,   80,   80,  80,  80,  "-", 80,  80,  "=", "R", "-", 80),
    "CancelInvoice":    (91,  91,   91,   "-",  "-", "-", "-", "-", "-", "-", "-", "R", "=", 91),
    "SetEmergency":     (99,  99,   99,   "-",  99,  "-", "-", "-", "-", "-", "-", "R", "-", "="),
    "StartPaymentPlan": (22,  22,   "-",  "=",  "-", "-", "-", "-", "-", "-", "-", "R", "-", "-"),
    "EndPaymentPlan":   ("=", "-",  "-",  10,   "-", "-", "-", "-", "-", "-", "-", "R", "-", "-"),
    # CancelInstallment on an already Cancelled (91) installment is deliberately NOT a
    # no-op in domain.change_status (it is excluded from the "already there" rule); the
    # handler only cancels non-final installments, so this never happens in practice.
    "CancelInstallment": (91, 91,   91,   "-",  "-", "-", "-", "-", "-", "-", "-", "R", "-", 91),
}
# fmt: on

REFUSAL_CODES = {
    "-": "invalid_transition",
    "R": "invoice_rejected",
    "PP": "paused_by_payment_plan",
    "PD": "paused_by_dispute",
}

CASES = [
    pytest.param(command, S(status), cell, id=f"{command}-{status}")
    for command, row in EXPECTED.items()
    for status, cell in zip(STATUSES, row, strict=True)
]


def test_the_matrix_covers_every_command_and_status() -> None:
    assert set(EXPECTED) == set(domain.TRANSITIONS)
    assert set(STATUSES) == {int(s) for s in S if s != S.NOT_SET}
    assert {int(s) for s in domain.HELD} == HELD


def held_invoice(status: InvoiceStatus) -> domain.Invoice:
    """An invoice in `status`; when that status is held it was held an hour ago."""
    return make_invoice(
        status,
        held_since=HELD_AN_HOUR_AGO if int(status) in HELD else None,
        held_seconds=EARLIER_HELD_SECONDS,
        schedule_version=3,
    )


def assert_moved(before: domain.Invoice, outcome: domain.Outcome, to: int) -> None:
    assert outcome.errors == []
    after = outcome.invoice
    assert after is not None
    assert after.status == S(to)
    assert after.schedule_version == before.schedule_version + 1
    assert len(outcome.events) == 1
    event = outcome.events[0]
    assert event.name == InvoiceEventName.CHANGED_STATUS
    assert event.parameters["StatusCode"] == str(to)
    was_held, now_held = int(before.status) in HELD, to in HELD
    if was_held and not now_held:
        assert after.held_since is None
        assert after.held_seconds == EARLIER_HELD_SECONDS + 3600
    elif now_held and not was_held:
        assert after.held_since == NOW
        assert after.held_seconds == EARLIER_HELD_SECONDS
    else:
        assert after.held_since == before.held_since
        assert after.held_seconds == EARLIER_HELD_SECONDS
    # the input is never mutated
    assert before.status != after.status
    assert before.schedule_version == 3


def errors_of_no_change(outcome: domain.Outcome) -> list[Any]:
    """The errors of an outcome that changes no invoice and tells no event."""
    assert outcome.invoice is None
    assert outcome.events == []
    return outcome.errors


@pytest.mark.parametrize(("command", "status", "cell"), CASES)
def test_change_status(command: str, status: InvoiceStatus, cell: int | str) -> None:
    invoice = held_invoice(status)
    outcome = domain.change_status(invoice, command, NOW)
    if isinstance(cell, int):
        assert_moved(invoice, outcome, cell)
        assert set(outcome.events[0].parameters) == {"StatusCode"}
    elif cell == "=":
        assert errors_of_no_change(outcome) == []
    else:
        errors = errors_of_no_change(outcome)
        assert len(errors) == 1
        error = errors[0]
        assert error.field == "payload.invoice_number"
        assert error.code == REFUSAL_CODES[cell]
        assert error.message


def test_change_status_carries_the_reason() -> None:
    outcome = domain.change_status(make_invoice(), "PauseInvoice", NOW, reason="asked by phone")
    assert outcome.events[0].parameters == {"StatusCode": "20", "Reason": "asked by phone"}


def test_held_time_accumulates_over_pauses() -> None:
    invoice = make_invoice()
    paused = domain.change_status(invoice, "PauseInvoice", NOW).invoice
    assert paused is not None
    disputed = domain.change_status(
        paused, "RegisterDispute", NOW + timedelta(seconds=50)
    ).invoice  # held → held: the clock keeps running from the first pause
    assert disputed is not None
    assert disputed.held_since == NOW
    resolved = domain.change_status(disputed, "ResolveDispute", NOW + timedelta(seconds=90)).invoice
    assert resolved is not None
    assert resolved.held_since is None
    assert resolved.held_seconds == 90
    again = domain.change_status(resolved, "SetEmergency", NOW + timedelta(seconds=200)).invoice
    assert again is not None
    back = domain.change_status(again, "UnpauseInvoice", NOW + timedelta(seconds=210)).invoice
    assert back is not None
    assert back.held_seconds == 100
    assert back.schedule_version == 5
    # the held time shifts the schedule
    step = domain.SchemeStepState(index=1, action="Reminder", days=7)
    assert back.step_due_at(step) == datetime(2024, 1, 22, tzinfo=UTC) + timedelta(seconds=100)


# --- the collection service's answers ------------------------------------------------------

COLLECTION_CODES = (71, 72, 73, 74, 79)

# Cells per target 71, 72, 73, 74, 79: "ok" moves there, "=" is a no-op, "-" is refused.
# fmt: off
EXPECTED_COLLECTION: dict[int, tuple[str, ...]] = {
    #    71    72    73    74    79
    10: ("ok", "-",  "-",  "-",  "-"),  # a chargeback's or a manual case
    20: ("-",  "-",  "-",  "-",  "-"),
    21: ("-",  "-",  "-",  "-",  "-"),
    22: ("-",  "-",  "-",  "-",  "-"),
    70: ("ok", "-",  "-",  "-",  "-"),
    71: ("=",  "ok", "ok", "ok", "ok"),
    72: ("-",  "=",  "ok", "ok", "-"),
    73: ("-",  "-",  "=",  "-",  "-"),
    74: ("-",  "-",  "-",  "=",  "-"),
    79: ("ok", "-",  "-",  "-",  "="),
    80: ("-",  "-",  "-",  "-",  "-"),
    90: ("-",  "-",  "-",  "-",  "-"),
    91: ("-",  "-",  "-",  "-",  "-"),
    99: ("-",  "-",  "-",  "-",  "-"),
}
# fmt: on

COLLECTION_CASES = [
    pytest.param(S(frm), S(to), cell, id=f"{frm}->{to}")
    for frm, row in EXPECTED_COLLECTION.items()
    for to, cell in zip(COLLECTION_CODES, row, strict=True)
]


def test_the_collection_matrix_covers_every_status() -> None:
    assert set(EXPECTED_COLLECTION) == set(STATUSES)


@pytest.mark.parametrize(("frm", "to", "cell"), COLLECTION_CASES)
def test_set_collection_status(frm: InvoiceStatus, to: InvoiceStatus, cell: str) -> None:
    invoice = held_invoice(frm)
    outcome = domain.set_collection_status(invoice, to, "CASE-7", NOW)
    if cell == "ok":
        assert_moved(invoice, outcome, int(to))
        assert outcome.events[0].parameters == {"StatusCode": str(int(to)), "CaseKey": "CASE-7"}
    elif cell == "=":
        assert errors_of_no_change(outcome) == []
    else:
        assert [(e.field, e.code) for e in errors_of_no_change(outcome)] == [
            ("payload.status_code", "invalid_transition")
        ]


# --- CreateInvoice -------------------------------------------------------------------------


def invoice_fields(**overrides: Any) -> InvoiceFields:
    fields: dict[str, Any] = {
        "invoice_number": "INV-9",
        "invoice_date": date(2024, 1, 1),
        "due_date": date(2024, 1, 15),
        "currency": "EUR",
        "amount_debit": Decimal("121.00"),
        "amount_vat": Decimal("21.00"),
        "scheme_key": "DefaultCM1",
        "debtor": Debtor(code="D-1", person=Person(first_name="Jan", last_name="Jansen")),
    }
    fields.update(overrides)
    return InvoiceFields(**fields)


def create(cmd: InvoiceFields, *, scheme_known: bool = True) -> domain.Outcome:
    return domain.create_invoice(
        cmd,
        website_key="shop",
        now=NOW,
        scheme_version=2 if scheme_known else None,
        scheme_steps=[],
    )


def assert_created(outcome: domain.Outcome, status: int) -> domain.Invoice:
    invoice = outcome.invoice
    assert invoice is not None
    assert invoice.status == S(status)
    assert len(outcome.events) == 1
    event = outcome.events[0]
    assert event.name == InvoiceEventName.CHANGED_STATUS
    assert event.parameters == {"StatusCode": str(status)}
    assert event.category == EventCategory.FINANCIAL_CHANGE
    return invoice


@pytest.mark.parametrize(
    "cmd",
    [
        pytest.param(invoice_fields(), id="eur"),
        pytest.param(invoice_fields(due_date=date(2024, 1, 1)), id="due-on-invoice-date"),
        pytest.param(
            invoice_fields(amount_debit=Decimal("121"), amount_vat=Decimal("121")),
            id="vat-equals-amount",
        ),
        pytest.param(invoice_fields(amount_debit=Decimal("0"), amount_vat=Decimal("0")), id="zero"),
        pytest.param(
            invoice_fields(amount_debit=Decimal("10.100"), amount_vat=Decimal("1.00")),
            id="trailing-zero",
        ),
        pytest.param(
            invoice_fields(currency="JPY", amount_debit=Decimal("1500"), amount_vat=Decimal(0)),
            id="jpy",
        ),
        pytest.param(
            invoice_fields(
                currency="KWD", amount_debit=Decimal("10.125"), amount_vat=Decimal("1.125")
            ),
            id="kwd-3-decimals",
        ),
    ],
)
def test_a_valid_invoice_is_active(cmd: InvoiceFields) -> None:
    assert domain.invoice_errors(cmd, True) == []
    outcome = create(cmd)
    assert outcome.errors == []
    invoice = assert_created(outcome, 10)
    assert invoice.rejection == []
    assert invoice.scheme_version == 2
    assert invoice.amount_debit == cmd.amount_debit
    assert invoice.open_amount_incl_admin_costs == cmd.amount_debit
    person = cmd.debtor.person
    assert invoice.culture == (cmd.culture or (person and person.culture) or "nl-NL")
    assert invoice.request_hash == domain.request_hash(cmd)


def broken(cmd: InvoiceFields, field: str, code: str, id: str, *, scheme_known: bool = True) -> Any:
    """A case of an invoice that breaks one rule: the payload field it names and the code."""
    return pytest.param(cmd, scheme_known, f"payload.{field}", code, id=id)


@pytest.mark.parametrize(
    ("cmd", "scheme_known", "field", "code"),
    [
        broken(
            invoice_fields(due_date=date(2023, 12, 31)),
            "due_date",
            "before_invoice_date",
            "due-before-invoice-date",
        ),
        broken(
            invoice_fields(amount_vat=Decimal("121.01")),
            "amount_vat",
            "vat_above_amount",
            "vat-above-amount",
        ),
        broken(
            invoice_fields(scheme_key="Nope"),
            "scheme_key",
            "unknown_scheme",
            "unknown-scheme",
            scheme_known=False,
        ),
        broken(
            invoice_fields(amount_debit=Decimal("-1.00"), amount_vat=Decimal(0)),
            "amount_debit",
            "negative",
            "negative-amount",
        ),
        broken(
            invoice_fields(amount_vat=Decimal("-0.01")), "amount_vat", "negative", "negative-vat"
        ),
        broken(
            invoice_fields(amount_debit=Decimal("121.001")),
            "amount_debit",
            "too_many_decimals",
            "eur-3-decimals",
        ),
        broken(
            invoice_fields(currency="JPY", amount_debit=Decimal("1500.5"), amount_vat=Decimal(0)),
            "amount_debit",
            "too_many_decimals",
            "jpy-has-0-decimals",
        ),
        broken(
            invoice_fields(currency="JPY", amount_debit=Decimal("1500"), amount_vat=Decimal("1.5")),
            "amount_vat",
            "too_many_decimals",
            "jpy-vat-decimals",
        ),
        broken(invoice_fields(currency="QQQ"), "currency", "unknown_currency", "unknown-currency"),
        broken(
            invoice_fields(
                lines=[
                    InvoiceLine(
                        description="hours",
                        quantity=Decimal(2),
                        unit_price=Decimal("50.005"),
                        vat_percentage=Decimal(21),
                    )
                ]
            ),
            "lines.0.unit_price",
            "too_many_decimals",
            "line-unit-price-decimals",
        ),
    ],
)
def test_a_broken_rule_makes_a_rejected_invoice(
    cmd: InvoiceFields, scheme_known: bool, field: str, code: str
) -> None:
    errors = domain.invoice_errors(cmd, scheme_known)
    assert [(e.field, e.code) for e in errors] == [(field, code)]
    outcome = create(cmd, scheme_known=scheme_known)
    assert [(e.field, e.code) for e in outcome.errors] == [(field, code)]
    invoice = assert_created(outcome, 90)
    assert invoice.rejection == [{"field": field, "code": code, "message": errors[0].message}]
    # a rejected invoice was never active: no status command moves it
    for command in domain.TRANSITIONS:
        refused = domain.change_status(invoice, command, NOW)
        assert [e.code for e in refused.errors] == ["invoice_rejected"]


def test_every_broken_rule_is_named() -> None:
    cmd = invoice_fields(
        currency="QQQ",
        due_date=date(2023, 1, 1),
        amount_debit=Decimal("10.00"),
        amount_vat=Decimal("20.00"),
    )
    errors = domain.invoice_errors(cmd, False)
    assert {(e.field, e.code) for e in errors} == {
        ("payload.currency", "unknown_currency"),
        ("payload.due_date", "before_invoice_date"),
        ("payload.amount_vat", "vat_above_amount"),
        ("payload.scheme_key", "unknown_scheme"),
    }
    outcome = create(cmd, scheme_known=False)
    assert_created(outcome, 90)
    assert len(outcome.errors) == 4


def test_the_request_hash_tells_a_repeat_from_a_conflict() -> None:
    assert domain.request_hash(invoice_fields()) == domain.request_hash(invoice_fields())
    assert domain.request_hash(invoice_fields()) != domain.request_hash(
        invoice_fields(amount_debit=Decimal("121.01"))
    )


# --- Emergency on a pending transfer (docs/decisions.md) -----------------------------------


def test_unpause_after_an_emergency_on_a_pending_transfer_keeps_the_transfer() -> None:
    pending = make_invoice(S.PENDING_TRANSFER_TO_COLLECTION_AGENCY, previous_step_index=5)
    stopped = domain.change_status(pending, "SetEmergency", NOW).invoice
    assert stopped is not None
    assert stopped.status == S.EMERGENCY
    assert stopped.emergency_from == S.PENDING_TRANSFER_TO_COLLECTION_AGENCY
    later = NOW + timedelta(hours=2)
    outcome = domain.change_status(stopped, "UnpauseInvoice", later)
    assert outcome.errors == []
    back = outcome.invoice
    assert back is not None
    assert back.status == S.PENDING_TRANSFER_TO_COLLECTION_AGENCY
    assert back.emergency_from is None
    assert back.previous_step_index == 5  # the transfer step stays done: nothing reruns
    assert back.held_seconds == 2 * 3600
    assert [e.parameters["StatusCode"] for e in outcome.events] == ["70"]
    # in 70 the scheme waits for the agency: no step timer
    assert back.desired_timer() is None


@pytest.mark.parametrize("frm", [S.ACTIVE, S.PAUSED, S.PAUSED_BY_DISPUTE])
def test_unpause_after_any_other_emergency_resumes_the_scheme(frm: InvoiceStatus) -> None:
    stopped = domain.change_status(make_invoice(frm), "SetEmergency", NOW).invoice
    assert stopped is not None
    assert stopped.emergency_from == frm
    back = domain.change_status(stopped, "UnpauseInvoice", NOW).invoice
    assert back is not None
    assert back.status == S.ACTIVE


def test_the_emergency_origin_is_forgotten_on_any_other_way_out() -> None:
    pending = make_invoice(S.PENDING_TRANSFER_TO_COLLECTION_AGENCY)
    stopped = domain.change_status(pending, "SetEmergency", NOW).invoice
    assert stopped is not None
    written_off = domain.change_status(stopped, "WriteOffInvoice", NOW).invoice
    assert written_off is not None
    assert written_off.status == S.WRITTEN_OFF
    assert written_off.emergency_from is None
