"""subscription_billrun: a bill run of n active subscriptions (default 1,000,000), from the
instant their bill-run timers are due to the last invoice's creation event.

The path, every service in a process of its own (system clock, runtime defaults):
scheduler timers due → `RunBilling` on `cm.subscription.commands` → the subscription
service bills period 1 (`CreateInvoice` on `cm.invoice.commands`, `PeriodBilled`, the next
period's `ScheduleTimer` back to the scheduler) → the invoice service creates the invoice
→ its `InvoiceEvent` ChangedStatus on `cm.invoice.events`, read by a watcher process.

Setup (timed apart): the services start (migrations, topics), then the subscription
service's tables and the scheduler's timers are bulk-loaded with binary COPY, in the rows
the services' own code writes (bench/billrun_data.py): monthly subscriptions in advance
starting today, so period 1 is due, each with its timer `subscription:{key}:billing` due
at 00:00 UTC today, as the subscription service schedules it. The timers are committed in
one transaction: they are all due the moment it commits, which is the due instant the
figures count from.

Measured: subscriptions/s = n / (last creation event seen - due instant); per stage
(timers fired, RunBilling handled, CreateInvoice handled, invoices seen) when it reached
10 %, 50 %, 90 % and all of n, from the services' Prometheus counters, the scheduler's
table and the watcher; CPU seconds and memory (peak RSS) of each process; and checks
(every subscription billed once, one invoice each, nothing left in the outboxes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import psutil

from bench import billrun_watch, kafka
from bench.billrun_data import Templates, load_subscriptions, load_timers
from bench.cost import RSS_TARGET_MB
from bench.cost import line as cost_line
from bench.driver import ChildProcess
from bench.infra import drop_run
from bench.procs import (
    SampleKey,
    ServiceProcess,
    cpu_seconds,
    embedded_pids,
    status_mb,
    total,
    tree_cpu_seconds,
    tree_pss_mb,
)
from bench.registry import BenchContext, benchmark, logger
from contracts import topics

DEFAULT_N = 1_000_000
TARGET_SECONDS = 300
SERVICES = (
    ("scheduler", "services.scheduler.app"),
    ("subscription", "services.subscription.app"),
    ("invoice", "services.invoice.app"),
)
HANDLED = "cm_messages_handled_total"
METRICS = {
    HANDLED,
    "cm_scheduler_timers_fired_total",
    "cm_outbox_relayed_total",
    "cm_consumer_batch_seconds_sum",
    "cm_consumer_batch_seconds_count",
    "cm_consumer_batch_records_sum",
    "cm_consumer_batch_records_count",
    "cm_outbox_relay_batch_seconds_sum",
    "cm_outbox_relay_batch_seconds_count",
}
#: The stages, in pipeline order.
STAGES = ("timers_fired", "run_billing_handled", "create_invoice_handled", "invoices_seen")

_log = logger("subscription_billrun")


def add_arguments(parser: argparse.ArgumentParser | Any) -> None:
    parser.add_argument(
        "--billrun-n",
        type=int,
        default=None,
        help=f"subscriptions billed (default {DEFAULT_N}; `--n` sets it too when given)",
    )
    parser.add_argument(
        "--billrun-merchants", type=int, default=100, help="website keys (default 100)"
    )
    parser.add_argument(
        "--billrun-scheme",
        default="DefaultNone",
        help="the subscriptions' dunning scheme (default DefaultNone, the built-in scheme"
        " without steps; DefaultCM1 adds the payment invitation step of every invoice)",
    )
    parser.add_argument(
        "--billrun-stall-seconds",
        type=float,
        default=300.0,
        help="give up when no stage moves for this long (default 300)",
    )


def _n(args: argparse.Namespace) -> int:
    if args.billrun_n is not None:
        return int(args.billrun_n)
    if "n" in getattr(args, "given_options", frozenset()):
        return int(args.n)
    return DEFAULT_N


class Watcher(ChildProcess):
    """The watcher child process (bench/billrun_watch.py) and its reports."""

    def __init__(self, spec: billrun_watch.WatchSpec) -> None:
        super().__init__(billrun_watch.main, spec, "bench-billrun-watch")
        self.count = 0
        self.last: float | None = None
        self.done: dict[str, Any] | None = None

    async def start(self, timeout: float = 60.0) -> None:
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._conn.poll():
                message = self._conn.recv()
                if message[0] == "ready":
                    return
                self._raise(message)
            await asyncio.sleep(0.05)
        raise TimeoutError("the watcher did not start reading in time")

    def _raise(self, message: tuple[Any, ...]) -> None:
        if message[0] == "error":
            raise RuntimeError(f"the watcher failed:\n{message[1]}")
        raise RuntimeError(f"unexpected message from the watcher: {message[0]!r}")

    def drain(self) -> None:
        """Read what the watcher reported so far (never blocks)."""
        while self.done is None and self._conn.poll():
            message = self._conn.recv()
            if message[0] == "progress":
                _, self.count, self.last = message
            elif message[0] == "done":
                self.done = message[1]
                self.count = self.done["invoices_created_seen"]
                self.last = self.done["last_created"]
            else:
                self._raise(message)

    @property
    def pid(self) -> int | None:
        return self.process.pid


@dataclass
class Series:
    """One stage's count over time (seconds since the due instant)."""

    points: list[tuple[float, float]] = field(default_factory=list)

    def add(self, t: float, value: float) -> None:
        self.points.append((t, value))

    @property
    def value(self) -> float:
        return self.points[-1][1] if self.points else 0.0

    def reached(self, target: float) -> float | None:
        """When the count reached `target` (linear between samples)."""
        previous = (0.0, 0.0)
        for t, value in self.points:
            if value >= target:
                t0, v0 = previous
                if value == v0:
                    return t
                return round(t0 + (target - v0) / (value - v0) * (t - t0), 2)
            previous = (t, value)
        return None


