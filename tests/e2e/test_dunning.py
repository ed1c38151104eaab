"""A scheme plays out on the manual clock: invoice + scheduler on the real broker and
Postgres, with a stand-in notifier answering every message as sent."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from contracts import topics
from tests.support.invoices import invoice_payload
from tests.support.kafka import envelope, poll_until, publish, read_all
from tests.support.platform import Platform, StandInNotifier, days, platform

CREATED = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
DUE = datetime(2026, 11, 15, tzinfo=UTC)


@pytest.fixture
async def cm(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Platform]:
    async with platform(kafka_bootstrap, database_url, "invoice", "scheduler") as running:
        yield running


@pytest.fixture
async def notifier(cm: Platform) -> AsyncIterator[StandInNotifier]:
    stand_in = StandInNotifier(cm.bootstrap, cm.prefix)
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


async def create(cm: Platform, number: str, **overrides: Any) -> None:
    mid = await cm.invoices.command(
        "CreateInvoice", invoice_payload(number, **overrides), occurred_at=CREATED.isoformat()
    )
    assert (await cm.invoices.answer(mid))["type"] == "CommandAccepted"


def summary(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(event code, business date, status) per event, after the creation event."""
    return [(e["event_code"], e["date"], e["invoice"]["status_code"]) for e in events[1:]]


async def dated_events(cm: Platform, number: str, count: int) -> list[dict[str, Any]]:
    """Events with their envelope's business date (occurred_at) as `date`."""
    await cm.invoices.events(number, count)
    out = []
    for record in cm.invoices.watcher.on(cm.prefix + topics.INVOICE_EVENTS):
        body = record.json()
        if record.key == f"{cm.invoices.website_key}:{number}":
            out.append({**body["payload"], "date": body["occurred_at"][:10]})
    return sorted(out, key=lambda e: e["sequence"])


async def tick_days(
    cm: Platform,
    start: datetime,
    end: datetime,
    expect: dict[str, int] | None = None,
    number: str = "INV-1",
) -> None:
    """Tick at each midnight from `start`'s day to `end`'s; on the days in `expect` (ISO
    date → event count), wait until the invoice has that many events before going on."""
    day = datetime.combine(start.date(), time(0), tzinfo=UTC)
    while day <= end:
        await cm.tick(day)
        if expect and (count := expect.get(day.date().isoformat())):
            await cm.invoices.events(number, count)
        day += timedelta(days=1)


async def settle(cm: Platform, number: str) -> list[dict[str, Any]]:
    """Everything the invoice emitted, after a sentinel custom event went through it."""
    before = len(cm.invoices.events_now(number))
    mid = await cm.invoices.command(
        "CreateCustomEvent", {"invoice_number": number, "message": "sentinel"}
    )
    await cm.invoices.answer(mid)
    events = await dated_events(cm, number, before + 1)
    assert events[-1]["event"] == "CustomEvent"
    return events[:-1]


async def payment(cm: Platform, status: str, at: datetime, *, events: int) -> None:
    """INV-1's payment T-1 of 121.00 is `status` at `at`; waits for the invoice's `events`-th
    event."""
    await cm.invoices.transaction("INV-1", "T-1", "121.00", status, occurred_at=at.isoformat())
    await cm.invoices.events("INV-1", events)


async def paid_ten_days_past_due(cm: Platform) -> None:
    """INV-1 registered, reminded on due + 7 and paid in full on due + 10."""
    await cm.tick(CREATED)
    await create(cm, "INV-1")
    await tick_days(cm, CREATED + days(1), DUE + days(10), expect={"2026-11-22": 3})
    await payment(cm, "success", DUE + days(10), events=4)


