"""runtime_pipeline: messages/s through consume → transaction → relay → publish.

Three pipelines with the same I/O per message (inbox row, state row, outbox row, one
output event) on the same broker and durable PostgreSQL:

- platform_single: the bench service on the runtime, `kafka_max_records=1`;
- platform_batched: the same, `kafka_max_records=500`;
- raw: aiokafka + asyncpg by hand (bench/raw.py), batches of up to 500.

Throughput runs pre-produce every command, then start the pipeline; the rate is
commands / (last output seen - first command reaching the handler). Latency runs send at
a fixed rate to a running, warmed-up pipeline.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import asyncpg

from bench import kafka
from bench.driver import LoadGenerator
from bench.loadgen import LoadSpec, summary
from bench.raw import RawPipeline
from bench.registry import BenchContext, benchmark
from bench.service import COMMAND_TOPIC, EVENT_TOPIC, Probe, definition
from services.runtime.app import build_service
from services.runtime.settings import Settings

PARTITIONS = 8  # the runtime's default kafka_topic_partitions
RUNS = (
    "platform_batched",
    "raw",
    "platform_single",
    "latency_platform_batched",
    "latency_raw",
)


def add_arguments(parser: argparse.ArgumentParser | Any) -> None:
    parser.add_argument(
        "--n", type=int, default=20_000, help="commands per throughput run (default 20000)"
    )
    parser.add_argument(
        "--n-single",
        type=int,
        default=2_000,
        help="commands for the platform_single run (default 2000: one durable commit per"
        " message runs at ~100-200/s here, 20000 would take minutes)",
    )
    parser.add_argument("--keys", type=int, default=100, help="distinct keys (default 100)")
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="commands/s of the latency runs (default 1000)"
    )
    parser.add_argument(
        "--rate-seconds", type=float, default=5.0, help="duration of the latency runs (default 5)"
    )
    parser.add_argument(
        "--max-records",
        type=int,
        default=500,
        help="batch size of the batched and raw runs (default 500)",
    )
    parser.add_argument(
        "--runs",
        default=None,
        help=f"comma-separated subset of the runs (default all: {','.join(RUNS)})",
    )


def _log(message: str) -> None:
    print(f"[runtime_pipeline] {message}", file=sys.stderr, flush=True)


class _Pipeline:
    """Starts and stops one of the pipelines under test."""

    def __init__(self, ctx: BenchContext, kind: str, prefix: str, max_records: int) -> None:
        self.ctx = ctx
        self.kind = kind
        self.prefix = prefix
        self.schema = "bench_" + prefix.strip(".")
        self.max_records = max_records
        self._service: Any = None
        self._raw: RawPipeline | None = None

    async def start(self) -> None:
        Probe.reset()
        if self.kind == "raw":
            self._raw = RawPipeline(
                bootstrap=self.ctx.bootstrap_servers,
                dsn=self.ctx.database_url,
                schema=self.schema,
                in_topic=self.prefix + COMMAND_TOPIC,
                out_topic=self.prefix + EVENT_TOPIC,
                max_records=self.max_records,
            )
            await self._raw.start()
            return
        settings = Settings(
            kafka_bootstrap_servers=self.ctx.bootstrap_servers,
            database_url=self.ctx.database_url,
            cm_topic_prefix=self.prefix,
            kafka_session_timeout_ms=2000,
            kafka_heartbeat_interval_ms=500,
            kafka_max_records=self.max_records,
            log_level="WARNING",
        )
        self._service = build_service(definition(self.schema), settings)
        await self._service.app.__aenter__()

    @property
    def first_consumed(self) -> float | None:
        return self._raw.first_consumed if self._raw is not None else Probe.first_handled

    async def stop(self) -> None:
        if self._raw is not None:
            await self._raw.stop()
        elif self._service is not None:
            await self._service.app.__aexit__(None, None, None)

    async def cleanup(self) -> dict[str, int]:
        """Count what is left in the database, then drop the schema and the topics."""
        conn = await asyncpg.connect(self.ctx.database_url)
        try:
            counts = {
                "state_rows": await conn.fetchval(
                    f'SELECT count(*) FROM "{self.schema}".bench_state'
                ),
                "outbox_rows_left": await conn.fetchval(
                    f'SELECT count(*) FROM "{self.schema}".outbox'
                ),
            }
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()
        await kafka.delete_topics_with_prefix(self.ctx.bootstrap_servers, self.prefix)
        return counts


async def _topics(ctx: BenchContext, prefix: str) -> tuple[str, str]:
    in_topic, out_topic = prefix + COMMAND_TOPIC, prefix + EVENT_TOPIC
    await kafka.create_topics(ctx.bootstrap_servers, [in_topic, out_topic], PARTITIONS)
    return in_topic, out_topic


async def throughput(
    ctx: BenchContext, label: str, kind: str, n: int, max_records: int
) -> dict[str, Any]:
    prefix = ctx.prefix(label)
    in_topic, out_topic = await _topics(ctx, prefix)
    spec = LoadSpec(
        ctx.bootstrap_servers, in_topic, out_topic, n, ctx.args.keys, rate=None, timeout_s=300.0
    )
    generator = LoadGenerator(spec)
    pipeline = _Pipeline(ctx, kind, prefix, max_records)
    try:
        await generator.start()
        _, first_send, last_ack = await generator.expect("produced", 300.0)
        _log(f"{label}: {n} commands pre-produced in {last_ack - first_send:.2f} s; starting")
        started = time.time()
        await pipeline.start()
        try:
            _, done = await generator.expect("done", spec.timeout_s + 30)
        finally:
            await pipeline.stop()
    finally:
        generator.stop()
    counts = await pipeline.cleanup()
    first = pipeline.first_consumed
    last = done["last_output"]
    seconds = (last - first) if (first is not None and last is not None) else None
    result = {
        "kind": kind,
        "kafka_max_records": max_records,
        "n": n,
        "complete": done["complete"],
        "outputs_seen": done["seen"],
        "duplicates_seen": done["duplicates"],
        "msgs_per_s": round(n / seconds, 1) if seconds else None,
        "seconds": round(seconds, 3) if seconds else None,
        "seconds_from_first_produce": round(last - first_send, 3) if last else None,
        "produce_seconds": round(last_ack - first_send, 3),
        "startup_seconds": round(first - started, 3) if first else None,
        "latency_from_produce": summary(done["latencies"]),
        **counts,
    }
    _log(f"{label}: {result['msgs_per_s']} msg/s over {result['seconds']} s")
    return result


async def latency(ctx: BenchContext, label: str, kind: str, max_records: int) -> dict[str, Any]:
    prefix = ctx.prefix(label)
    in_topic, out_topic = await _topics(ctx, prefix)
    n = int(ctx.args.rate * ctx.args.rate_seconds)
    spec = LoadSpec(
        ctx.bootstrap_servers,
        in_topic,
        out_topic,
        n,
        ctx.args.keys,
        rate=ctx.args.rate,
        timeout_s=120.0,
    )
    pipeline = _Pipeline(ctx, kind, prefix, max_records)
    generator = LoadGenerator(spec)
    await pipeline.start()
    try:
        await generator.start()
        _, first_send, last_ack = await generator.expect("produced", 300.0)
        _, done = await generator.expect("done", spec.timeout_s + 30)
    finally:
        generator.stop()
        await pipeline.stop()
    counts = await pipeline.cleanup()
    result = {
        "kind": kind,
        "kafka_max_records": max_records,
        "rate_per_s": ctx.args.rate,
        "n": n,
        "achieved_send_rate_per_s": round(n / (last_ack - first_send), 1),
        "complete": done["complete"],
        "outputs_seen": done["seen"],
        **summary(done["latencies"]),
        "state_rows": counts["state_rows"],
    }
    _log(f"{label}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms at {ctx.args.rate}/s")
    return result


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if a.get("msgs_per_s") and b.get("msgs_per_s"):
        return round(a["msgs_per_s"] / b["msgs_per_s"], 3)
    return None


@benchmark(
    "runtime_pipeline",
    "messages/s and latency through consume → inbox+state+outbox transaction → relay → "
    "publish: platform (1 and 500 per batch) vs raw aiokafka+asyncpg",
    add_arguments,
)
async def run(ctx: BenchContext) -> dict[str, Any]:
    args = ctx.args
    n_single = min(args.n_single, args.n)
    runs = set(args.runs.split(",")) if args.runs else set(RUNS)
    if unknown := runs - set(RUNS):
        raise SystemExit(f"unknown --runs {sorted(unknown)}; known: {', '.join(RUNS)}")
    throughput_runs: dict[str, dict[str, Any]] = {}
    if "platform_batched" in runs:
        throughput_runs["platform_batched"] = await throughput(
            ctx, "pb", "platform", args.n, args.max_records
        )
    if "raw" in runs:
        throughput_runs["raw"] = await throughput(ctx, "raw", "raw", args.n, args.max_records)
    if "platform_single" in runs:
        throughput_runs["platform_single"] = await throughput(ctx, "ps", "platform", n_single, 1)
    latency_runs: dict[str, dict[str, Any]] = {}
    if "latency_platform_batched" in runs:
        latency_runs["platform_batched"] = await latency(ctx, "lpb", "platform", args.max_records)
    if "latency_raw" in runs:
        latency_runs["raw"] = await latency(ctx, "lraw", "raw", args.max_records)
    raw = throughput_runs.get("raw", {})
    return {
        "parameters": {
            "n": args.n,
            "n_single": n_single,
            "keys": args.keys,
            "partitions": PARTITIONS,
            "max_records": args.max_records,
            "latency_rate_per_s": args.rate,
            "latency_seconds": args.rate_seconds,
            "kafka_fetch_max_wait_ms": 20,
            "output_per_command": "one event (no CommandAccepted: answers=False)",
        },
        "method": (
            "Throughput: all commands are pre-produced before the pipeline starts; msgs_per_s"
            " = n / seconds, seconds = last output event seen on the output topic - first"
            " command reaching the handler (excludes pipeline startup and consumer-group"
            " join; seconds_from_first_produce includes producing, startup and join)."
            " latency_from_produce of throughput runs includes waiting behind the pre-produced"
            " backlog and the startup: see latency for per-message latency at a fixed rate"
            " (warmed-up pipeline). The load generator runs in its own process."
        ),
        "throughput": throughput_runs,
        "ratios": {
            "platform_batched/raw": _ratio(throughput_runs.get("platform_batched", {}), raw),
            "platform_single/raw": _ratio(throughput_runs.get("platform_single", {}), raw),
        },
        "latency": latency_runs,
    }