def _stage_figures(series: Series, n: int, end: float | None = None) -> dict[str, Any]:
    """When the stage reached 1 item, 10/50/90 % and all of n, and its rates."""
    t10, t50, t90 = (series.reached(n * p) for p in (0.1, 0.5, 0.9))
    t_all = end if end is not None else series.reached(n)
    return {
        "count": int(series.value),
        "first_s": series.reached(1),
        "p10_s": t10,
        "p50_s": t50,
        "p90_s": t90,
        "all_s": round(t_all, 2) if t_all is not None else None,
        "per_s": round(n / t_all, 1) if t_all else None,
        # the rate once it runs: the middle 80 % of n
        "per_s_10_to_90": round(0.8 * n / (t90 - t10), 1) if t10 and t90 and t90 > t10 else None,
    }


@dataclass(eq=False)
class Monitor:
    """Samples the services' counters, the scheduler's due timers, memory and CPU."""

    services: dict[str, ServiceProcess]
    watcher: Watcher
    database_url: str
    schemas: dict[str, str]
    due_at: datetime
    n: int
    t0: float = 0.0
    series: dict[str, Series] = field(default_factory=lambda: {s: Series() for s in STAGES})
    schedule_timers: Series = field(default_factory=Series)
    samples: dict[str, dict[SampleKey, float]] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    rss_peak: dict[str, float] = field(default_factory=dict)
    pss_peak: dict[str, float] = field(default_factory=dict)
    cpu_start: dict[str, float] = field(default_factory=dict)
    timers_fired: int = 0
    timer_query_seconds: list[float] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=embedded_pids)

    def __post_init__(self) -> None:
        broker = [p for p in psutil.Process().children() if "tansu" in p.name()]
        if broker and "broker" not in self.extra:
            self.extra["broker"] = broker[0].pid

    def pids(self) -> dict[str, int]:
        pids = {name: s.pid for name, s in self.services.items()}
        if self.watcher.pid is not None:
            pids["watcher"] = self.watcher.pid
        pids["bench"] = os.getpid()
        if "broker" in self.extra:
            pids["broker"] = self.extra["broker"]
        return pids

    def cpu(self) -> dict[str, float]:
        seconds = {name: cpu_seconds(pid) for name, pid in self.pids().items()}
        out = {name: s for name, s in seconds.items() if s is not None}
        if "postgres" in self.extra:
            out["postgres"] = tree_cpu_seconds(self.extra["postgres"])
        return out

    def memory(self, with_pss: bool) -> None:
        for name, pid in self.pids().items():
            rss = status_mb(pid, "VmRSS")
            if rss is not None:
                self.rss_peak[name] = max(rss, self.rss_peak.get(name, 0.0))
        if with_pss and "postgres" in self.extra:
            pss = tree_pss_mb(self.extra["postgres"])
            if pss is not None:
                self.pss_peak["postgres"] = max(pss, self.pss_peak.get("postgres", 0.0))

    async def scrape(self, client: httpx.AsyncClient) -> None:
        for name, service in self.services.items():
            with contextlib.suppress(httpx.HTTPError):
                self.samples[name] = await service.metrics(client, METRICS)

    async def count_timers_fired(self, conn: asyncpg.Connection) -> None:
        """How many bill-run timers fired: one scheduler claims due timers in (due_at,
        timer_id) order, one batch after the other, and all are due at one instant, so
        the first one left is the count fired (`subscription:SUB-00000042:billing`: 42).
        One index probe, where counting what is left would scan up to n entries."""
        started = time.monotonic()
        first_left = await conn.fetchval(
            f'SELECT timer_id FROM "{self.schemas["scheduler"]}".timers'
            " WHERE due_at <= $1 ORDER BY due_at, timer_id LIMIT 1",
            self.due_at,
        )
        self.timer_query_seconds.append(time.monotonic() - started)
        if first_left is None:
            self.timers_fired = self.n
        else:
            self.timers_fired = int(first_left.split(":")[1].removeprefix("SUB-"))

    def handled(self, service: str, **labels: str) -> float:
        return total(self.samples.get(service, {}), HANDLED, **labels)

    def record(self, now: float) -> None:
        t = round(now - self.t0, 2)
        self.watcher.drain()
        values = {
            "timers_fired": self.timers_fired,
            "run_billing_handled": self.handled("subscription", type="RunBilling"),
            "create_invoice_handled": self.handled("invoice", type="CreateInvoice"),
            "invoices_seen": self.watcher.count,
        }
        for stage, value in values.items():
            self.series[stage].add(t, value)
        self.schedule_timers.add(t, self.handled("scheduler", type="ScheduleTimer"))

    def timeline_row(self, now: float) -> dict[str, Any]:
        row: dict[str, Any] = {"t_s": round(now - self.t0, 1)}
        row.update({stage: int(self.series[stage].value) for stage in STAGES})
        row["schedule_timer_handled"] = int(self.schedule_timers.value)
        row["load_1min"] = round(os.getloadavg()[0], 2)
        row["rss_mb"] = {
            name: status_mb(pid, "VmRSS")
            for name, pid in self.pids().items()
            if name not in ("bench",)
        }
        return row

    def progress(self) -> float:
        return sum(s.value for s in self.series.values()) + self.schedule_timers.value


