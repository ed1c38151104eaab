"""The whole debt collection loop on the manual clock, on the real broker and PostgreSQL:
the invoice, scheduler, notifier (e-mail to a local SMTP server, letters to a spool
directory, pushes on cm.push.invoice) and collection services in-process, with the
reference agency adapter (services/collection/agency_sim.py) answering as an agency.

An unpaid DefaultCM1 invoice of 121.00 (due 2026-11-15) is played day by day: the
statutory costs (40.00) on 2026-12-23, status 70 on 2027-01-06. The collection service
opens its case for 161.00 and transfers it to the merchant's agency (71), which accepts
(72), collects half, then the rest, and reports it processed (73): the invoice ends paid
and the case closed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from contracts import topics
from services.collection.agency_sim import AgencySim, SimSettings
from tests.support.invoices import invoice_payload
from tests.support.kafka import envelope, poll_until, publish
from tests.support.platform import CollectionWatch, collection_services

NUMBER = "INV-COL-1"


@pytest.fixture
async def loop(
    kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> AsyncIterator[CollectionWatch]:
    async with collection_services(kafka_bootstrap, database_url, tmp_path, NUMBER) as running:
        sim = AgencySim(
            SimSettings(
                kafka_bootstrap_servers=kafka_bootstrap,
                cm_topic_prefix=running.cm.prefix,
                kafka_session_timeout_ms=2000,
                kafka_heartbeat_interval_ms=500,
                log_level="WARNING",
            )
        )
        task = asyncio.create_task(sim.run())
        try:
            yield running
        finally:
            sim.stop()
            await asyncio.wait_for(task, 30)


async def test_an_unpaid_invoice_goes_to_the_agency_and_ends_paid(loop: CollectionWatch) -> None:
    cm, inv = loop.cm, loop.cm.invoices
    config = envelope(
        "UpsertDebtCollectorConfiguration",
        {
            "configuration_key": "main",
            "agency_code": "AG-SIM",
            "conditions": [{"min_amount": "0", "action": "transfer"}],
            "is_default": True,
        },
        website_key=loop.website_key,
        occurred_at="2026-11-01T08:00:00+00:00",
    )
    await publish(
        cm.bootstrap,
        cm.prefix + topics.COLLECTION_COMMANDS,
        [(f"{loop.website_key}:collector:main", json.dumps(config).encode())],
    )
    assert (await inv.answer(str(config["message_id"])))["type"] == "CommandAccepted"
    created = await inv.command("CreateInvoice", invoice_payload(NUMBER))
    assert (await inv.answer(created))["type"] == "CommandAccepted"

    day = date(2026, 11, 1)
    while day <= date(2027, 1, 6):
        await cm.tick(datetime.combine(day, time(0), tzinfo=UTC))
        day += timedelta(days=1)

    async def closed() -> list[dict[str, Any]] | None:
        events = loop.case_events()
        return events if events and events[-1]["event"] == "CaseClosed" else None

    events = await poll_until(closed, timeout=90, what="the case closed")
    assert [e["event"] for e in events] == [
        "CaseCreated",
        "CasePrepared",
        "CaseTransferred",
        "CaseAccepted",
        "CollectedAmountAdded",
        "CollectedAmountAdded",
        "CaseProcessed",
        "CaseClosed",
    ]
    case = events[-1]["case"]
    assert (case["amount"], case["collected_amount"], case["agency_code"], case["state"]) == (
        "161.00",
        "161.00",
        "AG-SIM",
        "closed",
    )

    async def processed() -> list[dict[str, Any]] | None:
        pushes = loop.pushes()
        return pushes if any(p["InvoiceStatusCode"] == 73 for p in pushes) else None

    pushes = await poll_until(processed, timeout=60, what="the push at 73")
    D = Decimal
    assert [
        (
            p["Event"],
            p["EventDateTime"][:10],
            p["InvoiceStatusCode"],
            p["AmountPaid"],
            p["OpenAmountInclAdminCosts"],
        )
        for p in pushes
    ] == [
        ("ChangedStatus", "2026-11-01", 10, D("0.00"), D("121.00")),
        ("SentPaymentInvitationMessage", "2026-11-01", 10, D("0.00"), D("121.00")),
        ("SentReminderMessage", "2026-11-22", 10, D("0.00"), D("121.00")),
        ("SentReminderMessage", "2026-12-06", 10, D("0.00"), D("121.00")),
        ("IncreasedAdminFee", "2026-12-23", 10, D("0.00"), D("161.00")),
        ("TransferredToCollectionAgency", "2027-01-06", 70, D("0.00"), D("161.00")),
        # The case: transferred (71), accepted (72), half collected, the rest, processed.
        ("ChangedStatus", "2027-01-06", 71, D("0.00"), D("161.00")),
        ("ChangedStatus", "2027-01-06", 72, D("0.00"), D("161.00")),
        ("ChangedTransactionStatus", "2027-01-06", 72, D("80.50"), D("80.50")),
        ("ChangedTransactionStatus", "2027-01-06", 72, D("161.00"), D("0.00")),
        ("ChangedStatus", "2027-01-06", 73, D("161.00"), D("0.00")),
    ]
    last = pushes[-1]
    assert (last["AmountAdminCosts"], last["IsPaid"]) == (D("40.00"), True)
