"""Plan changes inside a period, through the services: an upsell inside a billed advance
period (the old plan credited, the new one caught up on the next invoice), a downsell
inside an arrears period, and a plan stopped inside a billed period."""

from __future__ import annotations

from typing import Any

from tests.support.kafka import poll_until
from tests.support.subscriptions import (
    Subscriptions,
    create,
    invoice_created,
    subs,
)

__all__ = ["subs"]  # the fixture


def plan(code: str, price: str, start: str = "2026-01-01", **extra: Any) -> dict[str, Any]:
    return {
        "product_code": code,
        "description": f"{code.title()} plan",
        "unit_price": price,
        "vat_percentage": "21",
        "start_date": start,
        **extra,
    }


async def bill(subs: Subscriptions, key: str, as_of: str, expected: int) -> None:
    mid = await subs.command("RunBilling", {"subscription_key": key, "as_of": as_of})
    assert (await subs.answer(mid))["payload"]["keys"]["periods_billed"] == str(expected)


async def update(subs: Subscriptions, key: str, on: str, **changes: Any) -> None:
    mid = await subs.command(
        "UpdateSubscription", {"subscription_key": key, **changes}, occurred_at=on
    )
    answer = await subs.answer(mid)
    assert answer["type"] == "CommandAccepted", answer


async def credited(subs: Subscriptions, number: str, total: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        for event in subs.cm.invoices.events_now(number):
            if event["invoice"]["amount_credit_notes"] == total:
                return event["invoice"]  # type: ignore[no-any-return]
        return None

    return await poll_until(reached, what=f"credit notes of {total} on {number}")


def lines(invoice: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(li["sku"], li["unit_price"], li["description"]) for li in invoice["lines"]]


async def test_an_upsell_inside_a_billed_advance_period(subs: Subscriptions) -> None:
    await create(subs, "UP", rate_plans=[plan("BASIC", "10.00")])
    await bill(subs, "UP", "2026-01-01", 1)
    await update(
        subs,
        "UP",
        "2026-01-10T10:00:00+00:00",
        stop_rate_plans=[{"product_code": "BASIC", "end_date": "2026-01-15"}],
        add_rate_plans=[plan("PRO", "30.00", "2026-01-16")],
    )
    # BASIC's unused 16 of 31 January days come back: 10.00 - 4.84 net, 2.10 - 1.02 VAT.
    await credited(subs, "UP-1", "6.24")
    await bill(subs, "UP", "2026-02-01", 1)
    february = await invoice_created(subs, "UP-2")
    # PRO for February (30.00 + 6.30) and, caught up, for January 16-31: 30.00 - 14.52
    # = 15.48 + 3.25 VAT. BASIC has ended.
    assert february["amount_debit"] == "55.03"
    assert lines(february) == [
        ("PRO", "30.00", "Pro plan"),
        ("PRO", "15.48", "Pro plan (period 1: 2026-01-16 to 2026-01-31, 16/31 days of 1 x 30.00)"),
    ]
    await bill(subs, "UP", "2026-03-01", 1)
    assert (await invoice_created(subs, "UP-3"))["amount_debit"] == "36.30"


async def test_a_downsell_inside_an_arrears_period(subs: Subscriptions) -> None:
    await create(subs, "DOWN", billing_timing="arrears", rate_plans=[plan("BASIC", "30.00")])
    await update(
        subs,
        "DOWN",
        "2026-01-10T10:00:00+00:00",
        stop_rate_plans=[{"product_code": "BASIC", "end_date": "2026-01-15"}],
        add_rate_plans=[plan("LITE", "10.00", "2026-01-16")],
    )
    await bill(subs, "DOWN", "2026-02-01", 1)
    january = await invoice_created(subs, "DOWN-1")
    # BASIC for 15 of 31 days: 14.52 + 3.05; LITE for the other 16: 5.16 + 1.08.
    assert january["amount_debit"] == "23.81"
    assert [li["sku"] for li in january["lines"]] == ["BASIC", "LITE"]
    assert all(
        e["invoice"]["amount_credit_notes"] == "0.00" for e in subs.cm.invoices.events_now("DOWN-1")
    )
    await bill(subs, "DOWN", "2026-03-01", 1)
    assert (await invoice_created(subs, "DOWN-2"))["amount_debit"] == "12.10"


async def test_a_plan_stopped_inside_a_billed_period_is_credited(subs: Subscriptions) -> None:
    await create(subs, "PS", rate_plans=[plan("BASIC", "10.00"), plan("EXTRA", "5.00")])
    await bill(subs, "PS", "2026-01-01", 1)
    assert (await invoice_created(subs, "PS-1"))["amount_debit"] == "18.15"
    await update(
        subs,
        "PS",
        "2026-01-10T10:00:00+00:00",
        stop_rate_plans=[{"product_code": "EXTRA", "end_date": "2026-01-20"}],
    )
    # EXTRA used 20 of 31 days: 3.23 + 0.68 of 5.00 + 1.05: 1.77 + 0.37 back.
    await credited(subs, "PS-1", "2.14")
    # The whole subscription stopped the same day: BASIC's 11 days come back too, on a
    # credit note of its own number.
    stop = await subs.command(
        "StopSubscription",
        {"subscription_key": "PS", "end_date": "2026-01-20"},
        occurred_at="2026-01-12T10:00:00+00:00",
    )
    assert (await subs.answer(stop))["type"] == "CommandAccepted"
    invoice = await credited(subs, "PS-1", "6.44")  # + 3.55 + 0.75
    assert invoice["open_amount"] == "11.71"
    notes = [
        {p["key"]: p["value"] for p in e["event_parameters"]}
        for e in subs.cm.invoices.events_now("PS-1")
        if e["event"] == "CreatedCreditNote"
    ]
    assert [(n["CreditNoteNumber"], n["Amount"]) for n in notes] == [
        ("PS-1-CR-20260120", "2.14"),
        ("PS-1-CR-20260120-2", "4.30"),
    ]
    await bill(subs, "PS", "2026-02-01", 0)
    stopped = subs.events_now("PS")[-1]
    assert (stopped["event"], stopped["subscription"]["status"]) == (
        "SubscriptionStopped",
        "stopped",
    )
