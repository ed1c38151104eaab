"""The load-generator core shared by every benchmark's load generator.

A load generator is a child process (`bench.driver.LoadGenerator` starts it) that
produces messages made by a per-benchmark factory and watches where the system under
test puts its output. What is the same for all of them lives here:

- `child_main`: the child's entry point around its coroutine (errors go up the pipe);
- `start_producer`: the producer every generator sends with;
- `TopicReader`: reads every partition of one topic from the beginning (no group);
- `SeqCollector`: a `TopicReader` matching outputs to commands by sequence number;
- `send_all`: sends messages 0..n-1 as fast as possible or at a rate, waits for acks;
- `SeqLoadSpec`, `run_seq_load`: the whole run of a generator whose outputs carry the
  sequence number (warm-up, send, wait for every output), speaking the pipe protocol
  ("ready",) → ("produced", first_send, last_ack) → ("done", results);
- `outputs`: the results every generator reports.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from multiprocessing.connection import Connection
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from services.runtime.worker import cancel

#: (Kafka key, value) of message `seq` (negative: a warm-up message).
MessageFactory = Callable[[int], tuple[bytes, bytes]]
SendFn = Callable[[int], Awaitable["asyncio.Future[Any]"]]


def child_main(
    run: Callable[[], Coroutine[Any, Any, None]],
    conn: Connection,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """Run the child's coroutine; on any error send ("error", traceback) up the pipe."""
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run())
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    finally:
        conn.close()


async def start_producer(bootstrap: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        linger_ms=2,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    return producer


class TopicReader:
    """Reads every partition of `topic` from the beginning, calling `record` for each
    record (with the wall time its batch was read) and `polled` after every poll."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        fetch_max_wait_ms: int = 5,
        max_partition_fetch_bytes: int = 4 * 1024 * 1024,
        poll_ms: int = 100,
        what: str = "output topic",
    ) -> None:
        self.topic = topic
        self.poll_ms = poll_ms
        self.what = what
        self.changed = asyncio.Event()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_partition_fetch_bytes=max_partition_fetch_bytes,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        partitions = self.consumer.partitions_for_topic(self.topic)
        if not partitions:
            await self.consumer._client.force_metadata_update()
            partitions = self.consumer.partitions_for_topic(self.topic) or set()
        if not partitions:
            raise RuntimeError(f"{self.what} {self.topic} has no partitions")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel(self._task)
        await self.consumer.stop()

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=self.poll_ms, max_records=10_000)
            now = time.time()
            for records in batch.values():
                for record in records:
                    self.record(record, now)
            self.polled(bool(batch))

    def record(self, record: ConsumerRecord[Any, Any], now: float) -> None:
        raise NotImplementedError

    def polled(self, anything: bool) -> None:
        if anything:
            self.changed.set()


class SeqCollector(TopicReader):
    """Outputs matched to their command by sequence number (negative: warm-up)."""

    def __init__(self, bootstrap: str, topic: str, **options: Any) -> None:
        super().__init__(bootstrap, topic, **options)
        self.arrived: dict[int, float] = {}  # seq -> wall time its output was read
        self.latencies: list[float] = []
        self.duplicates = 0

    def arrive(self, seq: int, now: float, sent_at: float | None) -> None:
        if seq in self.arrived:
            self.duplicates += 1
            return
        self.arrived[seq] = now
        if seq >= 0 and sent_at is not None:
            self.latencies.append(now - sent_at)

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


async def send_all(
    send: SendFn, n: int, rate: float | None, *, per_message: bool = False
) -> tuple[float, float]:
    """Send messages 0..n-1 and wait for every ack: (first send, last ack) wall times.

    `rate=None`: as fast as the producer goes. `rate=R`: R messages/s, either in 1 ms
    ticks (each sends what is due by then) or, `per_message`, each message at its own due
    time (a sleep when it is more than 1 ms away)."""
    futures = []
    first_send = time.time()
    started = time.monotonic()
    if rate is None:
        for seq in range(n):
            futures.append(await send(seq))
    elif per_message:
        for seq in range(n):
            if (wait := started + seq / rate - time.monotonic()) > 0.001:
                await asyncio.sleep(wait)
            futures.append(await send(seq))
    else:
        seq = 0
        while seq < n:
            due = min(n, int((time.monotonic() - started) * rate) + 1)
            while seq < due:
                futures.append(await send(seq))
                seq += 1
            await asyncio.sleep(0.001)
    await asyncio.gather(*futures)
    return first_send, time.time()


def outputs(
    complete: bool,
    arrived: Iterable[float],
    duplicates: int,
    latencies: list[float],
    first_send: float,
    last_ack: float,
    **extra: Any,
) -> dict[str, Any]:
    """The "done" report: `extra` (counters of this generator) after the common checks."""
    times = list(arrived)
    checks = {"complete": complete, "seen": len(times), "duplicates": duplicates}
    return {
        **checks,
        **extra,
        "first_output": min(times, default=None),
        "last_output": max(times, default=None),
        "latencies": latencies,
        "first_send": first_send,
        "last_ack": last_ack,
    }


@dataclass(frozen=True)
class SeqLoadSpec:
    """What `run_seq_load` needs; a benchmark's spec adds its own (positional) fields.
    `rate=None`: pre-produce everything."""

    bootstrap: str
    in_topic: str
    out_topic: str
    n: int
    _: KW_ONLY
    rate: float | None = None
    timeout_s: float = 120.0
    collector_fetch_max_wait_ms: int = 5


async def run_seq_load(
    conn: Connection,
    spec: SeqLoadSpec,
    collector: SeqCollector,
    message: MessageFactory,
    *,
    warm_up: int,
    what: str,
    counters: Callable[[], Mapping[str, Any]] = dict,
) -> None:
    """Produce `message(0..n-1)` on the input topic (after, with a rate, `warm_up`
    messages -1..-warm_up, waited for) and report when `collector` has seen every output."""
    n, rate, timeout_s = spec.n, spec.rate, spec.timeout_s
    await collector.start()
    producer = await start_producer(spec.bootstrap)

    async def send(seq: int) -> asyncio.Future[Any]:
        key, body = message(seq)
        future: asyncio.Future[Any] = await producer.send(spec.in_topic, value=body, key=key)
        return future

    try:
        conn.send(("ready",))
        if rate is not None:  # warm up: `warm_up` messages, and wait for their outputs
            await asyncio.gather(*[await send(-1 - i) for i in range(warm_up)])
            if not await collector.wait_for(range(-warm_up, 0), time.monotonic() + timeout_s):
                raise RuntimeError(f"the warm-up {what} did not come out within the timeout")
        first_send, last_ack = await send_all(send, n, rate)
        conn.send(("produced", first_send, last_ack))
        complete = await collector.wait_for(range(n), time.monotonic() + timeout_s)
        measured = [t for s, t in collector.arrived.items() if s >= 0]
        report = outputs(
            complete,
            measured,
            collector.duplicates,
            collector.latencies,
            first_send,
            last_ack,
            **counters(),
        )
        conn.send(("done", report))
    finally:
        await producer.stop()
        await collector.stop()
