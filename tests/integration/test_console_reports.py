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


async def test_funnel_and_costs_reconcile_with_the_events(stack: ConsoleStack) -> None:
    merchant: InvoiceClient = await stack.cm.merchant()
    try:
        await run_scheme(stack, merchant)
        events = [e for n in ("F-A", "F-B", "F-C", "F-D") for e in merchant.events_now(n)]
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
        charged = sum(
            (
                Decimal(parameter(e, "Amount") or "0")
                for e in events
                if e["event"] == "IncreasedAdminFee"
            ),
            Decimal(0),
        )
        assert charged > 0
        final_c = max(
            (e for e in events if e["invoice"]["invoice_number"] == "F-C"),
            key=lambda e: e["sequence"],
        )
        paid_costs = Decimal(final_c["invoice"]["amount_admin_costs_paid"])

        async with stack.signed_in(await stack.user(merchant.website_key)) as client:
            funnel = (await client.get("/api/reports/funnel")).json()
            got = {
                s["scheme_key"]: [(x["step"], x["reached"], x["paid_after"]) for x in s["steps"]]
                for s in funnel["schemes"]
            }
            assert got == expected_funnel
            costs = (await client.get("/api/reports/costs")).json()["currencies"]
            assert costs == [
                {
                    "currency": "EUR",
                    "invoices": 1,
                    "charged": f"{charged:f}",
                    "paid": f"{paid_costs:f}",
                    "open": f"{charged - paid_costs:f}",
                }
            ]
            csv_text = (await client.get("/reports/funnel.csv")).text
            assert "DefaultCM1,2,2,1" in csv_text
            page = await client.get("/reports/costs")
            assert page.status_code == 200 and f'data-amount="{charged:f}"' in page.text
    finally:
        await merchant.watcher.stop()


async def run_scheme(stack: ConsoleStack, merchant: InvoiceClient) -> None:
    """DefaultCM1 on invoices due 2026-11-15: invitation on creation, reminders on 11-22
    and 12-06, admin costs on 12-23."""
    for number in ("F-A", "F-B", "F-C"):
        await create(merchant, number)
    await create(merchant, "F-D", scheme_key="DefaultNone")
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
    await stack.cm.tick(datetime(2026, 12, 6, 12, tzinfo=UTC))
    await stack.row_when(merchant.website_key, "F-C", step_index=3)
    await stack.cm.tick(datetime(2026, 12, 23, 12, tzinfo=UTC))
    row = await stack.row_when(merchant.website_key, "F-C", step_index=4)
    assert row["admin_costs"] > 0
    await pay(merchant, "F-C", "130.00")  # the principal and part of the costs
    row = await stack.row_when(merchant.website_key, "F-C", amount_paid=Decimal("130.00"))
    for number in ("F-A", "F-B", "F-C", "F-D"):
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
