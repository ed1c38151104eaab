"""The console's step funnel and costs reports after a scheme has played out on the
manual clock (invoice service, scheduler, a stand-in notifier), checked against what the
invoice events say, to the cent."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tests.support.console import ConsoleStack, console_stack, create
from tests.support.invoices import InvoiceClient
from tests.support.platform import StandInNotifier


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, database_url: str) -> AsyncIterator[ConsoleStack]:
    async with console_stack(kafka_bootstrap, database_url, "scheduler") as running:
        notifier = StandInNotifier(running.cm.bootstrap, running.cm.prefix)
        await notifier.start()
        try:
            yield running
        finally:
            await notifier.stop()


def parameter(event: dict[str, Any], key: str) -> str | None:
    return next((p["value"] for p in event["event_parameters"] if p["key"] == key), None)


def funnel_from_events(events: list[dict[str, Any]]) -> dict[str, list[tuple[int, int, int]]]:
    """(step, reached, paid after) per scheme, from the events' StepIndex parameters and
    each invoice's last snapshot."""
    last: dict[str, dict[str, Any]] = {}
    deepest: dict[str, int] = {}
    for event in sorted(events, key=lambda e: e["sequence"]):
        key = event["invoice"]["invoice_key"]
        last[key] = event["invoice"]
        step = parameter(event, "StepIndex")
        deepest[key] = max(deepest.get(key, 0), int(step) if step else 0)
    out: dict[str, list[tuple[int, int, int]]] = {}
    for scheme in {s["scheme_key"] for s in last.values()}:
        mine = [k for k, s in last.items() if s["scheme_key"] == scheme]
        top = max(deepest[k] for k in mine)
        out[scheme] = [
            (
                step,
                sum(1 for k in mine if deepest[k] >= step),
                sum(1 for k in mine if deepest[k] == step and last[k]["is_paid"]),
            )
            for step in range(top + 1)
        ]
    return out


#: The costs report's kinds by the IncreasedAdminFee's `Reason` (docs/console.md "Costs").
KIND_OF_REASON = {None: "admin", "statutory_costs": "statutory", "statutory_interest": "interest"}


