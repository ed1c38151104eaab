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

from typing import Any

from bench import kafka
from bench.cost import CostMeter
from bench.cost import line as cost_line
from bench.driver import run_backlog, run_load
from bench.infra import drop_run
from bench.inprocess import InProcessService, schema_of
from bench.kafka import PARTITIONS
from bench.loadgen import LoadSpec
from bench.raw import RawPipeline
from bench.registry import BenchContext, Options, benchmark, logger
from bench.service import COMMAND_TOPIC, EVENT_TOPIC, definition
from bench.stats import backlog_figures, summary

OPTIONS = Options(
    {
        "--n": (20_000, "commands per throughput run (default 20000)"),
        "--n-single": (
            2_000,
            "commands for the platform_single run (default 2000: one durable commit per"
            " message runs at ~100-200/s here, 20000 would take minutes)",
        ),
        "--keys": (100, "distinct keys (default 100)"),
        "--rate": (1000.0, "commands/s of the latency runs (default 1000)"),
        "--rate-seconds": (5.0, "duration of the latency runs (default 5)"),
        "--max-records": (500, "batch size of the batched and raw runs (default 500)"),
    },
    "--runs",
    (
        "platform_batched",
        "raw",
        "platform_single",
        "latency_platform_batched",
        "latency_raw",
    ),
)
#: The latency runs' prefix: `latency_raw` is `raw` in the results' `latency`.
LATENCY = "latency_"


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
        self._raw_meter = CostMeter()

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
        self._raw_meter.add("raw pipeline (in-process)")

    def cost(self, messages: int) -> dict[str, Any]:
        """CPU per message and peak RSS of the pipeline's process (bench/cost.py)."""
        if self._raw is not None:
            return self._raw_meter.figures(messages)
        return self._service.cost(messages)

    @property
    def first_consumed(self) -> float | None:
        return self._raw.first_consumed if self._raw is not None else self._service.first_handled

    async def stop(self) -> None:
        if self._raw is not None:
            await self._raw_meter.stop()
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
        **backlog_figures(n, load, first_handled=pipeline.first_consumed),
        **counts,
        "cost": pipeline.cost(n),
    }
    _log(f"{label}: {result['msgs_per_s']} msg/s over {result['seconds']} s")
    _log(f"{label}: {cost_line(result['cost'])}")
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
        "achieved_send_rate_per_s": load.send_rate(n),
        "complete": done["complete"],
        "outputs_seen": done["seen"],
        **summary(done["latencies"]),
        "state_rows": counts["state_rows"],
        "cost": pipeline.cost(n),
    }
    _log(f"{label}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms at {ctx.args.rate}/s")
    _log(f"{label}: {cost_line(result['cost'])}")
    return result


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if a.get("msgs_per_s") and b.get("msgs_per_s"):
        return round(a["msgs_per_s"] / b["msgs_per_s"], 3)
    return None


@benchmark(
    "runtime_pipeline",
    "messages/s and latency through consume → inbox+state+outbox transaction → relay → "
    "publish: platform (1 and 500 per batch) vs raw aiokafka+asyncpg",
    OPTIONS.add_to,
)
async def run(ctx: BenchContext) -> dict[str, Any]:
    args = ctx.args
    n_single = min(args.n_single, args.n)
    done = await OPTIONS.perform(
        args,
        {
            "platform_batched": lambda: throughput(ctx, "pb", "platform", args.n, args.max_records),
            "raw": lambda: throughput(ctx, "raw", "raw", args.n, args.max_records),
            "platform_single": lambda: throughput(ctx, "ps", "platform", n_single, 1),
            "latency_platform_batched": lambda: latency(ctx, "lpb", "platform", args.max_records),
            "latency_raw": lambda: latency(ctx, "lraw", "raw", args.max_records),
        },
    )
    throughput_runs = {name: r for name, r in done.items() if not name.startswith(LATENCY)}
    latency_runs = {
        name.removeprefix(LATENCY): r for name, r in done.items() if name.startswith(LATENCY)
    }
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
