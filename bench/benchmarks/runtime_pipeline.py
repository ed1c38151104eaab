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
from typing import Any

from bench import kafka
from bench.driver import run_backlog, run_load
from bench.infra import drop_run
from bench.inprocess import InProcessService, schema_of
from bench.kafka import PARTITIONS
from bench.loadgen import LoadSpec
from bench.raw import RawPipeline
from bench.registry import BenchContext, add_runs_argument, benchmark, logger, selected_runs
from bench.service import COMMAND_TOPIC, EVENT_TOPIC, definition
from bench.stats import backlog_figures, summary

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
    add_runs_argument(parser, "--runs", RUNS)


_log = logger("runtime_pipeline")


class _Pipeline:
    """Starts and stops one of the pipelines under test."""

    def __init__(self, ctx: BenchContext, kind: str, prefix: str, max_records: int) -> None:
        self.ctx = ctx
        self.kind = kind
        self.prefix = prefix
        self.schema = schema_of(prefix)
        self.max_records = max_records
        # The bench service's handler marks the probe itself.
        self._service = InProcessService(
            ctx, prefix, definition(self.schema), max_records=max_records
        )
        self._raw: RawPipeline | None = None

    async def start(self) -> None:
        if self.kind != "raw":
            await self._service.start()
            return
        self._raw = RawPipeline(
            bootstrap=self.ctx.bootstrap_servers,
            dsn=self.ctx.database_url,
            schema=self.schema,
            in_topic=self.prefix + COMMAND_TOPIC,
            out_topic=self.prefix + EVENT_TOPIC,
            max_records=self.max_records,
        )
        await self._raw.start()

    @property
    def first_consumed(self) -> float | None:
        return self._raw.first_consumed if self._raw is not None else self._service.first_handled

    async def stop(self) -> None:
        if self._raw is not None:
            await self._raw.stop()
        else:
            await self._service.stop()

    async def cleanup(self) -> dict[str, Any]:
        """Count what is left in the database, then drop the schema and the topics."""
        counts = {
            "state_rows": "SELECT count(*) FROM {schema}.bench_state",
            "outbox_rows_left": "SELECT count(*) FROM {schema}.outbox",
        }
        return await drop_run(self.ctx, self.schema, counts, prefix=self.prefix)


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
    pipeline = _Pipeline(ctx, kind, prefix, max_records)
    load = await run_backlog(spec, pipeline, _log, label)
    counts = await pipeline.cleanup()
    done = load.done
    result = {
        "kind": kind,
        "kafka_max_records": max_records,
        "n": n,
        "complete": done["complete"],
        "outputs_seen": done["seen"],
        "duplicates_seen": done["duplicates"],
        **backlog_figures(
            n,
            done,
            first_handled=pipeline.first_consumed,
            started=load.started,
            first_send=load.first_send,
            last_ack=load.last_ack,
        ),
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
    await pipeline.start()
    try:
        load = await run_load(spec)
    finally:
        await pipeline.stop()
    counts = await pipeline.cleanup()
    done = load.done
    result = {
        "kind": kind,
        "kafka_max_records": max_records,
        "rate_per_s": ctx.args.rate,
        "n": n,
        "achieved_send_rate_per_s": round(n / (load.last_ack - load.first_send), 1),
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
    runs = selected_runs(args.runs, "--runs", RUNS)
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
