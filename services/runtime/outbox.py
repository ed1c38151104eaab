"""The transactional outbox and its relay.

A handler adds `OutboxMessage`s to its unit of work; they are inserted in the same
transaction as its state. The relay publishes them to Kafka in id order per shard
(shard = stable hash of the Kafka key) and deletes them once the broker confirmed.
One relay at a time holds a shard (a transaction-scoped advisory lock), so several
replicas can run relays without breaking per-key order; a relay takes every shard that
is free for one batch, in one transaction. A crash between publish and
delete publishes a batch again; every consumer deduplicates by `message_id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from prometheus_client import Counter, Gauge, Histogram

from services.runtime.db import Connection, schema_lock_id
from services.runtime.logs import get_logger
from services.runtime.worker import StopFlag, cancel, run_worker

log = get_logger(__name__)

RELAYED = Counter("cm_outbox_relayed_total", "Outbox messages published", ["service"])
RELAY_BATCH_SECONDS = Histogram(
    "cm_outbox_relay_batch_seconds", "Time to publish and delete one relay batch", ["service"]
)
PARKED = Counter(
    "cm_outbox_parked_total",
    "Outbox rows the broker refused for good, moved to outbox_parked instead of published",
    ["service", "reason"],
)
RELAY_LAG_SECONDS = Gauge(
    "cm_outbox_oldest_age_seconds",
    "Age of the oldest message relayed in the last batch",
    ["service"],
)


def shard_of(key: str | None, shards: int) -> int:
    """Stable shard of a Kafka key (all messages of one key share a shard)."""
    return zlib.crc32((key or "").encode()) % shards


#: Keys whose partition the relay remembers (murmur2 in Python costs ~5 µs a key): a
#: key that comes back soon (an invoice's next event) is found again; a stream of
#: distinct keys (a bill run, a timer drain) empties it now and then. 100,000 held ~20 MB
#: of a service's memory (issue 14); 10,000 hold ~2 MB.
KEY_PARTITIONS_CACHED = 10_000

#: Bytes a Kafka record needs beyond its key, value and headers (record and batch framing).
RECORD_OVERHEAD_BYTES = 128

#: Errors with which a broker refuses a record for good: sending it again cannot succeed.
REFUSED_FOR_GOOD: tuple[type[Exception], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.CorruptRecordException,
    kafka_errors.InvalidMessageError,
    kafka_errors.InvalidTimestampError,
    kafka_errors.UnsupportedForMessageFormatError,
)


#: The headers of a JSON message (every platform message).
JSON_HEADERS: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)


@dataclass(frozen=True)
class OutboxMessage:
    """One message to publish after commit."""

    topic: str
    key: str | None
    value: bytes
    headers: tuple[tuple[str, str], ...] = JSON_HEADERS

    @property
    def size(self) -> int:
        """Bytes of the Kafka record it becomes (an upper estimate)."""
        return record_size(self.key, self.value, self.headers)


def record_size(
    key: str | bytes | None, value: bytes, headers: Sequence[tuple[str, str | bytes]]
) -> int:
    key_bytes = len(key.encode() if isinstance(key, str) else key or b"")
    header_bytes = sum(len(k.encode()) + len(v) for k, v in headers)
    return key_bytes + len(value) + header_bytes + RECORD_OVERHEAD_BYTES


class OutboxMessageTooLarge(Exception):
    """An effect larger than `KAFKA_MAX_MESSAGE_BYTES`: refused when it is enqueued."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(f"a message to {topic} of {size} bytes exceeds the limit of {limit}")
        self.topic = topic
        self.size = size
        self.limit = limit


def check_sizes(messages: Sequence[OutboxMessage], max_bytes: int) -> None:
    """Raise `OutboxMessageTooLarge` for the first message above `max_bytes`."""
    for message in messages:
        if len(message.value) + RECORD_OVERHEAD_BYTES > max_bytes:  # cheap first look
            size = message.size
            if size > max_bytes:
                raise OutboxMessageTooLarge(message.topic, size, max_bytes)


@functools.lru_cache(maxsize=256)
def headers_json(headers: tuple[tuple[str, str], ...]) -> str:
    """The outbox row's `headers` (jsonb, as text) of a message's headers."""
    return json.dumps(headers)


@functools.lru_cache(maxsize=256)
def _headers_from_json(text: str) -> tuple[tuple[str, bytes], ...]:
    return tuple((str(k), str(v).encode()) for k, v in json.loads(text))


