"""The debt collection case, pure (services/collection/domain.py): every allowed and
refused move, the configuration choice, and the money booked."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.collection import CaseEnvironment, CaseEventName, CaseState, ConditionAction
from contracts.invoice import CollectionStatusCode as Code
from services.collection.domain import (
    ALLOWED,
    Case,
    Choice,
    Condition,
    Configuration,
    LineItem,
    Outcome,
    add_collected,
    agency_accepted,
    agency_processed,
    agency_refused,
    attach_document,
    choose,
    close,
    invoice_settled,
    line_items_error,
    mark_prepared,
    review,
)

D = Decimal
TRANSFER = Choice("cfg", "AG-1", ConditionAction.TRANSFER)


def case(state: CaseState = CaseState.PREPARING, **changes: object) -> Case:
    values: dict[str, object] = {
        "key": "C-1",
        "state": state,
        "currency": "EUR",
        "amount": D("100.00"),
        "invoice_number": "INV-1",
    }
    values.update(changes)
    return Case(**values)  # type: ignore[arg-type]


#: Each command, applied with ordinary data.
COMMANDS: dict[str, Callable[[Case], Outcome]] = {
    "AttachDocument": attach_document,
    "MarkAsPrepared": lambda c: mark_prepared(c, TRANSFER),
    "ReviewCase": lambda c: review(c, True, "AG-1", None),
    "AgencyAccepted": lambda c: agency_accepted(c, "REF"),
    "AgencyRefused": lambda c: agency_refused(c, "no"),
    "AgencyProcessed": lambda c: agency_processed(c, True, D("100.00")),
    "AddCollectedAmount": lambda c: add_collected(c, D("10.00"), None),
    "CloseCase": lambda c: close(c, "by hand"),
}

#: Every (command, state) written out: True where the move is allowed.
MOVES = {
    ("AttachDocument", CaseState.PREPARING): True,
    ("MarkAsPrepared", CaseState.PREPARING): True,
    ("ReviewCase", CaseState.REVIEWING): True,
    ("AgencyAccepted", CaseState.PROCESSING): True,
    ("AgencyRefused", CaseState.PROCESSING): True,
    ("AgencyProcessed", CaseState.PROCESSING): True,
    ("AddCollectedAmount", CaseState.PROCESSING): True,
    ("CloseCase", CaseState.PREPARING): True,
    ("CloseCase", CaseState.REVIEWING): True,
    ("CloseCase", CaseState.PROCESSING): True,
}


@pytest.mark.parametrize("state", list(CaseState))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_move_is_allowed_or_refused_as_written(command: str, state: CaseState) -> None:
    allowed = MOVES.get((command, state), False)
    assert (state in ALLOWED[command]) is allowed
    outcome = COMMANDS[command](case(state, transferred=state == CaseState.PROCESSING))
    if allowed:
        assert outcome.errors == ()
        assert outcome.case is not None
    else:
        assert [(e.field, e.code) for e in outcome.errors] == [("payload.case_key", "wrong_state")]
        assert outcome.case is None and not outcome.transfer and outcome.booked == 0


def test_prepared_with_a_transfer_condition_goes_to_the_agency_at_once() -> None:
    outcome = mark_prepared(case(), TRANSFER)
    assert outcome.case is not None
    assert (outcome.case.state, outcome.case.agency_code) == (CaseState.PROCESSING, "AG-1")
    assert outcome.transfer
    assert outcome.collection_status == Code.TRANSFERRED_TO_COLLECTION_AGENCY
    assert [e for e, _ in outcome.events] == [CaseEventName.PREPARED, CaseEventName.TRANSFERRED]


def test_prepared_for_review_or_without_an_agency_waits_in_review() -> None:
    for choice in (
        Choice("cfg", "AG-1", ConditionAction.REVIEW),
        Choice(None, None, ConditionAction.TRANSFER),
    ):
        outcome = mark_prepared(case(), choice)
        assert outcome.case is not None and outcome.case.state == CaseState.REVIEWING
        assert not outcome.transfer and outcome.collection_status is None


def test_review_approves_to_the_agency_or_rejects() -> None:
    waiting = case(CaseState.REVIEWING)
    assert review(waiting, True, None, None).errors[0].code == "agency_required"
    approved = review(waiting, True, "AG-2", "ok")
    assert approved.case is not None and approved.case.agency_code == "AG-2" and approved.transfer
    rejected = review(waiting, False, None, "not worth it")
    assert rejected.case is not None and rejected.case.state == CaseState.FAILED
    assert rejected.events == ((CaseEventName.REJECTED, "not worth it"),)


def test_agency_answers_set_the_invoice_status() -> None:
    held = case(CaseState.PROCESSING, agency_code="AG-1", transferred=True)
    assert agency_accepted(held, "X").collection_status == Code.ACCEPTED_BY_COLLECTION_AGENCY
    refused = agency_refused(held, "no")
    assert refused.collection_status == Code.REFUSED_BY_COLLECTION_AGENCY
    assert refused.case is not None and refused.case.state == CaseState.FAILED
    done = agency_processed(held, False, D("40.00"))
    assert done.collection_status == Code.PROCESSED_BY_COLLECTION_AGENCY_INCOMPLETE
    assert done.case is not None and done.case.state == CaseState.CLOSED


def test_a_test_case_never_changes_the_invoice() -> None:
    held = case(CaseState.PROCESSING, environment=CaseEnvironment.TEST, transferred=True)
    assert agency_accepted(held, None).collection_status is None
    assert mark_prepared(case(environment=CaseEnvironment.TEST), TRANSFER).collection_status is None


@given(
    parts=st.lists(st.integers(1, 10_000), max_size=5),
    extra=st.integers(-5_000, 5_000),
)
def test_collected_money_is_booked_once(parts: list[int], extra: int) -> None:
    held = case(CaseState.PROCESSING, transferred=True)
    booked = D(0)
    for i, cents in enumerate(parts):
        for _ in range(2):  # every report arrives twice, with its reference
            outcome = add_collected(held, D(cents).scaleb(-2), f"R-{i}")
            assert outcome.case is not None
            held, booked = outcome.case, booked + outcome.booked
    assert booked == held.collected_amount == sum(D(c).scaleb(-2) for c in parts)
    # AgencyProcessed reports the agency's total: only what lies above is booked.
    total = max(D(0), held.collected_amount + D(extra).scaleb(-2))
    done = agency_processed(held, True, total)
    assert done.case is not None
    assert booked + done.booked == max(total, held.collected_amount)


def test_closing_a_transferred_case_recalls_it() -> None:
    held = case(CaseState.PROCESSING, agency_code="AG-1", transferred=True)
    outcome = close(held, "settled with the debtor")
    assert outcome.recall == "settled with the debtor"
    assert [e for e, _ in outcome.events] == [CaseEventName.RECALLED, CaseEventName.CLOSED]
    assert close(case(), "dup").recall is None


def test_an_invoice_settled_elsewhere_closes_an_open_case_and_leaves_a_finished_one() -> None:
    held = case(CaseState.PROCESSING, transferred=True)
    assert invoice_settled(held, "paid directly").recall == "paid directly"
    assert invoice_settled(case(CaseState.CLOSED), "paid").case is None


def config(
    key: str, priority: int, *conditions: tuple[str, ConditionAction], **extra: object
) -> Configuration:
    return Configuration(
        key=key,
        agency_code=f"AG-{key}",
        conditions=tuple(Condition(D(amount), action) for amount, action in conditions),
        priority=priority,
        **extra,  # type: ignore[arg-type]
    )


def test_the_first_configuration_whose_condition_matches_decides() -> None:
    T, R = ConditionAction.TRANSFER, ConditionAction.REVIEW
    configs = [
        config("big", 1, ("1000", T)),
        config("main", 2, ("0", R), ("100", T)),
        config("fallback", 9, is_default=True),
    ]
    assert choose(configs, D("5000")) == Choice("big", "AG-big", T)
    assert choose(configs, D("150")) == Choice("main", "AG-main", T)  # highest min met
    assert choose(configs, D("50")) == Choice("main", "AG-main", R)
    assert choose(configs[2:], D("50")) == Choice("fallback", "AG-fallback", R)
    assert choose([], D("50")) == Choice(None, None, R)
    assert choose(configs, D("5000"), only="main") == Choice("main", "AG-main", T)
    assert choose(configs, D("5"), only="big") == Choice("big", "AG-big", R)


def test_line_items_must_add_up_to_the_amount() -> None:
    items = [LineItem(D(2), D("10.00"), D(21)), LineItem(D(1), D("0.99"), D(0))]
    assert line_items_error(items, D("25.19"), 2) is None
    error = line_items_error(items, D("25.20"), 2)
    assert error is not None and (error.field, error.code) == (
        "payload.line_items",
        "total_mismatch",
    )


def test_every_debtor_a_snapshot_holds_makes_an_agency_address() -> None:
    from contracts.debtor import DebtorSnapshot  # noqa: PLC0415
    from services.collection.handlers import _billing_address  # noqa: PLC0415

    def event(**debtor: object) -> object:
        snapshot = DebtorSnapshot.model_validate({"code": "D-1", **debtor})

        class Invoice:
            pass

        class Event:
            pass

        invoice, evt = Invoice(), Event()
        invoice.debtor = snapshot  # type: ignore[attr-defined]
        evt.invoice = invoice  # type: ignore[attr-defined]
        return evt

    address = {"street": "Dorpsstraat", "city": "Utrecht", "country": "NL"}
    long_names = {"first_name": "J" * 100, "last_name": "J" * 100}
    found = _billing_address(event(person=long_names, address=address))  # type: ignore[arg-type]
    assert found is not None and len(found.name) == 200  # 201 characters, cut to fit
    mobile = {"mobile": "+31" + "6" * 29}  # as long as a debtor's may be
    found = _billing_address(event(person=long_names, address=address, phone=mobile))  # type: ignore[arg-type]
    assert found is not None and found.mobile_phone == mobile["mobile"]
    assert _billing_address(event(person=long_names)) is None  # type: ignore[arg-type]
