"""What a platform team watches: the metrics every service exports beyond its counters,
and the sampler that keeps the gauges current.

Counters move where the thing happens (a dead letter, a parked row); gauges of backlogs
are *sampled*: every `METRICS_SAMPLE_INTERVAL_S` (default 15 s) one background task per
service process reads

- the outbox backlog (rows not yet relayed, the oldest one's age) and the parked rows,
  from the service's own schema (two small queries);
- the consumer lag of each of the service's consumer groups, per partition: the
  partition's end offset minus the group's committed offset (the log start where the
  group has committed nothing yet), from the broker (a metadata and a list-offsets
  request per round, a coordinator lookup and an offset fetch per group), so a consumer
  that is stuck or not assigned still shows its lag.

Nothing here runs per message: the hot paths are unchanged. Every replica samples the
same figures; the alert rules and the dashboard take the `max` over instances.

Label values are bounded: service, consumer group and topic names come from the code
(`contracts.catalog`), partitions from the topic's partition count, error codes from a
closed set (`dead_letter_code`, anything else is `other`). No key, invoice or merchant
ever becomes a label.

On Tansu (the embedded broker of `make run` and the tests) a partition's end offset is
the base offset of its last record batch + 1 (docs/decisions.md, "Embedded stack"): the
lag read there is at most one batch low, never negative (it is clamped at 0).
"""

from __future__ import annotations

import contextlib
import time
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import Counter, Gauge
from pydantic_core import core_schema

from services.runtime.worker import run_worker

CONSUMER_LAG = Gauge(
    "cm_consumer_lag",
    "Records on a partition its consumer group has not committed yet (end offset minus"
    " committed offset), sampled",
    ["service", "group", "topic", "partition"],
)
OUTBOX_PENDING_ROWS = Gauge(
    "cm_outbox_pending_rows",
    "Outbox rows not yet published (counted up to 1,000,000), sampled",
    ["service"],
)
OUTBOX_PENDING_AGE = Gauge(
    "cm_outbox_pending_oldest_age_seconds",
    "Age of the oldest outbox row not yet published (0 when the outbox is empty), sampled",
    ["service"],
)
OUTBOX_PARKED_ROWS = Gauge(
    "cm_outbox_parked_rows",
    "Rows in outbox_parked (refused by the broker for good, waiting for an operator), sampled",
    ["service"],
)
LAST_SAMPLE = Gauge(
    "cm_metrics_last_sample_timestamp_seconds",
    "When the sampler last read the backlog gauges (Unix time): stale when it cannot",
    ["service"],
)
DEAD_LETTERS = Counter(
    "cm_dead_letters_total",
    "Records dead-lettered, by service and the code of their first error (closed set)",
    ["service", "code"],
)
BATCH_FAILURES = Counter(
    "cm_consumer_batch_failures_total",
    "Batches that failed as a whole and are delivered again (database or broker trouble)",
    ["service", "consumer"],
)

#: Rows counted at most, so a huge backlog costs a bounded scan per sample.
COUNT_CAP = 1_000_000

#: The codes a dead letter's first error can have that the runtime itself writes
#: (services/runtime/consumer.py, contracts/envelope.py).
RUNTIME_CODES = frozenset(
    {
        "dead_letter_failed",
        "effect_too_large",
        "handler_error",
        "invalid_json",
        "invalid_key",
        "not_allowed_here",
        "not_an_object",
        "too_deep",
        "too_large",
        "too_many_errors",
        "unknown_type",
        "unparseable",
        "unreadable_record",
    }
)
#: Plus pydantic's own validation error types (a fixed list of the library's).
DEAD_LETTER_CODES = RUNTIME_CODES | frozenset(typing.get_args(core_schema.ErrorType))


def dead_letter_code(code: str | None) -> str:
    """The `code` label of a dead letter: a code of the closed set, else `other` (a
    business rule's code, or a contract's own validator's)."""
    return code if code is not None and code in DEAD_LETTER_CODES else "other"


@dataclass(frozen=True)
class ConsumerGroup:
    """A consumer group of the service and the topic it reads (full names)."""

    group: str
    topic: str


