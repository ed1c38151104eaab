"""Statutory interest on invoices (services/invoice/domain/interest.py, the scheme's
interest step in services/invoice/dunning.py, the snapshot, the collection amount;
docs/interest.md). The amounts are the worked examples of docs/interest.md, computed by
hand in tests/unit/test_interest.py."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.debtor import Company, Debtor, Person
from contracts.envelope import Envelope, Message, new_envelope
from contracts.interest import InterestKind, money, rates, statutory_interest
from contracts.invoice import (
    CreateCreditNote,
    CreateCustomEvent,
    CreateInvoice,
    InvoiceEvent,
    InvoiceEventName,
    InvoiceSnapshot,
    InvoiceStatus,
    SchemeStep,
    StepDue,
)
from contracts.payments import TransactionStatus, TransactionStatusChanged
from services.collection.handlers import _line_items
from services.invoice import domain, dunning
from services.invoice.domain import commands
from services.invoice.domain.interest import movements
from services.invoice.snapshot import invoice_snapshot, invoice_snapshot_validated
from services.notifier.templates import MessageContext, fill, template_errors
from tests.support.invoice_domain import invoice_snapshot as snapshot_json
from tests.support.invoice_domain import make_invoice

D = Decimal


class Scheme:
    def __init__(self, steps: list[domain.SchemeStepState]) -> None:
        self.version = 1
        self.step_states = steps
        self.recollection_state = None


def interest_step(index: int, days: int) -> domain.SchemeStepState:
    return domain.SchemeStepState(
        index=index, action="AdminCostIncrease", days=days, admin_cost="interest"
    )


#: Interest added 30 days after the due date and again 640 days after it (2024-03-31 for
#: an invoice due 2022-06-30, the consumer worked example's last day).
INTEREST = Scheme([interest_step(1, 30), interest_step(2, 640)])


def message(payload: Message, now: datetime) -> Envelope[Any]:
    return new_envelope(payload, website_key="shop", occurred_at=now)


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def create(debtor: Debtor, amount: str, due: date, scheme: Scheme = INTEREST) -> domain.Invoice:
    payload = CreateInvoice(
        invoice_number="INV-1",
        invoice_date=due - timedelta(days=29),
        due_date=due,
        currency="EUR",
        amount_debit=D(amount),
        amount_vat=D(0),
        scheme_key="Interest",
        debtor=debtor,
    )
    created = utc(due.year, due.month, due.day) - timedelta(days=29)
    result = commands.create_invoice(
        message(payload, created), existing=None, scheme=scheme, parked=[]
    )
    return result.changes[-1].invoice


PERSON = Debtor(code="D-1", person=Person(first_name="Jan", last_name="Jansen"))
COMPANY = Debtor(code="D-2", company=Company(name="Acme BV"))


def run_due_step(invoice: domain.Invoice) -> domain.Change:
    assert invoice.timer_step is not None and invoice.timer_due_at is not None
    due = StepDue(
        invoice_number=invoice.invoice_number,
        step_index=invoice.timer_step,
        scheme_version=invoice.scheme_version,
        schedule_version=invoice.schedule_version,
    )
    [change] = commands.step_due(invoice, message(due, invoice.timer_due_at)).changes
    return change


def parameters(change: domain.Change) -> dict[str, str]:
    [numbered] = change.events
    assert numbered.event.name == InvoiceEventName.INCREASED_ADMIN_FEE
    return numbered.event.parameters


def test_an_interest_step_adds_what_accrued_and_the_next_one_the_rest() -> None:
    invoice = create(PERSON, "1000.00", date(2022, 6, 30))
    assert invoice.interest_claimed and invoice.interest_accrued == 0
    first = run_due_step(invoice)
    # 2022-07-01 .. 07-30: 30 days at 2% on 1,000.00 in a 365-day year = 1.643.. → 1.64
    assert parameters(first) == {
        "StepIndex": "1",
        "Amount": "1.64",
        "Reason": "statutory_interest",
        "InterestAccrued": "1.64",
        "InterestUntil": "2022-07-30",
        "InterestKind": "consumer",
    }
    assert first.invoice.amount_admin_costs == D("1.64") == first.invoice.interest_booked
    second = run_due_step(first.invoice)
    # The consumer worked example: 78.91 accrued by 2024-03-31; 1.64 was added before.
    assert parameters(second) == {
        "StepIndex": "2",
        "Amount": "77.27",
        "Reason": "statutory_interest",
        "InterestAccrued": "78.91",
        "InterestUntil": "2024-03-31",
        "InterestKind": "consumer",
    }
    after = second.invoice
    assert after.amount_admin_costs == after.interest_booked == D("78.91")
    assert after.open_amount_incl_admin_costs == D("1078.91")
    snapshot = invoice_snapshot(after, None, None)
    assert (snapshot.interest_accrued, snapshot.interest_booked) == (D("78.91"), D("78.91"))
    assert snapshot.interest_claimed and snapshot.collection_amount == D("1078.91")


def test_a_company_owes_the_commercial_rate_and_payments_pay_interest_first() -> None:
    invoice = create(COMPANY, "10000.00", date(2022, 11, 15), Scheme([interest_step(1, 685)]))
    paid = commands.transaction_status_changed(
        invoice,
        message(
            TransactionStatusChanged(
                invoice_number="INV-1",
                transaction_key="T-1",
                service="ideal",
                amount=D("2000.00"),
                status=TransactionStatus.SUCCESS,
            ),
            utc(2023, 12, 1, 12),
        ),
    )
    invoice = paid.changes[-1].invoice
    # The snapshot of the payment's event: interest to 2023-12-01.
    # 1,075.2055 (year 1) + 58.0994 (16 days) = 1,133.3049: the sum is rounded, not
    # its parts (1,075.21 + 58.10 would say 1,133.31).
    assert invoice.interest_accrued == D("1133.30")
    step = run_due_step(invoice)  # due + 685 days = 2024-09-30
    # The business worked example: 2,072.09 by 2024-09-30, the payment went to the
    # 58.10 of open interest first (art. 6:44 BW), which the interest function knows.
    assert parameters(step)["Amount"] == "2072.09"
    assert parameters(step)["InterestKind"] == "commercial"
    assert step.invoice.interest_accrued == D("2072.09")


def test_the_history_is_the_invoices_money_per_day_and_credit_notes_count() -> None:
    invoice = create(PERSON, "1000.00", date(2024, 1, 15), Scheme([]))
    note = CreateCreditNote(
        original_invoice_number="INV-1", credit_note_number="CN-1", amount=D("400.00")
    )
    [change] = commands.create_credit_note(invoice, message(note, utc(2024, 3, 15, 8))).changes
    history = [(m.day, m.kind.value, m.amount) for m in movements(change.invoice)]
    assert history == [
        (date(2023, 12, 17), "principal", D("1000.00")),
        (date(2024, 3, 15), "principal", D("-400.00")),
    ]
    # 2024-01-16 .. 03-15: 60 days at 7% on 1,000 in a 366-day year = 11.475.. → 11.48
    assert change.invoice.interest_accrued == D("11.48")


def test_interest_tags_in_a_custom_event_are_as_of_its_time() -> None:
    invoice = create(PERSON, "1000.00", date(2022, 6, 30), Scheme([]))
    text = "Rente [InterestAccrued], totaal [OpenAmountInclInterest]"
    [change] = commands.create_custom_event(
        invoice,
        message(CreateCustomEvent(invoice_number="INV-1", message=text), utc(2024, 3, 31, 10)),
    ).changes
    [numbered] = change.events
    assert numbered.event.parameters["CustomEventMessage"] == "Rente 78.91, totaal 1078.91"


def test_a_rejected_invoice_accrues_nothing_and_an_unclaimed_one_is_not_collected() -> None:
    invoice = create(PERSON, "1000.00", date(2022, 6, 30), Scheme([]))
    note = CreateCreditNote(
        original_invoice_number="INV-1", credit_note_number="CN-1", amount=D("1.00")
    )
    [change] = commands.create_credit_note(invoice, message(note, utc(2024, 3, 31))).changes
    snapshot = invoice_snapshot(change.invoice, None, None)
    assert snapshot.interest_accrued > 0 and not snapshot.interest_claimed
    assert snapshot.collection_amount == snapshot.open_amount_incl_admin_costs
    bad = create(PERSON, "1000.00", date(2022, 6, 30), Scheme([])).changed()
    bad.status = InvoiceStatus.REJECTED
    result = domain.Result()
    result.add(domain.Outcome(invoice=bad), utc(2024, 3, 31))
    assert result.changes[0].invoice.interest_accrued == 0


def _steps(*steps: dict[str, Any]) -> list[SchemeStep]:
    return [SchemeStep(**step) for step in steps]


def test_the_scheme_refuses_an_interest_step_where_it_makes_no_sense() -> None:
    errors = dunning.scheme_errors(
        "Interest",
        _steps(
            {"index": 1, "action": "AdminCostIncrease", "days": 0, "admin_cost": "interest"},
            {
                "index": 2,
                "action": "Reminder",
                "days": 5,
                "channels": ["email"],
                "admin_cost": "interest",
            },
            {"index": 3, "action": "AdminCostIncrease", "days": 30, "admin_cost": "interest"},
        ),
    )
    assert [(e.field, e.code) for e in errors] == [
        ("payload.steps.0.days", "interest_before_due"),
        ("payload.steps.1.admin_cost", "not_a_cost_step"),
    ]


# --- the snapshot's two paths ------------------------------------------------------------

money_st = st.decimals(min_value=D("0.00"), max_value=D("100000.00"), places=2)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["EUR", "JPY", "KWD"]),
    money_st,
    st.integers(0, 900),
    st.booleans(),
    st.booleans(),
)
def test_the_fast_snapshot_with_interest_is_the_validated_one(
    currency: str, debit: Decimal, days: int, person: bool, claimed: bool
) -> None:
    digits = {"EUR": 2, "JPY": 0, "KWD": 3}[currency]
    debit = money(debit, digits)
    steps = [interest_step(1, 30)] if claimed else []
    invoice = make_invoice(
        invoice_date=date(2022, 1, 1),
        due_date=date(2022, 1, 31),
        currency=currency,
        amount_debit=debit,
        scheme_key="Interest",
        scheme_steps=steps,
        debtor_is_person=person,
        created_at=utc(2022, 1, 1),
    )
    result = domain.Result()
    result.add(domain.Outcome(invoice=invoice), utc(2022, 1, 31) + timedelta(days=days))
    after = result.changes[0].invoice
    expected = statutory_interest(
        movements(after),
        InterestKind.of_debtor(person),
        date(2022, 1, 31),
        date(2022, 1, 31) + timedelta(days=days),
        rates(),
    )
    assert after.interest_accrued == money(expected.total, digits)
    fast = invoice_snapshot(after, None, None)
    slow = invoice_snapshot_validated(after, None, None)
    assert fast.model_dump_json() == slow.model_dump_json()
    assert InvoiceSnapshot.model_validate_json(fast.model_dump_json()) == slow


# --- the collection case -----------------------------------------------------------------


def test_a_case_of_an_opting_in_invoice_claims_the_interest_not_booked_yet() -> None:
    claimed = InvoiceSnapshot.model_validate(
        snapshot_json(
            amount="1000.00",
            status_code=70,
            amount_admin_costs="41.64",
            open_amount_admin_costs="41.64",
            open_amount_incl_admin_costs="1041.64",
            interest_accrued="12.50",
            interest_booked="1.64",
            interest_claimed=True,
        )
    )
    assert claimed.collection_amount == D("1052.50")  # 1,041.64 + (12.50 - 1.64)
    event = InvoiceEvent.of(
        InvoiceEventName.TRANSFERRED_TO_COLLECTION_AGENCY, invoice=claimed, sequence=5
    )
    lines = [
        (li.description, li.unit_price) for li in _line_items(event, claimed.collection_amount)
    ]
    assert lines == [
        ("Invoice INV-1", D("1000.00")),
        ("Administration costs", D("41.64")),
        ("Statutory interest (art. 6:119/6:119a BW)", D("10.86")),
    ]
    unclaimed = claimed.model_copy(update={"interest_claimed": False})
    assert unclaimed.collection_amount == D("1041.64")


def test_the_notifiers_interest_tags() -> None:
    values = snapshot_json(
        amount="1000.00",
        amount_admin_costs="1.64",
        open_amount_admin_costs="1.64",
        open_amount_incl_admin_costs="1001.64",
        interest_accrued="12.50",
        interest_booked="1.64",
    )
    context = MessageContext(
        InvoiceSnapshot.model_validate(values), "nl-NL", utc(2024, 3, 31), "Shop"
    )
    text = "Rente [InterestAccrued], totaal [OpenAmountInclInterest]"
    assert template_errors("payload.body", text) == []
    # 1,001.64 + (12.50 - 1.64) = 1,012.50
    assert fill(text, context) == "Rente € 12,50, totaal € 1.012,50"


def test_the_interest_day_is_the_merchants() -> None:
    """Kiritimati (UTC+14) is already on the day after the due date at noon UTC of it."""
    invoice = create(PERSON, "1000.00", date(2024, 1, 15), Scheme([])).changed()
    invoice.time_zone = "Pacific/Kiritimati"
    for now, days in ((utc(2024, 1, 14, 12), 0), (utc(2024, 1, 15, 12), 1)):
        result = domain.Result()
        result.add(domain.Outcome(invoice=invoice.changed()), now)
        # one day at 7% on 1,000.00 in a 366-day year = 0.1913 → 0.19
        assert result.changes[0].invoice.interest_accrued == (D("0.19") if days else 0)
