"""notifier: pushes/s onto cm.push.invoice and signed webhook deliveries/s (issue 5).

The notifier service runs in-process (`build_service(definition(), settings)`, on a schema
and topic prefix of its own, durable PostgreSQL); the load generator
(`bench/notifier_loadgen.py`) runs in its own process: it builds and produces realistic
`InvoiceEvent` envelopes on `cm.invoice.events` and either reads `cm.push.invoice` or
serves the merchants' webhook endpoint.

Runs (`--notifier-runs`):
- pushes: `--notifier-n` events pre-produced, then the service starts; the rate is
  events / (last push seen - first InvoiceEvent reaching the handler); every push must
  come once, with its `message-id` header;
- pushes_process: the same with the notifier in a process of its own
  (`bench.procs.ServiceProcess`), for its own CPU and peak RSS without the harness's;
- webhooks: a started service with a webhook registered for every website key, sent
  `--notifier-webhook-n` events as fast as the producer goes; deliveries/s until the
  endpoint has accepted all of them, and produced → received latency (mostly queueing);
- webhook_latency: the same at `--notifier-webhook-rate` events/s for
  `--notifier-webhook-seconds`: produced → received latency of a service keeping up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
import psutil
from aiokafka import AIOKafkaProducer
from cryptography.fernet import Fernet

from bench import kafka
from bench.cost import CostMeter
from bench.cost import line as cost_line
from bench.driver import Load, LoadGenerator, run_backlog
from bench.infra import Count, drop_run, free_port
from bench.inprocess import InProcessService, schema_of
from bench.invoice_loadgen import website_key
from bench.kafka import PARTITIONS
from bench.notifier_loadgen import NotifierLoadSpec, invoice_count
from bench.notifier_loadgen import main as loadgen_main
from bench.procs import ServiceProcess, embedded_pids, first_handled, tree_cpu_seconds
from bench.registry import BenchContext, Options, benchmark, logger
from bench.stats import backlog_figures, summary
from contracts import topics
from contracts.envelope import new_envelope
from contracts.notifier import RegisterWebhook
from services.notifier.app import definition

OPTIONS = Options(
    {
        "--notifier-n": (20_000, "InvoiceEvents of the pushes run (default 20000)"),
        "--notifier-webhook-n": (5_000, "InvoiceEvents of the webhooks run (default 5000)"),
        "--notifier-websites": (100, "website keys (default 100)"),
        "--notifier-events-per-invoice": (
            4,
            "events (sequences 1..k) per invoice (default 4: 20000 events = 5000 invoices)",
        ),
        "--notifier-verify-every": (
            10,
            "the endpoint verifies every n-th signature with standardwebhooks (default 10)",
        ),
        "--notifier-webhook-rate": (100.0, "events/s of the webhook_latency run (default 100)"),
        "--notifier-webhook-seconds": (3.0, "duration of the webhook_latency run (default 3)"),
        "--notifier-max-records": (500, "kafka_max_records of the service (default 500)"),
    },
    "--notifier-runs",
    ("pushes", "pushes_process", "webhooks", "webhook_latency"),
)


_log = logger("notifier")


def _secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


async def _post_latency_ms(conn: asyncpg.Connection, schema: str) -> dict[str, Any]:
    """The notifier's own POST → answer time (cm_notifier_webhook_latency_seconds)."""
    row = await conn.fetchrow(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99"
        f" FROM {schema}.webhook_delivery_log WHERE latency_ms IS NOT NULL"
    )
    assert row is not None
    return {key: round(row[key], 1) if row[key] is not None else None for key in ("p50", "p99")}


async def _deliveries_by_status(conn: asyncpg.Connection, schema: str) -> dict[str, int]:
    rows = await conn.fetch(
        f"SELECT status, count(*) AS n FROM {schema}.webhook_deliveries GROUP BY status"
    )
    return {r["status"]: r["n"] for r in rows}


#: What a notifier run leaves in its schema, counted before it is dropped.
COUNTS: dict[str, Count] = {
    "deliveries_by_status": _deliveries_by_status,
    "delivery_log_rows": "SELECT count(*) FROM {schema}.webhook_delivery_log",
    "post_latency_ms": _post_latency_ms,
    "outbox_rows_left": "SELECT count(*) FROM {schema}.outbox",
}


