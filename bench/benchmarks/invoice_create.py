"""invoice_create: CreateInvoice commands/s through the invoice service, end to end.

A command published on `{prefix}cm.invoice.commands` (key `{website_key}:{invoice_number}`)
→ the invoice service (in-process, `build_service(definition(), settings)`) → its
`InvoiceEvent` (ChangedStatus, StatusCode 10) seen on `{prefix}cm.invoice.events`.
Realistic payloads (a person debtor with contacts, two lines, custom parameters), unique
invoice numbers, `--invoice-merchants` website keys and `--invoice-debtors` debtor codes.

Runs (`--invoice-runs`):
- throughput: `--invoice-n` commands pre-produced, then the service starts; the rate is
  commands / (last event seen - first command reaching the CreateInvoice handler);
- raw: runtime_pipeline's raw aiokafka+asyncpg pipeline (bench/raw.py) on the same n,
  the I/O floor the ratio `invoice_create/raw` compares against;
- latency: a started, warmed-up service at `--invoice-rate` commands/s for
  `--invoice-rate-seconds`; p50/p99 of publish → event seen.
"""

from __future__ import annotations

from typing import Any

from bench import kafka
from bench.benchmarks import runtime_pipeline
from bench.cost import line as cost_line
from bench.driver import run_backlog, run_load
from bench.inprocess import InProcessService
from bench.invoice_loadgen import InvoiceLoadSpec
from bench.invoice_loadgen import main as loadgen_main
from bench.kafka import PARTITIONS
from bench.registry import BenchContext, Options, benchmark, logger
from bench.stats import backlog_figures, summary
from contracts import topics
from services.invoice.app import definition

TARGET_PER_S = 3000
#: The throughput runs and their keys in the results' `throughput`.
THROUGHPUT_KEYS = {"throughput": "invoice_create", "raw": "raw"}
OPTIONS = Options(
    {
        "--invoice-n": (
            20_000,
            "CreateInvoice commands of the throughput and raw runs (default 20000)",
        ),
        "--invoice-merchants": (100, "website keys (default 100)"),
        "--invoice-debtors": (5_000, "debtor codes per merchant cycle (default 5000)"),
        "--invoice-rate": (500.0, "commands/s of the latency run (default 500)"),
        "--invoice-rate-seconds": (10.0, "duration of the latency run (default 10)"),
        "--invoice-max-records": (
            500,
            "kafka_max_records of the service, and the raw run's batch (default 500)",
        ),
    },
    "--invoice-runs",
    ("throughput", "raw", "latency"),
)


_log = logger("invoice_create")

#: What an invoice run leaves in its schema, counted before it is dropped.
COUNTS = {
    "invoices_active": "SELECT count(*) FROM {schema}.invoices WHERE status = 10",
    "invoices_other": "SELECT count(*) FROM {schema}.invoices WHERE status <> 10",
    "debtors": "SELECT count(*) FROM {schema}.debtors",
    "outbox_rows_left": "SELECT count(*) FROM {schema}.outbox",
}


def _invoice_service(ctx: BenchContext, prefix: str) -> InProcessService:
    """The invoice service, its CreateInvoice handler probed."""
    return InProcessService(
        ctx,
        prefix,
        definition(),
        max_records=ctx.args.invoice_max_records,
        probe="CreateInvoice",
    )


async def _spec(ctx: BenchContext, prefix: str, n: int, rate: float | None) -> InvoiceLoadSpec:
    in_topic = prefix + topics.INVOICE_COMMANDS
    out_topic = prefix + topics.INVOICE_EVENTS
    # Created here (with the service's partition count) so commands can be produced
    # before the service starts; the service's ensure_topics creates the others.
    await kafka.create_topics(ctx.bootstrap_servers, [in_topic, out_topic], PARTITIONS)
    return InvoiceLoadSpec(
        ctx.bootstrap_servers,
        in_topic,
        out_topic,
        n,
        ctx.args.invoice_merchants,
        ctx.args.invoice_debtors,
        rate=rate,
        timeout_s=600.0 if rate is None else 120.0,
    )


def _checks(done: dict[str, Any]) -> dict[str, Any]:
    return {
        "complete": done["complete"],
        "events_seen": done["seen"],
        "duplicates_seen": done["duplicates"],
        "events_not_status_10": done["not_active"],
    }


