"""A client for tests of the scheduler: schedule, cancel, tick, and watch what fires."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from contracts import topics
from services.runtime.app import Service, build_service
from services.scheduler.app import definition
from tests.support.kafka import MerchantClient, Record, at_least, envelope, poll_until, publish
from tests.support.services import make_settings

#: Where the timers of these tests publish (StepDue is a message the catalog allows there).
TARGET = topics.INVOICE_INTERNAL


def schema_for(prefix: str) -> str:
    return "scheduler_" + prefix.strip(".")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def step_due(
    number: str, *, website_key: str, step_index: int = 1, message_id: str | None = None
) -> dict[str, Any]:
    """A StepDue envelope, as a service would hand it to the scheduler."""
    return envelope(
        "StepDue",
        {
            "invoice_number": number,
            "step_index": step_index,
            "scheme_version": 1,
            "schedule_version": 0,
        },
        website_key=website_key,
        message_id=message_id,
        occurred_at="2026-11-01T09:00:00+00:00",
    )


@asynccontextmanager
async def scheduler_service(
    kafka_bootstrap: str,
    database_url: str,
    *,
    clock: str = "manual",
    prefix: str | None = None,
    **overrides: object,
) -> AsyncIterator[Service]:
    """A scheduler on topics and a schema of its own (so its manual clock is its own)."""
    prefix = prefix or f"c{uuid.uuid4().hex[:10]}."
    settings = make_settings(kafka_bootstrap, database_url, prefix, cm_clock=clock, **overrides)
    service = build_service(definition(schema_for(prefix)), settings)
    async with service.app:
        yield service


class SchedulerClient(MerchantClient):
    """Talks to one scheduler (or several replicas on one prefix) through its topics."""

    def __init__(self, bootstrap: str, prefix: str, pool: asyncpg.Pool) -> None:
        super().__init__(bootstrap, prefix, topics.SCHEDULER_EVENTS, topics.DLQ, TARGET)
        self.pool = pool

    # --- commands ---

    async def command(
        self, type_: str, payload: dict[str, Any], key: str, *, website_key: str | None = None
    ) -> str:
        body = envelope(type_, payload, website_key=website_key or self.website_key)
        await publish(
            self.bootstrap, self.prefix + topics.SCHEDULER_COMMANDS, [(key, _bytes(body))]
        )
        return str(body["message_id"])

    async def schedule(
        self,
        timer_id: str,
        due_at: datetime,
        message: dict[str, Any],
        *,
        key: str | None = None,
        topic: str = TARGET,
        website_key: str | None = None,
    ) -> str:
        payload = {
            "timer_id": timer_id,
            "due_at": due_at.isoformat(),
            "topic": topic,
            "key": key or self.key_of(message),
            "message": message,
        }
        return await self.command("ScheduleTimer", payload, timer_id, website_key=website_key)

    async def cancel(self, timer_id: str, *, website_key: str | None = None) -> str:
        return await self.command(
            "CancelTimer", {"timer_id": timer_id}, timer_id, website_key=website_key
        )

    async def tick(self, as_of: datetime) -> str:
        return await self.command("Tick", {"as_of": as_of.isoformat()}, "clock")

    def step_due(self, number: str, **kwargs: Any) -> dict[str, Any]:
        return step_due(number, website_key=self.website_key, **kwargs)

    def key_of(self, message: dict[str, Any]) -> str:
        return f"{message['website_key']}:{message['payload']['invoice_number']}"

    # --- what came out ---

    async def accepted(self, command_id: str) -> dict[str, Any]:
        answer = await self.answer(command_id)
        assert answer["type"] == "CommandAccepted", answer
        return answer

    async def tick_completed(self, tick_id: str) -> dict[str, Any]:
        """The TickCompleted caused by the Tick `tick_id` (its full envelope)."""

        async def found() -> dict[str, Any] | None:
            for record in self.watcher.on(self.prefix + topics.SCHEDULER_EVENTS):
                body = record.json()
                if body["type"] == "TickCompleted" and body["causation_id"] == tick_id:
                    assert record.key == "clock"
                    return body  # type: ignore[no-any-return]
            return None

        return await poll_until(found, what=f"TickCompleted of {tick_id}")

    def arrived(self, key: str | None = None) -> list[Record]:
        """Records on the target topic (of this merchant, or with this key)."""
        return [
            r
            for r in self.watcher.on(self.prefix + TARGET)
            if (r.key == key if key is not None else r.json()["website_key"] == self.website_key)
        ]

    async def arrivals(self, key: str, count: int) -> list[Record]:
        return await at_least(
            count, lambda: self.arrived(key), what=f"{count} messages with key {key}"
        )

    def fired_events(self, timer_id: str | None = None) -> list[dict[str, Any]]:
        """The timers the TimersFired events report (of `timer_id`, or all), each its
        entry with the event's `fired_at` and `causation_id`."""
        return [
            {
                **timer,
                "fired_at": body["payload"]["fired_at"],
                "causation_id": body["causation_id"],
            }
            for r in self.watcher.on(self.prefix + topics.SCHEDULER_EVENTS)
            if (body := r.json())["type"] == "TimersFired"
            for timer in body["payload"]["timers"]
            if timer_id is None or timer["timer_id"] == timer_id
        ]

    async def clock(self) -> datetime:
        now: datetime = await self.pool.fetchval("SELECT now FROM clock")
        return now

    async def pending(self) -> int:
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM timers WHERE website_key = $1", self.website_key
        )
        return count


def later(moment: datetime, **delta: float) -> datetime:
    return moment + timedelta(**delta)


def _bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


@asynccontextmanager
async def scheduler_client(
    kafka_bootstrap: str, service: Service
) -> AsyncIterator[SchedulerClient]:
    client = SchedulerClient(kafka_bootstrap, service.runtime.topics.prefix, service.runtime.pool)
    await client.watcher.start()
    try:
        yield client
    finally:
        await client.watcher.stop()