async def _wait(
    monitor: Monitor,
    conn: asyncpg.Connection,
    client: httpx.AsyncClient,
    *,
    until: Callable[[], Awaitable[bool]],
    deadline: float,
    stall_s: float,
    log_every: float = 15.0,
    timeline_every: float = 10.0,
) -> str:
    """Sample every second until `until()` ("done"), the deadline or a stall."""
    last_progress = (monitor.progress(), time.monotonic())
    last_log = last_timeline = 0.0
    tick = 0
    while True:
        now_mono = time.monotonic()
        await monitor.scrape(client)
        if monitor.timers_fired < monitor.n:
            await monitor.count_timers_fired(conn)
        monitor.memory(with_pss=tick % 5 == 0)
        now = time.time()
        monitor.record(now)
        if now - last_timeline >= timeline_every:
            monitor.timeline.append(monitor.timeline_row(now))
            last_timeline = now
        if now - last_log >= log_every:
            values = ", ".join(f"{s} {int(monitor.series[s].value)}" for s in STAGES)
            _log(
                f"t={now - monitor.t0:.0f}s {values},"
                f" ScheduleTimer {int(monitor.schedule_timers.value)}"
            )
            last_log = now
        if await until():
            return "done"
        for name, service in monitor.services.items():
            if not service.alive():
                raise RuntimeError(f"the {name} service died")
        progress = monitor.progress()
        if progress != last_progress[0]:
            last_progress = (progress, now_mono)
        elif now_mono - last_progress[1] > stall_s:
            return "stalled"
        if now_mono > deadline:
            return "deadline"
        tick += 1
        # the sampling period: one second between samples, whatever a sample took
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - now_mono)))


