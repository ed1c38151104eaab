"""SEPA recollection (issue 13 item 12; docs/invoices.md "SEPA recollection"): the rule
is services/invoice/domain/recollect.py, put together with the booking by
`commands.transaction_status_changed` (and `create_invoice` for a combined invoice)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from contracts.invoice import CreateCombinedInvoice, CreateInvoice, InvoiceEventName
from contracts.payments import Transaction as PaymentTransaction
from contracts.payments import TransactionStatus
from services.invoice import domain
from services.invoice.domain import commands
from tests.unit.test_invoice_commands import (
    CREATED,
    Scheme,
    at,
    create_payload,
    message,
    transaction,
)

T = TransactionStatus
D = Decimal
E = InvoiceEventName

#: A reminder 14 days after the due date (2026-11-15): due 2026-11-29.
STEPS = [domain.SchemeStepState(index=1, action="Reminder", days=14, channels=["email"])]
TWICE = domain.RecollectionState(attempts=2, days_between=5)


def created(recollection: domain.RecollectionState | None = TWICE) -> domain.Invoice:
    result = commands.create_invoice(
        message(CreateInvoice(**create_payload("INV-1")), CREATED),
        existing=None,
        scheme=Scheme(STEPS, recollection),
        parked=[],
    )
    return result.changes[-1].invoice


def sepa(invoice: domain.Invoice, key: str, status: T, when: Any, **fields: Any) -> domain.Result:
    fields.setdefault("is_slow", True)
    fields.setdefault("service", "sepadirectdebit")
    evt = transaction("INV-1", key, fields.pop("amount", "121.00"), status, **fields)
    return commands.transaction_status_changed(invoice, message(evt, when))


def pending_then_failed(
    invoice: domain.Invoice, key: str, day: int, **fields: Any
) -> domain.Result:
    """A direct debit with a mandate goes pending on the 2nd and fails on `day`."""
    pending = sepa(invoice, key, T.PENDING, at(11, 2), mandate_reference="MANDATE-1", **fields)
    return sepa(pending.changes[-1].invoice, key, T.FAILED, at(11, day))


def names(change: domain.Change) -> list[E]:
    return [n.event.name for n in change.events]


def test_a_failed_direct_debit_is_collected_again_with_its_mandate() -> None:
    result = pending_then_failed(created(), "DD-1", 5)
    assert result.errors == []
    [change] = result.changes  # the failure and the recollection: one change
    assert names(change) == [E.CHANGED_TRANSACTION_STATUS, E.CREATED_RECOLLECT]
    assert change.events[1].event.parameters == {
        "TransactionKey": "DD-1",
        "Attempt": "1",
        "Amount": "121.00",
        "CollectDate": "2026-11-10",
    }
    assert change.requests == [
        domain.CollectRequest(
            amount=D("121.00"),
            service="sepadirectdebit",
            mandate_reference="MANDATE-1",  # the failed transaction's, from its pending status
            collect_date=date(2026, 11, 10),
            attempt=1,
        )
    ]
    assert change.invoice.recollect_attempts == 1


def test_recollection_stops_when_out_of_attempts() -> None:
    first = pending_then_failed(created(), "DD-1", 5).changes[-1].invoice
    # the engine's recollection is a transaction of its own; it fails too
    second = pending_then_failed(first, "DD-2", 12)
    [change] = second.changes
    assert names(change) == [E.CHANGED_TRANSACTION_STATUS, E.CREATED_RECOLLECT]
    assert change.events[1].event.parameters["Attempt"] == "2"
    assert change.requests[0].collect_date == date(2026, 11, 17)  # type: ignore[union-attr]
    third = pending_then_failed(change.invoice, "DD-3", 18)
    [last] = third.changes
    assert names(last) == [E.CHANGED_TRANSACTION_STATUS]
    assert last.requests == [] and last.invoice.recollect_attempts == 2


def test_no_recollection_that_would_not_come_before_the_next_step() -> None:
    # A direct debit of part of the invoice (it holds nothing) fails on the 26th: the
    # collect date, Dec 1, is not before the reminder due on Nov 29.
    late = pending_then_failed(created(), "DD-1", 26, amount="100.00")
    assert names(late.changes[-1]) == [E.CHANGED_TRANSACTION_STATUS]
    assert late.changes[-1].requests == []


def test_the_time_a_pending_direct_debit_held_the_scheme_counts() -> None:
    # The whole amount pending from Nov 2 to Nov 26 held the scheme 24 days: the
    # reminder moves to Dec 23, so a recollection on Dec 1 comes before it.
    held = pending_then_failed(created(), "DD-1", 26)
    [change] = held.changes
    assert names(change) == [E.CHANGED_TRANSACTION_STATUS, E.CREATED_RECOLLECT]
    assert change.requests[0].collect_date == date(2026, 12, 1)  # type: ignore[union-attr]


def test_recollection_stops_when_the_invoice_is_paused() -> None:
    pending = sepa(created(), "DD-1", T.PENDING, at(11, 2), mandate_reference="MANDATE-1")
    paused = domain.change_status(pending.changes[-1].invoice, "PauseInvoice", at(11, 3)).invoice
    assert paused is not None
    failed = sepa(paused, "DD-1", T.FAILED, at(11, 5))
    assert names(failed.changes[-1]) == [E.CHANGED_TRANSACTION_STATUS]
    assert failed.changes[-1].requests == []


def test_recollection_stops_when_the_invoice_is_paid() -> None:
    pending = sepa(created(), "DD-1", T.PENDING, at(11, 2), mandate_reference="MANDATE-1")
    paid = (
        commands.transaction_status_changed(
            pending.changes[-1].invoice,
            message(transaction("INV-1", "IDEAL-1", "121.00", T.SUCCESS), at(11, 3)),
        )
        .changes[-1]
        .invoice
    )
    assert paid.is_paid
    failed = sepa(paid, "DD-1", T.FAILED, at(11, 5))
    assert failed.changes[-1].requests == []


@pytest.mark.parametrize(
    ("recollection", "fields"),
    [
        pytest.param(None, {}, id="the scheme does not recollect"),
        pytest.param(TWICE, {"is_slow": False}, id="not a direct debit"),
        pytest.param(TWICE, {"mandate_reference": None}, id="no mandate"),
    ],
)
def test_what_is_never_recollected(
    recollection: domain.RecollectionState | None, fields: dict[str, Any]
) -> None:
    invoice = created(recollection)
    mandate = fields.pop("mandate_reference", "MANDATE-1")
    pending = sepa(invoice, "DD-1", T.PENDING, at(11, 2), mandate_reference=mandate, **fields)
    failed = sepa(pending.changes[-1].invoice, "DD-1", T.FAILED, at(11, 5), **fields)
    assert names(failed.changes[-1]) == [E.CHANGED_TRANSACTION_STATUS]
    assert failed.changes[-1].requests == []


def test_a_failed_repeat_asks_nothing_again() -> None:
    failed = pending_then_failed(created(), "DD-1", 5).changes[-1].invoice
    again = sepa(failed, "DD-1", T.FAILED, at(11, 6))
    assert again.changes == []


def test_only_what_is_open_is_collected_again() -> None:
    part = (
        commands.transaction_status_changed(
            created(), message(transaction("INV-1", "IDEAL-1", "100.00", T.SUCCESS), at(11, 1))
        )
        .changes[-1]
        .invoice
    )
    result = pending_then_failed(part, "DD-1", 5)
    [change] = result.changes
    assert change.requests[0].amount == D("21.00")  # type: ignore[union-attr]


def test_a_combined_invoice_whose_first_direct_debit_failed_is_collected_again() -> None:
    cmd = CreateCombinedInvoice(
        **create_payload("INV-1"),
        transaction=PaymentTransaction(
            transaction_key="DD-0",
            service="sepadirectdebit",
            amount=D("121.00"),
            status=T.FAILED,
            is_slow=True,
            mandate_reference="MANDATE-0",
        ),
    )
    result = commands.create_invoice(
        message(cmd, CREATED), existing=None, scheme=Scheme(STEPS, TWICE), parked=[]
    )
    last = result.changes[-1]
    assert names(last) == [E.CHANGED_TRANSACTION_STATUS, E.CREATED_RECOLLECT]
    assert last.requests[0].mandate_reference == "MANDATE-0"  # type: ignore[union-attr]
    assert last.invoice.recollection == TWICE
