"""Invoice amounts (docs/invoices.md "Amounts", "Transactions", "Credit notes").

A property test runs random sequences of payments, slow (SEPA) payments that settle
later, refunds and chargebacks, credit notes and admin cost increases through the domain
and checks docs/invoices.md's equations after every step, against a reference that books each
operation by art. 6:44 BW on its own. Example tests pin the allocation rules and the
transaction repeat rules; then credit notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.invoice import InvoiceEventName, InvoiceStatus
from contracts.payments import TransactionStatus
from services.invoice import domain
from tests.support.invoice_domain import make_invoice

S = InvoiceStatus
T = TransactionStatus
D = Decimal
ZERO = D(0)


def tx(
    invoice: domain.Invoice,
    key: str,
    amount: str | Decimal,
    status: TransactionStatus,
    *,
    is_slow: bool = False,
    service: str = "ideal",
) -> domain.Outcome:
    return domain.apply_transaction(
        invoice,
        transaction_key=key,
        service=service,
        amount=D(amount),
        status=status,
        is_slow=is_slow,
    )


def booked(invoice: domain.Invoice, key: str, amount: str | Decimal, status: TransactionStatus,
           *, is_slow: bool = False) -> domain.Invoice:  # fmt: skip
    outcome = tx(invoice, key, amount, status, is_slow=is_slow)
    assert outcome.errors == []
    assert outcome.invoice is not None, f"{key} {status} changed nothing"
    return outcome.invoice


def decimals(amount: Decimal) -> int:
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


# --- the invariants ------------------------------------------------------------------------


def assert_equations(inv: domain.Invoice) -> None:
    """docs/invoices.md "Amounts", written out from the page."""
    assert inv.open_amount_admin_costs == inv.amount_admin_costs - inv.amount_admin_costs_paid
    assert inv.open_amount == inv.amount_debit - inv.amount_credit_notes - (
        inv.amount_paid - inv.amount_credit - inv.amount_admin_costs_paid
    )
    assert inv.open_amount_incl_admin_costs == inv.open_amount + inv.open_amount_admin_costs
    assert inv.is_paid == (inv.open_amount_incl_admin_costs <= 0)
    assert ZERO <= inv.amount_admin_costs_paid <= inv.amount_admin_costs
    # no cent lost
    assert (
        inv.amount_debit
        - inv.amount_credit_notes
        + inv.amount_admin_costs
        - (inv.amount_paid - inv.amount_credit)
        == inv.open_amount_incl_admin_costs
    )
    for amount in (
        inv.amount_debit,
        inv.amount_credit_notes,
        inv.amount_admin_costs,
        inv.amount_paid,
        inv.amount_credit,
        inv.amount_admin_costs_paid,
        inv.amount_pending_slow,
        inv.open_amount,
        inv.open_amount_admin_costs,
        inv.open_amount_incl_admin_costs,
        inv.creditable,
    ):
        assert decimals(amount) <= 2, amount


@dataclass
class Paid:
    key: str
    amount: Decimal
    refundable: Decimal
    refunded_by_key: bool = False


@dataclass
class Reference:
    """What the invoice should hold, booked independently by docs/invoices.md's rules."""

    paid: Decimal = ZERO
    credit: Decimal = ZERO
    costs: Decimal = ZERO
    costs_paid: Decimal = ZERO
    credit_notes: Decimal = ZERO
    pending_slow: dict[str, Decimal] = field(default_factory=dict)
    payments: list[Paid] = field(default_factory=list)
    keys: int = 0

    def new_key(self) -> str:
        self.keys += 1
        return f"T{self.keys}"

    def pay(self, amount: Decimal) -> None:
        # art. 6:44: first the admin costs open right now, then the principal
        to_costs = min(amount, self.costs - self.costs_paid)
        self.costs_paid += to_costs
        self.paid += amount

    def take_back(self, amount: Decimal) -> None:
        principal_paid = self.paid - self.credit - self.costs_paid
        from_principal = min(amount, principal_paid)
        self.costs_paid -= amount - from_principal
        self.credit += amount

    def check(self, inv: domain.Invoice) -> None:
        assert inv.amount_paid == self.paid
        assert inv.amount_credit == self.credit
        assert inv.amount_admin_costs == self.costs
        assert inv.amount_admin_costs_paid == self.costs_paid
        assert inv.amount_credit_notes == self.credit_notes
        assert inv.amount_pending_slow == sum(self.pending_slow.values(), ZERO)
        assert_equations(inv)


