"""A paid payment plan lifts 22 on its originals, on the real broker and Postgres
(docs/invoices.md "A paid plan releases its originals"): they move to 10 paid, and a
later chargeback on one reopens it instead of leaving it stuck in 22."""

from __future__ import annotations

from typing import Any

from tests.support.invoices import InvoiceClient, inv, invoice_payload, service
from tests.support.kafka import poll_until

__all__ = ["inv", "service"]  # the fixtures


async def accepted(inv: InvoiceClient, type_: str, payload: dict[str, Any], **kw: Any) -> None:
    answer = await inv.answer(await inv.command(type_, payload, **kw))
    assert answer["type"] == "CommandAccepted", answer


async def test_a_paid_plan_releases_its_originals_and_a_chargeback_reopens_one(
    inv: InvoiceClient,
) -> None:
    await accepted(inv, "CreateInvoice", invoice_payload("ORIG-1"))  # 121.00
    await inv.transaction("ORIG-1", "DIRECT-1", "21.00", "success")  # paid directly
    await inv.events("ORIG-1", 2)
    await accepted(
        inv,
        "CreatePaymentPlan",
        {
            "dossier_number": "PR-1",
            "included_invoice_numbers": ["ORIG-1"],
            "installment_count": 1,
            "initial_amount": "0.00",
            "start_date": "2026-12-01",
            "interval": "month",
            "scheme_key": "DefaultNone",
        },
        key=f"{inv.website_key}:plan:PR-1",
    )
    assert (await inv.snapshot("ORIG-1", 3))["status_code"] == 22
    await inv.transaction("PR-1-1", "P-1", "100.00", "success")

    # ORIG-1: the forwarded payment (4), then ChangedStatus 10 (5), one change
    events = await inv.events("ORIG-1", 5)
    assert [e["event"] for e in events[3:]] == ["ChangedTransactionStatus", "ChangedStatus"]
    assert {p["key"]: p["value"] for p in events[4]["event_parameters"]} == {
        "StatusCode": "10",
        "Reason": "payment plan PR-1 paid",
    }
    released = events[4]["invoice"]
    assert (released["status_code"], released["is_paid"]) == (10, True)
    assert released["next_step_due_at"] is None  # paid: no step runs

    # The debtor's direct payment is charged back: the invoice reopens where its scheme
    # stopped (DefaultCM1's next step is planned again) and can be paused again.
    await inv.transaction("ORIG-1", "DIRECT-1", "21.00", "chargeback")
    reopened = (await inv.events("ORIG-1", 6))[5]["invoice"]
    assert (reopened["status_code"], reopened["open_amount"], reopened["is_paid"]) == (
        10,
        "21.00",
        False,
    )
    assert reopened["next_step_due_at"] is not None
    await accepted(inv, "PauseInvoice", {"invoice_number": "ORIG-1"})

    async def paused() -> bool:
        return inv.events_now("ORIG-1")[-1]["invoice"]["status_code"] == 20

    await poll_until(paused, what="ORIG-1 paused")
