"""The invoice service on the real broker and Postgres: each command's events and answers."""

from __future__ import annotations

from typing import Any

from tests.support.invoices import (
    InvoiceClient,
    debtor,
    inv,
    invoice_payload,
    service,
)
from tests.support.kafka import poll_until

__all__ = ["inv", "service"]  # the fixtures


def amounts(snapshot: dict[str, object]) -> dict[str, object]:
    keys = (
        "amount_debit",
        "amount_paid",
        "amount_credit",
        "amount_credit_notes",
        "amount_admin_costs",
        "amount_pending_slow",
        "open_amount",
        "open_amount_incl_admin_costs",
        "is_paid",
    )
    return {k: snapshot[k] for k in keys}


async def create(inv: InvoiceClient, number: str, **overrides: object) -> dict[str, object]:
    answer = await inv.answer(
        await inv.command("CreateInvoice", invoice_payload(number, **overrides))
    )
    assert answer["type"] == "CommandAccepted", answer
    return answer


# --- creation ------------------------------------------------------------------------------


async def test_create_invoice_is_active_with_its_status_event(inv: InvoiceClient) -> None:
    answer = await create(inv, "INV-1")
    [event] = await inv.events("INV-1", 1)
    assert event["event"] == "ChangedStatus" and event["event_code"] == 2
    assert event["event_category"] == "FinancialChange"
    assert event["event_parameters"] == [{"key": "StatusCode", "value": "10"}]
    assert event["sequence"] == 1
    snap = event["invoice"]
    assert snap["invoice_key"] == answer["payload"]["keys"]["invoice_key"]
    assert snap["status_code"] == 10 and snap["scheme_key"] == "DefaultCM1"
    assert snap["scheme_version"] == 1 and snap["type"] == "RegularInvoice"
    assert snap["next_step_index"] == 1
    assert snap["next_step_due_at"] == "2026-11-01T00:00:00Z"
    assert amounts(snap) == {
        "amount_debit": "121.00",
        "amount_paid": "0.00",
        "amount_credit": "0.00",
        "amount_credit_notes": "0.00",
        "amount_admin_costs": "0.00",
        "amount_pending_slow": "0.00",
        "open_amount": "121.00",
        "open_amount_incl_admin_costs": "121.00",
        "is_paid": False,
    }
    assert snap["debtor"]["code"] == "D-1"
    assert snap["debtor"]["unreachable"] == {
        "email": False,
        "mobile": False,
        "landline": False,
        "address": False,
    }


async def test_a_request_breaking_business_rules_becomes_a_rejected_invoice(
    inv: InvoiceClient,
) -> None:
    mid = await inv.command(
        "CreateInvoice",
        invoice_payload(
            "INV-BAD",
            due_date="2026-10-01",
            amount_debit="10.005",
            amount_vat="20.00",
            scheme_key="NoSuchScheme",
            currency="EUX",
        ),
    )
    answer = await inv.answer(mid)
    assert answer["type"] == "CommandRejected"
    codes = {(e["field"], e["code"]) for e in answer["payload"]["errors"]}
    assert codes == {
        ("payload.currency", "unknown_currency"),
        ("payload.due_date", "before_invoice_date"),
        ("payload.amount_vat", "vat_above_amount"),
        ("payload.scheme_key", "unknown_scheme"),
    }
    [event] = await inv.events("INV-BAD", 1)
    assert event["invoice"]["status_code"] == 90
    assert event["event_parameters"] == [{"key": "StatusCode", "value": "90"}]

    mid = await inv.command(
        "CreateInvoice", invoice_payload("INV-NEG", amount_debit="-5.00", amount_vat="0.00")
    )
    answer = await inv.answer(mid)
    assert {(e["field"], e["code"]) for e in answer["payload"]["errors"]} == {
        ("payload.amount_debit", "negative")
    }
    mid = await inv.command(
        "CreateInvoice", invoice_payload("INV-PREC", amount_debit="10.005", amount_vat="0.00")
    )
    answer = await inv.answer(mid)
    assert {(e["field"], e["code"]) for e in answer["payload"]["errors"]} == {
        ("payload.amount_debit", "too_many_decimals")
    }