cents = st.integers(min_value=1, max_value=500_000).map(lambda c: D(c).scaleb(-2))
OPERATIONS = ("pay", "slow", "settle", "refund_new_key", "refund_same_key", "note", "costs")


@settings(max_examples=200, deadline=None)
@given(data=st.data(), debit=cents)
def test_amount_equations_hold_after_every_step(data: st.DataObject, debit: Decimal) -> None:
    inv = make_invoice(amount_debit=debit)
    ref = Reference()
    ref.check(inv)
    for _ in range(data.draw(st.integers(1, 14), label="steps")):
        op = data.draw(st.sampled_from(OPERATIONS), label="op")
        if op == "pay":
            amount = data.draw(cents, label="amount")
            key = ref.new_key()
            inv = booked(inv, key, amount, T.SUCCESS)
            ref.pay(amount)
            ref.payments.append(Paid(key, amount, amount))
        elif op == "slow":
            amount = data.draw(cents, label="amount")
            key = ref.new_key()
            inv = booked(inv, key, amount, T.PENDING, is_slow=True)
            ref.pending_slow[key] = amount
        elif op == "settle":
            if not ref.pending_slow:
                continue
            key = data.draw(st.sampled_from(sorted(ref.pending_slow)), label="settle")
            amount = ref.pending_slow.pop(key)
            inv = booked(inv, key, amount, T.SUCCESS, is_slow=True)
            ref.pay(amount)
            ref.payments.append(Paid(key, amount, amount))
        elif op in ("refund_new_key", "refund_same_key"):
            candidates = [p for p in ref.payments if p.refundable > ZERO and not p.refunded_by_key]
            if not candidates:
                continue
            paid = data.draw(st.sampled_from(candidates), label="refund of")
            status = data.draw(st.sampled_from((T.REFUNDED, T.CHARGEBACK)), label="status")
            if op == "refund_new_key":
                cents_left = int(paid.refundable.scaleb(2))
                amount = D(data.draw(st.integers(1, cents_left), label="refund")).scaleb(-2)
                inv = booked(inv, ref.new_key(), amount, status)
            else:
                # the payment's own key moves success → refunded (what is left of it)
                amount = paid.refundable
                inv = booked(inv, paid.key, amount, status)
                paid.refunded_by_key = True
            paid.refundable -= amount
            ref.take_back(amount)
        elif op == "note":
            if inv.creditable <= ZERO:
                continue
            cents_left = int(inv.creditable.scaleb(2))
            amount = D(data.draw(st.integers(1, cents_left), label="note")).scaleb(-2)
            outcome = domain.create_credit_note(
                inv, number=f"CN-{len(inv.credit_notes) + 1}", amount=amount, description=None
            )
            assert outcome.errors == []
            assert outcome.invoice is not None
            inv = outcome.invoice
            ref.credit_notes += amount
        else:
            amount = data.draw(cents, label="costs")
            inv = inv.model_copy(deep=True)
            domain.add_admin_costs(inv, amount)
            ref.costs += amount
        ref.check(inv)


@settings(max_examples=200, deadline=None)
@given(
    debit=cents,
    costs=cents,
    payment=cents,
    refund_share=st.integers(0, 100),
)
def test_a_payment_and_its_refund_restore_what_was_open(
    debit: Decimal, costs: Decimal, payment: Decimal, refund_share: int
) -> None:
    inv = make_invoice(amount_debit=debit)
    domain.add_admin_costs(inv, costs)
    open_before = inv.open_amount_incl_admin_costs
    inv = booked(inv, "P", payment, T.SUCCESS)
    assert inv.open_amount_incl_admin_costs == open_before - payment
    assert inv.amount_admin_costs_paid == min(payment, costs)
    inv = booked(inv, "P", payment, T.REFUNDED)
    assert inv.open_amount_incl_admin_costs == open_before
    assert inv.amount_admin_costs_paid == ZERO
    assert inv.open_amount == debit
    assert_equations(inv)