async def test_default_cm1_plays_out_day_by_day_to_the_collection_agency(
    cm: Platform, notifier: StandInNotifier
) -> None:
    await cm.tick(CREATED)
    await create(cm, "INV-1")
    await cm.invoices.events("INV-1", 2)  # the invitation goes out at registration
    await tick_days(
        cm,
        CREATED + days(1),
        DUE + days(60),
        expect={"2026-11-22": 3, "2026-12-06": 4, "2026-12-23": 5, "2027-01-06": 6},
    )
    events = await settle(cm, "INV-1")
    assert summary(events) == [
        (10, "2026-11-01", 10),  # payment invitation, at registration
        (4, "2026-11-22", 10),  # reminder: due + 7
        (4, "2026-12-06", 10),  # the 14-day letter: due + 21
        (7, "2026-12-23", 10),  # statutory costs: due + 38
        (8, "2027-01-06", 70),  # to the collection agency: due + 52
    ]
    costs = events[4]
    assert {"key": "Amount", "value": "40.00"} in costs["event_parameters"]  # the €40 minimum
    assert costs["invoice"]["amount_admin_costs"] == "40.00"
    assert costs["invoice"]["open_amount_incl_admin_costs"] == "161.00"
    assert events[5]["invoice"]["previous_step_index"] == 5
    assert [m["payload"]["step_index"] for m in notifier.received] == [1, 2, 3]
    assert notifier.received[2]["payload"]["states_costs"] is True


async def test_paid_ten_days_past_due_runs_no_step_after(
    cm: Platform, notifier: StandInNotifier
) -> None:
    await paid_ten_days_past_due(cm)
    await tick_days(cm, DUE + days(11), DUE + days(60))
    events = await settle(cm, "INV-1")
    assert summary(events) == [(10, "2026-11-01", 10), (4, "2026-11-22", 10), (1, "2026-11-25", 10)]
    assert events[-1]["invoice"]["is_paid"] is True
    assert events[-1]["invoice"]["next_step_index"] is None


async def test_pausing_from_day_5_to_day_15_shifts_every_later_step_by_10_days(
    cm: Platform, notifier: StandInNotifier
) -> None:
    await cm.tick(CREATED)
    await create(cm, "INV-1")
    await tick_days(cm, CREATED + days(1), DUE + days(5))
    await cm.invoices.answer(
        await cm.invoices.command(
            "PauseInvoice", {"invoice_number": "INV-1"}, occurred_at=(DUE + days(5)).isoformat()
        )
    )
    await tick_days(cm, DUE + days(6), DUE + days(15))
    await cm.invoices.answer(
        await cm.invoices.command(
            "UnpauseInvoice", {"invoice_number": "INV-1"}, occurred_at=(DUE + days(15)).isoformat()
        )
    )
    await tick_days(
        cm,
        DUE + days(16),
        DUE + days(62),
        expect={"2026-12-02": 5, "2026-12-16": 6, "2027-01-02": 7, "2027-01-16": 8},
    )
    events = await settle(cm, "INV-1")
    assert summary(events) == [
        (10, "2026-11-01", 10),
        (2, "2026-11-20", 20),
        (2, "2026-11-30", 10),
        (4, "2026-12-02", 10),  # was 11-22
        (4, "2026-12-16", 10),  # was 12-06
        (7, "2027-01-02", 10),  # was 12-23
        (8, "2027-01-16", 70),  # was 01-06
    ]


async def test_a_cost_step_waits_for_a_late_14_day_letter(cm: Platform) -> None:
    def late_letter(message: dict[str, Any]) -> tuple[str, str | None, timedelta]:
        # The 14-day letter (step 3) only went out 4 days after it was due, by e-mail.
        return "sent", "email", timedelta(days=4 if message["step_index"] == 3 else 0)

    stand_in = StandInNotifier(cm.bootstrap, cm.prefix, late_letter)
    await stand_in.start()
    try:
        await cm.tick(CREATED)
        await create(cm, "INV-1")
        await tick_days(
            cm,
            CREATED + days(1),
            DUE + days(45),
            expect={"2026-11-22": 3, "2026-12-06": 4, "2026-12-25": 5},
        )
        events = await settle(cm, "INV-1")
    finally:
        await stand_in.stop()
    assert summary(events)[2:] == [
        (4, "2026-12-10", 10),  # the letter, sent 12-10
        (7, "2026-12-25", 10),  # costs from 12-10 + 15 days, not on 12-23
    ]


async def test_a_refund_on_a_paid_invoice_resumes_the_scheme(
    cm: Platform, notifier: StandInNotifier
) -> None:
    await paid_ten_days_past_due(cm)
    await tick_days(cm, DUE + days(11), DUE + days(16))
    await payment(cm, "refunded", DUE + days(16), events=5)
    await tick_days(cm, DUE + days(17), DUE + days(22), expect={"2026-12-06": 6})
    events = await settle(cm, "INV-1")
    assert summary(events) == [
        (10, "2026-11-01", 10),
        (4, "2026-11-22", 10),
        (1, "2026-11-25", 10),
        (1, "2026-12-01", 10),
        (4, "2026-12-06", 10),  # step 3 on its day: the scheme went on where it stopped
    ]


