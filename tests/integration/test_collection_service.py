"""The collection service on the real broker and PostgreSQL, with the invoice service and
the scheduler (manual clock) in-process: configurations, manual cases through review and
the agency's answers, automatic cases at status 70 (once), money booked once, and the
recall of a case whose invoice is paid directly."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts import topics
from services.collection.handlers import auto_case_key
from tests.support.collection import manual_case
from tests.support.invoices import invoice_payload
from tests.support.kafka import TopicWatcher, at_least, envelope, poll_until, publish, topic_of
from tests.support.platform import Platform, platform


class Collection:
    """Sends collection commands of the platform's merchant; reads case events and the
    requests to agencies."""

    def __init__(self, cm: Platform) -> None:
        self.cm = cm
        self.website_key = cm.invoices.website_key
        self.watcher = TopicWatcher(
            cm.bootstrap, cm.prefix + topics.COLLECTION_EVENTS, cm.prefix + topics.AGENCY_REQUESTS
        )

    async def command(
        self, type_: str, payload: dict[str, Any], *, key: str | None = None
    ) -> dict[str, Any]:
        body = envelope(
            type_, payload, website_key=self.website_key, occurred_at="2026-02-01T09:00:00+00:00"
        )
        await publish(
            self.cm.bootstrap,
            self.cm.prefix + topic_of(type_, topics.COLLECTION_COMMANDS),
            [(key or f"{self.website_key}:{payload['case_key']}", json.dumps(body).encode())],
        )
        return await self.cm.invoices.answer(str(body["message_id"]))

    def events_now(self, case_key: str) -> list[dict[str, Any]]:
        return self.watcher.payloads(
            self.cm.prefix + topics.COLLECTION_EVENTS, f"{self.website_key}:{case_key}"
        )

    async def events(self, case_key: str, count: int) -> list[dict[str, Any]]:
        return await at_least(
            count, lambda: self.events_now(case_key), what=f"{count} events of case {case_key}"
        )

    def requests_now(self, case_key: str) -> list[dict[str, Any]]:
        return [
            {"type": r.json()["type"], "key": r.key, **r.json()["payload"]}
            for r in self.watcher.on(self.cm.prefix + topics.AGENCY_REQUESTS)
            if r.json()["payload"]["case_key"] == case_key
            and r.json()["website_key"] == self.website_key
        ]

    async def requests(self, case_key: str, count: int) -> list[dict[str, Any]]:
        return await at_least(
            count,
            lambda: self.requests_now(case_key),
            what=f"{count} agency requests of case {case_key}",
        )


@pytest.fixture
async def col(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Collection]:
    async with platform(kafka_bootstrap, database_url, "invoice", "scheduler", "collection") as cm:
        client = Collection(cm)
        await client.watcher.start()
        try:
            yield client
        finally:
            await client.watcher.stop()


def codes(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["field"], e["code"]) for e in answer["payload"]["errors"]]


async def configure(
    col: Collection, key: str, agency: str, *conditions: tuple[str, str], **extra: Any
) -> None:
    answer = await col.command(
        "UpsertDebtCollectorConfiguration",
        {
            "configuration_key": key,
            "agency_code": agency,
            "conditions": [{"min_amount": a, "action": action} for a, action in conditions],
            **extra,
        },
        key=f"{col.website_key}:collector:{key}",
    )
    assert answer["type"] == "CommandAccepted", answer


async def test_a_manual_case_is_reviewed_transferred_and_processed(col: Collection) -> None:
    await configure(col, "main", "AG-1", ("0", "review"), ("1000", "transfer"), is_default=True)
    bad = await col.command("CreateCase", manual_case("C-BAD", amount="120.00", currency="EUR"))
    assert codes(bad) == [("payload.line_items", "total_mismatch")]
    assert (await col.command("CreateCase", manual_case("C-1")))["type"] == "CommandAccepted"
    attached = await col.command(
        "AttachDocument",
        {
            "case_key": "C-1",
            "name": "invoice.pdf",
            "content_type": "application/pdf",
            "content_base64": "JVBERi0xLjQ=",
        },
    )
    assert attached["type"] == "CommandAccepted"
    assert (await col.command("MarkAsPrepared", {"case_key": "C-1"}))["type"] == "CommandAccepted"
    late = await col.command(
        "AttachDocument",
        {
            "case_key": "C-1",
            "name": "late.pdf",
            "content_type": "application/pdf",
            "content_base64": "AA==",
        },
    )
    assert codes(late) == [("payload.case_key", "wrong_state")]
    reviewing = (await col.events("C-1", 3))[-1]
    assert (reviewing["event"], reviewing["case"]["state"]) == ("CasePrepared", "reviewing")
    assert reviewing["case"]["document_names"] == ["invoice.pdf"]
    approved = await col.command("ReviewCase", {"case_key": "C-1", "approve": True, "reason": "ok"})
    assert approved["type"] == "CommandAccepted"
    [transfer] = await col.requests("C-1", 1)
    assert (transfer["type"], transfer["key"], transfer["agency_code"]) == (
        "TransferCase",
        "AG-1:C-1",
        "AG-1",
    )
    assert transfer["documents"][0]["name"] == "invoice.pdf"
    assert transfer["billing_address"]["family_name"] == "Jansen"
    for answer in (
        await col.command("AgencyAccepted", {"case_key": "C-1", "agency_reference": "AGX-9"}),
        await col.command(
            "AddCollectedAmount",
            {"case_key": "C-1", "amount": "21.00", "collection_reference": "P-1"},
        ),
        await col.command(
            "AddCollectedAmount",
            {"case_key": "C-1", "amount": "21.00", "collection_reference": "P-1"},
        ),
        await col.command(
            "AgencyProcessed", {"case_key": "C-1", "complete": True, "collected_amount": "121.00"}
        ),
    ):
        assert answer["type"] == "CommandAccepted", answer
    events = await col.events("C-1", 9)
    assert [e["event"] for e in events] == [
        "CaseCreated",
        "DocumentAttached",
        "CasePrepared",
        "CaseApproved",
        "CaseTransferred",
        "CaseAccepted",
        "CollectedAmountAdded",
        "CaseProcessed",
        "CaseClosed",
    ]
    closed = events[-1]["case"]
    assert (closed["state"], closed["collected_amount"], closed["agency_reference"]) == (
        "closed",
        "121.00",
        "AGX-9",
    )
    after = await col.command("AgencyAccepted", {"case_key": "C-1"})
    assert codes(after) == [("payload.case_key", "wrong_state")]


async def test_a_rejected_review_fails_the_case(col: Collection) -> None:
    assert (await col.command("CreateCase", manual_case("C-R")))["type"] == "CommandAccepted"
    assert (await col.command("MarkAsPrepared", {"case_key": "C-R"}))["type"] == "CommandAccepted"
    no_agency = await col.command("ReviewCase", {"case_key": "C-R", "approve": True})
    assert codes(no_agency) == [("payload.agency_code", "agency_required")]
    rejected = await col.command(
        "ReviewCase", {"case_key": "C-R", "approve": False, "reason": "too old"}
    )
    assert rejected["type"] == "CommandAccepted"
    last = (await col.events("C-R", 3))[-1]
    assert (last["event"], last["case"]["state"], last["reason"]) == (
        "CaseRejected",
        "failed",
        "too old",
    )
    assert col.requests_now("C-R") == []
    unknown = await col.command("CloseCase", {"case_key": "NOPE", "reason": "x"})
    assert codes(unknown) == [("payload.case_key", "unknown_case")]


async def _invoice_at_70(col: Collection, number: str) -> None:
    scheme = await col.cm.invoices.command(
        "UpsertScheme",
        {
            "scheme_key": "Agency",
            "name": "Straight to the agency 10 days past due",
            "steps": [
                {
                    "index": 1,
                    "action": "TransferToCollectionAgency",
                    "days": 10,
                    "agency_code": "AG-7",
                }
            ],
        },
        key=f"{col.website_key}:scheme:Agency",
    )
    assert (await col.cm.invoices.answer(scheme))["type"] == "CommandAccepted"
    created = await col.cm.invoices.command(
        "CreateInvoice",
        invoice_payload(number, scheme_key="Agency"),  # due 2026-11-15
    )
    assert (await col.cm.invoices.answer(created))["type"] == "CommandAccepted"
    await col.cm.tick(datetime(2026, 11, 26, 9, 0, tzinfo=UTC))


async def test_status_70_opens_one_case_that_goes_to_the_agency(col: Collection) -> None:
    await configure(col, "main", "AG-1", ("0", "transfer"))
    await _invoice_at_70(col, "INV-70")
    key = auto_case_key(col.website_key, "INV-70")
    events = await col.events(key, 3)
    assert [e["event"] for e in events] == ["CaseCreated", "CasePrepared", "CaseTransferred"]
    case = events[-1]["case"]
    assert (case["invoice_number"], case["amount"], case["agency_code"]) == (
        "INV-70",
        "121.00",
        "AG-7",
    )
    [transfer] = await col.requests(key, 1)
    assert transfer["billing_address"]["name"] == "Jan Jansen"
    assert [(li["description"], li["unit_price"]) for li in transfer["line_items"]] == [
        ("Invoice INV-70", "121.00")
    ]
    # The invoice event again (a redelivery): no second case.
    again = next(
        r
        for r in col.cm.invoices.watcher.on(col.cm.prefix + topics.INVOICE_EVENTS)
        if r.json()["payload"]["invoice"]["status_code"] == 70
        and r.key == f"{col.website_key}:INV-70"
    )
    await publish(
        col.cm.bootstrap, col.cm.prefix + topics.INVOICE_EVENTS, [(again.key, again.value)]
    )

    async def status(code: int) -> bool:
        return any(
            e["invoice"]["status_code"] == code for e in col.cm.invoices.events_now("INV-70")
        )

    await poll_until(lambda: status(71), what="the invoice at 71")
    # Every later event of the invoice leaves the one case alone (no second case).
    assert (await col.command("AgencyAccepted", {"case_key": key}))["type"] == "CommandAccepted"
    await poll_until(lambda: status(72), what="the invoice at 72")
    assert (
        await col.command(
            "AddCollectedAmount", {"case_key": key, "amount": "50.00", "collection_reference": "A"}
        )
    )["type"] == "CommandAccepted"

    async def paid(amount: str) -> bool:
        return any(
            e["invoice"]["amount_paid"] == amount for e in col.cm.invoices.events_now("INV-70")
        )

    await poll_until(lambda: paid("50.00"), what="50.00 booked on the invoice")
    # The debtor pays the rest directly: the case is recalled from the agency and closed.
    await col.cm.invoices.transaction("INV-70", "TX-DIRECT", "71.00", "success")
    closed = (await col.events(key, 7))[-2:]
    assert [(e["event"], e["reason"]) for e in closed] == [
        ("CaseRecalled", "the invoice was paid"),
        ("CaseClosed", "the invoice was paid"),
    ]
    requests = await col.requests(key, 2)
    assert [r["type"] for r in requests] == ["TransferCase", "RecallCase"]
    assert len([e for e in col.events_now(key) if e["event"] == "CaseCreated"]) == 1


async def test_a_test_case_never_reaches_an_agency_nor_the_invoice(col: Collection) -> None:
    await configure(col, "main", "AG-1", ("0", "transfer"))
    payload = manual_case("C-T", environment="test", invoice_number="INV-REAL")
    assert (await col.command("CreateCase", payload))["type"] == "CommandAccepted"
    assert (await col.command("MarkAsPrepared", {"case_key": "C-T"}))["type"] == "CommandAccepted"
    for type_, extra in (
        ("AgencyAccepted", {}),
        ("AddCollectedAmount", {"amount": "121.00"}),
        ("AgencyProcessed", {"complete": True, "collected_amount": "121.00"}),
    ):
        answer = await col.command(type_, {"case_key": "C-T", **extra})
        assert answer["type"] == "CommandAccepted", answer
    events = await col.events("C-T", 7)
    assert events[-1]["case"]["state"] == "closed"
    assert events[-1]["case"]["environment"] == "test"
    # A sentinel case in production goes out after it: the test case's never did.
    assert (await col.command("CreateCase", manual_case("C-P")))["type"] == "CommandAccepted"
    assert (await col.command("MarkAsPrepared", {"case_key": "C-P"}))["type"] == "CommandAccepted"
    await col.requests("C-P", 1)
    assert col.requests_now("C-T") == []
    assert col.cm.invoices.events_now("INV-REAL") == []


async def test_a_chargeback_on_a_paid_invoice_opens_a_case_when_configured(col: Collection) -> None:
    await configure(col, "cb", "AG-CB", ("0", "transfer"), open_cases_for_chargebacks=True)
    inv = col.cm.invoices
    created = await inv.command(
        "CreateInvoice", invoice_payload("INV-CB", scheme_key="DefaultNone")
    )
    assert (await inv.answer(created))["type"] == "CommandAccepted"
    await inv.transaction("INV-CB", "TX-1", "121.00", "success")
    await inv.transaction("INV-CB", "TX-1", "121.00", "chargeback")

    async def opened() -> list[dict[str, Any]] | None:
        found = [
            r.json()["payload"]
            for r in col.watcher.on(col.cm.prefix + topics.COLLECTION_EVENTS)
            if r.json()["payload"]["case"]["invoice_number"] == "INV-CB"
            and r.json()["website_key"] == col.website_key
        ]
        return found if len(found) >= 3 else None

    events = await poll_until(opened, what="the chargeback's case transferred")
    assert [e["event"] for e in events] == ["CaseCreated", "CasePrepared", "CaseTransferred"]
    assert (events[-1]["case"]["amount"], events[-1]["case"]["agency_code"]) == ("121.00", "AG-CB")

    async def handed_over() -> bool:
        return any(e["invoice"]["status_code"] == 71 for e in inv.events_now("INV-CB"))

    await poll_until(handed_over, what="the invoice at 71")


async def test_another_merchant_never_sees_a_case_and_a_refusal_fails_it(col: Collection) -> None:
    await configure(col, "main", "AG-1", ("0", "transfer"))
    assert (await col.command("CreateCase", manual_case("C-M")))["type"] == "CommandAccepted"
    body = envelope(
        "CloseCase", {"case_key": "C-M", "reason": "mine now"}, website_key="other-shop"
    )
    await publish(
        col.cm.bootstrap,
        col.cm.prefix + topics.COLLECTION_COMMANDS,
        [("other-shop:C-M", json.dumps(body).encode())],
    )
    assert codes(await col.cm.invoices.answer(str(body["message_id"]))) == [
        ("payload.case_key", "unknown_case")
    ]
    assert (await col.command("MarkAsPrepared", {"case_key": "C-M"}))["type"] == "CommandAccepted"
    refused = await col.command("AgencyRefused", {"case_key": "C-M", "reason": "too old"})
    assert refused["type"] == "CommandAccepted"
    last = (await col.events("C-M", 4))[-1]
    assert (last["event"], last["case"]["state"], last["reason"]) == (
        "CaseRefused",
        "failed",
        "too old",
    )
    # A transferred case closed by hand is recalled from its agency.
    assert (await col.command("CreateCase", manual_case("C-H")))["type"] == "CommandAccepted"
    assert (await col.command("MarkAsPrepared", {"case_key": "C-H"}))["type"] == "CommandAccepted"
    closed = await col.command("CloseCase", {"case_key": "C-H", "reason": "settled"})
    assert closed["type"] == "CommandAccepted"
    requests = await col.requests("C-H", 2)
    assert [(r["type"], r.get("reason")) for r in requests] == [
        ("TransferCase", None),
        ("RecallCase", "settled"),
    ]