class _Notifier(InProcessService):
    """The notifier service, its InvoiceEvent handler probed."""

    def __init__(self, ctx: BenchContext, prefix: str) -> None:
        super().__init__(
            ctx,
            prefix,
            definition(),
            max_records=ctx.args.notifier_max_records,
            probe="InvoiceEvent",
        )

    async def register_webhooks(self, url: str, secrets: dict[str, str]) -> float:
        """RegisterWebhook for every website key, waited for in the webhooks table."""
        started = time.monotonic()
        producer = AIOKafkaProducer(
            bootstrap_servers=self.ctx.bootstrap_servers, enable_idempotence=False
        )
        await producer.start()
        try:
            futures = []
            for site, secret in secrets.items():
                envelope = new_envelope(
                    RegisterWebhook(url=url, secret=secret),
                    website_key=site,
                    occurred_at=datetime.now(UTC),
                )
                futures.append(
                    await producer.send(
                        self.prefix + topics.NOTIFIER_COMMANDS,
                        key=f"{site}:webhook".encode(),
                        value=envelope.to_json(),
                    )
                )
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        pool = self.service.runtime.pool
        while time.monotonic() - started < 60:
            async with pool.acquire() as conn:
                count = await conn.fetchval("SELECT count(*) FROM webhooks WHERE enabled")
            if count >= len(secrets):
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise RuntimeError(f"only {count} of {len(secrets)} webhooks registered within 60 s")


async def _create_topics(ctx: BenchContext, prefix: str) -> tuple[str, str]:
    """The event and push topics, created before the service (and the load) starts with
    the service's partition count; the service's ensure_topics does the rest."""
    events, pushes = prefix + topics.INVOICE_EVENTS, prefix + topics.PUSH_INVOICE
    await kafka.create_topics(ctx.bootstrap_servers, [events, pushes], PARTITIONS)
    return events, pushes


class _NotifierProcess:
    """The notifier in a process of its own (`bench.procs.ServiceProcess`): its CPU and
    peak RSS without the bench harness's memory, for the 150 MB target."""

    def __init__(self, ctx: BenchContext, prefix: str) -> None:
        self.ctx = ctx
        self.prefix = prefix
        self.schema = schema_of(prefix)
        self.process = ServiceProcess(
            ctx,
            "notifier",
            "services.notifier.app",
            prefix=prefix,
            schema=self.schema,
            env={
                "KAFKA_MAX_RECORDS": str(ctx.args.notifier_max_records),
                "CM_SECRET_KEY": Fernet.generate_key().decode(),
            },
        )
        self.meter = CostMeter()
        #: When it first counted a handled InvoiceEvent (its /metrics polled; /healthz
        #: answers only once all six consumers run, after the first has begun the
        #: backlog): the start of the rate and of the cost window.
        self.first_handled: float | None = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process.spawn()
        self._watch = asyncio.create_task(self._first_handled())
        await self.process.wait_healthy()

    async def _first_handled(self) -> None:
        self.first_handled = await first_handled([self.process], "InvoiceEvent")
        self.meter.add("notifier (process)", self.process.pid)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.meter.stop()
        self.process.stop()

    def cost(self, messages: int) -> dict[str, Any]:
        return self.meter.figures(messages)

    async def cleanup(self, counts: Mapping[str, Count]) -> dict[str, Any]:
        return await drop_run(self.ctx, self.schema, counts, prefix=self.prefix)


def _spec(ctx: BenchContext, events_topic: str, n: int, **extra: Any) -> NotifierLoadSpec:
    return NotifierLoadSpec(
        bootstrap=ctx.bootstrap_servers,
        events_topic=events_topic,
        n=n,
        websites=ctx.args.notifier_websites,
        events_per_invoice=ctx.args.notifier_events_per_invoice,
        verify_every=ctx.args.notifier_verify_every,
        **extra,
    )


class _Shares:
    """CPU time of every process of the run over the load's window (the generator ready
    → its "done"): the notifier (this process), the load generator with the endpoint, the
    embedded broker and PostgreSQL (all its processes). Shows which process the shared
    cores went to at the measured rate."""

    def __init__(self, generator_pid: int) -> None:
        # The bench process alone: the load generator, the embedded broker and
        # PostgreSQL are its children.
        self.own = {
            "notifier (bench process)": os.getpid(),
            "load generator + endpoint": generator_pid,
        }
        self.trees = embedded_pids()
        self.started = time.monotonic()
        self.cpu = self._now()
        self.window_s = 0.0

    def _now(self) -> dict[str, float]:
        return {
            **{name: _own_cpu_seconds(pid) for name, pid in self.own.items()},
            **{name: tree_cpu_seconds(pid) for name, pid in self.trees.items()},
        }

    def stop(self) -> None:
        self.window_s = time.monotonic() - self.started
        now = self._now()
        self.cpu = {name: now[name] - self.cpu[name] for name in now}

    def figures(self, n: int) -> dict[str, Any]:
        return {
            "window_s": round(self.window_s, 3),
            "processes": {
                name: {
                    "cpu_us_per_delivery": round(seconds / n * 1e6, 1),
                    "cores": round(seconds / self.window_s, 2) if self.window_s else None,
                }
                for name, seconds in self.cpu.items()
            },
            "cores_in_all": round(sum(self.cpu.values()) / self.window_s, 2)
            if self.window_s
            else None,
        }


