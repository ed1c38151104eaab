"""SEPA recollection on the real broker and Postgres (docs/invoices.md "SEPA
recollection"): a failed direct debit is collected again with CollectPayment on
cm.payments.requests, and the invoice emits CreatedRecollect (9)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from contracts import topics
from tests.support.invoices import (
    InvoiceClient,
    inv,
    invoice_payload,
    service,
)
from tests.support.kafka import TopicWatcher, poll_until

__all__ = ["inv", "service"]  # the fixtures


@pytest.fixture
async def requests(inv: InvoiceClient) -> AsyncIterator[TopicWatcher]:
    """What the payment engine is asked (cm.payments.requests)."""
    watcher = TopicWatcher(inv.bootstrap, inv.prefix + topics.PAYMENT_REQUESTS)
    await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.stop()


def collections(inv: InvoiceClient, watcher: TopicWatcher) -> list[dict[str, Any]]:
    return [
        {
            "key": r.key,
            "type": r.json()["type"],
            "id": r.json()["message_id"],
            **r.json()["payload"],
        }
        for r in watcher.on(inv.prefix + topics.PAYMENT_REQUESTS)
        if r.json()["website_key"] == inv.website_key
    ]


async def test_a_failed_direct_debit_is_collected_again_once(
    inv: InvoiceClient, requests: TopicWatcher
) -> None:
    scheme = await inv.command(
        "UpsertScheme",
        {
            "scheme_key": "Recollect",
            "name": "A reminder two weeks past due, one recollection",
            "steps": [
                {"index": 1, "action": "Reminder", "days": 14, "channels": ["email"]},
            ],
            "recollection": {"attempts": 1, "days_between": 5},
        },
        key=f"{inv.website_key}:scheme:Recollect",
    )
    assert (await inv.answer(scheme))["type"] == "CommandAccepted"
    created = await inv.command("CreateInvoice", invoice_payload("REC-1", scheme_key="Recollect"))
    assert (await inv.answer(created))["type"] == "CommandAccepted"
    debit = {"is_slow": True, "service": "sepadirectdebit"}
    await inv.transaction(
        "REC-1",
        "DD-1",
        "121.00",
        "pending",
        mandate_reference="MANDATE-REC-1",
        occurred_at="2026-11-02T09:00:00+00:00",
        **debit,
    )
    await inv.transaction(
        "REC-1",
        "DD-1",
        "121.00",
        "failed",
        occurred_at="2026-11-05T09:00:00+00:00",
        **debit,
    )

    async def asked() -> list[dict[str, Any]] | None:
        return collections(inv, requests) or None

    [request] = await poll_until(asked, what="a CollectPayment")
    assert request["type"] == "CollectPayment"
    assert request["key"] == f"{inv.website_key}:REC-1"
    assert (request["invoice_number"], request["amount"], request["currency"]) == (
        "REC-1",
        "121.00",
        "EUR",
    )
    assert (request["mandate_reference"], request["service"]) == (
        "MANDATE-REC-1",
        "sepadirectdebit",
    )
    assert request["collect_date"] == "2026-11-10"
    assert request.get("subscription_key") is None
    events = await inv.events("REC-1", 4)
    assert [(e["event"], e["event_code"]) for e in events] == [
        ("ChangedStatus", 2),
        ("ChangedTransactionStatus", 1),
        ("ChangedTransactionStatus", 1),
        ("CreatedRecollect", 9),
    ]
    assert {p["key"]: p["value"] for p in events[3]["event_parameters"]} == {
        "TransactionKey": "DD-1",
        "Attempt": "1",
        "Amount": "121.00",
        "CollectDate": "2026-11-10",
    }

    # The engine's recollection fails too: out of attempts, nothing is asked again.
    await inv.transaction(
        "REC-1",
        "DD-2",
        "121.00",
        "pending",
        mandate_reference="MANDATE-REC-1",
        occurred_at="2026-11-10T09:00:00+00:00",
        **debit,
    )
    await inv.transaction(
        "REC-1",
        "DD-2",
        "121.00",
        "failed",
        occurred_at="2026-11-12T09:00:00+00:00",
        **debit,
    )
    events = await inv.events("REC-1", 6)
    assert [e["event"] for e in events[4:]] == ["ChangedTransactionStatus"] * 2
    assert [p["value"] for p in events[5]["event_parameters"] if p["key"] == "Status"] == ["failed"]
    # a recollection would be in the change of the failure, before its event
    assert len(collections(inv, requests)) == 1
    # the reminder's step was not held by the recollection: the invoice runs its scheme
    assert events[5]["invoice"]["next_step_index"] == 1