async def test_the_same_number_with_the_same_content_repeats_the_answer(inv: InvoiceClient) -> None:
    first = await create(inv, "INV-2")
    again = await inv.answer(await inv.command("CreateInvoice", invoice_payload("INV-2")))
    assert again["type"] == "CommandAccepted"
    assert again["payload"]["keys"] == first["payload"]["keys"]
    other = await inv.answer(
        await inv.command("CreateInvoice", invoice_payload("INV-2", amount_debit="99.00"))
    )
    assert other["type"] == "CommandRejected"
    assert other["payload"]["errors"][0]["code"] == "duplicate_invoice_number"
    # Neither repeat emitted anything: a custom event is the invoice's second event.
    await inv.answer(
        await inv.command("CreateCustomEvent", {"invoice_number": "INV-2", "message": "x"})
    )
    events = await inv.events("INV-2", 2)
    assert [e["event"] for e in events] == ["ChangedStatus", "CustomEvent"]


async def test_a_redelivered_command_has_one_effect_and_the_same_answer(inv: InvoiceClient) -> None:
    await create(inv, "INV-3")
    payload = {"invoice_number": "INV-3", "message": "Call [DebtorCode] about [InvoiceNumber]"}
    mid = await inv.command("CreateCustomEvent", payload)
    await inv.command("CreateCustomEvent", payload, message_id=mid)
    await poll_until(lambda: _at_least(inv.answers(mid), 2), what="two answers")
    first, second = inv.answers(mid)[:2]
    assert first == second
    events = await inv.events("INV-3", 2)
    assert events[1]["event"] == "CustomEvent" and events[1]["event_code"] is None
    assert events[1]["event_parameters"] == [
        {"key": "CustomEventMessage", "value": "Call D-1 about INV-3"}
    ]
    assert len(inv.events_now("INV-3")) == 2


async def _at_least(items: list[object], n: int) -> list[object] | None:
    return items if len(items) >= n else None


async def test_combined_invoice_registers_invoice_and_first_transaction(inv: InvoiceClient) -> None:
    payload = invoice_payload("INV-4")
    payload["transaction"] = {
        "transaction_key": "T-1",
        "service": "ideal",
        "amount": "121.00",
        "status": "success",
    }
    answer = await inv.answer(await inv.command("CreateCombinedInvoice", payload))
    assert answer["type"] == "CommandAccepted"
    events = await inv.events("INV-4", 2)
    assert [(e["event"], e["sequence"]) for e in events] == [
        ("ChangedStatus", 1),
        ("ChangedTransactionStatus", 2),
    ]
    assert events[0]["invoice"]["is_paid"] is False
    assert events[1]["invoice"]["is_paid"] is True
    assert events[1]["invoice"]["next_step_index"] is None


# --- money ---------------------------------------------------------------------------------


async def test_partial_payment_then_the_rest_then_a_refund_reopens(inv: InvoiceClient) -> None:
    await create(inv, "INV-5")
    await inv.transaction("INV-5", "T-1", "21.00", "success")
    snap = await inv.snapshot("INV-5", 2)
    assert (snap["amount_paid"], snap["open_amount"], snap["is_paid"]) == ("21.00", "100.00", False)
    await inv.transaction("INV-5", "T-2", "100.00", "success")
    snap = await inv.snapshot("INV-5", 3)
    assert (snap["amount_paid"], snap["open_amount"], snap["is_paid"]) == ("121.00", "0.00", True)
    await inv.transaction("INV-5", "T-2", "100.00", "refunded")
    events = await inv.events("INV-5", 4)
    assert events[3]["event"] == "ChangedTransactionStatus" and events[3]["event_code"] == 1
    assert {"key": "Status", "value": "refunded"} in events[3]["event_parameters"]
    snap = events[3]["invoice"]
    assert amounts(snap) | {} == {
        "amount_debit": "121.00",
        "amount_paid": "121.00",
        "amount_credit": "100.00",
        "amount_credit_notes": "0.00",
        "amount_admin_costs": "0.00",
        "amount_pending_slow": "0.00",
        "open_amount": "100.00",
        "open_amount_incl_admin_costs": "100.00",
        "is_paid": False,
    }
    assert snap["status_code"] == 10