def costs_from_events(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per kind: (invoices charged, charged, paid), from each real invoice's
    IncreasedAdminFee events in sequence and the costs paid by its last snapshot, paid
    to the earliest charge first; and the same for all kinds under `total`."""
    by_invoice: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_invoice.setdefault(event["invoice"]["invoice_key"], []).append(event)
    kinds: dict[str, list[Any]] = {
        k: [set(), Decimal(0), Decimal(0)] for k in KIND_OF_REASON.values()
    }
    total: list[Any] = [set(), Decimal(0), Decimal(0)]
    for key, mine in by_invoice.items():
        mine.sort(key=lambda e: e["sequence"])
        if mine[-1]["invoice"]["is_test"]:
            continue
        left = Decimal(mine[-1]["invoice"]["amount_admin_costs_paid"])
        for event in mine:
            amount = Decimal(parameter(event, "Amount") or "0")
            if event["event"] != "IncreasedAdminFee" or amount <= 0:
                continue
            paid = min(amount, left)
            left -= paid
            for sums in (kinds[KIND_OF_REASON[parameter(event, "Reason")]], total):
                sums[0].add(key)
                sums[1] += amount
                sums[2] += paid
    out = {k: {"invoices": len(v[0]), "charged": v[1], "paid": v[2]} for k, v in kinds.items()}
    out["total"] = {"invoices": len(total[0]), "charged": total[1], "paid": total[2]}
    return out


def amounts(row: dict[str, Any]) -> dict[str, Any]:
    """An API row's figures as numbers (open must be charged less paid)."""
    assert Decimal(row["open"]) == Decimal(row["charged"]) - Decimal(row["paid"])
    return {
        "invoices": row["invoices"],
        "charged": Decimal(row["charged"]),
        "paid": Decimal(row["paid"]),
    }


async def test_funnel_and_costs_reconcile_with_the_events(stack: ConsoleStack) -> None:
    merchant: InvoiceClient = await stack.cm.merchant()
    try:
        await run_scheme(stack, merchant)
        events = [e for n in ("F-A", "F-B", "F-C", "F-D", "F-E") for e in merchant.events_now(n)]
        expected_funnel = funnel_from_events(events)
        # The story, by hand: A paid after step 1, B after step 2, C reached step 4
        # (admin costs) and paid part; D, on a scheme without steps, was paid.
        assert expected_funnel["DefaultNone"] == [(0, 1, 1)]
        assert expected_funnel["DefaultCM1"] == [
            (0, 3, 0),
            (1, 3, 1),
            (2, 2, 1),
            (3, 1, 0),
            (4, 1, 0),
        ]
        expected_costs = costs_from_events(events)
        # The story, by hand: C's statutory costs were paid in full by its 130.00; E has
        # flat costs (paid in full), statutory costs paid in part and interest open.
        assert expected_costs["admin"]["invoices"] == 1
        assert expected_costs["statutory"]["invoices"] == 2
        assert expected_costs["interest"]["invoices"] == 1
        assert expected_costs["admin"]["charged"] == expected_costs["admin"]["paid"] > 0
        e_statutory = next(
            Decimal(parameter(e, "Amount") or "0")
            for e in merchant.events_now("F-E")
            if parameter(e, "Reason") == "statutory_costs"
        )
        assert e_statutory == Decimal("40.00")
        e_paid = Decimal("25.00") - expected_costs["admin"]["charged"]  # E's payments
        assert expected_costs["statutory"]["paid"] == Decimal("40.00") + e_paid
        assert expected_costs["interest"]["charged"] > 0 == expected_costs["interest"]["paid"]

        async with stack.signed_in(await stack.user(merchant.website_key)) as client:
            funnel = (await client.get("/api/reports/funnel")).json()
            got = {
                s["scheme_key"]: [(x["step"], x["reached"], x["paid_after"]) for x in s["steps"]]
                for s in funnel["schemes"]
            }
            assert got == expected_funnel
            costs = (await client.get("/api/reports/costs")).json()["currencies"]
            assert [c["currency"] for c in costs] == ["EUR"]
            assert amounts(costs[0]) == expected_costs["total"]
            assert [k["kind"] for k in costs[0]["kinds"]] == ["admin", "statutory", "interest"]
            for kind in costs[0]["kinds"]:
                assert amounts(kind) == expected_costs[kind["kind"]], kind
            csv_text = (await client.get("/reports/funnel.csv")).text
            assert "DefaultCM1,2,2,1" in csv_text
            statutory = expected_costs["statutory"]
            costs_csv = (await client.get("/reports/costs.csv")).text
            assert (
                f"EUR,statutory,2,{statutory['charged']:f},{statutory['paid']:f},"
                f"{statutory['charged'] - statutory['paid']:f}\r\n" in costs_csv
            )
            page = await client.get("/reports/costs")
            assert page.status_code == 200
            assert f'data-amount="{expected_costs["total"]["charged"]:f}"' in page.text
            assert f'data-amount="{statutory["paid"]:f}"' in page.text
    finally:
        await merchant.watcher.stop()


#: A scheme with every kind of costs: the 14-day letter on 11-22, flat admin costs on
#: 12-06, then on 12-23 the statutory costs and the statutory interest.
MIXED_STEPS = [
    {"index": 1, "action": "Reminder", "days": 7, "channels": ["email"], "states_costs": True},
    {"index": 2, "action": "AdminCostIncrease", "days": 21, "admin_cost": "7.50"},
    {"index": 3, "action": "AdminCostIncrease", "days": 38, "admin_cost": "statutory"},
    {"index": 4, "action": "AdminCostIncrease", "days": 38, "admin_cost": "interest"},
]


async def run_scheme(stack: ConsoleStack, merchant: InvoiceClient) -> None:
    """DefaultCM1 on invoices due 2026-11-15: invitation on creation, reminders on 11-22
    and 12-06, admin costs on 12-23; and Mixed (F-E) with payments after its flat costs
    and after its last step."""
    answer = await merchant.answer(
        await merchant.command(
            "UpsertScheme",
            {"scheme_key": "Mixed", "name": "Every kind of costs", "steps": MIXED_STEPS},
            key=f"{merchant.website_key}:scheme:Mixed",
        )
    )
    assert answer["type"] == "CommandAccepted", answer
    for number in ("F-A", "F-B", "F-C"):
        await create(merchant, number)
    await create(merchant, "F-D", scheme_key="DefaultNone")
    await create(merchant, "F-E", scheme_key="Mixed")
    await stack.cm.tick(datetime(2026, 11, 1, 12, tzinfo=UTC))
    for number in ("F-A", "F-B", "F-C"):
        await stack.row_when(merchant.website_key, number, step_index=1)
    await pay(merchant, "F-A", "121.00")
    await pay(merchant, "F-D", "121.00")
    await stack.row_when(merchant.website_key, "F-A", is_paid=True)
    await stack.row_when(merchant.website_key, "F-D", is_paid=True)
    await stack.cm.tick(datetime(2026, 11, 22, 12, tzinfo=UTC))
    for number in ("F-B", "F-C"):
        await stack.row_when(merchant.website_key, number, step_index=2)
    await pay(merchant, "F-B", "121.00")
    await stack.row_when(merchant.website_key, "F-B", is_paid=True)
    await stack.row_when(merchant.website_key, "F-E", step_index=1)
    await stack.cm.tick(datetime(2026, 12, 6, 12, tzinfo=UTC))
    await stack.row_when(merchant.website_key, "F-C", step_index=3)
    await stack.row_when(merchant.website_key, "F-E", step_index=2)
    await pay(merchant, "F-E", "5.00")  # part of the flat costs
    await stack.row_when(merchant.website_key, "F-E", amount_paid=Decimal("5.00"))
    await stack.cm.tick(datetime(2026, 12, 23, 12, tzinfo=UTC))
    row = await stack.row_when(merchant.website_key, "F-C", step_index=4)
    assert row["admin_costs"] > 0
    await pay(merchant, "F-C", "130.00")  # the costs and part of the principal
    row = await stack.row_when(merchant.website_key, "F-C", amount_paid=Decimal("130.00"))
    await stack.row_when(merchant.website_key, "F-E", step_index=4)
    await pay(merchant, "F-E", "20.00")  # the rest of the flat costs, part of the statutory
    await stack.row_when(merchant.website_key, "F-E", amount_paid=Decimal("25.00"))
    for number in ("F-A", "F-B", "F-C", "F-D", "F-E"):
        current = await stack.row_when(merchant.website_key, number)
        await merchant.events(number, current["last_sequence"])


async def pay(merchant: InvoiceClient, number: str, amount: str) -> None:
    await merchant.transaction(
        number,
        f"T-{uuid.uuid4().hex[:8]}",
        amount,
        "success",
        occurred_at=datetime.now(UTC).isoformat(),
    )
