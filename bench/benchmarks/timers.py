"""timers: durable timers fired per second by the scheduler, and the due→fired lag,
against pgqueuer draining the same number of jobs on the same PostgreSQL.

The scheduler runs as its own process (`python -m services.scheduler` shape, system
clock, its own schema and topic prefix). Timers are written straight into its `timers`
table with binary COPY (scheduling through Kafka is not what is measured) with one
common `due_at` a little after the COPY commits; the service's firing loop then claims
them in batches (`FOR UPDATE SKIP LOCKED`, one transaction per batch: delete + an outbox
row per message + one TimersFired per 200 timers), and the relay publishes them. This process
reads the target topic and counts every message (and any repeat) as it arrives.

Runs (`--timers-runs`):
- `drain`: `--timers-n` timers (default 200,000) all due at once: fired/s through to
  Kafka and the lag of each message (arrival - due_at) while the backlog drains;
- `steady`: `--timers-steady-rate` timers/s (default 2,000) due over
  `--timers-steady-seconds` (default 5): the lag when the scheduler keeps up;
- `pgqueuer`: the same `--timers-n` jobs enqueued in batches into pgqueuer (its own
  schema, same database), then drained by one QueueManager (no-op entrypoint): jobs/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka.structs import ConsumerRecord

from bench.cost import CostMeter
from bench.cost import line as cost_line
from bench.infra import drop_run
from bench.inprocess import schema_of
from bench.kafka import PARTITIONS
from bench.loadcore import TopicReader
from bench.procs import InfraCpu, ServiceProcess
from bench.registry import BenchContext, Options, benchmark, logger
from bench.stats import per_s, summary
from contracts import topics

TARGET = topics.INVOICE_INTERNAL  # where the invoice service's StepDue timers go
COLUMNS = ["website_key", "timer_id", "due_at", "topic", "key", "message"]
WEBSITE_KEY = "bench-shop"


OPTIONS = Options(
    {
        "--timers-n": (
            200_000,
            "timers of the drain run and jobs of the pgqueuer run (default 200000)",
        ),
        "--timers-batch-size": (
            1000,
            "timers per firing transaction, SCHEDULER_BATCH_SIZE (default 1000)",
        ),
        "--timers-steady-rate": (2000, "timers/s due in the steady run"),
        "--timers-steady-seconds": (5.0, "length of the steady run"),
        "--timers-pgqueuer-batch-size": (100, "pgqueuer dequeue batch size (default 100)"),
    },
    "--timers-runs",
    ("drain", "steady", "pgqueuer"),
)


_log = logger("timers")


def _message(i: int) -> str:
    """A StepDue envelope (~330 bytes), as the invoice service schedules it."""
    return json.dumps(
        {
            "message_id": str(uuid.uuid4()),
            "type": "StepDue",
            "website_key": WEBSITE_KEY,
            "occurred_at": "2026-11-01T09:00:00+00:00",
            "correlation_id": None,
            "causation_id": None,
            "payload": {
                "invoice_number": f"INV-{i:07d}",
                "step_index": 2,
                "scheme_version": 1,
                "schedule_version": 0,
            },
        }
    )


class Reader(TopicReader):
    """Reads the target topic from the beginning and notes when each message arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic, poll_ms=50, what="target topic")
        self.arrivals: list[float] = []
        self.seen: set[int] = set()
        self.duplicates = 0
        self.expected = 0
        self._enough = asyncio.Event()

    def record(self, record: ConsumerRecord[Any, Any], now: float) -> None:
        digest = hash(record.value)  # a re-publish has the same body
        if digest in self.seen:
            self.duplicates += 1
            return
        self.seen.add(digest)
        self.arrivals.append(now)

    def polled(self, anything: bool) -> None:
        if self.expected and len(self.arrivals) >= self.expected:
            self._enough.set()

    async def wait_for(self, n: int, timeout: float) -> bool:
        self.expected = n
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._enough.wait(), timeout)
        await asyncio.sleep(0.5)  # a moment for stragglers (repeats) to show up
        return len(self.arrivals) >= n


async def _copy_timers(
    database_url: str, schema: str, rows: list[tuple[Any, ...]]
) -> tuple[float, float]:
    """Binary COPY into the scheduler's table (one transaction); (started, committed)."""
    conn = await asyncpg.connect(database_url)  # no jsonb codec: COPY takes the text
    try:
        started = time.time()
        await conn.copy_records_to_table(
            "timers", schema_name=schema, columns=COLUMNS, records=rows
        )
        return started, time.time()
    finally:
        await conn.close()