async def test_slow_pending_then_success_is_one_transaction(inv: InvoiceClient) -> None:
    await create(inv, "INV-6")
    await inv.transaction(
        "INV-6", "SEPA-1", "121.00", "pending", is_slow=True, service="sepadirectdebit"
    )
    snap = await inv.snapshot("INV-6", 2)
    assert (snap["amount_pending_slow"], snap["amount_paid"]) == ("121.00", "0.00")
    mid = await inv.transaction(
        "INV-6", "SEPA-1", "121.00", "success", is_slow=True, service="sepadirectdebit"
    )
    await inv.transaction(
        "INV-6",
        "SEPA-1",
        "121.00",
        "success",
        is_slow=True,
        service="sepadirectdebit",
        message_id=mid,
    )  # delivered twice
    snap = await inv.snapshot("INV-6", 3)
    assert (snap["amount_pending_slow"], snap["amount_paid"], snap["is_paid"]) == (
        "0.00",
        "121.00",
        True,
    )
    await inv.answer(
        await inv.command("CreateCustomEvent", {"invoice_number": "INV-6", "message": "m"})
    )
    assert [e["event"] for e in await inv.events("INV-6", 4)] == [
        "ChangedStatus",
        "ChangedTransactionStatus",
        "ChangedTransactionStatus",
        "CustomEvent",
    ]


async def test_the_snapshot_of_a_failed_slow_payment_shows_the_step_shifted_by_the_hold(
    inv: InvoiceClient,
) -> None:
    # DefaultCM1's step 1 is due on the invoice date, shifted by the time held: the
    # snapshot of the change that ends a hold already shows the shifted due time.
    created = await inv.answer(await inv.command("CreateInvoice", invoice_payload("INV-H")))
    assert created["type"] == "CommandAccepted", created
    assert (await inv.snapshot("INV-H", 1))["next_step_due_at"] == "2026-11-01T00:00:00Z"

    sepa = {"is_slow": True, "service": "sepadirectdebit"}
    await inv.transaction(
        "INV-H", "SEPA-1", "121.00", "pending", occurred_at="2026-11-02T00:00:00+00:00", **sepa
    )
    held = await inv.snapshot("INV-H", 2)
    assert (held["amount_pending_slow"], held["next_step_due_at"]) == ("121.00", None)

    await inv.transaction(
        "INV-H", "SEPA-1", "121.00", "failed", occurred_at="2026-11-12T00:00:00+00:00", **sepa
    )
    released = await inv.snapshot("INV-H", 3)
    assert released["amount_pending_slow"] == "0.00"
    assert (released["next_step_index"], released["next_step_due_at"]) == (
        1,
        "2026-11-11T00:00:00Z",  # the invoice date + the 10 days held
    )

    await inv.answer(
        await inv.command(
            "CreateCustomEvent",
            {"invoice_number": "INV-H", "message": "m"},
            occurred_at="2026-11-12T01:00:00+00:00",
        )
    )
    later = await inv.snapshot("INV-H", 4)
    assert later["next_step_due_at"] == released["next_step_due_at"]


async def test_overpayment_shows_as_negative_open_amount(inv: InvoiceClient) -> None:
    await create(inv, "INV-7")
    await inv.transaction("INV-7", "T-1", "150.00", "success")
    snap = await inv.snapshot("INV-7", 2)
    assert (snap["open_amount"], snap["is_paid"]) == ("-29.00", True)