def _own_cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def _load_with_shares(spec: NotifierLoadSpec) -> tuple[Load, _Shares]:
    """`run_load`, with the CPU of every process measured over the load (`_Shares`)."""
    generator = LoadGenerator(spec, loadgen_main)
    try:
        await generator.start()
        assert generator.process.pid is not None
        shares = _Shares(generator.process.pid)
        _, first_send, last_ack = await generator.expect("produced", 300.0)
        _, done = await generator.expect("done", spec.timeout_s + 30)
        shares.stop()
    finally:
        generator.stop()
    return Load(first_send, last_ack, done), shares


def _checks(done: dict[str, Any]) -> dict[str, Any]:
    return {
        "complete": done["complete"],
        "seen": done["seen"],
        "duplicates_seen": done["duplicates"],
        "unknown_ids_seen": done["unknown_ids"],
    }


async def pushes(ctx: BenchContext, n: int, *, as_process: bool = False) -> dict[str, Any]:
    """`as_process`: the notifier in a process of its own; its rate's start is when it
    answered /healthz, not the first event handled."""
    label = "pushes_process" if as_process else "pushes"
    prefix = ctx.prefix("nfpp" if as_process else "nfp")
    events_topic, push_topic = await _create_topics(ctx, prefix)
    notifier: _Notifier | _NotifierProcess = (
        _NotifierProcess(ctx, prefix) if as_process else _Notifier(ctx, prefix)
    )
    spec = _spec(ctx, events_topic, n, mode="pushes", push_topic=push_topic, timeout_s=300.0)
    load = await run_backlog(spec, notifier, _log, label, target=loadgen_main, what="events")
    counts = await notifier.cleanup(COUNTS)
    done = load.done
    result = {
        "n": n,
        "invoices": invoice_count(spec),
        "event_bytes_avg": done["event_bytes_avg"],
        **_checks(done),
        "pushes_without_message_id": done["pushes_without_message_id"],
        "pushes_without_content_type": done["pushes_without_content_type"],
        "pushes_with_wrong_key": done["pushes_with_wrong_key"],
        "bodies_checked": done["bodies_checked"],
        "bodies_not_matching": done["bodies_not_matching"],
        **backlog_figures(n, load, first_handled=notifier.first_handled, rate_key="pushes_per_s"),
        "webhook_deliveries": sum(counts["deliveries_by_status"].values()),
        "outbox_rows_left": counts["outbox_rows_left"],
        "cost": notifier.cost(n),
    }
    _log(f"{label}: {result['pushes_per_s']} pushes/s over {result['seconds']} s")
    _log(f"{label}: {cost_line(result['cost'])}")
    return result


