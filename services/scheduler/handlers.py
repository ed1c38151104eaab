"""The scheduler's commands and the firing of timers.

A timer fires by enqueueing, in the transaction that deletes it, its message (to the
prefixed topic, with its key, `occurred_at` = `due_at`, everything else as given) and a
`TimersFired` event per merchant and batch: the firing SQL inserts them into the outbox
itself (repository.py), so a handler that fires timers enqueues them before its own
messages. The clock is the
wall clock (`CM_CLOCK=system`: a background task fires what is due, see app.py) or the
manual clock row moved by `Tick` (`CM_CLOCK=manual`). With the manual clock every
ScheduleTimer and CancelTimer takes a share lock on the clock row and a Tick updates it,
so a Tick waits for the commands in flight and they wait for the Tick: a timer is never
scheduled "before" a Tick it missed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import Counter, Histogram

from contracts import catalog, topics
from contracts.envelope import Envelope, FieldError, ParseError, parse_envelope
from contracts.scheduler import (
    CLOCK_KEY,
    CancelTimer,
    ScheduleTimer,
    Tick,
    TickCompleted,
)
from contracts.topics import ALL_TOPICS, PUSH_INVOICE, TopicNames
from services.runtime.consumer import HandlerContext, InfrastructureError
from services.runtime.db import Connection
from services.runtime.outbox import JSON_HEADERS, headers_json
from services.scheduler.repository import Outbox, Timer, TimerRepository

TIMERS_FIRED = Counter("cm_scheduler_timers_fired_total", "Timers fired")
FIRE_LAG_SECONDS = Histogram(
    "cm_scheduler_fire_lag_seconds",
    "Due-to-fired lag: the scheduler clock's time at firing minus the timer's due_at",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)


@dataclass
class SchedulerConfig:
    """What the handlers need from the settings; filled in when the service starts."""

    clock: str | None = None  # "system" or "manual"
    batch_size: int = 1000
    relay_shards: int = 8

    @property
    def manual(self) -> bool:
        if self.clock is None:  # a message before startup finished: redeliver it
            raise InfrastructureError("the scheduler has not started yet")
        return self.clock == "manual"


def _json_default(value: Any) -> Any:
    # Bodies are parsed with parse_float=Decimal: a fraction is written back as a string
    # with every digit (Money and the other decimal fields accept strings); never a float.
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def iso(moment: datetime) -> str:
    """`occurred_at` of a fired message: the due time in UTC (as the SQL path writes it)."""
    return moment.astimezone(UTC).isoformat()


def outbox_of(topic_names: TopicNames, shards: int) -> Outbox:
    """Where the firing SQL enqueues fired messages: as `enqueue` would (JSON headers)."""
    return Outbox(
        prefix=topic_names.prefix,
        events_topic=topic_names(topics.SCHEDULER_EVENTS),
        shards=shards,
        headers_json=headers_json(JSON_HEADERS),
    )


def _observe(due_times: list[datetime], fired_at: datetime) -> None:
    for due_at in due_times:
        FIRE_LAG_SECONDS.observe(max(0.0, (fired_at - due_at).total_seconds()))
    TIMERS_FIRED.inc(len(due_times))


async def fire_batch(
    conn: Connection,
    *,
    now: datetime,
    limit: int,
    outbox: Outbox,
    caused_by: Envelope[Any] | None = None,
) -> int:
    """Claim (delete) up to `limit` timers due at or before `now` and enqueue their
    messages (in the outbox, in this transaction: the caller wakes the relay after the
    commit); how many fired."""
    causation = caused_by.message_id if caused_by is not None else None
    fired = await TimerRepository(conn).fire_due(now, limit, outbox, iso(now), causation)
    _observe(fired, now)
    return len(fired)


class Handlers:
    """The three commands of `cm.scheduler.commands`."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config

    def _outbox(self, ctx: HandlerContext) -> Outbox:
        return outbox_of(ctx.topics, self.config.relay_shards)

    async def _now(self, repo: TimerRepository) -> datetime:
        if self.config.manual:
            return await repo.clock(lock=True)
        return datetime.now(UTC)  # the system clock: the scheduler alone reads it

    async def schedule_timer(self, ctx: HandlerContext, cmd: ScheduleTimer) -> None:
        errors = _validate(ctx, cmd)
        if errors:
            ctx.reject(errors)
            return
        repo = TimerRepository(ctx.conn)
        now = await self._now(repo)
        timer = Timer(
            ctx.website_key, cmd.timer_id, cmd.due_at, cmd.topic, cmd.key, _dumps(cmd.message)
        )
        if cmd.due_at <= now:
            # Due already: fire at once (replacing any earlier timer of that id).
            await repo.fire_now(timer, self._outbox(ctx), iso(now), ctx.envelope.message_id)
            _observe([cmd.due_at], now)
        else:
            await repo.upsert(timer)
        ctx.accept(timer_id=cmd.timer_id)

    async def cancel_timer(self, ctx: HandlerContext, cmd: CancelTimer) -> None:
        repo = TimerRepository(ctx.conn)
        if self.config.manual:
            await repo.clock(lock=True)
        await repo.delete(ctx.website_key, cmd.timer_id)  # unknown or fired: a no-op
        ctx.accept(timer_id=cmd.timer_id)

    async def tick(self, ctx: HandlerContext, cmd: Tick) -> None:
        if not self.config.manual:
            ctx.reject(
                [
                    FieldError(
                        "type",
                        "manual_clock_only",
                        "Tick needs CM_CLOCK=manual; this scheduler runs on the system clock",
                    )
                ]
            )
            return
        repo = TimerRepository(ctx.conn)
        now = await repo.advance_clock(cmd.as_of)
        fired = 0
        while True:
            count = await fire_batch(
                ctx.conn,
                now=now,
                limit=self.config.batch_size,
                outbox=self._outbox(ctx),
                caused_by=ctx.envelope,
            )
            fired += count
            if count < self.config.batch_size:
                break
        ctx.emit(topics.SCHEDULER_EVENTS, CLOCK_KEY, TickCompleted(as_of=now, fired=fired))
        ctx.accept(clock=iso(now))


def _validate(ctx: HandlerContext, cmd: ScheduleTimer) -> list[FieldError]:
    if cmd.topic not in ALL_TOPICS or cmd.topic == PUSH_INVOICE:  # the contract checks too
        return [FieldError("payload.topic", "unknown_topic", f"unknown topic {cmd.topic!r}")]
    # A timer publishes as the scheduler: only the commands the catalog lets it write
    # (StepDue, RetryWebhookDelivery, RunBilling on their internal topics), never an
    # answer, an event or a merchant's command.
    allowed = catalog.timer_types(cmd.topic)
    if not allowed:
        return [
            FieldError(
                "payload.topic",
                "not_allowed_here",
                f"timers may not publish to {cmd.topic!r}",
            )
        ]
    # Validated as it will be published: with occurred_at = due_at.
    raw = _dumps({**cmd.message, "occurred_at": iso(cmd.due_at)})
    try:
        envelope = parse_envelope(raw, allowed)
    except ParseError as error:
        return [
            FieldError(
                "payload.message" if e.field == "$" else f"payload.message.{e.field}",
                e.code,
                e.message,
            )
            for e in error.errors
        ]
    if envelope.website_key != ctx.website_key:
        return [
            FieldError(
                "payload.message.website_key",
                "website_key_mismatch",
                "a timer's message must belong to the merchant that schedules it",
            )
        ]
    return []