# --- art. 6:44 allocation, by example -------------------------------------------------------


def test_a_payment_settles_the_open_admin_costs_first() -> None:
    inv = make_invoice()
    domain.add_admin_costs(inv, D("15.00"))
    inv = booked(inv, "P1", "20.00", T.SUCCESS)
    assert inv.amount_admin_costs_paid == D("15.00")
    assert inv.open_amount_admin_costs == ZERO
    assert inv.open_amount == D("95.00")
    assert inv.open_amount_incl_admin_costs == D("95.00")
    assert not inv.is_paid


def test_a_small_payment_goes_entirely_to_the_costs() -> None:
    inv = make_invoice()
    domain.add_admin_costs(inv, D("15.00"))
    inv = booked(inv, "P1", "10.00", T.SUCCESS)
    assert inv.amount_admin_costs_paid == D("10.00")
    assert inv.open_amount_admin_costs == D("5.00")
    assert inv.open_amount == D("100.00")


def test_an_overpayment_stays_on_the_principal_and_does_not_pay_later_costs() -> None:
    inv = booked(make_invoice(), "P1", "120.00", T.SUCCESS)
    assert inv.open_amount == D("-20.00")
    assert inv.is_paid
    inv = inv.model_copy(deep=True)
    domain.add_admin_costs(inv, D("40.00"))
    assert inv.amount_admin_costs_paid == ZERO
    assert inv.open_amount_admin_costs == D("40.00")
    assert inv.open_amount == D("-20.00")
    assert inv.open_amount_incl_admin_costs == D("20.00")
    assert not inv.is_paid
    # the next payment settles the costs first
    inv = booked(inv, "P2", "20.00", T.SUCCESS)
    assert inv.amount_admin_costs_paid == D("20.00")
    assert inv.open_amount_admin_costs == D("20.00")
    assert inv.open_amount == D("-20.00")
    assert inv.open_amount_incl_admin_costs == ZERO
    assert inv.is_paid


def test_a_refund_takes_back_from_the_principal_first_then_the_costs() -> None:
    inv = make_invoice()
    domain.add_admin_costs(inv, D("15.00"))
    inv = booked(inv, "P1", "50.00", T.SUCCESS)  # 15 costs, 35 principal
    assert inv.open_amount == D("65.00")
    inv = booked(inv, "R1", "30.00", T.REFUNDED)  # principal only
    assert inv.amount_admin_costs_paid == D("15.00")
    assert inv.open_amount == D("95.00")
    inv = booked(inv, "R2", "10.00", T.CHARGEBACK)  # 5 principal, then 5 costs
    assert inv.amount_admin_costs_paid == D("10.00")
    assert inv.open_amount_admin_costs == D("5.00")
    assert inv.open_amount == D("100.00")
    assert inv.amount_credit == D("40.00")
    assert_equations(inv)


def test_a_refund_reopens_a_paid_invoice() -> None:
    inv = booked(make_invoice(), "P1", "100.00", T.SUCCESS)
    assert inv.is_paid
    inv = booked(inv, "R1", "0.01", T.REFUNDED)
    assert not inv.is_paid
    assert inv.open_amount == D("0.01")


def test_a_reversed_payment_takes_back_what_it_paid() -> None:
    inv = make_invoice()
    domain.add_admin_costs(inv, D("15.00"))
    inv = booked(inv, "P1", "50.00", T.SUCCESS)
    inv = booked(inv, "P1", "50.00", T.FAILED)  # e.g. a SEPA storno
    assert inv.amount_credit == D("50.00")
    assert inv.amount_admin_costs_paid == ZERO
    assert inv.open_amount_incl_admin_costs == D("115.00")


# --- transaction repeats ---------------------------------------------------------------------


def test_a_transaction_emits_changed_transaction_status() -> None:
    outcome = tx(make_invoice(), "P1", "12.50", T.SUCCESS, service="creditcard")
    assert outcome.errors == []
    assert [(e.name, e.parameters) for e in outcome.events] == [
        (
            InvoiceEventName.CHANGED_TRANSACTION_STATUS,
            {
                "TransactionKey": "P1",
                "Status": "success",
                "Amount": "12.50",
                "Service": "creditcard",
            },
        )
    ]