async def test_a_transaction_before_its_invoice_is_kept_and_booked_at_creation(
    inv: InvoiceClient,
) -> None:
    await inv.transaction("INV-8", "T-early", "21.00", "success")
    await create(inv, "INV-8")
    events = await inv.events("INV-8", 2)
    assert [e["event"] for e in events] == ["ChangedStatus", "ChangedTransactionStatus"]
    assert events[1]["invoice"]["amount_paid"] == "21.00"


async def test_payments_on_a_rejected_invoice_are_recorded_and_reported(inv: InvoiceClient) -> None:
    await inv.answer(await inv.command("CreateInvoice", invoice_payload("INV-9", currency="EUX")))
    await inv.transaction("INV-9", "T-1", "121.00", "success")
    events = await inv.events("INV-9", 2)
    assert events[1]["event_code"] == 1
    assert events[1]["invoice"]["status_code"] == 90
    assert events[1]["invoice"]["amount_paid"] == "121.00"


# --- credit notes --------------------------------------------------------------------------


async def test_credit_note_reduces_the_debt_never_beyond_what_is_left(inv: InvoiceClient) -> None:
    await create(inv, "INV-10")
    ok = await inv.answer(
        await inv.command(
            "CreateCreditNote",
            {"original_invoice_number": "INV-10", "credit_note_number": "CN-1", "amount": "21.00"},
        )
    )
    assert ok["type"] == "CommandAccepted"
    event = (await inv.events("INV-10", 2))[1]
    assert (event["event"], event["event_code"], event["event_category"]) == (
        "CreatedCreditNote",
        3,
        "FinancialChange",
    )
    assert event["invoice"]["amount_credit_notes"] == "21.00"
    assert event["invoice"]["open_amount"] == "100.00"
    too_much = await inv.answer(
        await inv.command(
            "CreateCreditNote",
            {"original_invoice_number": "INV-10", "credit_note_number": "CN-2", "amount": "100.01"},
        )
    )
    assert too_much["type"] == "CommandRejected"
    assert too_much["payload"]["errors"][0]["code"] == "exceeds_creditable"
    missing = await inv.answer(
        await inv.command(
            "CreateCreditNote",
            {"original_invoice_number": "NOPE", "credit_note_number": "CN-3", "amount": "1.00"},
        )
    )
    assert missing["payload"]["errors"][0] == {
        "field": "payload.original_invoice_number",
        "code": "unknown_invoice",
        "message": "no invoice NOPE for this merchant",
    }


# --- status --------------------------------------------------------------------------------


async def test_pause_unpause_dispute_write_off_through_the_transition_table(
    inv: InvoiceClient,
) -> None:
    await create(inv, "INV-11")

    async def send(type_: str, number: str = "INV-11") -> dict[str, object]:
        return await inv.answer(
            await inv.command(type_, {"invoice_number": number, "reason": "test"})
        )

    assert (await send("PauseInvoice"))["type"] == "CommandAccepted"
    assert (await send("RegisterDispute"))["type"] == "CommandAccepted"
    refused = await send("UnpauseInvoice")
    assert refused["payload"]["errors"][0]["code"] == "paused_by_dispute"  # type: ignore[index]
    assert (await send("ResolveDispute"))["type"] == "CommandAccepted"
    assert (await send("WriteOffInvoice"))["type"] == "CommandAccepted"
    refused = await send("CancelInvoice")
    assert refused["payload"]["errors"][0]["code"] == "invalid_transition"  # type: ignore[index]
    events = await inv.events("INV-11", 5)
    assert [e["invoice"]["status_code"] for e in events] == [10, 20, 21, 10, 80]
    assert events[1]["event_parameters"] == [
        {"key": "StatusCode", "value": "20"},
        {"key": "Reason", "value": "test"},
    ]
    assert [e["event_category"] for e in events] == ["FinancialChange"] + ["Other"] * 4

    await inv.answer(await inv.command("CreateInvoice", invoice_payload("INV-12", currency="EUX")))
    refused = await send("WriteOffInvoice", "INV-12")
    assert refused["payload"]["errors"][0]["code"] == "invoice_rejected"  # type: ignore[index]


