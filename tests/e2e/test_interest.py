"""Statutory interest on the manual clock (docs/interest.md), on the real broker and
PostgreSQL: the invoice, scheduler, notifier (pushes on cm.push.invoice) and collection
services in-process.

The consumer worked example: €1,000.00 due 2022-06-30, owed by a person, on a scheme that
adds the interest 30 and 640 days after the due date and hands the invoice to a
collection agency 650 days after it. The clock moves over four rate periods (2%, 4%, 6%,
7%) and the first anniversary (2023-06-30, when the year's interest joins the
principal):

- 2022-07-30: 2022-07-01 .. 07-30, 30 days at 2% on 1,000.00 / 365 = 1.6438 → 1.64.
- 2024-03-31: 78.91 accrued in all (tests/unit/test_interest.py works it out: 10.08 +
  19.84 in the first year, capitalised, then 31.07 + 17.93 on 1,029.92); 77.27 added.
- 2024-04-10: the transfer; 10 more days at 7% on 1,029.9178: 1,029.9178 * 0.07 * 10 /
  366 = 1.9698, so 78.9091 + 1.9698 = 80.8789 → 80.88 accrued, 1.97 of it not booked:
  the case claims 1,078.91 + 1.97 = 1,080.88.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support.invoices import invoice_payload
from tests.support.kafka import poll_until
from tests.support.platform import CollectionWatch, collection_services

NUMBER = "INV-INT-1"
D = Decimal


@pytest.fixture
async def run(
    kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> AsyncIterator[CollectionWatch]:
    async with collection_services(kafka_bootstrap, database_url, tmp_path, NUMBER) as running:
        yield running


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def parameters(event: dict[str, Any]) -> dict[str, str]:
    return {p["key"]: p["value"] for p in event["event_parameters"]}


async def test_an_opting_in_scheme_adds_the_interest_and_the_case_claims_it(
    run: CollectionWatch,
) -> None:
    cm, inv = run.cm, run.cm.invoices
    await cm.tick(utc(2022, 6, 1, 9))
    scheme = await inv.command(
        "UpsertScheme",
        {
            "scheme_key": "Interest",
            "name": "Statutory interest, then the agency",
            "steps": [
                {"index": 1, "action": "AdminCostIncrease", "days": 30, "admin_cost": "interest"},
                {"index": 2, "action": "AdminCostIncrease", "days": 640, "admin_cost": "interest"},
                {"index": 3, "action": "TransferToCollectionAgency", "days": 650},
            ],
        },
        key=f"{run.website_key}:scheme:Interest",
        occurred_at="2022-06-01T09:00:00+00:00",
    )
    assert (await inv.answer(scheme))["type"] == "CommandAccepted"
    created = await inv.command(
        "CreateInvoice",
        invoice_payload(
            NUMBER,
            invoice_date="2022-06-01",
            due_date="2022-06-30",
            amount_debit="1000.00",
            amount_vat="0.00",
            scheme_key="Interest",
        ),
        occurred_at="2022-06-01T09:00:00+00:00",
    )
    assert (await inv.answer(created))["type"] == "CommandAccepted"
    await inv.events(NUMBER, 1)

    await cm.tick(utc(2022, 7, 30))
    events = await inv.events(NUMBER, 2)
    assert parameters(events[1]) == {
        "StepIndex": "1",
        "Amount": "1.64",
        "Reason": "statutory_interest",
        "InterestAccrued": "1.64",
        "InterestUntil": "2022-07-30",
        "InterestKind": "consumer",
    }

    await cm.tick(utc(2024, 3, 31))  # over 2023-01-01, 2023-06-30, 2023-07-01, 2024-01-01
    events = await inv.events(NUMBER, 3)
    step = events[2]
    assert parameters(step) == {
        "StepIndex": "2",
        "Amount": "77.27",
        "Reason": "statutory_interest",
        "InterestAccrued": "78.91",
        "InterestUntil": "2024-03-31",
        "InterestKind": "consumer",
    }
    snapshot = step["invoice"]
    assert (
        snapshot["interest_accrued"],
        snapshot["interest_booked"],
        snapshot["interest_claimed"],
        snapshot["amount_admin_costs"],
        snapshot["open_amount_incl_admin_costs"],
    ) == ("78.91", "78.91", True, "78.91", "1078.91")

    await cm.tick(utc(2024, 4, 10))
    events = await inv.events(NUMBER, 4)
    transfer = events[3]
    assert transfer["event"] == "TransferredToCollectionAgency"
    assert (transfer["invoice"]["interest_accrued"], transfer["invoice"]["status_code"]) == (
        "80.88",
        70,
    )

    async def created_case() -> dict[str, Any] | None:
        found = run.case_events()
        return found[0]["case"] if found else None

    case = await poll_until(created_case, timeout=60, what="the interest invoice's case")
    assert case["amount"] == "1080.88"
    # Its line items (the interest not booked as a line of its own) are pinned by
    # tests/unit/test_interest_invoices.py; the case event carries the amount.

    async def pushed() -> list[dict[str, Any]] | None:
        found = run.pushes()
        return found if len(found) >= 4 else None

    pushes = await poll_until(pushed, timeout=60, what="the interest invoice's pushes")
    [increase] = [p for p in pushes if p["EventSequence"] == 3]
    assert increase["Event"] == "IncreasedAdminFee"
    assert {p["Key"]: p["Value"] for p in increase["EventParameters"]} == parameters(step)
    assert (increase["AmountAdminCosts"], increase["OpenAmountInclAdminCosts"]) == (
        D("78.91"),
        D("1078.91"),
    )