async def _outbox_rows(conn: asyncpg.Connection, schemas: dict[str, str]) -> int:
    rows = 0
    for schema in schemas.values():
        rows += await conn.fetchval(f'SELECT count(*) FROM "{schema}".outbox')
    return rows


def _counts(due_at: datetime) -> dict[str, dict[str, str]]:
    """Checks taken from each schema before it is dropped."""
    return {
        "subscription": {
            "subscriptions": "SELECT count(*) FROM {schema}.subscriptions",
            "subscriptions_active": (
                "SELECT count(*) FROM {schema}.subscriptions WHERE status = 'active'"
            ),
            "subscriptions_next_period_2": (
                "SELECT count(*) FROM {schema}.subscriptions"
                " WHERE (state->>'next_period_index')::int = 2"
            ),
            "billed_periods": "SELECT count(*) FROM {schema}.billed_periods",
            "subscriptions_billed": (
                "SELECT count(DISTINCT (website_key, subscription_key))"
                " FROM {schema}.billed_periods"
            ),
            "billed_periods_not_period_1": (
                "SELECT count(*) FROM {schema}.billed_periods WHERE period_index <> 1"
            ),
            "billed_periods_with_invoice": (
                "SELECT count(invoice_number) FROM {schema}.billed_periods"
            ),
            "outbox_rows_left": "SELECT count(*) FROM {schema}.outbox",
        },
        "invoice": {
            "invoices": "SELECT count(*) FROM {schema}.invoices",
            "invoices_active": "SELECT count(*) FROM {schema}.invoices WHERE status = 10",
            "invoices_not_period_invoice": (
                "SELECT count(*) FROM {schema}.invoices WHERE invoice_number NOT LIKE 'SUB-%-1'"
            ),
            "creation_events_logged": (
                "SELECT count(*) FROM {schema}.invoice_events"
                " WHERE event = 'ChangedStatus' AND sequence = 1"
            ),
            "debtors": "SELECT count(*) FROM {schema}.debtors",
            "outbox_rows_left": "SELECT count(*) FROM {schema}.outbox",
        },
        "scheduler": {
            "bill_run_timers_left": (
                "SELECT count(*) FROM {schema}.timers WHERE due_at <= "
                f"'{due_at.isoformat()}'::timestamptz"
            ),
            "next_period_timers": (
                "SELECT count(*) FROM {schema}.timers WHERE timer_id LIKE 'subscription:%'"
                f" AND due_at > '{due_at.isoformat()}'::timestamptz"
            ),
            "outbox_rows_left": "SELECT count(*) FROM {schema}.outbox",
        },
    }


def _service_figures(monitor: Monitor) -> dict[str, Any]:
    """Per service: messages handled by type and outcome, batches, relay."""
    out: dict[str, Any] = {}
    for name in monitor.services:
        samples = monitor.samples.get(name, {})
        handled: dict[str, int] = {}
        for (metric, labels), value in samples.items():
            if metric == HANDLED and value:
                d = dict(labels)
                handled[f"{d['consumer']}/{d['type']}/{d['outcome']}"] = int(value)
        consumers: dict[str, Any] = {}
        for (metric, labels), value in samples.items():
            if metric != "cm_consumer_batch_seconds_count" or not value:
                continue
            consumer = dict(labels)["consumer"]
            seconds = total(samples, "cm_consumer_batch_seconds_sum", consumer=consumer)
            records = total(samples, "cm_consumer_batch_records_sum", consumer=consumer)
            consumers[consumer] = {
                "batches": int(value),
                "records": int(records),
                "records_per_batch": round(records / value, 1),
                "seconds_in_batches": round(seconds, 1),
                "ms_per_record": round(seconds / records * 1000, 3) if records else None,
            }
        relay_batches = total(samples, "cm_outbox_relay_batch_seconds_count")
        relay_seconds = total(samples, "cm_outbox_relay_batch_seconds_sum")
        out[name] = {
            "handled": dict(sorted(handled.items())),
            "consumers": consumers,
            "relayed": int(total(samples, "cm_outbox_relayed_total")),
            "relay_batches": int(relay_batches),
            "relay_seconds": round(relay_seconds, 1),
            "timers_fired_counter": int(total(samples, "cm_scheduler_timers_fired_total"))
            if name == "scheduler"
            else None,
        }
    return out