async def test_a_stale_or_duplicated_step_due_has_no_effect(
    cm: Platform, notifier: StandInNotifier
) -> None:
    await cm.tick(CREATED)
    await create(cm, "INV-1")
    first = (await cm.invoices.events("INV-1", 2))[1]["invoice"]
    assert first["next_step_index"] == 2
    stale = envelope(
        "StepDue",
        {"invoice_number": "INV-1", "step_index": 2, "scheme_version": 1, "schedule_version": 0},
        website_key=cm.invoices.website_key,
        occurred_at=CREATED.isoformat(),
    )
    wrong_scheme = envelope(
        "StepDue",
        {"invoice_number": "INV-1", "step_index": 2, "scheme_version": 7, "schedule_version": 2},
        website_key=cm.invoices.website_key,
        occurred_at=CREATED.isoformat(),
    )
    key = f"{cm.invoices.website_key}:INV-1"
    await publish(
        cm.bootstrap,
        cm.prefix + topics.INVOICE_INTERNAL,
        [(key, json.dumps(stale).encode()), (key, json.dumps(wrong_scheme).encode())],
    )
    await tick_days(cm, CREATED + days(1), DUE + days(7), expect={"2026-11-22": 3})
    # The timer that fired step 2, delivered again as it was and as a fresh copy.
    [fired] = [
        r.json()
        for r in await read_all(cm.bootstrap, cm.prefix + topics.INVOICE_INTERNAL)
        if r.json()["type"] == "StepDue"
        and r.json()["payload"]["step_index"] == 2
        and r.json()["website_key"] == cm.invoices.website_key
        and r.json()["message_id"] not in (stale["message_id"], wrong_scheme["message_id"])
    ]
    copy = {**fired, "message_id": str(uuid.uuid4())}
    await publish(
        cm.bootstrap,
        cm.prefix + topics.INVOICE_INTERNAL,
        [(key, json.dumps(fired).encode()), (key, json.dumps(copy).encode())],
    )
    events = await settle(cm, "INV-1")
    assert summary(events) == [(10, "2026-11-01", 10), (4, "2026-11-22", 10)]
    reminders = [m for m in notifier.received if m["payload"]["step_index"] == 2]
    assert len(reminders) == 1


async def test_test_invoices_run_steps_only_with_the_schema_test_prefix(
    cm: Platform, notifier: StandInNotifier
) -> None:
    await cm.tick(CREATED)
    await create(cm, "T-1", is_test=True, description="a test")
    await create(cm, "T-2", is_test=True, description="schema_test invoice")
    await cm.invoices.events("T-2", 2)  # the invitation of the schema_test invoice
    answer = await cm.invoices.answer(
        await cm.invoices.command(
            "TriggerNextStep", {"invoice_number": "T-1"}, occurred_at=CREATED.isoformat()
        )
    )
    assert answer["type"] == "CommandAccepted"
    events = await dated_events(cm, "T-1", 2)
    assert events[1]["event_code"] == 10
    await poll_until(lambda: _count(notifier, "T-1", 1), what="one message for T-1")
    refused = await cm.invoices.answer(
        await cm.invoices.command("TriggerNextStep", {"invoice_number": "INV-X"})
    )
    assert refused["payload"]["errors"][0]["code"] == "unknown_invoice"


async def _count(notifier: StandInNotifier, number: str, n: int) -> bool:
    return len([m for m in notifier.received if m["payload"]["invoice_number"] == number]) >= n


async def test_one_jump_of_60_days_plays_out_every_step(
    cm: Platform, notifier: StandInNotifier
) -> None:
    await cm.tick(CREATED)
    await create(cm, "INV-1")
    await cm.invoices.events("INV-1", 2)
    await cm.tick(DUE + days(60))
    await cm.invoices.events("INV-1", 6)
    events = await settle(cm, "INV-1")
    assert summary(events) == [
        (10, "2026-11-01", 10),
        (4, "2026-11-22", 10),
        (4, "2026-12-06", 10),
        (7, "2026-12-23", 10),
        (8, "2027-01-06", 70),
    ]
