"""What a message means, whole (`domain.commands`): the state to save, the events
numbered, the requests, the timer plan and the answer, as the handler saves and emits
them. The rules themselves are pinned by test_invoice_*.py, test_dunning.py and
test_payment_plans.py; these tests pin how a message puts them together."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from contracts.debtor import Company, Debtor, Person
from contracts.envelope import Envelope, Message, new_envelope
from contracts.invoice import (
    CreateCombinedInvoice,
    CreateInvoice,
    CreatePaymentPlan,
    InvoiceEventName,
    InvoiceStatus,
    PauseInvoice,
    StepDue,
    TerminatePaymentPlan,
)
from contracts.payments import Transaction as PaymentTransaction
from contracts.payments import TransactionStatus, TransactionStatusChanged
from services.invoice import app, domain
from services.invoice.batch import INVOICE_KEY_FIELDS
from services.invoice.domain import commands
from services.invoice.snapshot import invoice_snapshot, invoice_snapshot_validated
from services.runtime.consumer import key_field

S = InvoiceStatus
T = TransactionStatus
E = InvoiceEventName
D = Decimal
CREATED = datetime(2026, 11, 1, 9, tzinfo=UTC)


def at(month: int, day: int, hour: int = 0) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def message(payload: Message, now: datetime) -> Envelope[Any]:
    return new_envelope(payload, website_key="shop", occurred_at=now)


class Scheme:
    def __init__(
        self,
        steps: list[domain.SchemeStepState],
        recollection: domain.RecollectionState | None = None,
    ) -> None:
        self.version = 1
        self.step_states = steps
        self.recollection_state = recollection


#: DefaultCM1's first two steps: the invitation on the invoice date, a reminder at due + 7.
CM1 = Scheme(
    [
        domain.SchemeStepState(index=1, action="PaymentInvitation", days=0, channels=["email"]),
        domain.SchemeStepState(index=2, action="Reminder", days=7, channels=["email"]),
    ]
)


def create_payload(number: str = "INV-1", **overrides: Any) -> dict[str, Any]:
    return {
        "invoice_number": number,
        "invoice_date": date(2026, 11, 1),
        "due_date": date(2026, 11, 15),
        "currency": "EUR",
        "amount_debit": D("121.00"),
        "amount_vat": D("21.00"),
        "scheme_key": "DefaultCM1",
        "debtor": Debtor(code="D-1", person=Person(first_name="Jan", last_name="Jansen")),
        **overrides,
    }


def created(number: str = "INV-1", **overrides: Any) -> domain.Invoice:
    result = commands.create_invoice(
        message(CreateInvoice(**create_payload(number, **overrides)), CREATED),
        existing=None,
        scheme=CM1,
        parked=[],
    )
    return result.changes[-1].invoice


def transaction(number: str, key: str, amount: str, status: T, **fields: Any) -> Any:
    return TransactionStatusChanged(
        invoice_number=number,
        transaction_key=key,
        service=fields.pop("service", "ideal"),
        amount=D(amount),
        status=status,
        **fields,
    )


def events(result: domain.Result) -> list[tuple[str, int, str]]:
    return [
        (change.invoice.invoice_number, e.sequence, e.event.name.value)
        for change in result.changes
        for e in change.events
    ]


def snapshot(invoice: domain.Invoice) -> dict[str, Any]:
    return invoice_snapshot(invoice, None, None).model_dump(mode="json")


# --- the bug this shape fixed ----------------------------------------------------------------


def test_a_hold_that_ends_shows_in_the_snapshot_of_the_change_that_ended_it() -> None:
    invoice = created()
    pending = commands.transaction_status_changed(
        invoice,
        message(transaction("INV-1", "SEPA-1", "121.00", T.PENDING, is_slow=True), at(11, 2)),
    )
    held = pending.changes[0]
    assert held.timer == domain.TimerPlan(None, None, 2)  # cancelled while held
    assert snapshot(held.invoice)["next_step_due_at"] is None

    failed = commands.transaction_status_changed(
        held.invoice,
        message(transaction("INV-1", "SEPA-1", "121.00", T.FAILED, is_slow=True), at(11, 12)),
    )
    [released] = failed.changes
    shifted = at(11, 11)  # the invoice date + the 10 days held
    assert released.invoice.held_seconds == 10 * 86400
    assert released.timer == domain.TimerPlan(1, at(11, 12), 3)  # already due: at once
    assert snapshot(released.invoice)["next_step_due_at"] == shifted.isoformat().replace(
        "+00:00", "Z"
    )
    assert (released.invoice.timer_step, released.invoice.timer_due_at) == (1, shifted)


def test_the_fast_snapshot_shows_the_planned_step_like_the_validated_one() -> None:
    invoice = created()
    fast = invoice_snapshot(invoice, None, None)
    assert (fast.next_step_index, fast.next_step_due_at) == (1, at(11, 1))
    assert (
        fast.model_dump_json() == invoice_snapshot_validated(invoice, None, None).model_dump_json()
    )


# --- creation --------------------------------------------------------------------------------


def test_creation_saves_the_invoice_with_its_debtor_event_and_timer() -> None:
    cmd = CreateInvoice(**create_payload())
    result = commands.create_invoice(message(cmd, CREATED), existing=None, scheme=CM1, parked=[])
    assert result.errors == []
    assert result.debtor == cmd.debtor
    [change] = result.changes
    assert result.keys == {"invoice_key": change.invoice.invoice_key}
    assert events(result) == [("INV-1", 1, "ChangedStatus")]
    assert change.invoice.sequence == 1
    # the invitation was due at 00:00 of the invoice date: its timer fires at once
    assert change.timer == domain.TimerPlan(1, CREATED, 1)


def test_an_invoice_without_a_culture_gets_the_contracts_default_nl_nl() -> None:
    """CreateInvoice's contract: the request's culture, else the person's, else `nl-NL`;
    the invoice keeps it and its snapshot (and so the push) shows it."""
    company = Debtor(code="D-2", company=Company(name="Acme B.V."))
    english = Debtor(code="D-3", person=Person(first_name="Ann", last_name="Lee", culture="en-GB"))
    cases = [
        ({}, "nl-NL"),  # a person without a culture
        ({"debtor": company}, "nl-NL"),
        ({"debtor": english}, "en-GB"),
        ({"debtor": english, "culture": "de-DE"}, "de-DE"),
    ]
    for overrides, expected in cases:
        invoice = created(**overrides)
        assert invoice.culture == expected
        assert snapshot(invoice)["culture"] == expected
    rejected = created(currency="XYZ")
    assert rejected.status == S.REJECTED
    assert snapshot(rejected)["culture"] == "nl-NL"


def test_a_combined_invoice_books_its_transaction_then_the_ones_kept_for_it() -> None:
    cmd = CreateCombinedInvoice(
        **create_payload(),
        transaction=PaymentTransaction(
            transaction_key="T-1", service="ideal", amount=D("21.00"), status=T.SUCCESS
        ),
    )
    early = domain.Transaction("T-0", "ideal", D("100.00"), T.SUCCESS)
    result = commands.create_invoice(
        message(cmd, CREATED), existing=None, scheme=CM1, parked=[early]
    )
    assert events(result) == [
        ("INV-1", 1, "ChangedStatus"),
        ("INV-1", 2, "ChangedTransactionStatus"),
        ("INV-1", 3, "ChangedTransactionStatus"),
    ]
    keys = [c.events[0].event.parameters.get("TransactionKey") for c in result.changes]
    assert keys == [None, "T-1", "T-0"]
    final = result.changes[-1].invoice
    assert final.is_paid and final.sequence == 3
    # planned after every change: set, then cancelled once the invoice is paid
    assert [c.timer for c in result.changes] == [
        domain.TimerPlan(1, CREATED, 1),
        None,
        domain.TimerPlan(None, None, 2),
    ]


def test_a_combined_invoice_honours_a_slow_first_transaction() -> None:
    """A pending SEPA direct debit as the first transaction counts towards
    AmountPendingSlow and, covering what is open, holds the scheme (no step timer)."""
    cmd = CreateCombinedInvoice(
        **create_payload(),
        transaction=PaymentTransaction(
            transaction_key="T-1",
            service="sepadirectdebit",
            amount=D("121.00"),
            status=T.PENDING,
            is_slow=True,
        ),
    )
    result = commands.create_invoice(message(cmd, CREATED), existing=None, scheme=CM1, parked=[])
    assert result.errors == []
    final = result.changes[-1].invoice
    assert final.transactions["T-1"].is_slow is True
    assert final.amount_pending_slow == D("121.00")
    assert final.slow_payment_covers and not final.is_paid
    assert final.desired_timer() is None
    assert result.changes[-1].timer == domain.TimerPlan(None, None, 2)  # cancelled
    # the same request without the flag is a fast pending payment: the scheme runs
    fast = CreateCombinedInvoice(
        **create_payload(),
        transaction=PaymentTransaction(
            transaction_key="T-1", service="sepadirectdebit", amount=D("121.00"), status=T.PENDING
        ),
    )
    ran = commands.create_invoice(message(fast, CREATED), existing=None, scheme=CM1, parked=[])
    assert ran.changes[-1].invoice.amount_pending_slow == D(0)
    assert ran.changes[-1].invoice.desired_timer() is not None


def test_a_kept_transaction_that_breaks_a_rule_is_not_booked() -> None:
    negative = domain.Transaction("T-0", "ideal", D("-1.00"), T.SUCCESS)
    result = commands.create_invoice(
        message(CreateInvoice(**create_payload()), CREATED),
        existing=None,
        scheme=CM1,
        parked=[negative],
    )
    assert result.errors == []
    assert events(result) == [("INV-1", 1, "ChangedStatus")]


def test_the_same_invoice_again_repeats_the_answer_or_is_refused() -> None:
    existing = created()
    same = commands.create_invoice(
        message(CreateInvoice(**create_payload()), CREATED),
        existing=existing,
        scheme=None,
        parked=[],
    )
    assert (same.changes, same.errors, same.keys) == (
        [],
        [],
        {"invoice_key": existing.invoice_key},
    )
    other = commands.create_invoice(
        message(CreateInvoice(**create_payload(amount_debit=D("1.00"), amount_vat=D(0))), CREATED),
        existing=existing,
        scheme=None,
        parked=[],
    )
    assert other.changes == []
    assert [(e.field, e.code) for e in other.errors] == [
        ("payload.invoice_number", "duplicate_invoice_number")
    ]


def test_a_rejected_invoice_is_saved_and_its_repeat_gets_the_same_errors() -> None:
    cmd = CreateInvoice(**create_payload(scheme_key="NoSuchScheme"))
    first = commands.create_invoice(message(cmd, CREATED), existing=None, scheme=None, parked=[])
    [change] = first.changes
    assert change.invoice.status == S.REJECTED
    assert [(e.field, e.code) for e in first.errors] == [("payload.scheme_key", "unknown_scheme")]
    again = commands.create_invoice(
        message(cmd, CREATED), existing=change.invoice, scheme=None, parked=[]
    )
    assert again.changes == [] and again.errors == first.errors


# --- transactions ----------------------------------------------------------------------------


def test_a_transaction_before_its_invoice_is_kept() -> None:
    evt = transaction("INV-9", "T-1", "10.00", T.SUCCESS)
    result = commands.transaction_status_changed(None, message(evt, CREATED))
    assert result.changes == [] and result.errors == []
    assert result.park == domain.Transaction("T-1", "ideal", D("10.00"), T.SUCCESS)
    assert domain.Transaction.from_stored(result.park.stored()) == result.park


def test_a_negative_transaction_is_refused_and_nothing_changes() -> None:
    result = commands.transaction_status_changed(
        created(), message(transaction("INV-1", "T-1", "-1.00", T.SUCCESS), CREATED)
    )
    assert result.changes == []
    assert [(e.field, e.code) for e in result.errors] == [("payload.amount", "negative")]


def test_events_number_on_from_the_saved_sequence() -> None:
    invoice = created()
    result = commands.transaction_status_changed(
        invoice, message(transaction("INV-1", "T-1", "10.00", T.SUCCESS), CREATED)
    )
    assert events(result) == [("INV-1", 2, "ChangedTransactionStatus")]
    assert invoice.sequence == 1  # the loaded state is never changed


# --- payment plans ---------------------------------------------------------------------------


def plan_of(
    originals: list[domain.Invoice], count: int = 2
) -> tuple[domain.Result, domain.PlanInvoices]:
    cmd = CreatePaymentPlan(
        dossier_number="PP-1",
        included_invoice_numbers=[o.invoice_number for o in originals],
        installment_count=count,
        initial_amount=D("50.00"),
        start_date=date(2026, 12, 1),
        interval="month",
        payment_plan_cost_amount=D("10.00"),
        scheme_key="PlanScheme",
    )
    result = commands.create_payment_plan(
        message(cmd, CREATED), existing=None, taken=[], originals=originals, scheme=Scheme([])
    )
    assert result.plan is not None
    saved = {c.invoice.invoice_number: c.invoice for c in result.changes}
    members = domain.PlanInvoices(
        result.plan,
        originals=[saved[n] for n in result.plan.original_numbers],
        installments=[saved[n] for n in result.plan.installment_numbers],
    )
    return result, members


def test_a_plan_pauses_the_originals_and_creates_numbered_installments() -> None:
    result, members = plan_of([created("A"), created("B")])
    assert result.keys == {"dossier_number": "PP-1", "installment_numbers": "PP-1-1,PP-1-2"}
    assert events(result) == [
        ("A", 2, "ChangedStatus"),
        ("B", 2, "ChangedStatus"),
        ("PP-1-1", 1, "ChangedStatus"),
        ("PP-1-2", 1, "ChangedStatus"),
    ]
    assert [o.status for o in members.originals] == [S.PAUSED_BY_PAYMENT_PLAN] * 2
    assert [o.plan_dossier for o in members.originals] == ["PP-1", "PP-1"]
    # the paused originals' timers are cancelled; the plan's scheme has no steps
    cancelled = domain.TimerPlan(None, None, 3)
    assert [c.timer for c in result.changes] == [cancelled, cancelled, None, None]


def test_a_plan_whose_installment_numbers_are_taken_is_refused() -> None:
    cmd = CreatePaymentPlan(
        dossier_number="PP-1",
        included_invoice_numbers=["A"],
        installment_count=1,
        initial_amount=D("0"),
        start_date=date(2026, 12, 1),
        interval="month",
        scheme_key="PlanScheme",
    )
    result = commands.create_payment_plan(
        message(cmd, CREATED),
        existing=None,
        taken=[created("PP-1-1")],
        originals=[created("A")],
        scheme=Scheme([]),
    )
    assert result.changes == [] and result.plan is None
    assert [(e.field, e.code) for e in result.errors] == [
        ("payload.dossier_number", "installment_number_taken")
    ]


def test_paying_the_installments_forwards_to_the_originals_and_settles_the_plan() -> None:
    _, members = plan_of([created("A"), created("B")])
    first, second = members.installments
    assert (first.amount_debit, second.amount_debit) == (D("60.00"), D("192.00"))
    paid_first = commands.transaction_status_changed(
        first, message(transaction("PP-1-1", "T-1", "60.00", T.SUCCESS), at(12, 1)), members
    )
    # the plan cost first (10), then the oldest original (A, by number on the same date)
    assert events(paid_first) == [
        ("PP-1-1", 1 + 1, "ChangedTransactionStatus"),
        ("A", 3, "ChangedTransactionStatus"),
    ]
    forwarded = paid_first.changes[1].events[0].event.parameters
    assert (forwarded["TransactionKey"], forwarded["Amount"]) == ("plan:PP-1:T-1", "50.00")
    assert paid_first.plan is members.plan and members.plan.status == "active"

    members.originals = [paid_first.changes[1].invoice, members.originals[1]]
    members.installments = [paid_first.changes[0].invoice, second]
    paid_second = commands.transaction_status_changed(
        second, message(transaction("PP-1-2", "T-2", "192.00", T.SUCCESS), at(12, 2)), members
    )
    assert [c.invoice.invoice_number for c in paid_second.changes] == ["PP-1-2", "A", "B"]
    assert members.plan.status == "paid"
    assert all(c.invoice.is_paid for c in paid_second.changes)


def test_a_refund_on_an_installment_reopens_a_paid_plan() -> None:
    _, members = plan_of([created("A")], count=1)
    [only] = members.installments
    paid = commands.transaction_status_changed(
        only, message(transaction("PP-1-1", "T-1", "131.00", T.SUCCESS), at(12, 1)), members
    )
    assert members.plan.status == "paid"
    members.originals = [paid.changes[1].invoice]
    members.installments = [paid.changes[0].invoice]
    refunded = commands.transaction_status_changed(
        paid.changes[0].invoice,
        message(transaction("PP-1-1", "T-1", "131.00", T.REFUNDED), at(12, 2)),
        members,
    )
    assert [c.invoice.invoice_number for c in refunded.changes] == ["PP-1-1", "A"]
    assert refunded.changes[1].invoice.open_amount == D("121.00")
    assert members.plan.status == "active"


def test_terminating_a_plan_cancels_open_installments_and_frees_the_originals() -> None:
    _, members = plan_of([created("A")])
    result = commands.terminate_payment_plan(
        message(TerminatePaymentPlan(dossier_number="PP-1"), at(12, 5)), members
    )
    assert result.keys == {"dossier_number": "PP-1"}
    assert [(c.invoice.invoice_number, c.invoice.status) for c in result.changes] == [
        ("PP-1-1", S.CANCELLED),
        ("PP-1-2", S.CANCELLED),
        ("A", S.ACTIVE),
    ]
    assert result.changes[2].invoice.plan_dossier is None
    assert result.plan is members.plan and members.plan.status == "terminated"
    again = commands.terminate_payment_plan(
        message(TerminatePaymentPlan(dossier_number="PP-1"), at(12, 6)), members
    )
    assert (again.changes, again.errors, again.keys) == ([], [], {"dossier_number": "PP-1"})


def test_an_unknown_or_paid_plan_cannot_be_terminated() -> None:
    unknown = commands.terminate_payment_plan(
        message(TerminatePaymentPlan(dossier_number="PP-9"), CREATED), None
    )
    assert [e.code for e in unknown.errors] == ["unknown_plan"]
    _, members = plan_of([created("A")])
    members.plan.status = "paid"
    paid = commands.terminate_payment_plan(
        message(TerminatePaymentPlan(dossier_number="PP-1"), CREATED), members
    )
    assert [e.code for e in paid.errors] == ["plan_paid"] and paid.changes == []


# --- commands on one invoice -----------------------------------------------------------------


def test_a_status_command_is_its_row_of_the_transition_table() -> None:
    invoice = created()
    result = commands.change_status(
        invoice, message(PauseInvoice(invoice_number="INV-1", reason="phone"), at(11, 3))
    )
    [change] = result.changes
    assert change.invoice.status == S.PAUSED
    assert change.events[0].event.parameters == {"StatusCode": "20", "Reason": "phone"}
    assert change.timer == domain.TimerPlan(None, None, 3)
    assert result.keys == {"invoice_key": invoice.invoice_key}
    refused = commands.change_status(
        change.invoice, message(PauseInvoice(invoice_number="INV-1"), at(11, 4))
    )
    assert refused.changes == [] and refused.errors == []  # already paused: a no-op


def test_a_due_step_asks_for_its_message_and_plans_the_next_step() -> None:
    invoice = created()
    assert (invoice.timer_step, invoice.schedule_version) == (1, 1)
    due = StepDue(invoice_number="INV-1", step_index=1, scheme_version=1, schedule_version=1)
    [change] = commands.step_due(invoice, message(due, CREATED)).changes
    assert change.requests == [domain.SendStepMessage(CM1.step_states[0])]
    assert change.events == []
    assert change.timer == domain.TimerPlan(2, at(11, 22), 2)
    assert snapshot(change.invoice)["next_step_index"] == 2


def test_an_invoice_runs_the_steps_of_the_scheme_version_it_was_created_with() -> None:
    """A new version of a scheme does not change the invoices created before it: each
    keeps its version's steps, and a timer of another version is ignored."""
    v1 = Scheme([domain.SchemeStepState(index=1, action="CustomEvent", days=0, message="v1")])
    v2 = Scheme([domain.SchemeStepState(index=1, action="CustomEvent", days=3, message="v2")])
    v2.version = 2

    def create_on(scheme: Scheme, number: str) -> domain.Invoice:
        cmd = CreateInvoice(**create_payload(number))
        result = commands.create_invoice(
            message(cmd, CREATED), existing=None, scheme=scheme, parked=[]
        )
        return result.changes[-1].invoice

    old, new = create_on(v1, "OLD-1"), create_on(v2, "NEW-1")
    assert (old.scheme_version, old.timer_due_at) == (1, at(11, 15))
    assert (new.scheme_version, new.timer_due_at) == (2, at(11, 18))
    for invoice, version, text in ((old, 1, "v1"), (new, 2, "v2")):
        number = invoice.invoice_number
        other = StepDue(
            invoice_number=number, step_index=1, scheme_version=3 - version, schedule_version=1
        )
        assert commands.step_due(invoice, message(other, at(11, 20))).changes == []
        due = StepDue(
            invoice_number=number, step_index=1, scheme_version=version, schedule_version=1
        )
        [change] = commands.step_due(invoice, message(due, at(11, 20))).changes
        assert [e.event.parameters["CustomEventMessage"] for e in change.events] == [text]


def test_the_status_commands_are_the_merchant_rows_of_the_transition_table() -> None:
    assert app.STATUS_COMMANDS == (
        "PauseInvoice",
        "UnpauseInvoice",
        "RegisterDispute",
        "ResolveDispute",
        "WriteOffInvoice",
        "CancelInvoice",
        "SetEmergency",
    )
    handled = {name for consumer in app.definition().consumers for name in consumer.handlers}
    assert set(app.STATUS_COMMANDS) <= handled
    assert not {"StartPaymentPlan", "EndPaymentPlan", "CancelInstallment"} & handled


def test_a_message_about_one_invoice_names_it_in_its_kafka_key() -> None:
    # on_invoice loads the invoice the key names; the batch hooks read and lock the same.
    on_one_invoice = {
        name: key_field(name)
        for consumer in app.definition().consumers
        for name, spec in consumer.handlers.items()
        if spec.handle.__qualname__.startswith("on_invoice.")
    }
    assert len(on_one_invoice) == 14
    assert set(on_one_invoice.values()) <= INVOICE_KEY_FIELDS
    assert on_one_invoice["CreateCreditNote"] == "original_invoice_number"