async def test_a_command_never_touches_another_merchants_invoice(inv: InvoiceClient) -> None:
    await create(inv, "INV-13")
    other = await inv.answer(
        await inv.command("PauseInvoice", {"invoice_number": "INV-13"}, website_key="another-shop")
    )
    assert other["payload"]["errors"][0]["code"] == "unknown_invoice"
    await inv.answer(
        await inv.command("CreateCustomEvent", {"invoice_number": "INV-13", "message": "m"})
    )
    assert [e["invoice"]["status_code"] for e in await inv.events("INV-13", 2)] == [10, 10]


async def test_debtor_update_shows_in_the_next_snapshot_without_a_push(inv: InvoiceClient) -> None:
    await create(inv, "INV-14")
    answer = await inv.answer(
        await inv.command(
            "AddOrUpdateDebtor",
            {"debtor": debtor(email="new@example.test"), "unreachable": {"email": True}},
            key=f"{inv.website_key}:debtor:D-1",
        )
    )
    assert answer["payload"]["keys"] == {"debtor_code": "D-1"}
    assert len(inv.events_now("INV-14")) == 1
    await inv.answer(
        await inv.command("CreateCustomEvent", {"invoice_number": "INV-14", "message": "m"})
    )
    snap = await inv.snapshot("INV-14", 2)
    assert snap["debtor"]["email"] == "new@example.test"
    assert snap["debtor"]["unreachable"]["email"] is True


async def test_collection_statuses_and_collected_amounts(inv: InvoiceClient) -> None:
    await create(inv, "INV-15")
    refused = await inv.answer(
        await inv.command(
            "SetCollectionStatus",
            {"invoice_number": "INV-15", "status_code": 72, "case_key": "C-1"},
        )
    )
    assert refused["payload"]["errors"][0]["code"] == "invalid_transition"
    collected = await inv.answer(
        await inv.command(
            "RegisterCollectedAmount",
            {"invoice_number": "INV-15", "amount": "50.00", "case_key": "C-1"},
        )
    )
    assert collected["type"] == "CommandAccepted"
    snap = await inv.snapshot("INV-15", 2)
    assert (snap["amount_paid"], snap["open_amount"]) == ("50.00", "71.00")


# --- payment plans -------------------------------------------------------------------------


async def create_plan(
    inv: InvoiceClient, dossier_number: str, included: list[str], **fields: Any
) -> dict[str, Any]:
    """The answer to the merchant's CreatePaymentPlan of the `included` invoices: monthly
    from 2026-12-01, no costs, on DefaultNone unless `fields` say otherwise."""
    payload = {
        "dossier_number": dossier_number,
        "included_invoice_numbers": included,
        "start_date": "2026-12-01",
        "interval": "month",
        "payment_plan_cost_amount": "0.00",
        "scheme_key": "DefaultNone",
        **fields,
    }
    key = f"{inv.website_key}:plan:{dossier_number}"
    return await inv.answer(await inv.command("CreatePaymentPlan", payload, key=key))


async def terminate_plan(inv: InvoiceClient, dossier_number: str) -> dict[str, Any]:
    key = f"{inv.website_key}:plan:{dossier_number}"
    payload = {"dossier_number": dossier_number}
    return await inv.answer(await inv.command("TerminatePaymentPlan", payload, key=key))


