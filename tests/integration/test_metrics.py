"""The sampled gauges and the dead-letter counter on the real broker and database:
consumer lag per group and partition, the outbox backlog and parked rows, dead letters by
code, and a running service that samples its own groups."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import REGISTRY

from contracts import topics
from contracts.topics import TopicNames
from services.invoice import app as invoice_app
from services.runtime.app import Runtime, Service, build_service
from services.runtime.db import create_pool, migrate
from services.runtime.metrics import ConsumerGroup, MetricsSampler
from services.runtime.outbox import OutboxMessage, enqueue
from services.scheduler import app as scheduler_app
from tests.support import ledger
from tests.support.kafka import envelope, poll_until
from tests.support.services import make_settings


def lag_of(service: str, group: str, topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "cm_consumer_lag",
        {"service": service, "group": group, "topic": topic, "partition": str(partition)},
    )


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def send_one_by_one(bootstrap: str, topic: str, partition: int, count: int) -> None:
    """`count` records, each in a batch of its own (so that Tansu's end offset, the last
    batch's base offset + 1, is the exact count)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for n in range(count):
            await (await producer.send(topic, value=b"%d" % n, partition=partition))
    finally:
        await producer.stop()


async def commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


@asynccontextmanager
async def migrated_pool(
    database_url: str, schema: str, migrations: Path | None
) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a new `schema` with the runtime's tables and `migrations` in it."""
    pool = await create_pool(database_url, schema)
    try:
        await migrate(pool, schema, migrations)
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def sampler_pool(database_url: str) -> AsyncIterator[object]:
    async with migrated_pool(database_url, f"metrics_{uuid.uuid4().hex[:8]}", None) as pool:
        yield pool


async def test_lag_per_group_and_partition_follows_the_commits(
    kafka_bootstrap: str, sampler_pool: object
) -> None:
    topic = f"m{uuid.uuid4().hex[:8]}.lag"
    group, idle = f"{topic}.group", f"{topic}.idle"
    await create_topic(kafka_bootstrap, topic, 2)
    await send_one_by_one(kafka_bootstrap, topic, 0, 5)
    await send_one_by_one(kafka_bootstrap, topic, 1, 2)
    sampler = MetricsSampler(
        service="lagtest",
        pool=sampler_pool,  # type: ignore[arg-type]
        groups=[ConsumerGroup(group, topic), ConsumerGroup(idle, topic)],
        bootstrap_servers=kafka_bootstrap,
    )
    try:
        await sampler.sample()
        # Nothing committed yet: every record is behind, for both groups.
        assert [lag_of("lagtest", group, topic, p) for p in (0, 1)] == [5, 2]
        assert [lag_of("lagtest", idle, topic, p) for p in (0, 1)] == [5, 2]

        await commit(kafka_bootstrap, group, {TopicPartition(topic, 0): 3})
        await commit(kafka_bootstrap, group, {TopicPartition(topic, 1): 2})
        await sampler.sample()
        assert [lag_of("lagtest", group, topic, p) for p in (0, 1)] == [2, 0]
        assert [lag_of("lagtest", idle, topic, p) for p in (0, 1)] == [5, 2]  # its own
    finally:
        await sampler.close()


async def test_the_outbox_backlog_and_the_parked_rows_are_sampled(sampler_pool: object) -> None:
    pool = sampler_pool
    sampler = MetricsSampler(
        service="outboxtest",
        pool=pool,
        groups=[],
        bootstrap_servers="127.0.0.1:1",  # type: ignore[arg-type]
    )
    await sampler.sample()
    assert REGISTRY.get_sample_value("cm_outbox_pending_rows", {"service": "outboxtest"}) == 0
    assert (
        REGISTRY.get_sample_value("cm_outbox_pending_oldest_age_seconds", {"service": "outboxtest"})
        == 0
    )
    async with pool.acquire() as conn:  # type: ignore[attr-defined]
        await enqueue(conn, [OutboxMessage("t", f"k{n}", b"v") for n in range(3)], 8)
        await conn.execute("UPDATE outbox SET created_at = now() - interval '90 seconds'")
        await conn.execute(
            "INSERT INTO outbox_parked (id, topic, key, value, created_at, reason)"
            " VALUES (1, 't', 'k', 'v', now(), 'too_large')"
        )
    await sampler.sample()
    assert REGISTRY.get_sample_value("cm_outbox_pending_rows", {"service": "outboxtest"}) == 3
    age = REGISTRY.get_sample_value(
        "cm_outbox_pending_oldest_age_seconds", {"service": "outboxtest"}
    )
    assert age is not None and 90 <= age < 3600
    assert REGISTRY.get_sample_value("cm_outbox_parked_rows", {"service": "outboxtest"}) == 1
    stamp = REGISTRY.get_sample_value(
        "cm_metrics_last_sample_timestamp_seconds", {"service": "outboxtest"}
    )
    assert stamp is not None and stamp > 0


@pytest.fixture
async def service(kafka_bootstrap: str, database_url: str) -> AsyncIterator[tuple[Service, str]]:
    prefix = f"g{uuid.uuid4().hex[:10]}."
    settings = make_settings(kafka_bootstrap, database_url, prefix, metrics_sample_interval_s=0.2)
    svc = build_service(ledger.definition("ledger_" + prefix.strip(".")), settings)
    async with svc.app:
        yield svc, prefix


async def test_a_running_service_samples_its_groups_and_counts_dead_letters_by_code(
    service: tuple[Service, str], kafka_bootstrap: str
) -> None:
    svc, prefix = service
    topic = prefix + topics.INVOICE_COMMANDS
    group = f"{prefix}cm.ledger.commands"
    before = (
        REGISTRY.get_sample_value(
            "cm_dead_letters_total", {"service": "ledger", "code": "invalid_json"}
        )
        or 0.0
    )
    good = envelope("RecordEntry", {"entry_id": "e-1", "amount": "1.00"})
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await (await producer.send(topic, value=b"{not json", key=b"k", partition=0))
        await (await producer.send(topic, value=json.dumps(good).encode(), key=b"k", partition=0))
    finally:
        await producer.stop()

    async def dead_lettered() -> float | None:
        found = REGISTRY.get_sample_value(
            "cm_dead_letters_total", {"service": "ledger", "code": "invalid_json"}
        )
        return found if found is not None and found >= before + 1 else None

    await poll_until(dead_lettered, what="the dead letter counted under invalid_json")

    async def caught_up() -> bool:
        # Every partition of the group's topic is sampled, and once the commits are in,
        # none is behind.
        partitions = svc.runtime.settings.kafka_topic_partitions
        lags = [lag_of("ledger", group, topic, p) for p in range(partitions)]
        return all(value == 0 for value in lags)

    await poll_until(caught_up, what="the service's own group sampled with no lag")


async def test_timers_due_but_not_fired_are_sampled_by_the_schedulers_clock(
    database_url: str, kafka_bootstrap: str
) -> None:
    schema = f"sched_{uuid.uuid4().hex[:8]}"
    definition = scheduler_app.definition(schema)
    async with migrated_pool(database_url, schema, definition.migrations) as pool:
        settings = make_settings(kafka_bootstrap, database_url, "", cm_clock="manual")
        runtime = Runtime(settings, "scheduler", schema, TopicNames(""), pool, None)
        await pool.execute("UPDATE clock SET now = '2030-01-01T12:00:00+00:00'")
        await pool.executemany(
            "INSERT INTO timers (website_key, timer_id, due_at, topic, key, message)"
            " VALUES ('shop-1', $1, $2, 't', 'k', '{}'::jsonb)",
            [
                ("late", datetime(2030, 1, 1, 11, 58, tzinfo=UTC)),
                ("now", datetime(2030, 1, 1, 12, 0, tzinfo=UTC)),
                ("later", datetime(2030, 1, 1, 13, 0, tzinfo=UTC)),
            ],
        )
        await scheduler_app.sample_due(runtime)
        assert REGISTRY.get_sample_value("cm_scheduler_timers_due") == 2
        assert REGISTRY.get_sample_value("cm_scheduler_oldest_due_age_seconds") == 120

        await pool.execute("DELETE FROM timers WHERE due_at <= '2030-01-01T12:00:00+00:00'")
        await scheduler_app.sample_due(runtime)
        assert REGISTRY.get_sample_value("cm_scheduler_timers_due") == 0
        assert REGISTRY.get_sample_value("cm_scheduler_oldest_due_age_seconds") == 0


async def test_payments_parked_until_their_invoice_exists_are_sampled(
    database_url: str, kafka_bootstrap: str
) -> None:
    schema = f"inv_{uuid.uuid4().hex[:8]}"
    definition = invoice_app.definition()
    async with migrated_pool(database_url, schema, definition.migrations) as pool:
        settings = make_settings(kafka_bootstrap, database_url, "")
        runtime = Runtime(settings, "invoice", schema, TopicNames(""), pool, None)
        await invoice_app.sample_early_transactions(runtime)
        assert REGISTRY.get_sample_value("cm_invoice_early_transactions") == 0
        await pool.executemany(
            "INSERT INTO early_transactions"
            " (website_key, invoice_number, message_id, occurred_at, transaction)"
            " VALUES ('shop-1', $1, $2, now(), '{}'::jsonb)",
            [("F-1", uuid.uuid4()), ("F-1", uuid.uuid4()), ("F-2", uuid.uuid4())],
        )
        await invoice_app.sample_early_transactions(runtime)
        assert REGISTRY.get_sample_value("cm_invoice_early_transactions") == 3