class MetricsSampler:
    """Reads the backlog gauges of one service process (see the module docstring)."""

    def __init__(
        self,
        *,
        service: str,
        pool: asyncpg.Pool,
        groups: Sequence[ConsumerGroup],
        bootstrap_servers: str,
        kafka_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._service = service
        self._pool = pool
        self._groups = list(groups)
        self._bootstrap = bootstrap_servers
        self._kafka_options = dict(kafka_options or {})
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None
        #: The lag series this process exports, to drop those of partitions gone.
        self._lag_series: set[tuple[str, str, str, str]] = set()

    async def sample(self) -> int:
        """One round: the outbox, then the lag; raises when either cannot be read."""
        await self.sample_outbox()
        await self.sample_lag()
        LAST_SAMPLE.labels(self._service).set(time.time())
        return 0

    async def sample_outbox(self) -> None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT $1) AS o) AS pending,"
                " (SELECT extract(epoch FROM now() - created_at) FROM outbox"
                "  ORDER BY id LIMIT 1) AS oldest_s,"
                " (SELECT count(*) FROM (SELECT 1 FROM outbox_parked LIMIT $1) AS p) AS parked",
                COUNT_CAP,
            )
        assert row is not None
        OUTBOX_PENDING_ROWS.labels(self._service).set(row["pending"])
        OUTBOX_PENDING_AGE.labels(self._service).set(max(0.0, float(row["oldest_s"] or 0)))
        OUTBOX_PARKED_ROWS.labels(self._service).set(row["parked"])

    async def sample_lag(self) -> None:
        if not self._groups:
            return
        admin, offsets = await self._clients()
        topics = sorted({g.topic for g in self._groups})
        partitions = {
            t["topic"]: sorted(p["partition"] for p in t["partitions"])
            for t in await admin.describe_topics(topics)
            if not t.get("error_code")
        }
        every = [TopicPartition(t, p) for t in topics for p in partitions.get(t, [])]
        if not every:
            return
        ends = await offsets.end_offsets(every)
        starts: dict[TopicPartition, int] | None = None
        seen: set[tuple[str, str, str, str]] = set()
        for group in self._groups:
            mine = [tp for tp in every if tp.topic == group.topic]
            committed = {
                tp: meta.offset
                for tp, meta in (
                    await admin.list_consumer_group_offsets(group.group, partitions=mine)
                ).items()
                if meta.offset >= 0
            }
            if starts is None and len(committed) < len(mine):
                starts = await offsets.beginning_offsets(every)
            for tp in mine:
                done = committed.get(tp)
                if done is None:
                    done = (starts or {}).get(tp, 0)
                labels = (self._service, group.group, tp.topic, str(tp.partition))
                CONSUMER_LAG.labels(*labels).set(lag(ends.get(tp, 0), done))
                seen.add(labels)
        for gone in self._lag_series - seen:
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(*gone)
        self._lag_series = seen

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self._bootstrap,
                client_id=f"cm-{self._service}-metrics",
                **self._kafka_options,
            )
            try:
                await admin.start()
            except BaseException:
                await admin.close()
                raise
            self._admin = admin
        if self._offsets is None:
            # No group: it only asks for offsets, it never joins or commits.
            offsets = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                client_id=f"cm-{self._service}-metrics",
                group_id=None,
                enable_auto_commit=False,
                **self._kafka_options,
            )
            try:
                await offsets.start()
            except BaseException:
                await offsets.stop()
                raise
            self._offsets = offsets
        return self._admin, self._offsets

    async def close(self) -> None:
        admin, offsets = self._admin, self._offsets
        self._admin = self._offsets = None
        if offsets is not None:
            with contextlib.suppress(Exception):
                await offsets.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    async def run(self, interval_s: float) -> None:
        """Sample every `interval_s` until cancelled (failures back off and are counted
        in `cm_worker_failures_total{worker="metrics-<service>"}`)."""
        try:
            await run_worker(f"metrics-{self._service}", self.sample, idle_s=interval_s)
        finally:
            await self.close()


async def sample_every(interval_s: float, name: str, step: Callable[[], Awaitable[int]]) -> None:
    """Run a service's own sampling `step` every `interval_s` (`METRICS_SAMPLE_INTERVAL_S`;
    0 or less: never), as a worker named `name`."""
    if interval_s <= 0:
        return
    await run_worker(name, step, idle_s=interval_s)


def lag(end_offset: int, committed: int) -> int:
    """Records behind: never negative (Tansu's end offset can be below a commit)."""
    return max(0, end_offset - committed)