async def enqueue(
    conn: Connection,
    messages: Sequence[OutboxMessage],
    shards: int,
    *,
    max_bytes: int | None = None,
) -> None:
    """Insert messages into the outbox inside the caller's transaction, in order.

    With `max_bytes`, a message larger than that is refused (`OutboxMessageTooLarge`)
    before anything is written; without it, the relay parks what the broker refuses.
    """
    if not messages:
        return
    if max_bytes is not None:
        check_sizes(messages, max_bytes)
    await conn.execute(
        "INSERT INTO outbox (shard, topic, key, value, headers)"
        " SELECT s, t, k, v, h::jsonb FROM unnest($1::smallint[], $2::text[], $3::text[],"
        " $4::bytea[], $5::text[]) WITH ORDINALITY AS u(s, t, k, v, h, n) ORDER BY n",
        [shard_of(m.key, shards) for m in messages],
        [m.topic for m in messages],
        [m.key for m in messages],
        [m.value for m in messages],
        [headers_json(m.headers) for m in messages],
    )


class OutboxRelay:
    """Publishes outbox rows of one service schema to Kafka."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        bootstrap_servers: str,
        schema: str,
        service: str,
        shards: int = 8,
        batch_size: int = 1000,
        poll_interval_s: float = 0.1,
        linger_ms: int = 2,
        max_message_bytes: int = 1_048_576,
        kafka_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._pool = pool
        self._bootstrap = bootstrap_servers
        #: Authentication (services/runtime/kafka_auth.client_options): none by default.
        self._kafka_options = dict(kafka_options or {})
        self._lock_ns = schema_lock_id(f"{schema}.outbox")
        self._service = service
        self._shards = shards
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._linger_ms = linger_ms
        self._max_message_bytes = max_message_bytes
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stop = StopFlag()
        self._key_partitions: dict[tuple[str, int, bytes], int] = {}

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            acks="all",
            enable_idempotence=False,  # the embedded broker has no idempotent producer
            linger_ms=self._linger_ms,
            # A record batch never above what the broker takes (one big record alone may
            # be: the batch holds just it).
            max_batch_size=self._max_message_bytes,
            max_request_size=max(8 * 1024 * 1024, 2 * self._max_message_bytes),
            **self._kafka_options,
        )
        await self._producer.start()
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._service}")

    def wake(self) -> None:
        """Ask the relay to look now (after a commit that enqueued messages)."""
        self._wake.set()

    async def stop(self) -> None:
        # A flag, not only cancel(): on 3.11 wait_for can swallow a cancellation that
        # races with the wake-up event.
        self._stop.stopped = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except TimeoutError:
                await cancel(self._task)
        # One last drain so a clean shutdown leaves nothing behind.
        with contextlib.suppress(Exception):
            await self.relay_all()
        if self._producer is not None:
            await self._producer.stop()

    async def _run(self) -> None:
        await run_worker(
            f"outbox-relay-{self._service}",
            self.relay_all,
            idle_s=self._poll_interval_s,
            wake=self._wake,
            stop=self._stop,
        )

    async def relay_all(self) -> int:
        """Relay until the outbox is empty; returns how many messages went out."""
        total = 0
        while True:
            moved = await self.relay_batch()
            total += moved
            if moved < self._batch_size:
                return total

    async def relay_batch(self) -> int:
        """Publish the next batch from every shard no other relay holds; 0 when empty.

        One transaction: take the free shards (transaction-scoped advisory locks), read
        their oldest rows in (shard, id) order, publish, wait for the acks, delete.
        """
        assert self._producer is not None
        async with self._pool.acquire() as conn, conn.transaction():
            # Two statements, not one: a statement reads with the snapshot taken when it
            # starts, so rows read in the statement that takes the locks could still show
            # what the previous holder of a shard has just published and deleted (it
            # committed between our snapshot and our lock): they would go out twice.
            mine = await conn.fetchval(
                "SELECT array_agg(s) FROM generate_series(0, $2::int - 1) AS s"
                " WHERE pg_try_advisory_xact_lock($1, s)",
                self._lock_ns,
                self._shards,
            )
            if not mine:
                return 0
            rows = await conn.fetch(
                "SELECT id, topic, key, value, headers::text AS headers, created_at FROM outbox"
                " WHERE shard = ANY($1::int[]) ORDER BY shard, id LIMIT $2",
                mine,
                self._batch_size,
            )
            if not rows:
                return 0
            started = time.perf_counter()
            parked = await self._publish(rows)
            if parked:
                await self._park(conn, parked)
            await conn.execute(
                "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
        RELAYED.labels(self._service).inc(len(rows))
        RELAY_BATCH_SECONDS.labels(self._service).observe(time.perf_counter() - started)
        RELAY_LAG_SECONDS.labels(self._service).set(
            max(0.0, time.time() - min(r["created_at"] for r in rows).timestamp())
        )
        return len(rows)

    async def _publish(self, rows: Sequence[Any]) -> list[tuple[Any, str]]:
        """Publish rows as one record batch per partition, in id order within each
        (keys map to partitions with the producer's own partitioner, murmur2 like every
        Kafka client, so a key lands where other producers put it).

        Returns the rows the broker refused for good (too large, invalid) with the reason:
        they are parked, never retried, and never hold up the rows behind them. Any other
        failure raises, and the whole batch is published again later.
        """
        producer = self._producer
        assert producer is not None
        refused: list[tuple[Any, str]] = []
        by_partition: dict[tuple[str, int], list[tuple[bytes | None, Any]]] = {}
        partitions_of: dict[str, list[int]] = {}
        for row in rows:
            topic = row["topic"]
            key = row["key"].encode() if row["key"] is not None else None
            if _may_be_too_large(key, row, self._max_message_bytes):
                refused.append((row, "too_large"))
                continue
            if topic not in partitions_of:  # once per batch: a topic may grow partitions
                try:
                    partitions_of[topic] = sorted(await producer.client._wait_on_metadata(topic))
                except REFUSED_FOR_GOOD:
                    partitions_of[topic] = []
            if not partitions_of[topic]:
                refused.append((row, "invalid_topic"))
                continue
            partition = self._partition_for(topic, key, partitions_of[topic])
            by_partition.setdefault((topic, partition), []).append((key, row))
        sends: list[tuple[str, int, list[tuple[bytes | None, Any]], Any]] = []
        for (topic, partition), items in by_partition.items():
            chunks: list[tuple[Any, list[tuple[bytes | None, Any]]]] = []
            chunk: list[tuple[bytes | None, Any]] = []
            batch = producer.create_batch()
            for key, row in items:
                if not _append(batch, key, row):  # full: it goes, the record starts the next
                    if chunk:
                        chunks.append((batch, chunk))
                    batch, chunk = producer.create_batch(), []
                    if not _append(batch, key, row):  # does not fit even an empty batch
                        refused.append((row, "too_large"))
                        continue
                chunk.append((key, row))
            if chunk:
                chunks.append((batch, chunk))
            for full, records in chunks:
                sent = await producer.send_batch(full, topic, partition=partition)
                sends.append((topic, partition, records, sent))
        results = await asyncio.gather(*(send[3] for send in sends), return_exceptions=True)
        for (topic, partition, chunk, _), result in zip(sends, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            if not isinstance(result, REFUSED_FOR_GOOD):
                raise result
            # The broker refused the batch as a whole (nothing of it was written): send its
            # records one at a time, in order, and park those refused again.
            for key, row in chunk:
                single = producer.create_batch()
                _append(single, key, row)
                try:
                    await (await producer.send_batch(single, topic, partition=partition))
                except REFUSED_FOR_GOOD as error:
                    refused.append((row, type(error).__name__))
        return refused

    async def _park(self, conn: Connection, refused: list[tuple[Any, str]]) -> None:
        """Keep refused rows in `outbox_parked` (for an operator to inspect or replay)."""
        await conn.executemany(
            "INSERT INTO outbox_parked (id, topic, key, value, headers, created_at, reason)"
            " VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7) ON CONFLICT (id) DO NOTHING",
            [
                (r["id"], r["topic"], r["key"], r["value"], r["headers"], r["created_at"], why)
                for r, why in refused
            ],
        )
        for row, why in refused:
            PARKED.labels(self._service, why).inc()
            log.error(
                "outbox row refused by the broker for good; parked",
                topic=row["topic"],
                outbox_id=row["id"],
                bytes=len(row["value"]),
                reason=why,
            )

    def _partition_for(self, topic: str, key: bytes | None, partitions: list[int]) -> int:
        if key is None:
            return random.choice(partitions)
        slot = (topic, len(partitions), key)
        cached = self._key_partitions.get(slot)
        if cached is None:
            assert self._producer is not None
            cached = int(self._producer._partitioner(key, partitions, partitions))
            if len(self._key_partitions) >= KEY_PARTITIONS_CACHED:
                self._key_partitions.clear()
            self._key_partitions[slot] = cached
        return cached


def _may_be_too_large(key: bytes | None, row: Any, max_bytes: int) -> bool:
    """Whether the row's record exceeds `max_bytes`. The headers are decoded only for a
    row near the limit: their JSON text, at up to 4 bytes a character, is never shorter
    than the bytes they add to the record."""
    value: bytes = row["value"]
    headers: str = row["headers"]
    if len(key or b"") + len(value) + RECORD_OVERHEAD_BYTES + 4 * len(headers) <= max_bytes:
        return False
    return record_size(key, value, _headers_from_json(headers)) > max_bytes


def _append(batch: Any, key: bytes | None, row: Any) -> bool:
    """Add an outbox row to a record batch; False when the batch is full."""
    headers = list(_headers_from_json(row["headers"]))  # a few distinct values: cached
    return batch.append(key=key, value=row["value"], timestamp=None, headers=headers) is not None
