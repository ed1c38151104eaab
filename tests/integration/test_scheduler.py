"""The scheduler on the real broker and Postgres, with the manual clock (and one test
with the system clock).

The manual-clock tests share one scheduler (one clock): each test is a merchant of its
own and works relative to the clock's current time, moving it only forward. Proving that
something did *not* fire uses a sentinel: a later timer with the same Kafka key. Messages
of one key are published in order, so once the sentinel is there, anything due before
it would be there too.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from contracts import topics
from services.runtime.app import Service
from tests.support.kafka import poll_until
from tests.support.scheduler import (
    SchedulerClient,
    parse_time,
    scheduler_client,
    scheduler_service,
)


@pytest.fixture(scope="module")
async def service(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Service]:
    async with scheduler_service(kafka_bootstrap, database_url, clock="manual") as running:
        yield running


@pytest.fixture
async def sch(kafka_bootstrap: str, service: Service) -> AsyncIterator[SchedulerClient]:
    async with scheduler_client(kafka_bootstrap, service) as client:
        yield client


async def test_a_timer_fires_on_a_tick_past_its_due_time(sch: SchedulerClient) -> None:
    base = await sch.clock()
    due = base + timedelta(days=3, hours=1)
    message = sch.step_due("INV-1", step_index=2)
    key = sch.key_of(message)
    answer = await sch.accepted(await sch.schedule("t-1", due, message))
    assert answer["payload"]["keys"] == {"timer_id": "t-1"}
    assert sch.arrived() == [] and await sch.pending() == 1

    tick = await sch.tick(due + timedelta(hours=1))
    completed = await sch.tick_completed(tick)
    [record] = await sch.arrivals(key, 1)

    body = record.json()
    assert record.topic == sch.prefix + topics.INVOICE_INTERNAL
    assert record.key == key
    assert record.headers.get("content-type") == "application/json"
    assert body["message_id"] == message["message_id"]
    assert parse_time(body["occurred_at"]) == due  # business time: when it was due
    assert {k: v for k, v in body.items() if k != "occurred_at"} == {
        k: v for k, v in message.items() if k != "occurred_at"
    }
    assert parse_time(completed["payload"]["as_of"]) == due + timedelta(hours=1)
    assert completed["payload"]["fired"] == 1
    [fired] = await poll_until(lambda: _async(sch.fired_events("t-1")), what="TimersFired")
    assert fired["topic"] == topics.INVOICE_INTERNAL
    assert parse_time(fired["due_at"]) == due
    assert parse_time(fired["fired_at"]) == due + timedelta(hours=1)
    assert fired["message_id"] == message["message_id"]
    assert fired["correlation_id"] == message["message_id"]  # the chain of the message
    assert await sch.pending() == 0
    assert await sch.clock() == due + timedelta(hours=1)


async def _async(value: object) -> object:
    return value


async def test_scheduling_again_replaces_the_timer(sch: SchedulerClient) -> None:
    base = await sch.clock()
    first = sch.step_due("INV-2", step_index=1)
    second = sch.step_due("INV-2", step_index=2)
    sentinel = sch.step_due("INV-2", step_index=3)
    key = sch.key_of(first)
    await sch.accepted(await sch.schedule("t-2", base + timedelta(hours=1), first))
    await sch.accepted(await sch.schedule("t-2", base + timedelta(hours=2), second))
    await sch.accepted(await sch.schedule("sentinel-2", base + timedelta(hours=3), sentinel))

    await sch.tick_completed(await sch.tick(base + timedelta(hours=4)))
    records = await sch.arrivals(key, 2)

    assert [r.json()["message_id"] for r in records] == [
        second["message_id"],
        sentinel["message_id"],
    ]
    assert parse_time(records[0].json()["occurred_at"]) == base + timedelta(hours=2)
    assert len(sch.fired_events("t-2")) == 1


async def test_a_cancelled_timer_never_fires(sch: SchedulerClient) -> None:
    base = await sch.clock()
    doomed = sch.step_due("INV-3", step_index=1)
    sentinel = sch.step_due("INV-3", step_index=2)
    key = sch.key_of(doomed)
    await sch.accepted(await sch.schedule("t-3", base + timedelta(hours=1), doomed))
    answer = await sch.accepted(await sch.cancel("t-3"))
    assert answer["payload"]["keys"] == {"timer_id": "t-3"}
    await sch.accepted(await sch.cancel("no-such-timer"))  # unknown: accepted, no effect
    await sch.accepted(await sch.schedule("sentinel-3", base + timedelta(hours=2), sentinel))

    completed = await sch.tick_completed(await sch.tick(base + timedelta(hours=3)))
    records = await sch.arrivals(key, 1)

    assert [r.json()["message_id"] for r in records] == [sentinel["message_id"]]
    assert completed["payload"]["fired"] == 1
    assert sch.fired_events("t-3") == []


async def test_a_merchant_cannot_cancel_another_merchants_timer(sch: SchedulerClient) -> None:
    base = await sch.clock()
    message = sch.step_due("INV-4")
    await sch.accepted(await sch.schedule("t-4", base + timedelta(hours=1), message))
    await sch.accepted(await sch.cancel("t-4", website_key="shop-intruder"))  # a no-op

    await sch.tick_completed(await sch.tick(base + timedelta(hours=2)))

    [record] = await sch.arrivals(sch.key_of(message), 1)
    assert record.json()["message_id"] == message["message_id"]


async def test_a_tick_to_an_earlier_time_changes_nothing(sch: SchedulerClient) -> None:
    base = await sch.clock()
    message = sch.step_due("INV-5")
    await sch.accepted(await sch.schedule("t-5", base + timedelta(minutes=1), message))

    completed = await sch.tick_completed(await sch.tick(base - timedelta(days=30)))

    assert parse_time(completed["payload"]["as_of"]) == base
    assert completed["payload"]["fired"] == 0
    assert await sch.clock() == base
    assert await sch.pending() == 1 and sch.arrived() == []
    # The same time again is no move either; a minute later fires it.
    await sch.tick_completed(await sch.tick(base))
    assert await sch.pending() == 1
    completed = await sch.tick_completed(await sch.tick(base + timedelta(minutes=1)))
    assert completed["payload"]["fired"] == 1
    await sch.arrivals(sch.key_of(message), 1)


async def test_timers_fire_in_due_order(sch: SchedulerClient) -> None:
    base = await sch.clock()
    steps = list(range(1, 11))
    due = {step: base + timedelta(hours=step) for step in steps}
    messages = {step: sch.step_due("INV-6", step_index=step) for step in steps}
    shuffled = steps[:]
    random.Random(6).shuffle(shuffled)
    for step in shuffled:  # scheduled out of order
        await sch.schedule(f"t-6-{step}", due[step], messages[step])
    await poll_until(lambda: _pending_is(sch, 10), what="ten pending timers")

    completed = await sch.tick_completed(await sch.tick(base + timedelta(days=1)))

    assert completed["payload"]["fired"] == 10
    records = await sch.arrivals(sch.key_of(messages[1]), 10)
    assert [r.json()["payload"]["step_index"] for r in records] == steps
    assert [parse_time(r.json()["occurred_at"]) for r in records] == [due[s] for s in steps]


async def _pending_is(sch: SchedulerClient, count: int) -> bool:
    return await sch.pending() == count


async def test_a_timer_due_at_or_before_the_clock_fires_at_once(sch: SchedulerClient) -> None:
    base = await sch.clock()
    past = sch.step_due("INV-7", step_index=1)
    now = sch.step_due("INV-7", step_index=2)
    await sch.accepted(await sch.schedule("t-7a", base - timedelta(days=2), past))
    await sch.accepted(await sch.schedule("t-7b", base, now))

    records = await sch.arrivals(sch.key_of(past), 2)  # no Tick

    assert [r.json()["message_id"] for r in records] == [past["message_id"], now["message_id"]]
    assert parse_time(records[0].json()["occurred_at"]) == base - timedelta(days=2)
    [fired] = await poll_until(lambda: _async(sch.fired_events("t-7a")), what="TimersFired")
    assert parse_time(fired["fired_at"]) == base
    assert await sch.pending() == 0


async def test_invalid_timers_are_rejected(sch: SchedulerClient) -> None:
    base = await sch.clock()
    due = base + timedelta(hours=1)
    good = sch.step_due("INV-8")

    async def codes(command_id: str) -> set[tuple[str, str]]:
        answer = await sch.answer(command_id)
        assert answer["type"] == "CommandRejected", answer
        return {(e["field"], e["code"]) for e in answer["payload"]["errors"]}

    unknown_topic = await sch.schedule("t-8a", due, good, topic="cm.no.such.topic")
    wrong_type = await sch.schedule("t-8b", due, good, topic=topics.NOTIFIER_INTERNAL)
    # A timer publishes as the scheduler: never to an answer, event or merchant topic.
    forbidden = [
        await sch.schedule(f"t-8f{i}", due, good, topic=topic)
        for i, topic in enumerate(
            (topics.COMMAND_RESULTS, topics.INVOICE_EVENTS, topics.INVOICE_COMMANDS)
        )
    ]
    broken = sch.step_due("INV-8")
    del broken["payload"]["step_index"]
    broken["payload"]["stepindex"] = 2
    bad_payload = await sch.schedule("t-8c", due, broken)
    foreign = sch.step_due("INV-8")
    foreign["website_key"] = "shop-other"
    mismatch = await sch.schedule("t-8d", due, foreign)
    not_an_envelope = await sch.schedule("t-8e", due, {"type": "StepDue"}, key="k")

    assert await codes(unknown_topic) == {("payload.topic", "unknown_topic")}
    assert await codes(wrong_type) == {("payload.message.type", "unknown_type")}
    for command_id in forbidden:
        assert await codes(command_id) == {("payload.topic", "not_allowed_here")}
    assert await codes(bad_payload) == {
        ("payload.message.payload.step_index", "missing"),
        ("payload.message.payload.stepindex", "extra_forbidden"),
    }
    assert await codes(mismatch) == {("payload.message.website_key", "website_key_mismatch")}
    assert {field for field, _ in await codes(not_an_envelope)} == {"payload.message"}
    assert await sch.pending() == 0


# --- the system clock --------------------------------------------------------------------


async def test_the_system_clock_fires_a_timer_when_it_is_due(
    kafka_bootstrap: str, database_url: str
) -> None:
    async with (
        scheduler_service(kafka_bootstrap, database_url, clock="system") as service,
        scheduler_client(kafka_bootstrap, service) as sch,
    ):
        message = sch.step_due("INV-9")
        # Far ahead first, so that it is surely still waiting when we look, however
        # loaded the machine; then moved to one second from now (the same timer id).
        await sch.accepted(
            await sch.schedule("t-9", datetime.now(UTC) + timedelta(hours=1), message)
        )
        assert await sch.pending() == 1
        due = datetime.now(UTC) + timedelta(seconds=1)
        await sch.accepted(await sch.schedule("t-9", due, message))

        [record] = await poll_until(
            lambda: _async(sch.arrived(sch.key_of(message))), what="the timer"
        )
        seen = datetime.now(UTC)

        assert seen >= due
        assert parse_time(record.json()["occurred_at"]) == due
        [fired] = sch.fired_events("t-9") or await poll_until(
            lambda: _async(sch.fired_events("t-9")), what="TimersFired"
        )
        # Fired when due by the wall clock, not before (how soon after is measured in
        # bench/, not here: a loaded machine may take seconds).
        lag = parse_time(fired["fired_at"]) - due
        assert timedelta(0) <= lag < timedelta(minutes=1)
        assert await sch.pending() == 0

        answer = await sch.answer(await sch.tick(datetime.now(UTC) + timedelta(days=1)))
        assert answer["type"] == "CommandRejected"
        assert [e["code"] for e in answer["payload"]["errors"]] == ["manual_clock_only"]
