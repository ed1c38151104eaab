"""The invoice service's CPU per CreateInvoice, by stage, under cProfile (issue 14).

Drives the service's own `commands` consumer (`BatchConsumer.handle_batch`, as the
runtime does for a fetched batch) with `--n` enveloped CreateInvoice records (the bytes
`bench.invoice_loadgen` produces) in batches of `--batch`, on an embedded PostgreSQL
(non-durable: the figure is the Python, not the commit), then relays the outbox through
`OutboxRelay._publish` with a producer that builds the record batches but sends nothing.
No broker. Coroutines are profiled while they run (time awaiting PostgreSQL is not theirs),
so a stage's cumulative time is its Python CPU.

    .venv/bin/python -m bench.profile_invoice --n 5000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.invoice_loadgen import InvoiceLoadSpec, command_body
from contracts.topics import TopicNames
from devstack.postgres import start_postgres
from services.invoice.app import definition
from services.runtime.consumer import BatchConsumer, RawRecord
from services.runtime.db import create_pool, migrate
from services.runtime.outbox import OutboxRelay

#: Stage → the functions (file suffix, name) whose cumulative time it is.
STAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "consumer: parse (JSON + envelope validation)": (("consumer.py", "_parse"),),
    "handler: create_invoice (domain, snapshot, events, timer)": (
        ("invoice/handlers.py", "create_invoice"),
    ),
    "  of which the snapshot": (("invoice/snapshot.py", "invoice_snapshot"),),
    "  of which the timer message": (("invoice/handlers.py", "_timer_message"),),
    "  of which envelope → JSON (events, timer, answer)": (("contracts/envelope.py", "to_json"),),
    "batch hooks: begin + finish (reads, writes)": (
        ("invoice/batch.py", "begin"),
        ("invoice/batch.py", "finish"),
    ),
    "consumer: inbox, answers, enqueue": (("consumer.py", "_write"),),
    "consumer: whole batch (handle_batch)": (("consumer.py", "handle_batch"),),
    "relay: read rows + build record batches (per invoice)": (("outbox.py", "relay_batch"),),
}


class _Sent:
    def __await__(self) -> Any:
        if False:
            yield
        return None


class _NoSendProducer:
    """What `OutboxRelay._publish` uses of an AIOKafkaProducer: batches built with
    aiokafka's own builder, partitions by its partitioner, nothing sent."""

    def __init__(self) -> None:
        from aiokafka.partitioner import DefaultPartitioner  # noqa: PLC0415
        from aiokafka.producer.message_accumulator import BatchBuilder  # noqa: PLC0415

        self._builder = BatchBuilder
        self._partitioner = DefaultPartitioner()
        self.client = self

    async def _wait_on_metadata(self, topic: str) -> set[int]:
        return set(range(8))

    def create_batch(self) -> Any:
        return self._builder(1_048_576, 0)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        batch.close()
        return _Sent()


async def _run(
    n: int, batch: int, database_url: str, profiler: cProfile.Profile, *, profile: bool
) -> dict[str, Any]:
    schema = f"profile_{uuid.uuid4().hex[:8]}"
    pool = await create_pool(database_url, schema)
    await migrate(pool, schema, definition().migrations)
    spec = next(c for c in definition().consumers if c.name == "commands")
    consumer = BatchConsumer(
        spec=spec, service="invoice", pool=pool, topics=TopicNames(""), relay_shards=8
    )
    relay = OutboxRelay(
        pool=pool, bootstrap_servers="unused", schema=schema, service="invoice", batch_size=1000
    )
    relay._producer = _NoSendProducer()  # type: ignore[assignment]
    load = InvoiceLoadSpec(
        bootstrap="", in_topic="", out_topic="", n=n, rate=None, merchants=100, debtors=5000
    )
    warm = [command_body(-1 - i, load) for i in range(200)]
    bodies = [command_body(i, load) for i in range(n)]

    def records(items: list[tuple[bytes, bytes]]) -> list[RawRecord]:
        return [RawRecord("t", 0, i, key, value) for i, (key, value) in enumerate(items)]

    await consumer.handle_batch(records(warm))  # caches, prepared statements
    await relay.relay_all()
    outbox_rows = 0
    cpu = {"consumer": 0.0, "relay": 0.0}
    wall = time.perf_counter()
    for start in range(0, n, batch):
        chunk = records(bodies[start : start + batch])
        started = time.process_time()
        if profile:
            profiler.enable()
        outcome = await consumer.handle_batch(chunk)
        profiler.disable()
        cpu["consumer"] += time.process_time() - started
        assert outcome.handled == len(chunk), outcome
        outbox_rows += await pool.fetchval("SELECT count(*) FROM outbox")
        started = time.process_time()
        if profile:
            profiler.enable()
        await relay.relay_all()
        profiler.disable()
        cpu["relay"] += time.process_time() - started
    wall = time.perf_counter() - wall
    await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await pool.close()
    return {
        "wall_s": wall,
        "outbox_rows_per_invoice": outbox_rows / n,
        **{f"cpu_us_{k}": v / n * 1e6 for k, v in cpu.items()},
    }


def _stage_figures(profiler: cProfile.Profile, n: int) -> dict[str, float]:
    stats = pstats.Stats(profiler)
    table: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    figures = {}
    for stage, functions in STAGES.items():
        total = 0.0
        for suffix, name in functions:
            for (path, _line, func), (_cc, _nc, _tt, ct, _callers) in table.items():
                if func == name and path.endswith(suffix):
                    total += ct
        figures[stage] = total / n * 1e6
    figures["everything profiled"] = stats.total_tt / n * 1e6  # type: ignore[attr-defined]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--top", type=int, default=0, help="also print the top N functions")
    parser.add_argument(
        "--plain", action="store_true", help="no cProfile run (for a sampling profiler)"
    )
    parser.add_argument("--callers", default="", help="print the callers of these functions")
    args = parser.parse_args()
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_postgres(Path(tmp) / "pgdata", fast=True, delete_on_stop=True)
        try:
            plain = asyncio.run(_run(args.n, args.batch, server.dsn, profiler, profile=False))
            extra = (
                plain
                if args.plain
                else asyncio.run(_run(args.n, args.batch, server.dsn, profiler, profile=True))
            )
        finally:
            server.stop()
    print(
        f"n={args.n} batch={args.batch} wall={extra['wall_s']:.2f}s"
        f" outbox rows per invoice={extra['outbox_rows_per_invoice']:.2f}"
    )
    print(
        f"without the profiler: CPU {plain['cpu_us_consumer']:.1f} µs per invoice in the"
        f" consumer, {plain['cpu_us_relay']:.1f} µs in the relay (wall {plain['wall_s']:.2f}s)"
    )
    if args.plain:
        return
    print("under cProfile (inflated by the profiler; the shares are what count):")
    for stage, us in _stage_figures(profiler, args.n).items():
        print(f"{us:8.1f} µs  {stage}")
    if args.top:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    if args.callers:
        pstats.Stats(profiler).print_callers(args.callers)


if __name__ == "__main__":
    main()
