"""Two scheduler replicas on one schema and one prefix: every timer fires exactly once."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from contracts import topics
from services.runtime.app import Service
from tests.support.kafka import poll_until, publish
from tests.support.scheduler import (
    TARGET,
    SchedulerClient,
    scheduler_client,
    scheduler_service,
    step_due,
)


async def replicas(
    stack: AsyncExitStack, kafka_bootstrap: str, database_url: str, clock: str
) -> list[Service]:
    prefix = f"r{uuid.uuid4().hex[:10]}."
    return [
        await stack.enter_async_context(
            scheduler_service(kafka_bootstrap, database_url, clock=clock, prefix=prefix)
        )
        for _ in range(2)
    ]


@pytest.fixture
async def manual_pair(kafka_bootstrap: str, database_url: str) -> AsyncIterator[list[Service]]:
    async with AsyncExitStack() as stack:
        yield await replicas(stack, kafka_bootstrap, database_url, "manual")


async def _count(sch: SchedulerClient, sql: str, n: int) -> bool:
    return await sch.pool.fetchval(sql) == n


async def _collected(sch: SchedulerClient, n: int, fired: int) -> bool:
    """At least n messages seen (counted, not parsed) and `fired` timers reported by the
    TimersFired events (a few dozen events to parse)."""
    return len(sch.watcher.on(sch.prefix + TARGET)) >= n and len(sch.fired_events()) >= fired


async def test_ten_thousand_timers_fire_exactly_once_with_two_replicas(
    manual_pair: list[Service], kafka_bootstrap: str
) -> None:
    n = 10_000
    async with scheduler_client(kafka_bootstrap, manual_pair[0]) as sch:
        base = await sch.clock()
        due = base + timedelta(days=1)
        messages = {}
        items = []
        for i in range(n):
            timer_id = f"timer-{i:05d}"
            message = sch.step_due(f"INV-{i:05d}")
            messages[timer_id] = message
            body = {
                "message_id": str(uuid.uuid4()),
                "type": "ScheduleTimer",
                "website_key": sch.website_key,
                "occurred_at": base.isoformat(),
                "payload": {
                    "timer_id": timer_id,
                    "due_at": (due + timedelta(seconds=i % 600)).isoformat(),
                    "topic": TARGET,
                    "key": sch.key_of(message),
                    "message": message,
                },
            }
            items.append((timer_id, json.dumps(body).encode()))
        await publish(kafka_bootstrap, sch.prefix + topics.SCHEDULER_COMMANDS, items)
        await poll_until(
            lambda: _count(sch, "SELECT count(*) FROM timers", n),
            timeout=60,
            interval=0.2,
            what=f"{n} timers scheduled",
        )

        completed = await sch.tick_completed(await sch.tick(due + timedelta(hours=1)))
        assert completed["payload"]["fired"] == n

        await poll_until(
            lambda: _collected(sch, n, n), timeout=60, interval=0.2, what=f"{n} timers fired"
        )
        arrived = Counter(r.json()["message_id"] for r in sch.arrived())
        fired = Counter(e["timer_id"] for e in sch.fired_events())
        assert set(arrived) == {m["message_id"] for m in messages.values()}
        assert set(fired) == set(messages)
        assert [mid for mid, c in arrived.items() if c > 1] == []
        assert [tid for tid, c in fired.items() if c > 1] == []
        assert await sch.pending() == 0
        # Both replicas consumed: the group spread the command partitions over them.
        for replica in manual_pair:
            [subscriber] = replica.broker.subscribers
            assert subscriber.consumer is not None
            assert subscriber.consumer.assignment(), "a replica had no partitions"


async def test_two_replicas_firing_by_the_system_clock_share_the_timers(
    kafka_bootstrap: str, database_url: str
) -> None:
    """Timers already due when both replicas poll: each batch goes to one replica."""
    n = 5_000
    async with AsyncExitStack() as stack:
        pair = await replicas(stack, kafka_bootstrap, database_url, "system")
        sch = await stack.enter_async_context(scheduler_client(kafka_bootstrap, pair[0]))
        due = datetime.now(UTC) + timedelta(seconds=1)
        messages = [step_due(f"INV-{i:05d}", website_key=sch.website_key) for i in range(n)]
        # A plain connection: binary COPY of jsonb takes the text as it is.
        conn = await asyncpg.connect(database_url)
        try:
            await conn.copy_records_to_table(
                "timers",
                schema_name=pair[0].runtime.schema,
                columns=["website_key", "timer_id", "due_at", "topic", "key", "message"],
                records=[
                    (sch.website_key, f"timer-{i:05d}", due, TARGET, sch.key_of(m), json.dumps(m))
                    for i, m in enumerate(messages)
                ],
            )
        finally:
            await conn.close()

        await poll_until(
            lambda: _collected(sch, n, n), timeout=60, interval=0.2, what=f"{n} timers fired"
        )
        arrived = Counter(r.json()["message_id"] for r in sch.arrived())
        fired = Counter(e["timer_id"] for e in sch.fired_events())
        assert set(arrived) == {m["message_id"] for m in messages}
        assert max(arrived.values()) == 1 and max(fired.values()) == 1
        assert len(fired) == n
        assert await sch.pending() == 0