async def throughput(ctx: BenchContext, n: int) -> dict[str, Any]:
    prefix = ctx.prefix("ic")
    spec = await _spec(ctx, prefix, n, rate=None)
    service = _invoice_service(ctx, prefix)
    load = await run_backlog(
        spec, service, _log, "throughput", target=loadgen_main, produced_timeout=600.0
    )
    counts = await service.cleanup(COUNTS)
    result = {
        "n": n,
        **_checks(load.done),
        **backlog_figures(n, load, first_handled=service.first_handled),
        **counts,
        "cost": service.cost(n),
    }
    _log(f"throughput: {result['msgs_per_s']} commands/s over {result['seconds']} s")
    _log(f"throughput: {cost_line(result['cost'])}")
    return result


async def latency(ctx: BenchContext) -> dict[str, Any]:
    prefix = ctx.prefix("icl")
    rate = ctx.args.invoice_rate
    n = int(rate * ctx.args.invoice_rate_seconds)
    spec = await _spec(ctx, prefix, n, rate=rate)
    service = _invoice_service(ctx, prefix)
    await service.start()
    try:
        load = await run_load(spec, loadgen_main)
    finally:
        await service.stop()
    counts = await service.cleanup(COUNTS)
    done = load.done
    result = {
        "rate_per_s": rate,
        "n": n,
        "warm_up_invoices": ctx.args.invoice_merchants,
        "achieved_send_rate_per_s": load.send_rate(n),
        # Below the send rate when the service cannot keep up: the latencies then measure
        # a growing queue, not the service at that rate.
        "output_rate_per_s": (
            round(n / (done["last_output"] - load.first_send), 1) if done["last_output"] else None
        ),
        **_checks(done),
        **summary(done["latencies"]),
        "invoices_active": counts["invoices_active"],
        "cost": service.cost(n),
    }
    _log(f"latency: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms at {rate}/s")
    _log(f"latency: {cost_line(result['cost'])}")
    return result


@benchmark(
    "invoice_create",
    "CreateInvoice commands/s and latency end to end (command topic → invoice service →"
    " ChangedStatus 10 event), against the raw aiokafka+asyncpg I/O floor",
    OPTIONS.add_to,
)
async def run(ctx: BenchContext) -> dict[str, Any]:
    args = ctx.args
    done = await OPTIONS.perform(
        args,
        {
            "throughput": lambda: throughput(ctx, args.invoice_n),
            "raw": lambda: runtime_pipeline.throughput(
                ctx, "icraw", "raw", args.invoice_n, args.invoice_max_records
            ),
            "latency": lambda: latency(ctx),
        },
    )
    results = {key: done[name] for name, key in THROUGHPUT_KEYS.items() if name in done}
    latency_result = done.get("latency")
    rate = results.get("invoice_create", {}).get("msgs_per_s")
    raw_rate = results.get("raw", {}).get("msgs_per_s")
    return {
        "parameters": {
            "n": args.invoice_n,
            "merchants": args.invoice_merchants,
            "debtors": args.invoice_debtors,
            "partitions": PARTITIONS,
            "max_records": args.invoice_max_records,
            "latency_rate_per_s": args.invoice_rate,
            "latency_seconds": args.invoice_rate_seconds,
            "raw_keys": args.keys,
            "payload": "CreateInvoice: person debtor with e-mail, phone and address; 2 lines;"
            " 3 custom parameters; ~1.2 kB enveloped",
            "output_per_command": "InvoiceEvent ChangedStatus (StatusCode 10) on"
            " cm.invoice.events, plus CommandAccepted on cm.command.results",
        },
        "method": (
            "Throughput: all commands are pre-produced before the service starts;"
            " msgs_per_s = n / seconds, seconds = last ChangedStatus event seen on the event"
            " topic - first command reaching the CreateInvoice handler (excludes startup and"
            " consumer-group join, reported as startup_seconds). raw: runtime_pipeline's raw"
            " aiokafka+asyncpg pipeline (inbox, state and outbox rows per message) on the"
            " same n, in the same run. Latency: a started service, warmed up with one"
            " invoice per merchant, sent commands at a fixed rate; per command, publish →"
            " its event read. The load generator runs in its own process."
        ),
        "target_per_s": TARGET_PER_S,
        "target_met": (rate >= TARGET_PER_S) if rate else False,
        "throughput": results,
        "ratios": {
            "invoice_create/raw": round(rate / raw_rate, 3) if rate and raw_rate else None,
        },
        "latency": latency_result,
    }
