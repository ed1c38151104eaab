"""Kafka helpers for tests: publish, read a topic to its end, poll with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from contracts import catalog
from contracts.topics import COMMAND_RESULTS

T = TypeVar("T")


def topic_of(type_name: str, default: str) -> str:
    """The catalog's topic (base name) for a message type; `default` for a type the
    catalog does not know (tests send unknown types on purpose)."""
    try:
        return catalog.topic_for_type(type_name)
    except KeyError:
        return default


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.value)

    @classmethod
    def of(cls, m: ConsumerRecord[bytes, bytes]) -> Record:
        return cls(
            m.topic,
            m.partition,
            m.offset,
            m.key.decode() if m.key is not None else None,
            m.value or b"",
            {k: v.decode() for k, v in (m.headers or [])},
        )


def envelope(
    type_: str,
    payload: dict[str, Any],
    *,
    website_key: str = "shop-1",
    message_id: str | None = None,
    occurred_at: str | None = None,
) -> dict[str, Any]:
    return {
        "message_id": message_id or str(uuid.uuid4()),
        "type": type_,
        "website_key": website_key,
        "occurred_at": occurred_at or datetime.now(UTC).isoformat(),
        "payload": payload,
    }


async def publish(
    bootstrap: str,
    topic: str,
    items: list[tuple[str | None, bytes]],
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Each (key, value) of `items` to `topic`, every record with `headers` (if any)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=2)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, value=value, key=key.encode() if key else None, headers=headers
            )
            for key, value in items
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str) -> list[Record]:
    """Every record currently in `topic`, from the beginning to the end offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Record] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + 30
        # Tansu reports the end offset of a partition as the base offset of its last
        # record batch + 1, so reaching the reported end is not the end: read on until
        # a fetch comes back empty.
        empty_fetches = 0
        while time.monotonic() < deadline:
            batch = await consumer.getmany(*tps, timeout_ms=100)
            empty_fetches = 0 if batch else empty_fetches + 1
            for msgs in batch.values():
                for m in msgs:
                    records.append(Record.of(m))
                    if m.offset + 1 >= ends[TopicPartition(m.topic, m.partition)]:
                        remaining.discard(TopicPartition(m.topic, m.partition))
            if empty_fetches >= 3 and not remaining:
                break
        return records
    finally:
        await consumer.stop()


async def poll_until(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = 60.0,  # a deadline, not a wait: a loaded CI box may need it
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call `check` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


async def at_least(
    count: int, now: Callable[[], list[T]], *, timeout: float = 60.0, what: str
) -> list[T]:
    """What `now()` returns once it holds `count` items or more (polled as `poll_until`)."""

    async def enough() -> list[T] | None:
        found = now()
        return found if len(found) >= count else None

    return await poll_until(enough, timeout=timeout, what=what)


async def partitions(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of `topics`, in order, as the broker has them now."""
    await consumer._client.force_metadata_update()
    return [
        TopicPartition(topic, p)
        for topic in topics
        for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]


class BackgroundConsumer:
    """A Kafka consumer that a task of its own reads, handing each partition's batch of
    records to `_take`; `stop` ends both."""

    _consumer: AIOKafkaConsumer | None = None
    _task: asyncio.Task[None] | None = None

    async def _take(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        raise NotImplementedError

    def _start_reading(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _read_from_beginning(self, tps: list[TopicPartition]) -> None:
        assert self._consumer is not None
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._start_reading()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            for records in batch.values():
                await self._take(records)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


class TopicWatcher(BackgroundConsumer):
    """Reads topics from the beginning in the background; tests poll what it collected."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.records: list[Record] = []

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
        )
        await self._consumer.start()
        await self._read_from_beginning(await partitions(self._consumer, self.topics))

    async def _take(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        self.records.extend(Record.of(m) for m in records)

    def on(self, topic: str) -> list[Record]:
        return [r for r in self.records if r.topic == topic]

    def payloads(self, topic: str, key: str) -> list[dict[str, Any]]:
        """The payloads of the envelopes on `topic` with the Kafka key `key`, in order."""
        return [r.json()["payload"] for r in self.on(topic) if r.key == key]


class MerchantClient:
    """A merchant of its own (so tests sharing the database never meet) talking to the
    services on `prefix`; `watcher` reads their command results and the `watched` topics
    (base names)."""

    def __init__(self, bootstrap: str, prefix: str, *watched: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.website_key = f"shop-{uuid.uuid4().hex[:8]}"
        self.watcher = TopicWatcher(
            bootstrap, *(prefix + topic for topic in (COMMAND_RESULTS, *watched))
        )

    async def answer(self, command_id: str) -> dict[str, Any]:
        """The answer (CommandAccepted or CommandRejected) to the command `command_id`."""

        async def found() -> dict[str, Any] | None:
            for record in self.watcher.on(self.prefix + COMMAND_RESULTS):
                body = record.json()
                if body["payload"]["command_id"] == command_id:
                    return body  # type: ignore[no-any-return]
            return None

        return await poll_until(found, what=f"the answer to {command_id}")
