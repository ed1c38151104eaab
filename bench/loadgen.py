"""The load generator, run in its own process so it does not share a CPU budget (or an
event loop) with the system under test.

It assigns itself every partition of the output topic, produces BenchRecord commands
(each stamped with its produce wall time), and reads the output events until it has seen
one per command, noting when each arrived. Modes:

- `rate=None`: produce all commands as fast as possible (pre-produced backlog);
- `rate=R`: first a warm-up (one command per key, waited for), then R commands/s.

It talks to the parent over a `multiprocessing` pipe:
("ready",) → ("produced", first_send, last_ack) → ("done", results) or ("error", text).
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.service import command_body


@dataclass(frozen=True)
class LoadSpec:
    bootstrap: str
    in_topic: str
    out_topic: str
    n: int
    keys: int
    rate: float | None = None
    timeout_s: float = 120.0
    collector_fetch_max_wait_ms: int = 5


def main(spec: LoadSpec, conn: Connection) -> None:
    """Entry point of the child process."""
    try:
        asyncio.run(_run(spec, conn))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    finally:
        conn.close()


class _Collector:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.arrived: dict[int, float] = {}  # seq -> wall time the output was read
        self.latencies: list[float] = []
        self.duplicates = 0
        self.changed = asyncio.Event()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=spec.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=spec.collector_fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )

    async def start(self) -> None:
        await self.consumer.start()
        partitions = self.consumer.partitions_for_topic(self.spec.out_topic)
        if not partitions:
            await self.consumer._client.force_metadata_update()
            partitions = self.consumer.partitions_for_topic(self.spec.out_topic) or set()
        if not partitions:
            raise RuntimeError(f"output topic {self.spec.out_topic} has no partitions")
        tps = [TopicPartition(self.spec.out_topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)

    async def run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=10_000)
            if not batch:
                continue
            now = time.time()
            for records in batch.values():
                for record in records:
                    payload = json.loads(record.value)["payload"]
                    seq = payload["seq"]
                    if seq in self.arrived:
                        self.duplicates += 1
                        continue
                    self.arrived[seq] = now
                    if seq >= 0:
                        self.latencies.append(now - payload["sent_at"])
            self.changed.set()

    async def wait_for(self, seqs: range, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if all(s in self.arrived for s in seqs):
                return True
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        return all(s in self.arrived for s in seqs)


async def _run(spec: LoadSpec, conn: Connection) -> None:
    collector = _Collector(spec)
    await collector.start()
    reader = asyncio.create_task(collector.run())
    producer = AIOKafkaProducer(
        bootstrap_servers=spec.bootstrap,
        enable_idempotence=False,
        linger_ms=2,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        conn.send(("ready",))
        if spec.rate is not None:  # warm up: every key once, and wait for the outputs
            warm = [
                await producer.send(spec.in_topic, value=body, key=key.encode())
                for key, body in (command_body(-1 - i, spec.keys) for i in range(spec.keys))
            ]
            await asyncio.gather(*warm)
            warmed = await collector.wait_for(
                range(-spec.keys, 0), time.monotonic() + spec.timeout_s
            )
            if not warmed:
                raise RuntimeError("the warm-up commands did not come out within the timeout")
        futures = []
        first_send = time.time()
        if spec.rate is None:
            for seq in range(spec.n):
                key, body = command_body(seq, spec.keys)
                futures.append(await producer.send(spec.in_topic, value=body, key=key.encode()))
        else:
            started = time.monotonic()
            seq = 0
            while seq < spec.n:
                due = min(spec.n, int((time.monotonic() - started) * spec.rate) + 1)
                while seq < due:
                    key, body = command_body(seq, spec.keys)
                    futures.append(await producer.send(spec.in_topic, value=body, key=key.encode()))
                    seq += 1
                await asyncio.sleep(0.001)
        await asyncio.gather(*futures)
        last_ack = time.time()
        conn.send(("produced", first_send, last_ack))
        complete = await collector.wait_for(range(spec.n), time.monotonic() + spec.timeout_s)
        measured = [t for s, t in collector.arrived.items() if s >= 0]
        conn.send(
            (
                "done",
                {
                    "complete": complete,
                    "seen": len(measured),
                    "duplicates": collector.duplicates,
                    "first_output": min(measured, default=None),
                    "last_output": max(measured, default=None),
                    "latencies": collector.latencies,
                    "first_send": first_send,
                    "last_ack": last_ack,
                },
            )
        )
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await producer.stop()
        await collector.consumer.stop()


def summary(latencies: list[float]) -> dict[str, Any]:
    """p50/p99/max of latencies (seconds in, milliseconds out)."""
    if not latencies:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return round(ordered[index] * 1000, 1)

    return {"p50_ms": pct(50), "p99_ms": pct(99), "max_ms": round(ordered[-1] * 1000, 1)}
