"""The console's interest section (services/console/interest.py): rebuilt from the events'
snapshots alone, it gives what the invoice service computes from its own money history,
to the cent, at every event; where the events cannot give it, it says so and shows the
snapshot's figure only (docs/console.md "Statutory interest")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.debtor import Company, Debtor, Person
from contracts.envelope import Envelope, Message, new_envelope
from contracts.interest import InterestKind, money
from contracts.invoice import CreateCreditNote, CreateInvoice
from contracts.payments import TransactionStatus, TransactionStatusChanged
from services.console.interest import MoneyPoint, invoice_interest, money_point
from services.invoice import domain
from services.invoice.domain import commands
from services.invoice.domain.interest import interest_on
from services.invoice.snapshot import invoice_snapshot

D = Decimal
PERSON = Debtor(code="D-1", person=Person(first_name="Jan", last_name="Jansen"))
COMPANY = Debtor(code="D-2", company=Company(name="Acme BV"))


class NoSteps:
    version = 1
    step_states: list[domain.SchemeStepState] = []
    recollection_state = None


def message(payload: Message, now: datetime) -> Envelope[Any]:
    return new_envelope(payload, website_key="shop", occurred_at=now)


@dataclass
class Events:
    """What the console would have received: per event its sequence and money, and the
    last snapshot (as the console stores it) with its time."""

    invoice: domain.Invoice
    points: list[tuple[int, MoneyPoint | None]]
    snapshot: dict[str, Any]
    at: datetime

    def take(self, result: domain.Result, now: datetime) -> None:
        for change in result.changes:
            snapshot = invoice_snapshot(change.invoice, None, None)
            for numbered in change.events:
                self.points.append((numbered.sequence, money_point(snapshot, now)))
                self.snapshot = snapshot.model_dump(mode="json", exclude={"debtor"})
                self.at = now
            self.invoice = change.invoice

    def section(self, today: datetime | date) -> Any:
        return invoice_interest(self.snapshot, self.invoice.sequence, self.at, self.points, today)


def created(debtor: Debtor, amount: str, due: date, at: datetime, zone: str = "UTC") -> Events:
    payload = CreateInvoice(
        invoice_number="INV-1",
        invoice_date=due - timedelta(days=14),
        due_date=due,
        currency="EUR",
        amount_debit=D(amount),
        amount_vat=D(0),
        scheme_key="NoSteps",
        debtor=debtor,
    )
    result = commands.create_invoice(
        message(payload, at), existing=None, scheme=NoSteps(), parked=[]
    )
    events = Events(result.changes[-1].invoice, [], {}, at)
    events.take(result, at)
    # As the invoice service's repository does when the merchant's zone is not UTC.
    events.invoice.time_zone = zone
    return events


def pay(events: Events, amount: str, at: datetime, status: TransactionStatus, key: str) -> None:
    changed = TransactionStatusChanged(
        invoice_number="INV-1",
        transaction_key=key,
        service="ideal",
        amount=D(amount),
        status=status,
    )
    events.take(commands.transaction_status_changed(events.invoice, message(changed, at)), at)


def credit(events: Events, amount: str, at: datetime, number: str) -> None:
    note = CreateCreditNote(
        original_invoice_number="INV-1", credit_note_number=number, amount=D(amount)
    )
    events.take(commands.create_credit_note(events.invoice, message(note, at)), at)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_the_breakdown_from_the_events_is_the_invoice_services_figure_across_a_rate_change() -> (
    None
):
    # Due 2023-05-31 (commercial: 10.5% to 2023-06-30, then 12%, then 12.5% from 2024).
    # In Kiritimati (UTC+14) the payment at 11:00 UTC on 2023-06-20 is on the 21st, the
    # credit note at 12:00 UTC on 2023-08-31 on 1 September.
    events = created(
        COMPANY, "5000.00", date(2023, 5, 31), utc(2023, 5, 17, 9), "Pacific/Kiritimati"
    )
    pay(events, "1200.00", utc(2023, 6, 20, 11), TransactionStatus.SUCCESS, "T-1")
    credit(events, "800.00", utc(2023, 8, 31, 12), "CN-1")
    service_figure = events.invoice.interest_accrued
    assert service_figure > 0 and D(events.snapshot["interest_accrued"]) == service_figure

    section = events.section(utc(2023, 8, 31, 12))

    assert section.reconciled and section.why_not is None
    assert section.kind == InterestKind.COMMERCIAL
    assert section.as_of == date(2023, 9, 1) == section.snapshot_day
    assert section.accrued == service_figure
    periods = section.result.periods
    assert [(p.start, p.end, p.percent) for p in periods] == [
        (date(2023, 6, 1), date(2023, 6, 21), D("10.5")),
        (date(2023, 6, 22), date(2023, 6, 30), D("10.5")),
        (date(2023, 7, 1), date(2023, 9, 1), D("12")),
    ]
    # The payment went to the open interest first (art. 6:44 BW), then the principal.
    assert [money(p.base, 6) for p in periods] == [
        D("5000.000000"),
        money(D("3800.00") + periods[0].interest, 6),
        money(D("3800.00") + periods[0].interest, 6),
    ]
    # Later, without events: the console counts on to the day asked for, as the invoice
    # service would on that day; the credit note counts from the day after its own.
    later = events.section(date(2024, 2, 10))
    expected = interest_on(events.invoice, date(2024, 2, 10))
    assert expected is not None and later.accrued == money(expected.total)
    after_note = money(periods[1].base - D("800.00"), 6)
    assert [(p.start, p.percent, money(p.base, 6)) for p in later.result.periods[3:]] == [
        (date(2023, 9, 2), D("12"), after_note),
        (date(2024, 1, 1), D("12.5"), after_note),
    ]


def test_a_missing_event_or_an_unknown_kind_shows_the_snapshots_figure_only() -> None:
    events = created(PERSON, "1000.00", date(2022, 6, 30), utc(2022, 6, 16))
    pay(events, "100.00", utc(2023, 2, 1), TransactionStatus.SUCCESS, "T-1")
    credit(events, "50.00", utc(2023, 3, 1), "CN-1")

    gap = invoice_interest(
        events.snapshot, events.invoice.sequence, events.at, events.points[1:], events.at
    )
    assert not gap.reconciled and gap.result is None and gap.accrued is None
    assert gap.why_not == "not all of the invoice's events are here (yet)"
    assert gap.snapshot_accrued == events.invoice.interest_accrued > 0

    old = invoice_interest(
        events.snapshot,
        events.invoice.sequence,
        events.at,
        [(seq, None if seq == 1 else point) for seq, point in events.points],
        events.at,
    )
    assert not old.reconciled and "before the console kept" in (old.why_not or "")

    unknown = invoice_interest(
        {**events.snapshot, "interest_kind": None, "time_zone": None},
        events.invoice.sequence,
        events.at,
        events.points,
        events.at,
    )
    assert not unknown.reconciled and unknown.kind is None

    # A history the events do not tell (the money written down on another day than the
    # event's): the check against the snapshot's figure catches it.
    shifted = [
        (
            seq,
            None
            if p is None
            else MoneyPoint(p.day - timedelta(days=20), p.principal, p.costs, p.paid, p.refunded),
        )
        for seq, p in events.points
    ]
    wrong = invoice_interest(
        events.snapshot, events.invoice.sequence, events.at, shifted, events.at
    )
    assert not wrong.reconciled and "not all in the events" in (wrong.why_not or "")


def test_not_overdue_yet_shows_none_and_json_carries_the_periods() -> None:
    events = created(PERSON, "1000.00", date(2024, 1, 15), utc(2024, 1, 1))
    early = events.section(date(2024, 1, 15))
    assert early.reconciled and early.result is None and early.accrued == 0

    body = events.section(date(2024, 3, 15)).as_json()
    assert body["kind"] == "consumer" and body["article"] == "art. 6:119 BW"
    # 2024-01-16 .. 03-15: 60 days at 7% on 1,000 in a 366-day interest year.
    assert body["accrued"] == "11.48"
    assert body["periods"] == [
        {
            "from": "2024-01-16",
            "to": "2024-03-15",
            "percent": "7",
            "days": 60,
            "year_days": 366,
            "base": "1000.00",
            "interest": "11.48",
            "provisional": False,
        }
    ]
    assert body["snapshot"]["accrued"] == "0.00" and body["reconciled"]


amounts = st.decimals(min_value=D("1.00"), max_value=D("400.00"), places=2)
moves = st.lists(
    st.tuples(st.integers(1, 500), st.sampled_from(["pay", "credit", "refund"]), amounts),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(moves, st.booleans(), st.sampled_from(["UTC", "Europe/Amsterdam", "Pacific/Kiritimati"]))
def test_the_console_agrees_with_the_invoice_service_at_every_event(
    steps: list[tuple[int, str, Decimal]], person: bool, zone: str
) -> None:
    due = date(2022, 11, 30)
    events = created(PERSON if person else COMPANY, "2000.00", due, utc(2022, 11, 16), zone)
    at = utc(2022, 11, 30, 22)
    paid: list[tuple[str, Decimal]] = []
    for n, (days, kind, amount) in enumerate(steps):
        at += timedelta(days=days, hours=5)
        if kind == "pay" or (kind == "refund" and not paid):
            pay(events, str(amount), at, TransactionStatus.SUCCESS, f"T-{n}")
            paid.append((f"T-{n}", amount))
        elif kind == "refund":
            key, was = paid.pop()
            pay(events, str(was), at, TransactionStatus.REFUNDED, key)
        else:
            credit(events, str(min(amount, D("100.00"))), at, f"CN-{n}")
        section = events.section(at)
        assert section.reconciled, section.why_not
        assert section.accrued == events.invoice.interest_accrued
