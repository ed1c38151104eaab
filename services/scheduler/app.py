"""The scheduler service: generic durable timers and the clock.

"At T, publish M to topic X with key K": it knows nothing about what the messages mean.
`cm.scheduler.commands` carries ScheduleTimer, CancelTimer and Tick (handlers.py). With
`CM_CLOCK=system` a background task fires what is due every `SCHEDULER_POLL_INTERVAL_MS`;
with `CM_CLOCK=manual` only Ticks move time (and fire). Replicas share the timers: each
firing claims its batch with `FOR UPDATE SKIP LOCKED`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import Gauge

from contracts import topics
from services.runtime.app import Runtime, ServiceDefinition
from services.runtime.consumer import HandlerSpec, consumer_specs
from services.runtime.logs import get_logger
from services.runtime.metrics import COUNT_CAP, sample_every
from services.runtime.worker import run_worker
from services.scheduler.handlers import Handlers, SchedulerConfig, fire_batch, outbox_of
from services.scheduler.repository import TimerRepository

log = get_logger(__name__)

TIMERS_DUE = Gauge(
    "cm_scheduler_timers_due",
    "Timers due by the scheduler's clock but not fired yet (counted up to 1,000,000), sampled",
)
OLDEST_DUE_AGE = Gauge(
    "cm_scheduler_oldest_due_age_seconds",
    "How long the earliest timer not fired yet has been due (0 when none is), sampled",
)


async def fire_due(runtime: Runtime, batch_size: int) -> int:
    """Fire everything due by the system clock, one transaction per batch; how many."""
    total = 0
    outbox = outbox_of(runtime.topics, runtime.settings.relay_shards)
    while True:
        now = datetime.now(UTC)
        async with runtime.unit_of_work() as work:
            count = await fire_batch(work.conn, now=now, limit=batch_size, outbox=outbox)
            work.enqueued = count > 0  # the firing SQL wrote the outbox rows
        total += count
        if count < batch_size:
            return total


async def sample_due(runtime: Runtime) -> int:
    """Read the timers-behind gauges once: due by the system clock, or by the manual
    clock's time under `CM_CLOCK=manual`."""
    async with runtime.pool.acquire() as conn:
        repo = TimerRepository(conn)
        now = await repo.clock() if runtime.settings.cm_clock == "manual" else datetime.now(UTC)
        count, earliest = await repo.due(now, COUNT_CAP)
    TIMERS_DUE.set(count)
    OLDEST_DUE_AGE.set(max(0.0, (now - earliest).total_seconds()) if earliest else 0.0)
    return 0


async def timers_behind(runtime: Runtime) -> None:
    """The timers-behind gauges, every `METRICS_SAMPLE_INTERVAL_S`."""
    interval = runtime.settings.metrics_sample_interval_s
    await sample_every(interval, "scheduler-metrics", lambda: sample_due(runtime))


def definition(schema: str | None = None) -> ServiceDefinition:
    """The scheduler; `schema` (default `scheduler`) lets tests and benchmarks run
    schedulers of their own on one database."""
    config = SchedulerConfig()
    handlers = Handlers(config)

    async def scheduler_clock(runtime: Runtime) -> None:
        config.clock = runtime.settings.cm_clock
        config.batch_size = runtime.settings.scheduler_batch_size
        config.relay_shards = runtime.settings.relay_shards
        if config.clock != "system":
            return  # the manual clock moves only with Ticks
        interval = runtime.settings.scheduler_poll_interval_ms / 1000

        async def step() -> int:
            await fire_due(runtime, config.batch_size)
            return 0  # fire_due drains what is due; look again after the interval

        await run_worker("scheduler-clock", step, idle_s=interval)

    commands = {
        "ScheduleTimer": HandlerSpec(handlers.schedule_timer),
        "CancelTimer": HandlerSpec(handlers.cancel_timer),
        "Tick": HandlerSpec(handlers.tick),
    }
    return ServiceDefinition(
        name="scheduler",
        schema=schema,
        migrations=Path(__file__).parent / "migrations",
        consumers=consumer_specs({("commands", topics.SCHEDULER_COMMANDS): commands}),
        background_tasks=(scheduler_clock, timers_behind),
    )