async def _scheduler_run(
    ctx: BenchContext, label: str, n: int, due_times: Callable[[datetime], list[datetime]]
) -> dict[str, Any]:
    """Start a scheduler, COPY n timers (due per `due_times(start)`, where `start` is a
    moment after the COPY has surely committed), read until all fired."""
    prefix = ctx.prefix(label)
    schema = schema_of(prefix)
    scheduler = ServiceProcess(
        ctx,
        "scheduler",
        "services.scheduler.app",
        prefix=prefix,
        schema=schema,
        env={"SCHEDULER_BATCH_SIZE": str(ctx.args.timers_batch_size)},
    )
    scheduler.spawn()
    await scheduler.wait_healthy()
    meter = CostMeter()
    meter.add("scheduler", scheduler.pid)
    infra = InfraCpu()
    reader = Reader(ctx.bootstrap_servers, prefix + TARGET)
    try:
        await reader.start()
        built = time.time()
        messages = [_message(i) for i in range(n)]
        build_s = time.time() - built
        # Due once the COPY has committed (~50-100k rows/s here, with the indexes).
        dues = due_times(datetime.now(UTC) + timedelta(seconds=2 + n / 40_000))
        rows = [
            (WEBSITE_KEY, f"t-{i:07d}", due, TARGET, f"{WEBSITE_KEY}:INV-{i:07d}", message)
            for i, (due, message) in enumerate(zip(dues, messages, strict=True))
        ]
        del messages
        _log(f"{label}: copying {n} timers")
        copy_started, committed = await _copy_timers(ctx.database_url, schema, rows)
        del rows
        first_due = dues[0].timestamp()
        _log(f"{label}: COPY took {committed - copy_started:.2f} s; waiting for {n} messages")
        complete = await reader.wait_for(n, timeout=max(120.0, n / 2000))
    finally:
        await meter.stop()
        infra.stop()
        await reader.stop()
        scheduler.stop()
    arrivals = reader.arrivals
    lags = [
        max(0.0, arrival - due.timestamp()) for arrival, due in zip(arrivals, dues, strict=False)
    ]
    # Arrivals are in arrival order, dues sorted: the k-th arrival against the k-th due
    # time is exact for the drain (one due time) and a fair pairing for the steady run.
    left = await drop_run(
        ctx,
        schema,
        {
            "timers_left": "SELECT count(*) FROM {schema}.timers",
            "outbox_left": "SELECT count(*) FROM {schema}.outbox",
        },
        prefix=prefix,
    )
    last = arrivals[-1] if arrivals else None
    first = arrivals[0] if arrivals else None
    span = (last - max(first_due, committed)) if last else None
    return {
        "n": n,
        "complete": complete,
        "messages_seen": len(arrivals),
        "duplicates_seen": reader.duplicates,
        **left,
        "copy_seconds": round(committed - copy_started, 3),
        "build_messages_seconds": round(build_s, 3),
        "copy_committed_before_due": committed <= first_due,
        "fired_per_s": per_s(n, span),
        "seconds_due_to_last": round(span, 3) if span else None,
        "first_message_after_due_ms": round((first - first_due) * 1000, 1) if first else None,
        "lag_due_to_kafka": summary(lags),
        # Per timer fired (its message published, 1/200 of a TimersFired), from its start.
        "cost": meter.figures(n),
        # The broker (this process's reader included) and PostgreSQL, same window.
        "infra_cpu": infra.figures(n),
    }


async def drain(ctx: BenchContext) -> dict[str, Any]:
    n = ctx.args.timers_n
    result = await _scheduler_run(ctx, "td", n, lambda start: [start] * n)
    _log(f"drain: {result['fired_per_s']} timers/s, lag {result['lag_due_to_kafka']}")
    _log(f"drain: {cost_line(result['cost'])}; infra {result['infra_cpu']}")
    return result


async def steady(ctx: BenchContext) -> dict[str, Any]:
    rate, seconds = ctx.args.timers_steady_rate, ctx.args.timers_steady_seconds
    n = int(rate * seconds)
    result = await _scheduler_run(
        ctx, "ts", n, lambda start: [start + timedelta(seconds=i / rate) for i in range(n)]
    )
    result["rate_per_s"] = rate
    _log(f"steady: lag {result['lag_due_to_kafka']} at {rate}/s")
    _log(f"steady: {cost_line(result['cost'])}")
    return result


