"""A paid payment plan lifts 22 on its originals, and what comes after (issue 13 item 1;
docs/invoices.md "A paid plan releases its originals"): the rule is `plans.settle`,
put together with the forwarded payments by `commands.transaction_status_changed`."""

from __future__ import annotations

from decimal import Decimal

from contracts.invoice import InvoiceEventName, InvoiceStatus
from contracts.payments import TransactionStatus
from services.invoice import domain
from services.invoice.domain import commands, plans
from tests.unit.test_invoice_commands import at, created, message, plan_of, transaction

S = InvoiceStatus
T = TransactionStatus
D = Decimal


def status_events(change: domain.Change) -> list[dict[str, str]]:
    return [
        n.event.parameters for n in change.events if n.event.name == InvoiceEventName.CHANGED_STATUS
    ]


def pay_plan(members: domain.PlanInvoices) -> domain.Result:
    """Pay every installment in turn; returns the result of the last payment."""
    result = domain.Result()
    for i, installment in enumerate(list(members.installments)):
        evt = transaction(
            installment.invoice_number, f"T-{i}", str(installment.amount_debit), T.SUCCESS
        )
        result = commands.transaction_status_changed(
            installment, message(evt, at(12, 1 + i)), members
        )
        saved = {c.invoice.invoice_number: c.invoice for c in result.changes}
        members.originals = [saved.get(o.invoice_number, o) for o in members.originals]
        members.installments = [saved.get(o.invoice_number, o) for o in members.installments]
    return result


def test_a_paid_plan_releases_its_originals_paid() -> None:
    _, members = plan_of([created("A"), created("B")])
    last = pay_plan(members)
    assert members.plan.status == "paid"
    # one change per original: the forwarded payment, then ChangedStatus 10
    assert [c.invoice.invoice_number for c in last.changes] == ["PP-1-2", "A", "B"]
    for change in last.changes[1:]:
        assert [n.event.name for n in change.events] == [
            InvoiceEventName.CHANGED_TRANSACTION_STATUS,
            InvoiceEventName.CHANGED_STATUS,
        ]
        assert status_events(change) == [{"StatusCode": "10", "Reason": "payment plan PP-1 paid"}]
        original = change.invoice
        assert (original.status, original.is_paid) == (S.ACTIVE, True)
        assert original.plan_dossier == "PP-1"
        assert original.desired_timer() is None  # paid: no step runs
    assert [o.status for o in members.originals] == [S.ACTIVE, S.ACTIVE]


def test_an_original_the_last_payment_does_not_touch_is_released_too() -> None:
    # A (121) is paid by the first installment; the last one only pays B.
    _, members = plan_of([created("A"), created("B", amount_debit=D("10.00"), amount_vat=D(0))])
    members.installments = [
        members.installments[0].model_copy(update={"amount_debit": D("131.00")}),
        members.installments[1].model_copy(update={"amount_debit": D("10.00")}),
    ]
    last = pay_plan(members)
    assert [c.invoice.invoice_number for c in last.changes] == ["PP-1-2", "B", "A"]
    released = last.changes[2]
    assert [n.event.name for n in released.events] == [InvoiceEventName.CHANGED_STATUS]
    assert released.invoice.status == S.ACTIVE and released.invoice.is_paid


def test_a_later_chargeback_on_an_original_reopens_it_where_its_scheme_stopped() -> None:
    # A was half paid by the debtor directly before the plan took over the rest.
    direct = commands.transaction_status_changed(
        created("A"), message(transaction("A", "D-1", "60.00", T.SUCCESS), at(11, 2))
    )
    _, members = plan_of([direct.changes[-1].invoice], count=1)
    pay_plan(members)
    [released] = members.originals
    assert (released.status, released.is_paid) == (S.ACTIVE, True)
    charged_back = commands.transaction_status_changed(
        released, message(transaction("A", "D-1", "60.00", T.CHARGEBACK), at(12, 20))
    )
    assert charged_back.errors == []
    [change] = charged_back.changes
    reopened = change.invoice
    assert (reopened.status, reopened.open_amount) == (S.ACTIVE, D("60.00"))
    # the scheme resumes: the next step's timer is planned (shifted by the time in 22)
    assert change.timer is not None and change.timer.step_index == 1
    # and it is no longer stuck: pause, an agency case, or a new plan all work again
    assert domain.change_status(reopened, "PauseInvoice", at(12, 21)).errors == []
    to_agency = domain.set_collection_status(
        reopened, S.TRANSFERRED_TO_COLLECTION_AGENCY, "C-1", at(12, 21)
    )
    assert to_agency.errors == []


def test_a_refund_on_an_installment_of_a_paid_plan_pauses_its_originals_again() -> None:
    _, members = plan_of([created("A")], count=1)
    pay_plan(members)
    [installment] = members.installments
    assert members.originals[0].status == S.ACTIVE
    refunded = commands.transaction_status_changed(
        installment,
        message(transaction("PP-1-1", "T-0", "131.00", T.REFUNDED), at(12, 10)),
        members,
    )
    assert members.plan.status == "active"
    assert [c.invoice.invoice_number for c in refunded.changes] == ["PP-1-1", "A"]
    original = refunded.changes[1]
    assert (original.invoice.status, original.invoice.open_amount) == (
        S.PAUSED_BY_PAYMENT_PLAN,
        D("121.00"),
    )
    assert status_events(original) == [
        {"StatusCode": "22", "Reason": "payment plan PP-1 open again"}
    ]
    assert original.invoice.desired_timer() is None  # the installment carries the debt


def test_settling_leaves_originals_that_moved_on_alone() -> None:
    _, members = plan_of([created("A"), created("B"), created("C")])
    pay_plan(members)
    a, b, c = members.originals
    written_off = domain.change_status(a, "WriteOffInvoice", at(12, 20)).invoice
    at_agency = domain.set_collection_status(
        c, S.TRANSFERRED_TO_COLLECTION_AGENCY, "C-1", at(12, 20)
    ).invoice
    assert written_off is not None and at_agency is not None
    unpaid = [i.model_copy(update={"amount_paid": D(0)}) for i in members.installments]
    moves = plans.settle(members.plan, unpaid, [written_off, b, at_agency], at(12, 21))
    assert members.plan.status == "active"
    assert list(moves) == ["B"]  # only the original that is active again
    assert moves["B"].errors == []
    assert moves["B"].invoice is not None
    assert moves["B"].invoice.status == S.PAUSED_BY_PAYMENT_PLAN
