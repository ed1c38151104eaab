"""Combined subscriptions, automatic collection, rejected invoices, merchant-wide bill
runs and debtor/scheme changes, on the real broker and PostgreSQL with the invoice
service, the scheduler (manual clock) and the subscription service in-process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts import topics
from services.subscription import handlers
from tests.support.invoices import debtor
from tests.support.kafka import TopicWatcher, envelope, poll_until, publish
from tests.support.subscriptions import (
    Subscriptions,
    codes,
    create,
    invoice_created,
    subs,
    subscription,
)

__all__ = ["subs"]  # the fixture


def combined(key: str, status: str, *, amount: str = "12.10", **overrides: Any) -> dict[str, Any]:
    transaction = {
        "transaction_key": f"TX-{key}",
        "service": "sepadirectdebit",
        "amount": amount,
        "status": status,
    }
    if status == "success":
        transaction["mandate_reference"] = f"MANDATE-{key}"
    return subscription(key, transaction=transaction, **overrides)


@pytest.fixture
async def requests(subs: Subscriptions) -> AsyncIterator[TopicWatcher]:
    """What the payment engine is asked (cm.payments.requests)."""
    watcher = TopicWatcher(subs.cm.bootstrap, subs.cm.prefix + topics.PAYMENT_REQUESTS)
    await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.stop()


def collections(subs: Subscriptions, watcher: TopicWatcher) -> list[dict[str, Any]]:
    return [
        {"key": r.key, "type": r.json()["type"], **r.json()["payload"]}
        for r in watcher.on(subs.cm.prefix + topics.PAYMENT_REQUESTS)
        if r.json()["website_key"] == subs.website_key
    ]


async def paid_invoice(subs: Subscriptions, number: str) -> dict[str, Any]:
    async def paid() -> dict[str, Any] | None:
        for event in subs.cm.invoices.events_now(number):
            if event["invoice"]["amount_paid"] != "0.00":
                return event["invoice"]  # type: ignore[no-any-return]
        return None

    return await poll_until(paid, what=f"a payment on {number}")


async def test_a_successful_initial_payment_activates_and_counts_on_the_first_invoice(
    subs: Subscriptions, requests: TopicWatcher
) -> None:
    mid = await subs.command("CreateCombinedSubscription", combined("CS-OK", "success"))
    answer = await subs.answer(mid)
    assert answer["payload"]["keys"] == {"subscription_key": "CS-OK", "status": "active"}
    [created] = await subs.events_of("CS-OK", 1)
    assert created["event"] == "SubscriptionCreated"
    snap = created["subscription"]
    assert (snap["status"], snap["payment_method"], snap["mandate_reference"]) == (
        "active",
        "sepadirectdebit",
        "MANDATE-CS-OK",
    )
    assert snap["initial_transaction_key"] == "TX-CS-OK"
    run = await subs.command("RunBilling", {"subscription_key": "CS-OK", "as_of": "2026-02-01"})
    assert (await subs.answer(run))["payload"]["keys"]["periods_billed"] == "2"
    # The initial 12.10 pays January's invoice in full; February is collected.
    first = await paid_invoice(subs, "CS-OK-1")
    assert (first["amount_debit"], first["amount_paid"], first["is_paid"]) == (
        "12.10",
        "12.10",
        True,
    )
    assert (await invoice_created(subs, "CS-OK-2"))["amount_paid"] == "0.00"

    async def asked() -> list[dict[str, Any]] | None:
        found = collections(subs, requests)
        return found or None

    [request] = await poll_until(asked, what="a CollectPayment")
    assert request["key"] == f"{subs.website_key}:CS-OK-2"
    assert request["type"] == "CollectPayment"
    assert (request["invoice_number"], request["amount"], request["currency"]) == (
        "CS-OK-2",
        "12.10",
        "EUR",
    )
    assert (request["mandate_reference"], request["service"]) == (
        "MANDATE-CS-OK",
        "sepadirectdebit",
    )
    events = [e["event"] for e in await subs.events_of("CS-OK", 4)]
    assert events == ["SubscriptionCreated", "PeriodBilled", "PeriodBilled", "PaymentRequested"]
    # The engine collects February: the invoice service books it like any payment.
    await subs.cm.invoices.transaction("CS-OK-2", "TX-CS-OK-2", "12.10", "success")
    assert (await paid_invoice(subs, "CS-OK-2"))["is_paid"] is True


async def test_a_failed_initial_payment_fails_the_subscription_for_good(
    subs: Subscriptions,
) -> None:
    mid = await subs.command("CreateCombinedSubscription", combined("CS-NO", "failed"))
    assert (await subs.answer(mid))["payload"]["keys"]["status"] == "failed"
    [failed] = await subs.events_of("CS-NO", 1)
    assert failed["event"] == "SubscriptionCreationFailed"
    assert failed["subscription"]["status"] == "failed"
    assert failed["subscription"]["next_billing_date"] is None
    run = await subs.command("RunBilling", {"subscription_key": "CS-NO", "as_of": "2026-03-01"})
    assert codes(await subs.answer(run)) == [("payload.subscription_key", "not_billable")]
    # A success reported afterwards does not revive it.
    await subs.cm.invoices.transaction("CS-NO-1", "TX-CS-NO", "12.10", "success")
    update = await subs.command(
        "UpdateSubscription", {"subscription_key": "CS-NO", "scheme_key": "DefaultNone"}
    )
    assert codes(await subs.answer(update)) == [("payload.subscription_key", "not_active")]
    assert [e["event"] for e in subs.events_now("CS-NO")] == ["SubscriptionCreationFailed"]


async def test_a_pending_payment_waits_for_its_status_change(
    subs: Subscriptions, requests: TopicWatcher
) -> None:
    mid = await subs.command("CreateCombinedSubscription", combined("CS-P", "pending"))
    assert (await subs.answer(mid))["payload"]["keys"]["status"] == "pending"
    await subs.command("CreateCombinedSubscription", combined("CS-PF", "pending"))
    [created] = await subs.events_of("CS-P", 1)
    assert created["subscription"]["status"] == "pending"
    assert created["subscription"]["next_billing_date"] is None
    # Pending is not billed, not by hand and not by the clock.
    run = await subs.command("RunBilling", {"subscription_key": "CS-P", "as_of": "2026-01-05"})
    assert codes(await subs.answer(run)) == [("payload.subscription_key", "not_billable")]
    await subs.cm.tick(datetime(2026, 1, 10, 9, 0, tzinfo=UTC))
    assert subs.cm.invoices.events_now("CS-P-1") == []
    # The engine reports the transaction on the first invoice's number: the subscription
    # matches it by key, and the invoice service keeps it until that invoice exists.
    await subs.cm.invoices.transaction(
        "CS-P-1",
        "TX-CS-P",
        "12.10",
        "success",
        service="creditcard",
        mandate_reference="CARD-7",
        occurred_at="2026-01-10T10:00:00+00:00",
    )
    await subs.cm.invoices.transaction(
        "CS-PF-1", "TX-CS-PF", "12.10", "failed", occurred_at="2026-01-10T10:00:00+00:00"
    )
    activated = (await subs.events_of("CS-P", 2))[-1]
    assert activated["event"] == "SubscriptionActivated"
    assert activated["subscription"]["mandate_reference"] == "CARD-7"
    assert activated["subscription"]["payment_method"] == "creditcard"
    assert activated["subscription"]["next_billing_date"] == "2026-01-01"
    failed = (await subs.events_of("CS-PF", 2))[-1]
    assert failed["event"] == "SubscriptionCreationFailed"
    assert failed["reason"] == "the initial transaction is failed"
    # The timer, due in the past, bills January and February once the clock moves.
    await subs.cm.tick(datetime(2026, 2, 2, 9, 0, tzinfo=UTC))
    first = await paid_invoice(subs, "CS-P-1")
    assert (first["amount_paid"], first["open_amount"]) == ("12.10", "0.00")
    await invoice_created(subs, "CS-P-2")

    async def asked() -> list[dict[str, Any]] | None:
        found = collections(subs, requests)
        return found or None

    [request] = await poll_until(asked, what="a CollectPayment")
    assert (request["invoice_number"], request["mandate_reference"], request["service"]) == (
        "CS-P-2",
        "CARD-7",
        "creditcard",
    )
    # Booked once although the engine's report and the combined invoice both carry it.
    payments = [
        e for e in subs.cm.invoices.events_now("CS-P-1") if e["event"] == "ChangedTransactionStatus"
    ]
    assert len(payments) == 1
    assert subs.cm.invoices.events_now("CS-PF-1") == []


async def test_combined_subscriptions_are_validated(subs: Subscriptions) -> None:
    await subs.answer(await subs.command("CreateCombinedSubscription", combined("CS-A", "pending")))
    taken = combined("CS-B", "refunded", amount="1.001")
    taken["transaction"]["transaction_key"] = "TX-CS-A"
    refused = await subs.answer(await subs.command("CreateCombinedSubscription", taken))
    assert sorted(codes(refused)) == [
        ("payload.transaction.amount", "too_many_decimals"),
        ("payload.transaction.status", "not_initial"),
        ("payload.transaction.transaction_key", "duplicate_transaction_key"),
    ]
    assert subs.events_now("CS-B") == []


async def test_a_rejected_period_invoice_is_surfaced(subs: Subscriptions) -> None:
    await create(subs, "SUB-X", scheme_key="NoSuchScheme")
    run = await subs.command("RunBilling", {"subscription_key": "SUB-X", "as_of": "2026-01-01"})
    assert (await subs.answer(run))["payload"]["keys"]["periods_billed"] == "1"
    rejected = (await subs.events_of("SUB-X", 3))[-1]
    assert rejected["event"] == "InvoiceRejected"
    assert (rejected["invoice_number"], rejected["period_index"]) == ("SUB-X-1", 1)
    assert (await invoice_created(subs, "SUB-X-1"))["status_code"] == 90
    # A fixed scheme: later invoices are valid.
    fix = await subs.command(
        "UpdateSubscription",
        {"subscription_key": "SUB-X", "scheme_key": "DefaultNone"},
        occurred_at="2026-01-05T09:00:00+00:00",
    )
    assert (await subs.answer(fix))["type"] == "CommandAccepted"
    run = await subs.command("RunBilling", {"subscription_key": "SUB-X", "as_of": "2026-02-01"})
    assert (await subs.answer(run))["payload"]["keys"]["periods_billed"] == "1"
    second = await invoice_created(subs, "SUB-X-2")
    assert (second["status_code"], second["scheme_key"]) == (10, "DefaultNone")
    assert [e["event"] for e in subs.events_now("SUB-X")].count("InvoiceRejected") == 1


async def test_debtor_changes_flow_into_future_invoices(subs: Subscriptions) -> None:
    await create(subs, "SUB-DB")
    run = await subs.command("RunBilling", {"subscription_key": "SUB-DB", "as_of": "2026-01-01"})
    assert (await subs.answer(run))["payload"]["keys"]["periods_billed"] == "1"
    assert (await invoice_created(subs, "SUB-DB-1"))["debtor"]["email"] == "jan@example.test"
    update = await subs.command(
        "UpdateSubscription",
        {
            "subscription_key": "SUB-DB",
            "debtor": debtor(email="jan.nieuw@example.test"),
            "unreachable": {"address": True},
        },
        occurred_at="2026-01-20T09:00:00+00:00",
    )
    assert (await subs.answer(update))["type"] == "CommandAccepted"

    # The flags go to the invoice service, which keeps them on the debtor.
    async def recorded() -> bool:
        return any(
            r.json()["payload"]["command_type"] == "AddOrUpdateDebtor"
            and r.json()["website_key"] == subs.website_key
            for r in subs.cm.invoices.watcher.on(subs.cm.prefix + topics.COMMAND_RESULTS)
        )

    await poll_until(recorded, what="the invoice service's answer to AddOrUpdateDebtor")
    updated = (await subs.events_of("SUB-DB", 3))[-1]
    assert updated["event"] == "SubscriptionUpdated"
    assert updated["subscription"]["debtor"]["email"] == "jan.nieuw@example.test"
    run = await subs.command("RunBilling", {"subscription_key": "SUB-DB", "as_of": "2026-02-01"})
    assert (await subs.answer(run))["payload"]["keys"]["periods_billed"] == "1"
    second = await invoice_created(subs, "SUB-DB-2")
    assert second["debtor"]["email"] == "jan.nieuw@example.test"
    assert second["debtor"]["unreachable"]["address"] is True


async def test_a_merchant_wide_run_bills_every_due_subscription_in_pages(
    subs: Subscriptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handlers, "MERCHANT_RUN_PAGE", 2)
    for key in ("RUN-A", "RUN-B", "RUN-C"):
        await create(subs, key)
    await create(
        subs,
        "RUN-LATER",
        start_date="2026-03-01",
        rate_plans=[{**subscription("x")["rate_plans"][0], "start_date": "2026-03-01"}],
    )
    body = envelope(
        "RunMerchantBilling",
        {"as_of": "2026-02-01"},
        website_key=subs.website_key,
        occurred_at="2026-02-01T06:00:00+00:00",
    )
    await publish(
        subs.cm.bootstrap,
        subs.cm.prefix + topics.SUBSCRIPTION_INTERNAL,
        [(f"{subs.website_key}:bill-run", json.dumps(body).encode())],
    )
    first = await subs.answer(body["message_id"])
    assert first["payload"]["keys"] == {
        "as_of": "2026-02-01",
        "subscriptions_queued": "2",
        "continues_after": "RUN-B",
    }
    for key in ("RUN-A", "RUN-B", "RUN-C"):
        invoices = [await invoice_created(subs, f"{key}-{i}") for i in (1, 2)]
        assert [i["invoice_date"] for i in invoices] == ["2026-01-01", "2026-02-01"]
    assert subs.cm.invoices.events_now("RUN-LATER-1") == []
    assert [e["event"] for e in subs.events_now("RUN-LATER")] == ["SubscriptionCreated"]