@pytest.mark.parametrize("status", list(T))
def test_a_repeated_identical_transaction_is_a_no_op(status: TransactionStatus) -> None:
    inv = booked(make_invoice(), "P1", "10.00", status)
    outcome = tx(inv, "P1", "10.00", status)
    assert outcome.invoice is None
    assert outcome.events == []
    assert outcome.errors == []


def test_pending_then_success_on_the_same_key_counts_once() -> None:
    inv = booked(make_invoice(), "SEPA1", "40.00", T.PENDING, is_slow=True)
    assert inv.amount_pending_slow == D("40.00")
    assert inv.amount_paid == ZERO
    assert inv.open_amount == D("100.00")
    inv = booked(inv, "SEPA1", "40.00", T.SUCCESS, is_slow=True)
    assert inv.amount_pending_slow == ZERO
    assert inv.amount_paid == D("40.00")
    assert inv.open_amount == D("60.00")
    assert tx(inv, "SEPA1", "40.00", T.SUCCESS, is_slow=True).invoice is None


def test_a_fast_pending_transaction_is_not_pending_slow() -> None:
    inv = booked(make_invoice(), "P1", "40.00", T.PENDING, is_slow=False)
    assert inv.amount_pending_slow == ZERO


def test_a_pending_that_fails_books_nothing() -> None:
    inv = booked(make_invoice(), "SEPA1", "40.00", T.PENDING, is_slow=True)
    inv = booked(inv, "SEPA1", "40.00", T.FAILED, is_slow=True)
    assert inv.amount_pending_slow == ZERO
    assert inv.amount_paid == ZERO
    assert inv.amount_credit == ZERO


@pytest.mark.parametrize("outcome_status", [T.SUCCESS, T.FAILED, T.REFUNDED, T.CHARGEBACK])
def test_a_late_pending_after_the_outcome_is_ignored(outcome_status: TransactionStatus) -> None:
    inv = booked(make_invoice(), "P1", "10.00", T.SUCCESS)
    if outcome_status != T.SUCCESS:
        inv = booked(inv, "P1", "10.00", outcome_status)
    outcome = tx(inv, "P1", "10.00", T.PENDING, is_slow=True)
    assert outcome.invoice is None
    assert outcome.events == []
    assert outcome.errors == []
    assert inv.transactions["P1"].status == outcome_status


def test_a_negative_transaction_amount_is_refused() -> None:
    outcome = tx(make_invoice(), "P1", "-1.00", T.SUCCESS)
    assert outcome.invoice is None
    assert [(e.field, e.code) for e in outcome.errors] == [("payload.amount", "negative")]


@pytest.mark.parametrize("status", [s for s in S if s != S.NOT_SET])
def test_payments_are_booked_in_every_status(status: InvoiceStatus) -> None:
    inv = booked(make_invoice(status), "P1", "10.00", T.SUCCESS)
    assert inv.status == status
    assert inv.amount_paid == D("10.00")


def test_a_replayed_success_and_refund_credit_once() -> None:
    inv = booked(make_invoice(), "P1", "10.00", T.SUCCESS)
    inv = booked(inv, "P1", "10.00", T.REFUNDED)
    for status in (T.SUCCESS, T.REFUNDED):  # the same two messages again, late
        inv = tx(inv, "P1", "10.00", status).invoice or inv
    assert inv.amount_paid - inv.amount_credit == ZERO
    assert inv.open_amount == D("100.00")


def test_a_reversed_then_refunded_payment_is_credited_once() -> None:
    inv = booked(make_invoice(), "P1", "10.00", T.SUCCESS)
    inv = booked(inv, "P1", "10.00", T.FAILED)
    inv = tx(inv, "P1", "10.00", T.REFUNDED).invoice or inv
    assert inv.amount_paid - inv.amount_credit == ZERO
    assert inv.open_amount == D("100.00")


# --- credit notes ------------------------------------------------------------------------------


def credit(inv: domain.Invoice, number: str, amount: str) -> domain.Outcome:
    return domain.create_credit_note(inv, number=number, amount=D(amount), description="goodwill")