async def test_payment_plan_from_creation_to_settlement(inv: InvoiceClient) -> None:
    await create(
        inv,
        "OLD-1",
        amount_debit="100.00",
        amount_vat="0.00",
        invoice_date="2026-10-01",
        due_date="2026-10-15",
    )
    await create(inv, "OLD-2", amount_debit="50.00", amount_vat="0.00")
    answer = await create_plan(
        inv,
        "PP-1",
        ["OLD-1", "OLD-2"],
        installment_count=3,
        initial_amount="50.00",
        payment_plan_cost_amount="10.00",
    )
    assert answer["type"] == "CommandAccepted", answer
    assert answer["payload"]["keys"]["installment_numbers"] == "PP-1-1,PP-1-2,PP-1-3"
    assert (await inv.snapshot("OLD-1", 2))["status_code"] == 22
    assert (await inv.snapshot("OLD-2", 2))["status_code"] == 22
    installments = [await inv.snapshot(f"PP-1-{i}", 1) for i in (1, 2, 3)]
    assert [
        (s["type"], s["amount_debit"], s["due_date"], s["scheme_key"]) for s in installments
    ] == [
        ("PaymentPlanInstallment", "60.00", "2026-12-01", "DefaultNone"),
        ("PaymentPlanInstallment", "50.00", "2027-01-01", "DefaultNone"),
        ("PaymentPlanInstallment", "50.00", "2027-02-01", "DefaultNone"),
    ]
    # Paying the first installment: the plan cost first, the rest on the oldest original.
    await inv.transaction("PP-1-1", "P-1", "60.00", "success")
    old1 = await inv.snapshot("OLD-1", 3)
    assert (old1["amount_paid"], old1["open_amount"]) == ("50.00", "50.00")
    await inv.transaction("PP-1-2", "P-2", "50.00", "success")
    await inv.transaction("PP-1-3", "P-3", "50.00", "success")
    old1 = await inv.snapshot("OLD-1", 4)
    assert old1["is_paid"] is True
    old2 = await inv.snapshot("OLD-2", 3)
    assert (old2["amount_paid"], old2["is_paid"]) == ("50.00", True)
    refused = await terminate_plan(inv, "PP-1")
    assert refused["payload"]["errors"][0]["code"] == "plan_paid"


async def test_payment_plan_termination_cancels_open_installments(inv: InvoiceClient) -> None:
    await create(inv, "OLD-3", amount_debit="90.00", amount_vat="0.00")
    answer = await create_plan(
        inv, "PP-2", ["OLD-3"], installment_count=3, initial_amount="30.00", interval="week"
    )
    assert answer["type"] == "CommandAccepted"
    refused = await inv.answer(await inv.command("UnpauseInvoice", {"invoice_number": "OLD-3"}))
    assert refused["payload"]["errors"][0]["code"] == "paused_by_payment_plan"
    await inv.transaction("PP-2-1", "P-1", "30.00", "success")
    await inv.snapshot("OLD-3", 3)  # the forwarded payment
    ok = await terminate_plan(inv, "PP-2")
    assert ok["type"] == "CommandAccepted"
    old = await inv.snapshot("OLD-3", 4)
    assert (old["status_code"], old["open_amount"]) == (10, "60.00")
    assert (await inv.snapshot("PP-2-1", 2))["status_code"] == 10  # paid: kept
    assert (await inv.snapshot("PP-2-2", 2))["status_code"] == 91
    assert (await inv.snapshot("PP-2-3", 2))["status_code"] == 91
    weekly = [(await inv.snapshot(f"PP-2-{i}", 1))["due_date"] for i in (1, 2, 3)]
    assert weekly == ["2026-12-01", "2026-12-08", "2026-12-15"]


async def test_payment_plan_refuses_what_makes_no_sense(inv: InvoiceClient) -> None:
    await create(inv, "OLD-4")
    answer = await create_plan(
        inv,
        "PP-3",
        ["OLD-4", "MISSING"],
        installment_count=2,
        initial_amount="500.00",
        scheme_key="DefaultCM1",
    )
    codes = {(e["field"], e["code"]) for e in answer["payload"]["errors"]}
    assert codes == {
        ("payload.included_invoice_numbers.1", "unknown_invoice"),
        ("payload.scheme_key", "statutory_costs_in_plan"),
    }
