"""The subscription service on the real broker and PostgreSQL, with the invoice service
and the scheduler in-process on the manual clock: creation, bill runs that become
invoices, idempotency and stops."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from contracts import topics
from tests.support.kafka import envelope, poll_until, publish
from tests.support.subscriptions import (
    Subscriptions,
    codes,
    create,
    invoice_created,
    subs,
    subscription,
)

__all__ = ["subs"]  # the fixture


async def test_create_is_accepted_and_emits_the_snapshot(subs: Subscriptions) -> None:
    answer = await create(subs, "SUB-1", payment_term_days=30, billing_day=5)
    assert answer["payload"]["keys"] == {"subscription_key": "SUB-1", "status": "active"}
    [event] = await subs.events_of("SUB-1", 1)
    assert event["event"] == "SubscriptionCreated"
    snap = event["subscription"]
    assert snap["status"] == "active"
    assert snap["payment_term_days"] == 30
    assert snap["billing_day"] == 5
    assert snap["next_period_index"] == 1
    assert snap["next_billing_date"] == "2026-01-05"
    assert snap["rate_plans"][0]["unit_price"] == "10.00"


async def test_a_repeat_is_a_noop_and_other_content_is_refused(subs: Subscriptions) -> None:
    await create(subs, "SUB-R")
    again = await subs.command("CreateSubscription", subscription("SUB-R"))
    assert (await subs.answer(again))["type"] == "CommandAccepted"
    other = await subs.command("CreateSubscription", subscription("SUB-R", currency="USD"))
    refused = await subs.answer(other)
    assert refused["type"] == "CommandRejected"
    assert codes(refused) == [("payload.subscription_key", "duplicate_subscription_key")]
    # One creation event only: the repeat changed nothing.
    assert [e["event"] for e in subs.events_now("SUB-R")] == ["SubscriptionCreated"]


async def test_business_rules_are_refused_naming_each_field(subs: Subscriptions) -> None:
    plan = subscription("X")["rate_plans"][0]
    mid = await subs.command(
        "CreateSubscription",
        subscription(
            "SUB-BAD",
            end_date="2025-12-01",
            rate_plans=[
                {**plan, "unit_price": "10.001"},
                {**plan, "start_date": "2025-06-01"},
            ],
        ),
    )
    refused = await subs.answer(mid)
    assert refused["type"] == "CommandRejected"
    assert sorted(codes(refused)) == sorted(
        [
            ("payload.end_date", "end_before_start"),
            ("payload.rate_plans.0.unit_price", "too_many_decimals"),
            ("payload.rate_plans.0.start_date", "outside_subscription"),
            ("payload.rate_plans.1.product_code", "duplicate_product_code"),
            ("payload.rate_plans.1.start_date", "outside_subscription"),
        ]
    )
    assert subs.events_now("SUB-BAD") == []


async def test_the_timer_catches_up_three_missed_months(subs: Subscriptions) -> None:
    await create(subs, "SUB-T")
    # The clock jumps from 1970 to mid-March: the January timer fires, and each run's
    # next timer is already due, so February and March follow.
    await subs.cm.tick(datetime(2026, 3, 15, 9, 0, tzinfo=UTC))
    invoices = [await invoice_created(subs, f"SUB-T-{i}") for i in (1, 2, 3)]
    assert [i["invoice_date"] for i in invoices] == ["2026-01-01", "2026-02-01", "2026-03-01"]
    assert [i["due_date"] for i in invoices] == ["2026-01-15", "2026-02-15", "2026-03-15"]
    assert {i["amount_debit"] for i in invoices} == {"12.10"}
    assert {i["type"] for i in invoices} == {"SubscriptionInvoice"}
    assert {i["subscription_key"] for i in invoices} == {"SUB-T"}
    billed = await subs.events_of("SUB-T", 4)
    assert [(e["event"], e["period_index"], e["invoice_number"]) for e in billed[1:]] == [
        ("PeriodBilled", 1, "SUB-T-1"),
        ("PeriodBilled", 2, "SUB-T-2"),
        ("PeriodBilled", 3, "SUB-T-3"),
    ]
    assert billed[-1]["subscription"]["next_billing_date"] == "2026-04-01"
    assert subs.cm.invoices.events_now("SUB-T-4") == []


async def test_a_duplicated_run_bills_each_period_once(subs: Subscriptions) -> None:
    await create(
        subs,
        "SUB-D",
        start_date="2025-06-01",
        rate_plans=[
            {
                "product_code": "PRO",
                "description": "Pro plan",
                "unit_price": "30.00",
                "vat_percentage": "21",
                "start_date": "2025-06-16",  # prorated in June: 15 of 30 days
            }
        ],
    )
    run = {"subscription_key": "SUB-D", "as_of": "2025-08-15"}
    first, second = await asyncio.gather(
        subs.command("RunBilling", run), subs.command("RunBilling", run)
    )
    answers = [await subs.answer(first), await subs.answer(second)]
    assert sorted(a["payload"]["keys"]["periods_billed"] for a in answers) == ["0", "3"]
    # The same message again: the inbox repeats the answer, nothing is billed.
    await subs.command("RunBilling", run, message_id=first)
    invoices = [await invoice_created(subs, f"SUB-D-{i}") for i in (1, 2, 3)]
    assert [i["amount_debit"] for i in invoices] == ["18.15", "36.30", "36.30"]
    # A sentinel after the runs: once its answer is out, every earlier command was handled.
    sentinel = await subs.command("RunBilling", run)
    assert (await subs.answer(sentinel))["payload"]["keys"]["periods_billed"] == "0"
    repeated = subs.cm.invoices.answers(first)  # the first answer, published again
    assert len(repeated) == 2
    assert repeated[0]["payload"] == repeated[1]["payload"]
    billed = [e for e in subs.events_now("SUB-D") if e["event"] == "PeriodBilled"]
    assert [e["period_index"] for e in billed] == [1, 2, 3]
    for number in ("SUB-D-1", "SUB-D-2", "SUB-D-3"):
        created = [e for e in subs.cm.invoices.events_now(number) if e["event"] == "ChangedStatus"]
        assert len(created) == 1, number
    assert subs.cm.invoices.events_now("SUB-D-4") == []


async def test_a_stop_ends_billing(subs: Subscriptions) -> None:
    await create(subs, "SUB-S")
    mid = await subs.command("RunBilling", {"subscription_key": "SUB-S", "as_of": "2026-01-15"})
    assert (await subs.answer(mid))["payload"]["keys"]["periods_billed"] == "1"
    await invoice_created(subs, "SUB-S-1")
    stop = await subs.command(
        "StopSubscription",
        {"subscription_key": "SUB-S", "end_date": "2026-01-31", "reason": "moving away"},
        occurred_at="2026-01-20T10:00:00+00:00",
    )
    assert (await subs.answer(stop))["type"] == "CommandAccepted"
    events = await subs.events_of("SUB-S", 3)
    stopped = events[-1]
    assert stopped["event"] == "SubscriptionStopped"
    assert stopped["subscription"]["status"] == "stopped"
    assert stopped["subscription"]["end_date"] == "2026-01-31"
    assert stopped["subscription"]["next_billing_date"] is None
    # The clock passes the next months: no timer is left, and a run by hand bills nothing.
    await subs.cm.tick(datetime(2026, 4, 1, tzinfo=UTC))
    later = await subs.command("RunBilling", {"subscription_key": "SUB-S", "as_of": "2026-06-01"})
    assert (await subs.answer(later))["payload"]["keys"]["periods_billed"] == "0"
    assert [e["event"] for e in subs.events_now("SUB-S")] == [
        "SubscriptionCreated",
        "PeriodBilled",
        "SubscriptionStopped",
    ]
    assert subs.cm.invoices.events_now("SUB-S-2") == []
    # Unknown subscriptions and later end dates are refused.
    unknown = await subs.command("StopSubscription", {"subscription_key": "NOPE"})
    assert codes(await subs.answer(unknown)) == [
        ("payload.subscription_key", "unknown_subscription")
    ]
    # A later end date changes nothing (it already ends by then): accepted, no event.
    later_end = await subs.command(
        "StopSubscription", {"subscription_key": "SUB-S", "end_date": "2026-05-01"}
    )
    assert (await subs.answer(later_end))["payload"]["keys"] == {
        "subscription_key": "SUB-S",
        "end_date": "2026-01-31",
        "changed": "false",
    }
    assert [e["event"] for e in subs.events_now("SUB-S")][-1] == "SubscriptionStopped"
    assert len(subs.events_now("SUB-S")) == 3


async def test_another_merchant_never_sees_the_subscription(subs: Subscriptions) -> None:
    await create(subs, "SUB-M")
    body = envelope(
        "StopSubscription",
        {"subscription_key": "SUB-M"},
        website_key=f"other-{uuid.uuid4().hex[:6]}",
        occurred_at="2026-01-20T10:00:00+00:00",
    )
    await publish(
        subs.cm.bootstrap,
        subs.cm.prefix + topics.SUBSCRIPTION_COMMANDS,
        [(f"{body['website_key']}:SUB-M", json.dumps(body).encode())],
    )
    answer = await subs.answer(body["message_id"])
    assert codes(answer) == [("payload.subscription_key", "unknown_subscription")]


async def test_an_early_stop_credits_the_unused_days_of_a_billed_period(
    subs: Subscriptions,
) -> None:
    await create(subs, "SUB-C")
    mid = await subs.command("RunBilling", {"subscription_key": "SUB-C", "as_of": "2026-01-01"})
    assert (await subs.answer(mid))["payload"]["keys"]["periods_billed"] == "1"
    assert (await invoice_created(subs, "SUB-C-1"))["amount_debit"] == "12.10"
    stop = await subs.command(
        "StopSubscription",
        {"subscription_key": "SUB-C", "end_date": "2026-01-15"},
        occurred_at="2026-01-10T10:00:00+00:00",
    )
    assert (await subs.answer(stop))["type"] == "CommandAccepted"

    # Used: 15 of 31 days = 4.84 + VAT 1.02; billed 10.00 + 2.10: credit 5.16 + 1.08.
    async def credited() -> dict[str, Any] | None:
        for event in subs.cm.invoices.events_now("SUB-C-1"):
            if event["invoice"]["amount_credit_notes"] != "0.00":
                return event["invoice"]  # type: ignore[no-any-return]
        return None

    invoice = await poll_until(credited, what="the credit note on SUB-C-1")
    assert invoice["amount_credit_notes"] == "6.24"
    assert invoice["open_amount"] == "5.86"
    stopped = (await subs.events_of("SUB-C", 3))[-1]
    assert stopped["subscription"]["status"] == "stopped"


async def test_the_dunning_step_stops_the_subscription_of_an_unpaid_invoice(
    subs: Subscriptions,
) -> None:
    scheme = await subs.cm.invoices.command(
        "UpsertScheme",
        {
            "scheme_key": "SubStop",
            "name": "Stop the subscription 10 days past due",
            "steps": [{"index": 1, "action": "StopSubscription", "days": 10}],
        },
        key=f"{subs.website_key}:scheme:SubStop",
    )
    assert (await subs.answer(scheme))["type"] == "CommandAccepted"
    await create(subs, "SUB-U", scheme_key="SubStop")
    mid = await subs.command("RunBilling", {"subscription_key": "SUB-U", "as_of": "2026-01-01"})
    assert (await subs.answer(mid))["payload"]["keys"]["periods_billed"] == "1"
    await invoice_created(subs, "SUB-U-1")  # due 2026-01-15, never paid
    await subs.cm.tick(datetime(2026, 1, 26, 9, 0, tzinfo=UTC))
    stopped = (await subs.events_of("SUB-U", 3))[-1]
    assert stopped["event"] == "SubscriptionStopped"
    assert stopped["invoice_number"] == "SUB-U-1"
    assert stopped["subscription"]["end_date"] == "2026-01-25"
    assert stopped["subscription"]["status"] == "stopped"

    # January is billed in advance: its last 6 of 31 days are credited (used 8.06 + 1.69).
    async def credited() -> dict[str, Any] | None:
        for event in subs.cm.invoices.events_now("SUB-U-1"):
            if event["invoice"]["amount_credit_notes"] != "0.00":
                return event["invoice"]  # type: ignore[no-any-return]
        return None

    invoice = await poll_until(credited, what="the credit note on SUB-U-1")
    assert invoice["amount_credit_notes"] == "2.35"


async def test_updates_change_prices_add_plans_and_restart(subs: Subscriptions) -> None:
    await create(subs, "SUB-P")
    mid = await subs.command("RunBilling", {"subscription_key": "SUB-P", "as_of": "2026-01-01"})
    assert (await subs.answer(mid))["payload"]["keys"]["periods_billed"] == "1"
    extra = {
        "product_code": "EXTRA",
        "description": "Extra seats",
        "unit_price": "5.00",
        "vat_percentage": "21",
        "start_date": "2026-02-15",
    }
    update = await subs.command(
        "UpdateSubscription",
        {
            "subscription_key": "SUB-P",
            "change_rate_plans": [{"product_code": "BASIC", "unit_price": "20.00"}],
            "add_rate_plans": [extra],
        },
        occurred_at="2026-01-10T10:00:00+00:00",
    )
    assert (await subs.answer(update))["type"] == "CommandAccepted"
    # An added plan must start after the message's date.
    late = await subs.command(
        "UpdateSubscription",
        {"subscription_key": "SUB-P", "add_rate_plans": [{**extra, "product_code": "OLD"}]},
        occurred_at="2026-03-01T10:00:00+00:00",
    )
    assert codes(await subs.answer(late)) == [
        ("payload.add_rate_plans.0.start_date", "not_in_future")
    ]
    mid = await subs.command("RunBilling", {"subscription_key": "SUB-P", "as_of": "2026-02-01"})
    assert (await subs.answer(mid))["payload"]["keys"]["periods_billed"] == "1"
    # February: BASIC at the new 20.00 (+4.20) and EXTRA for 14 of 28 days, 2.50 (+0.52).
    assert (await invoice_created(subs, "SUB-P-2"))["amount_debit"] == "27.22"
    stop = await subs.command(
        "StopSubscription",
        {"subscription_key": "SUB-P", "end_date": "2026-02-28"},
        occurred_at="2026-02-20T10:00:00+00:00",
    )
    assert (await subs.answer(stop))["type"] == "CommandAccepted"
    new = {**extra, "product_code": "NEW", "unit_price": "30.00", "start_date": "2026-04-10"}
    restart = await subs.command(
        "UpdateSubscription",
        {"subscription_key": "SUB-P", "add_rate_plans": [new]},
        occurred_at="2026-03-05T10:00:00+00:00",
    )
    assert (await subs.answer(restart))["type"] == "CommandAccepted"
    restarted = (await subs.events_of("SUB-P", 6))[-1]
    assert restarted["event"] == "SubscriptionRestarted"
    assert restarted["subscription"]["status"] == "active"
    assert restarted["subscription"]["end_date"] is None
    mid = await subs.command("RunBilling", {"subscription_key": "SUB-P", "as_of": "2026-04-30"})
    assert (await subs.answer(mid))["payload"]["keys"]["periods_billed"] == "2"
    # March: nothing active (the old plans ended with the stop): billed without invoice.
    # April: NEW from the 10th, 21 of 30 days: 21.00 + 4.41.
    assert (await invoice_created(subs, "SUB-P-4"))["amount_debit"] == "25.41"
    billed = [e for e in subs.events_now("SUB-P") if e["event"] == "PeriodBilled"]
    assert [(e["period_index"], e["invoice_number"]) for e in billed] == [
        (1, "SUB-P-1"),
        (2, "SUB-P-2"),
        (3, None),
        (4, "SUB-P-4"),
    ]
    assert subs.cm.invoices.events_now("SUB-P-3") == []


async def test_a_period_already_in_the_table_is_never_billed_again(subs: Subscriptions) -> None:
    """The table's unique key is the last word: a billed period the subscription's row
    does not know of (a restore, a hand edit) makes the batch replay message by message,
    which skips that period and bills the others."""
    await create(subs, "SUB-G")
    pool = subs.cm.services["subscription"].runtime.pool
    await pool.execute(
        "INSERT INTO billed_periods (website_key, subscription_key, period_index,"
        " invoice_number, amount_debit, amount_vat, billed_at)"
        " VALUES ($1, 'SUB-G', 2, 'SUB-G-2', 0, 0, now())",
        subs.website_key,
    )
    mid = await subs.command("RunBilling", {"subscription_key": "SUB-G", "as_of": "2026-03-01"})
    assert (await subs.answer(mid))["payload"]["keys"]["periods_billed"] == "2"
    await invoice_created(subs, "SUB-G-1")
    await invoice_created(subs, "SUB-G-3")
    events = await subs.events_of("SUB-G", 3)
    assert [e["period_index"] for e in events if e["event"] == "PeriodBilled"] == [1, 3]
    assert subs.cm.invoices.events_now("SUB-G-2") == []
