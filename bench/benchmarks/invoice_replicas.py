"""invoice_replicas: two invoice service replicas on the same topics share the work, with
no double effects (issue 14, scale-out).

The invoice service runs as two OS processes (`bench.procs.ServiceProcess`, like
`python -m services.invoice`) on one schema and one topic prefix: one consumer group,
the command topic's 8 partitions split between them. Both replicas are started, then
`--replicas-n` CreateInvoice commands (invoice_create's load generator and payloads) are
produced as fast as the producer goes (pre-produced, the first replica past the
migrations' lock would drain much of the backlog alone). Shown:

- sharing: per replica, the CreateInvoice commands it handled (its `/metrics`), its CPU
  per command and peak RSS (bench/cost.py);
- no double effects: every invoice's ChangedStatus event seen exactly once on the event
  topic (`duplicates_seen` 0, `complete`), and in the database one invoice and one event
  log row per command, no outbox row left.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

from bench.benchmarks.invoice_create import COUNTS, _checks, _spec
from bench.cost import CostMeter
from bench.cost import line as cost_line
from bench.driver import run_load
from bench.infra import drop_run
from bench.inprocess import schema_of
from bench.invoice_loadgen import main as loadgen_main
from bench.procs import (
    HANDLED,
    ServiceProcess,
    embedded_pids,
    first_handled,
    total,
    tree_cpu_seconds,
)
from bench.registry import BenchContext, Options, benchmark, logger
from bench.stats import per_s, summary

OPTIONS = Options(
    {
        "--replicas-n": (5_000, "CreateInvoice commands (default 5000)"),
        "--replicas": (2, "invoice service replicas (default 2)"),
    },
    "--replicas-runs",
    ("replicas",),
)

_log = logger("invoice_replicas")

#: Exactly-once checks in the schema, besides invoice_create's counts.
REPLICA_COUNTS = {
    **COUNTS,
    "invoice_events": "SELECT count(*) FROM {schema}.invoice_events",
    "invoices_with_more_than_one_creation": (
        "SELECT count(*) FROM (SELECT 1 FROM {schema}.invoice_events WHERE sequence = 1"
        " GROUP BY website_key, invoice_number HAVING count(*) > 1) AS twice"
    ),
}


class _Replicas:
    """`count` invoice service processes on one schema and prefix (one consumer group)."""

    def __init__(self, ctx: BenchContext, prefix: str, count: int) -> None:
        self.schema = schema_of(prefix)
        self.processes = [
            ServiceProcess(
                ctx, f"invoice-{i + 1}", "services.invoice.app", prefix=prefix, schema=self.schema
            )
            for i in range(count)
        ]
        self.meter = CostMeter()
        self.first_handled: float | None = None
        self.handled: dict[str, int] = {}
        self._watch: asyncio.Task[None] | None = None
        self.infra: dict[str, int] = {}
        self.infra_cpu: dict[str, float] = {}

    async def start(self) -> None:
        for process in self.processes:
            process.spawn()
        await asyncio.gather(*(p.wait_healthy() for p in self.processes))
        for process in self.processes:
            self.meter.add(process.name, process.pid)
        # The embedded broker and PostgreSQL (all its processes) over the same window:
        # what one command costs the machine besides the service.
        self.infra = embedded_pids()
        self.infra_cpu = {name: tree_cpu_seconds(pid) for name, pid in self.infra.items()}
        self._watch = asyncio.create_task(self._first_handled())

    async def _first_handled(self) -> None:
        self.first_handled = await first_handled(self.processes, "CreateInvoice")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.meter.stop()
        self.infra_cpu = {
            name: tree_cpu_seconds(pid) - self.infra_cpu[name] for name, pid in self.infra.items()
        }
        async with httpx.AsyncClient() as client:
            for process in self.processes:
                samples = await process.metrics(client, {HANDLED})
                self.handled[process.name] = int(total(samples, HANDLED, type="CreateInvoice"))
        for process in self.processes:
            process.stop()


async def replicas(ctx: BenchContext, n: int, count: int) -> dict[str, Any]:
    prefix = ctx.prefix("icr")
    spec = await _spec(ctx, prefix, n, rate=None)
    services = _Replicas(ctx, prefix, count)
    # Started (both in the consumer group) before the commands are produced: with a
    # backlog, the first replica past the migrations' lock would drain much of it alone.
    await services.start()
    try:
        load = await run_load(spec, loadgen_main, produced_timeout=600.0)
    finally:
        await services.stop()
    counts = await drop_run(ctx, services.schema, REPLICA_COUNTS, prefix=prefix)
    checks = _checks(load.done)
    last, first = load.done["last_output"], services.first_handled
    seconds = (last - first) if (last is not None and first is not None) else None
    result = {
        "n": n,
        "replicas": count,
        **checks,
        # n / (last event seen - first command counted by a replica).
        "msgs_per_s": per_s(n, seconds),
        "seconds": round(seconds, 3) if seconds else None,
        "seconds_from_first_produce": round(last - load.first_send, 3) if last else None,
        "produce_seconds": round(load.produce_seconds, 3),
        "latency_from_produce": summary(load.done["latencies"]),
        "create_invoice_handled": services.handled,
        "shared": all(v > 0 for v in services.handled.values()),
        "handled_total": sum(services.handled.values()),
        **counts,
        "exactly_once": (
            checks["complete"]
            and checks["duplicates_seen"] == 0
            and counts["invoices_active"] + counts["invoices_other"] == n
            and counts["invoice_events"] == n
            and counts["invoices_with_more_than_one_creation"] == 0
            and counts["outbox_rows_left"] == 0
        ),
        "cost": services.meter.figures(n),
        # The embedded broker's and PostgreSQL's CPU over the window (not with external
        # infrastructure), per command; with the replicas', what a command costs the host.
        "infrastructure_cpu_us_per_msg": {
            name: round(seconds / n * 1e6, 1) for name, seconds in services.infra_cpu.items()
        },
    }
    service_us = sum(p["cpu_us_per_msg"] or 0.0 for p in result["cost"]["processes"].values())
    host_us = service_us + sum(result["infrastructure_cpu_us_per_msg"].values())
    result["cpu_us_per_msg_services"] = round(service_us, 1)
    result["cpu_us_per_msg_services_and_infrastructure"] = round(host_us, 1)
    _log(
        f"replicas: {result['msgs_per_s']} commands/s; handled {services.handled};"
        f" exactly once: {result['exactly_once']}"
    )
    _log(f"replicas: {cost_line(result['cost'])}")
    _log(f"replicas: broker and PostgreSQL {result['infrastructure_cpu_us_per_msg']} µs/msg CPU")
    return result


@benchmark(
    "invoice_replicas",
    "two invoice service processes on the same topics: CreateInvoice work shared, every"
    " invoice's event exactly once, CPU per command per replica",
    OPTIONS.add_to,
)
async def run(ctx: BenchContext) -> dict[str, Any]:
    args = ctx.args
    done = await OPTIONS.perform(
        args, {"replicas": lambda: replicas(ctx, args.replicas_n, args.replicas)}
    )
    return {
        "parameters": {
            "n": args.replicas_n,
            "replicas": args.replicas,
            "merchants": args.invoice_merchants,
            "debtors": args.invoice_debtors,
            "service": "services.invoice.app in processes of its own (bench/procs.py),"
            " one schema, one topic prefix, one consumer group; runtime defaults",
        },
        "method": (
            "The replicas start (both healthy), then the commands are produced as fast as"
            " the producer goes; msgs_per_s = n / (last"
            " ChangedStatus seen - first CreateInvoice counted by a replica's /metrics,"
            " polled every 20 ms). Exactly once: every event seen once by the load"
            " generator, one invoice and one creation event per command in the schema,"
            " the outbox empty."
        ),
        "throughput": done,
    }