@benchmark(
    "subscription_billrun",
    "a bill run of --billrun-n active subscriptions (default 1,000,000): due timers →"
    " RunBilling → CreateInvoice → invoice events, every service its own process;"
    " subscriptions/s, per-stage rates, CPU and memory per process",
    add_arguments,
)
async def run(ctx: BenchContext) -> dict[str, Any]:
    args = ctx.args
    n = _n(args)
    merchants = args.billrun_merchants
    prefix = ctx.prefix("br")
    stem = prefix.strip(".")
    schemas = {name: f"bench_{stem}_{name}" for name, _ in SERVICES}
    services = {
        name: ServiceProcess(ctx, name, module, prefix=prefix, schema=schemas[name])
        for name, module in SERVICES
    }
    watcher: Watcher | None = None
    due_at: datetime | None = None
    result: dict[str, Any] = {}
    window: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    try:
        started = time.monotonic()
        for service in services.values():
            service.spawn()
        for service in services.values():
            await service.wait_healthy()
        startup_s = time.monotonic() - started
        pids = ", ".join(f"{name} {service.pid}" for name, service in services.items())
        _log(f"services up in {startup_s:.1f} s (pids: {pids}); n = {n}")
        watcher = Watcher(
            billrun_watch.WatchSpec(
                ctx.bootstrap_servers,
                prefix + topics.INVOICE_EVENTS,
                n,
                timeout_s=max(1800.0, n / 50),
            )
        )
        await watcher.start()

        # --- setup: the subscriptions and their timers, bulk-loaded -------------------
        setup_started = time.monotonic()
        today = datetime.now(UTC).date()
        templates = await Templates.make(merchants, today, args.billrun_scheme)
        due_at = templates.due_at
        await templates.verify(sorted({0, n // 2, n - 1}))
        loaded = await load_subscriptions(ctx.database_url, schemas["subscription"], templates, n)
        _log(
            "loaded "
            + ", ".join(f"{t} {f.rows} rows in {f.seconds:.1f} s" for t, f in loaded.items())
        )
        monitor = Monitor(services, watcher, ctx.database_url, schemas, templates.due_at, n)
        timers, committed = await load_timers(ctx.database_url, schemas["scheduler"], templates, n)
        # --- the bill run: from the moment the due timers are visible ---------------
        monitor.t0 = committed
        monitor.cpu_start = monitor.cpu()
        setup_s = time.monotonic() - setup_started
        _log(f"timers: {timers.rows} rows in {timers.seconds:.1f} s; the bill run is due")
        conn = await asyncpg.connect(ctx.database_url)
        try:
            async with httpx.AsyncClient() as client:

                async def watcher_done() -> bool:
                    return watcher is not None and watcher.done is not None

                outcome = await _wait(
                    monitor,
                    conn,
                    client,
                    until=watcher_done,
                    deadline=time.monotonic() + max(1800.0, n / 50) + 60,
                    stall_s=args.billrun_stall_seconds,
                )
                window_end = time.time()
                cpu_end = monitor.cpu()
                hwm = {name: status_mb(s.pid, "VmHWM") for name, s in services.items()}
                stage_samples = dict(monitor.samples)
                _log(f"bill run {outcome}; waiting for the tail (next-period timers, outboxes)")

                # --- the tail: what the run left queued, timed apart ------------------
                quiet = {"since": time.monotonic(), "counters": 0.0}

                async def drained() -> bool:
                    """Every next-period timer scheduled, every invoice event read by the
                    subscription service, the outboxes empty and no counter moving for
                    3 s (a scheme with steps has more to do after the creation)."""
                    counters = sum(
                        v
                        for samples in monitor.samples.values()
                        for (metric, _), v in samples.items()
                        if metric == HANDLED
                    )
                    if counters != quiet["counters"]:
                        quiet.update(since=time.monotonic(), counters=counters)
                        return False
                    return (
                        time.monotonic() - quiet["since"] >= 3.0
                        and monitor.schedule_timers.value >= n
                        and monitor.handled("subscription", consumer="invoice-events") >= n
                        and await _outbox_rows(conn, schemas) == 0
                    )

                tail_started = time.monotonic()
                tail_outcome = "skipped"
                if outcome == "done":
                    tail_outcome = await _wait(
                        monitor,
                        conn,
                        client,
                        until=drained,
                        deadline=time.monotonic() + max(300.0, n / 1000),
                        stall_s=min(60.0, args.billrun_stall_seconds),
                    )
                tail_s = time.monotonic() - tail_started
                hwm_after_tail = {name: status_mb(s.pid, "VmHWM") for name, s in services.items()}
                broker_pid = monitor.extra.get("broker")
                tail_samples = dict(monitor.samples)
        finally:
            await conn.close()
        assert watcher.done is not None or outcome != "done"
        done = watcher.done or {}
        last = done.get("last_created") or watcher.last
        seconds = (last - monitor.t0) if last else None
        window_s = window_end - monitor.t0
        monitor.samples = stage_samples
        window = {
            "outcome": outcome,
            "subscriptions_per_s": round(n / seconds, 1) if seconds and outcome == "done" else None,
            "seconds": round(seconds, 2) if seconds else None,
            "target_seconds": TARGET_SECONDS,
            "target_met": bool(seconds and outcome == "done" and seconds <= TARGET_SECONDS),
            "stages": {
                stage: _stage_figures(
                    monitor.series[stage],
                    n,
                    end=seconds if stage == "invoices_seen" and outcome == "done" else None,
                )
                for stage in STAGES
            },
            "schedule_timer_handled_in_window": int(
                total(stage_samples.get("scheduler", {}), HANDLED, type="ScheduleTimer")
            ),
            "services": _service_figures(monitor),
            "cpu_seconds_in_window": {
                name: round(cpu_end[name] - monitor.cpu_start.get(name, 0.0), 1) for name in cpu_end
            },
            "cpu_capacity_seconds": round(window_s * (os.cpu_count() or 1), 1),
            # CPU per subscription does not depend on what else the machine runs
            "cpu_ms_per_subscription": {
                name: round((cpu_end[name] - monitor.cpu_start.get(name, 0.0)) / n * 1000, 3)
                for name in cpu_end
            },
            "cpu_ms_per_subscription_total": round(
                sum(cpu_end[k] - monitor.cpu_start.get(k, 0.0) for k in cpu_end) / n * 1000, 3
            ),
            "load_1min_mean": round(
                sum(r["load_1min"] for r in monitor.timeline) / len(monitor.timeline), 2
            )
            if monitor.timeline
            else None,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "peak_rss_mb": {
                **{name: hwm[name] for name in services},
                "watcher": done.get("peak_rss_mb"),
                **{
                    f"{name} (sampled VmRSS)": monitor.rss_peak.get(name)
                    for name in ("broker", "bench")
                    if name in monitor.rss_peak
                },
                **(
                    {"postgres (sampled PSS, all processes)": monitor.pss_peak["postgres"]}
                    if "postgres" in monitor.pss_peak
                    else {}
                ),
            },
            "broker_rss_mb_at_end": status_mb(broker_pid, "VmRSS") if broker_pid else None,
            "timers_fired_query_ms_max": round(max(monitor.timer_query_seconds) * 1000, 1)
            if monitor.timer_query_seconds
            else None,
            "watcher": {k: v for k, v in done.items() if k not in ("first_created",)},
            "timeline": monitor.timeline,
        }
        # The per-path cost in every benchmark's shape (bench/cost.py): per subscription
        # billed, each service's CPU in the window and its peak RSS (VmHWM).
        window["cost"] = {
            "messages": n,
            "per": "subscription billed (9 messages across the processes)",
            "window_s": round(window_s, 3),
            "rss_target_mb": RSS_TARGET_MB,
            "processes": {
                name: {
                    "cpu_seconds": round(cpu_end[name] - monitor.cpu_start.get(name, 0.0), 3),
                    "cpu_us_per_msg": round(
                        (cpu_end[name] - monitor.cpu_start.get(name, 0.0)) / n * 1e6, 1
                    ),
                    "peak_rss_mb": hwm.get(name),
                    "rss_under_150_mb": (hwm.get(name) or 0.0) < RSS_TARGET_MB,
                }
                for name in services
                if name in cpu_end
            },
        }
        _log(f"bill run: {cost_line(window['cost'])}")
        monitor.samples = tail_samples
        result = {
            "setup": {
                "services_startup_s": round(startup_s, 1),
                "seconds": round(setup_s, 1),
                "loaded": {
                    **{t: f.as_dict() for t, f in loaded.items()},
                    "timers": timers.as_dict(),
                },
            },
            "bill_run": window,
            "tail": {
                "outcome": tail_outcome,
                "seconds": round(tail_s, 1),
                "schedule_timer_handled": int(monitor.schedule_timers.value),
                "peak_rss_mb": hwm_after_tail,
                "services": _service_figures(monitor),
            },
        }
    finally:
        for service in services.values():
            service.stop()
        if watcher is not None:
            watcher.stop()
        for name in services:
            try:
                counts = _counts(due_at)[name] if due_at is not None else {}
                checks[name] = await drop_run(ctx, schemas[name], counts)
            except Exception as exc:  # a schema never made, a count failing: drop anyway
                _log(f"counting {name}'s rows failed ({type(exc).__name__}: {exc})")
                await drop_run(ctx, schemas[name], {})
        await kafka.delete_topics_with_prefix(ctx.bootstrap_servers, prefix)
    result["checks"] = {**checks, **_verdicts(n, checks, result)}
    _log(
        f"{window.get('subscriptions_per_s')} subscriptions/s over {window.get('seconds')} s"
        f" ({window.get('outcome')})"
    )
    return {
        "parameters": {
            "n": n,
            "merchants": merchants,
            "scheme_key": args.billrun_scheme,
            "plans_per_subscription": 2,
            "interval": "1 month, in advance, period 1 due",
            "partitions": kafka.PARTITIONS,
            "services": "scheduler, subscription, invoice: one process each, runtime"
            " defaults (kafka_max_records 500, 8 partitions, relay batch 1000, pool 10),"
            " system clock (poll 200 ms, firing batch 1000)",
        },
        "method": (
            "Setup (not in the figure): the services start; the subscription service's"
            " tables (subscriptions, rate_plan_versions) and the scheduler's timers are"
            " COPY-loaded with the rows the services' own code writes for a"
            " CreateSubscription and the ScheduleTimer of its bill-run timer (due 00:00 UTC"
            " today). The timers commit in one transaction: the due instant is that commit."
            " seconds = last creation InvoiceEvent (ChangedStatus, sequence 1) read from"
            " cm.invoice.events by the watcher process - due instant; subscriptions_per_s ="
            " n / seconds. Stages, every second: timers fired from the scheduler's table"
            " (the first due timer left; they fire in id order), the services' /metrics"
            " and the watcher; *_s are seconds since"
            " the due instant when the stage reached 1, 10/50/90 % and all of n. peak_rss_mb"
            " of a service is its VmHWM at the end of the window. The tail (ScheduleTimer of"
            " the next period, the subscription service reading the invoice events, the"
            " outboxes) is timed apart."
        ),
        **result,
    }


def _verdicts(n: int, checks: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    sub = checks.get("subscription", {})
    inv = checks.get("invoice", {})
    watch = result.get("bill_run", {}).get("watcher", {})
    return {
        "every_subscription_billed_once": sub.get("billed_periods") == n
        and sub.get("subscriptions_billed") == n
        and sub.get("billed_periods_not_period_1") == 0
        and sub.get("subscriptions_next_period_2") == n,
        "one_invoice_per_subscription": inv.get("invoices") == n
        and inv.get("invoices_active") == n
        and inv.get("invoices_not_period_invoice") == 0
        and inv.get("creation_events_logged") == n,
        "no_duplicate_invoice_event": watch.get("duplicates") == 0
        and watch.get("invoices_created_seen") == n,
    }