def test_a_credit_note_reduces_the_debt() -> None:
    inv = make_invoice()
    outcome = credit(inv, "CN-1", "30.00")
    assert outcome.errors == []
    assert outcome.invoice is not None
    assert inv.credit_notes == []  # the input is not mutated
    after = outcome.invoice
    assert after.amount_credit_notes == D("30.00")
    assert after.open_amount == D("70.00")
    assert after.creditable == D("70.00")
    assert [(e.name, e.parameters) for e in outcome.events] == [
        (InvoiceEventName.CREATED_CREDIT_NOTE, {"CreditNoteNumber": "CN-1", "Amount": "30.00"})
    ]


def test_credit_notes_never_exceed_what_is_creditable() -> None:
    inv = credit(make_invoice(), "CN-1", "60.00").invoice
    assert inv is not None
    refused = credit(inv, "CN-2", "40.01")
    assert refused.invoice is None
    assert [(e.field, e.code) for e in refused.errors] == [("payload.amount", "exceeds_creditable")]
    rest = credit(inv, "CN-2", "40.00").invoice
    assert rest is not None
    assert rest.creditable == ZERO
    assert rest.open_amount == ZERO
    assert rest.is_paid
    assert [e.code for e in credit(rest, "CN-3", "0.01").errors] == ["exceeds_creditable"]


def test_creditable_ignores_payments() -> None:
    """What may be credited is AmountDebit - AmountCreditNotes; a paid invoice can be
    credited in full before a refund (docs/invoices.md), showing as an overpayment."""
    inv = booked(make_invoice(), "P1", "100.00", T.SUCCESS)
    after = credit(inv, "CN-1", "100.00").invoice
    assert after is not None
    assert after.open_amount == D("-100.00")
    after = booked(after, "R1", "100.00", T.REFUNDED)
    assert after.open_amount == ZERO
    assert after.is_paid


@pytest.mark.parametrize(
    ("amount", "code"),
    [("0", "not_positive"), ("0.00", "not_positive"), ("-5.00", "negative"),
     ("1.001", "too_many_decimals")],
)  # fmt: skip
def test_a_credit_note_amount_must_be_positive_money(amount: str, code: str) -> None:
    outcome = credit(make_invoice(), "CN-1", amount)
    assert outcome.invoice is None
    assert [(e.field, e.code) for e in outcome.errors] == [("payload.amount", code)]


def test_the_same_credit_note_again_is_a_no_op() -> None:
    inv = credit(make_invoice(), "CN-1", "30.00").invoice
    assert inv is not None
    again = credit(inv, "CN-1", "30.00")
    assert again.invoice is None
    assert again.events == []
    assert again.errors == []
    # even once nothing is creditable any more
    full = credit(make_invoice(), "CN-1", "100.00").invoice
    assert full is not None
    assert credit(full, "CN-1", "100.00").errors == []


def test_the_same_credit_note_number_with_another_amount_is_refused() -> None:
    inv = credit(make_invoice(), "CN-1", "30.00").invoice
    assert inv is not None
    outcome = credit(inv, "CN-1", "31.00")
    assert outcome.invoice is None
    assert [(e.field, e.code) for e in outcome.errors] == [
        ("payload.credit_note_number", "duplicate_credit_note_number")
    ]


def test_a_rejected_invoice_cannot_be_credited() -> None:
    outcome = credit(make_invoice(S.REJECTED), "CN-1", "10.00")
    assert outcome.invoice is None
    assert [(e.field, e.code) for e in outcome.errors] == [
        ("payload.original_invoice_number", "invoice_rejected")
    ]


@settings(max_examples=200, deadline=None)
@given(debit=cents, notes=st.lists(cents, min_size=1, max_size=8))
def test_credit_notes_sum_to_at_most_the_debit(debit: Decimal, notes: list[Decimal]) -> None:
    inv = make_invoice(amount_debit=debit)
    for i, amount in enumerate(notes):
        outcome = credit(inv, f"CN-{i}", str(amount))
        if amount > inv.creditable:
            assert [e.code for e in outcome.errors] == ["exceeds_creditable"]
        else:
            assert outcome.invoice is not None
            inv = outcome.invoice
        assert ZERO <= inv.amount_credit_notes <= debit
        assert_equations(inv)