async def webhooks(ctx: BenchContext, label: str, n: int, rate: float | None) -> dict[str, Any]:
    prefix = ctx.prefix(label)
    notifier = _Notifier(ctx, prefix)
    events_topic, _ = await _create_topics(ctx, prefix)
    port = free_port()
    secrets = {website_key(i): _secret() for i in range(ctx.args.notifier_websites)}
    spec = _spec(
        ctx,
        events_topic,
        n,
        mode="webhooks",
        endpoint_port=port,
        secrets=secrets,
        rate=rate,
        timeout_s=180.0,
    )
    await notifier.start()
    try:
        registered_in = await notifier.register_webhooks(f"http://127.0.0.1:{port}/hook", secrets)
        _log(f"{label}: {len(secrets)} webhooks registered in {registered_in:.2f} s; sending")
        load, shares = await _load_with_shares(spec)
    finally:
        await notifier.stop()
    counts = await notifier.cleanup(COUNTS)
    first_send, done = load.first_send, load.done
    first, last = done["first_received"], done["last_received"]
    drain = (last - first) if (first is not None and last is not None) else None
    from_produce = (last - first_send) if last is not None else None
    result = {
        "n": n,
        "invoices": invoice_count(spec),
        "rate_per_s": rate,
        "achieved_send_rate_per_s": load.send_rate(n),
        **_checks(done),
        "requests": done["requests"],
        "signatures_verified": done["signatures_verified"],
        "signatures_failed": done["signatures_failed"],
        "out_of_order": done["out_of_order"],
        "tcp_connections_seen": done["tcp_connections_seen"],
        # n / (last accepted - first event produced): consume, record, claim, sign, POST.
        "deliveries_per_s": round(n / from_produce, 1) if from_produce else None,
        # n / (last accepted - first accepted): the dispatcher's drain alone.
        "deliveries_per_s_first_to_last": round(n / drain, 1) if drain else None,
        "seconds_from_first_produce": round(from_produce, 3) if from_produce else None,
        "produce_seconds": round(load.produce_seconds, 3),
        "latency_produced_to_received": summary(done["latencies"]),
        **counts,
        # Per event: its push, its delivery row, its POST and its record.
        "cost": notifier.cost(n),
        "cpu_by_process": shares.figures(n),
    }
    _log(f"{label}: {cost_line(result['cost'])}")
    _log(f"{label}: CPU by process over the load {result['cpu_by_process']['processes']}")
    _log(
        f"{label}: {result['deliveries_per_s']} deliveries/s; produced → received p50"
        f" {result['latency_produced_to_received']['p50_ms']} ms, p99"
        f" {result['latency_produced_to_received']['p99_ms']} ms"
    )
    return result


@benchmark(
    "notifier",
    "InvoiceEvents → pushes/s on cm.push.invoice, and signed webhook deliveries/s and"
    " latency to a local Standard Webhooks endpoint",
    OPTIONS.add_to,
)
async def run(ctx: BenchContext) -> dict[str, Any]:
    args = ctx.args
    latency_n = int(args.notifier_webhook_rate * args.notifier_webhook_seconds)
    results = await OPTIONS.perform(
        args,
        {
            "pushes": lambda: pushes(ctx, args.notifier_n),
            "pushes_process": lambda: pushes(ctx, args.notifier_n, as_process=True),
            "webhooks": lambda: webhooks(ctx, "nfw", args.notifier_webhook_n, rate=None),
            "webhook_latency": lambda: webhooks(
                ctx, "nfl", latency_n, rate=args.notifier_webhook_rate
            ),
        },
    )
    return {
        "parameters": {
            "n": args.notifier_n,
            "webhook_n": args.notifier_webhook_n,
            "websites": args.notifier_websites,
            "events_per_invoice": args.notifier_events_per_invoice,
            "verify_every": args.notifier_verify_every,
            "webhook_latency_rate_per_s": args.notifier_webhook_rate,
            "webhook_latency_seconds": args.notifier_webhook_seconds,
            "partitions": PARTITIONS,
            "max_records": args.notifier_max_records,
            # httpcore 1.0 imports sniffio on every pool operation; without it (anyio 4.16
            # no longer depends on it) each call is a failed import that scans sys.path.
            "sniffio_importable": importlib.util.find_spec("sniffio") is not None,
            "payload": "InvoiceEvent envelopes (InvoiceEvent.of + InvoiceSnapshot: person"
            " debtor with contacts, 2 lines, 3 custom parameters; ~2 kB), produced in rounds"
            " (sequence 1 of every invoice, then 2, ...)",
            "output_per_event": "one push on cm.push.invoice (headers message-id,"
            " content-type) and, with a webhook registered, one signed POST",
        },
        "method": (
            "pushes: all events are pre-produced before the service starts; pushes_per_s ="
            " n / (last push seen on cm.push.invoice - first InvoiceEvent reaching the"
            " handler); startup (migrations, topics, group join) is startup_seconds."
            " webhooks: a started service with a webhook per website key, sent n events as"
            " fast as the producer goes; deliveries_per_s = n / (last delivery accepted by"
            " the endpoint - first event produced); latency = event produced → POST"
            " received (under a burst, mostly time queued). webhook_latency: the same at a"
            " fixed rate. The load generator and the endpoint (a bare HTTP/1.1 server on"
            " asyncio protocols, uvloop) run in a process of their own; cpu_by_process is"
            " each process's CPU over the load (generator ready → done)."
        ),
        "ordering": (
            "Deliveries of one invoice are sequential: the claim takes only the lowest open"
            " push per invoice, so an invoice's next push can only be claimed after the"
            " transaction that delivered the previous one commits (at most one in flight"
            " per invoice). The rate therefore depends on how many invoices have pushes"
            " waiting: use many invoices (--notifier-events-per-invoice)."
        ),
        "throughput": results,
    }