async def pgqueuer_run(ctx: BenchContext) -> dict[str, Any]:
    from pgqueuer import AsyncpgDriver, Queries, QueueManager  # noqa: PLC0415
    from pgqueuer.domain.types import QueueExecutionMode  # noqa: PLC0415

    n = ctx.args.timers_n
    batch_size = ctx.args.timers_pgqueuer_batch_size
    schema = f"bench_pgq_{ctx.run_id}"
    admin = await asyncpg.connect(ctx.database_url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    await admin.close()
    settings = {"search_path": f"{schema},public"}
    conn = await asyncpg.connect(ctx.database_url, server_settings=settings)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        enqueue_started = time.time()
        chunk = 10_000
        for offset in range(0, n, chunk):
            size = min(chunk, n - offset)
            await queries.enqueue(
                ["timer"] * size,
                [_message(offset + i).encode() for i in range(size)],
                [0] * size,
            )
        enqueued = time.time()
        _log(f"pgqueuer: {n} jobs enqueued in {enqueued - enqueue_started:.2f} s; draining")
    finally:
        await conn.close()

    done: list[float] = []
    worker = await asyncpg.connect(ctx.database_url, server_settings=settings)
    try:
        manager = QueueManager(Queries(AsyncpgDriver(worker)))

        @manager.entrypoint("timer")
        async def handle(job: Any) -> None:
            done.append(time.time())

        meter = CostMeter()
        meter.add("pgqueuer worker (in-process)")
        infra = InfraCpu()
        started = time.time()
        await manager.run(
            batch_size=batch_size,
            mode=QueueExecutionMode.drain,
            dequeue_timeout=timedelta(seconds=1),
        )
        finished = time.time()
        await meter.stop()
        infra.stop()
    finally:
        await worker.close()
    left = await drop_run(ctx, schema, {"jobs_left": "SELECT count(*) FROM {schema}.pgqueuer"})
    span = (done[-1] - started) if done else None
    result = {
        "n": n,
        "batch_size": batch_size,
        "handled": len(done),
        **left,
        "enqueue_seconds": round(enqueued - enqueue_started, 3),
        "jobs_per_s": per_s(len(done), span),
        "seconds": round(span, 3) if span else None,
        "run_seconds": round(finished - started, 3),
        "lag_start_to_handled": summary([t - started for t in done]),
        "cost": meter.figures(n),
        "infra_cpu": infra.figures(n),
    }
    _log(f"pgqueuer: {result['jobs_per_s']} jobs/s")
    _log(f"pgqueuer: {cost_line(result['cost'])}; infra {result['infra_cpu']}")
    return result


@benchmark(
    "timers",
    "scheduler timers fired/s through to Kafka and due→fired lag (COPY-loaded, system "
    "clock, one replica) vs pgqueuer jobs/s on the same PostgreSQL",
    OPTIONS.add_to,
)
async def run(ctx: BenchContext) -> dict[str, Any]:
    args = ctx.args
    results = await OPTIONS.perform(
        args,
        {
            "drain": lambda: drain(ctx),
            "steady": lambda: steady(ctx),
            "pgqueuer": lambda: pgqueuer_run(ctx),
        },
    )
    ours = results.get("drain", {}).get("fired_per_s")
    theirs = results.get("pgqueuer", {}).get("jobs_per_s")
    return {
        "parameters": {
            "n": args.timers_n,
            "scheduler_batch_size": args.timers_batch_size,
            "steady_rate_per_s": args.timers_steady_rate,
            "steady_seconds": args.timers_steady_seconds,
            "pgqueuer_batch_size": args.timers_pgqueuer_batch_size,
            "partitions": PARTITIONS,
            "scheduler_poll_interval_ms": 200,
        },
        "method": (
            "Timers are COPY-loaded into the scheduler's table (not scheduled through"
            " Kafka). drain: all due at one instant after the COPY committed; fired_per_s ="
            " n / (last message read from the target topic - due time). Each fired timer"
            " is a delete, an outbox row and a published message, plus a TimersFired"
            " (row and message) per 200 timers. infra_cpu: the broker's and PostgreSQL's CPU"
            " in the same window. lag_due_to_kafka: message read time - its due time."
            " steady: timers due at a fixed rate; same lag. pgqueuer: the same number of"
            " jobs enqueued (batches of 10,000), then drained by one QueueManager with a"
            " no-op entrypoint: jobs_per_s = handled / (last handled - start); it publishes"
            " nothing to Kafka, so the ratio flatters pgqueuer."
        ),
        "runs": results,
        "ratio_scheduler_to_pgqueuer": round(ours / theirs, 3) if ours and theirs else None,
    }
