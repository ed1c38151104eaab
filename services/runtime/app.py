"""The app factory every service uses: broker, subscribers, relay, health and metrics.

`create_app(service)` wires a `ServiceDefinition` into an `AsgiFastStream`: on start it
configures logging, opens the pool, migrates the service schema, creates the topics,
starts the outbox relay and any background tasks, then the broker's subscribers.
`GET /healthz` answers 200 once every subscriber consumes; `GET /metrics` serves
Prometheus metrics. Run it with `run(service)` (uvicorn on `HTTP_PORT`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.asgi import AsgiFastStream, AsgiResponse, get
from faststream.kafka import KafkaBroker, KafkaMessage
from prometheus_client import make_asgi_app

from contracts.topics import TopicNames
from services.runtime.consumer import (
    BatchConsumer,
    ConsumerLimits,
    ConsumerSpec,
    RawRecord,
    backoff,
    is_infrastructure_error,
)
from services.runtime.db import Connection, create_pool, migrate
from services.runtime.kafka_auth import broker_security, client_options
from services.runtime.logs import configure_logging, failure_site, get_logger
from services.runtime.outbox import OutboxMessage, OutboxRelay, enqueue
from services.runtime.records import UNREADABLE, install_record_guard
from services.runtime.retention import prune_forever
from services.runtime.settings import Settings
from services.runtime.worker import Backoff

log = get_logger(__name__)


@dataclass
class UnitOfWork:
    """One transaction of background work: its connection and the messages it sends."""

    conn: Connection
    outbox: list[OutboxMessage] = field(default_factory=list)
    #: Set when the work inserted outbox rows itself (SQL): the relay is woken too.
    enqueued: bool = False


@dataclass
class Runtime:
    """The live parts of a running service, handed to background tasks."""

    settings: Settings
    service: str
    schema: str
    topics: TopicNames
    pool: asyncpg.Pool
    relay: OutboxRelay | None

    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """Transaction, enqueue, wake the relay: what background work writes commits with
        the messages it sends (`uow.outbox`), and the relay looks at once afterwards."""
        async with self.pool.acquire() as conn, conn.transaction():
            work = UnitOfWork(conn)
            yield work
            await enqueue(conn, work.outbox, self.settings.relay_shards)
        if (work.outbox or work.enqueued) and self.relay is not None:
            self.relay.wake()


BackgroundTask = Callable[[Runtime], Coroutine[Any, Any, None]]


@dataclass
class ServiceDefinition:
    """What makes a service: its name, schema, migrations, consumers and tasks."""

    name: str
    consumers: Sequence[ConsumerSpec]
    migrations: Path | None = None
    schema: str | None = None
    background_tasks: Sequence[BackgroundTask] = field(default_factory=tuple)

    @property
    def schema_name(self) -> str:
        return self.schema or self.name


async def ensure_topics(settings: Settings, topics: TopicNames) -> None:
    """Create every platform topic with the configured partitions, if missing."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, **client_options(settings)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in topics.all() if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(
                            name,
                            num_partitions=settings.kafka_topic_partitions,
                            replication_factor=settings.kafka_replication_factor,
                        )
                        for name in missing
                    ]
                )
    finally:
        await admin.close()


async def _tolerant_parser(records: Any, original: Callable[[Any], Awaitable[Any]]) -> Any:
    """faststream decodes every header as UTF-8 before our code sees the message: a
    header that is not UTF-8 would fail there and, with NACK_ON_ERROR, come back forever.
    Such headers are dropped (the platform reads none it did not write)."""
    batch = records if isinstance(records, tuple) else (records,)
    if all(_utf8_headers(record) for record in batch):
        return await original(records)
    cleaned = tuple(
        replace(record, headers=[(k, v) for k, v in record.headers if _is_utf8(v)])
        for record in batch
    )
    return await original(cleaned if isinstance(records, tuple) else cleaned[0])


def _is_utf8(value: bytes | None) -> bool:
    try:
        (value or b"").decode()
    except UnicodeDecodeError:
        return False
    return True


def _utf8_headers(record: Any) -> bool:
    return all(_is_utf8(value) for _, value in (record.headers or ()))


def _unreadable(record: Any) -> str | None:
    """The reason `records.py` put on a record it could not decode, if any."""
    for key, value in record.headers or ():
        if key == UNREADABLE:
            return bytes(value or b"").decode("utf-8", "replace")
    return None


def _raw_decoder(msg: Any) -> Any:
    # Keep bodies as bytes: parsing (and dead-lettering) is the runtime's job.
    return msg.body


@dataclass
class Service:
    """A built service: the ASGI/FastStream app and its live state (for tests and tools)."""

    app: AsgiFastStream
    broker: KafkaBroker
    state: dict[str, Any]

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime | None = self.state["runtime"]
        if runtime is None:
            raise RuntimeError("the service has not started")
        return runtime


def create_app(definition: ServiceDefinition, settings: Settings | None = None) -> AsgiFastStream:
    return build_service(definition, settings).app


def build_service(definition: ServiceDefinition, settings: Settings | None = None) -> Service:
    settings = settings or Settings()
    service = definition.name
    topics = TopicNames(settings.cm_topic_prefix)
    configure_logging(service, fmt=settings.log_format, level=settings.log_level)
    install_record_guard()
    # Not a child of faststream's own "faststream" logger, which has a handler of its own:
    # these records go through our structlog chain. INFO from it is lifecycle noise.
    stdlib_logger = logging.getLogger(f"cm.{service}.faststream")
    stdlib_logger.setLevel(max(logging.WARNING, logging.getLogger().level))
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        logger=stdlib_logger,
        enable_idempotence=False,
        client_id=f"cm-{service}",
        log_level=logging.DEBUG,  # per-message lines only when debugging
        security=broker_security(settings),
    )
    state: dict[str, Any] = {"runtime": None, "tasks": [], "consumers": {}}

    for spec in definition.consumers:
        _register_consumer(broker, spec, settings, topics, service, state)

    async def on_startup() -> None:
        pool = await create_pool(
            settings.database_url,
            definition.schema_name,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
        )
        applied = await migrate(pool, definition.schema_name, definition.migrations)
        if applied:
            log.info("migrations applied", versions=applied)
        await ensure_topics(settings, topics)
        relay = None
        if settings.relay_enabled:
            relay = OutboxRelay(
                pool=pool,
                bootstrap_servers=settings.kafka_bootstrap_servers,
                schema=definition.schema_name,
                service=service,
                shards=settings.relay_shards,
                batch_size=settings.relay_batch_size,
                poll_interval_s=settings.relay_poll_interval_ms / 1000,
                linger_ms=settings.kafka_linger_ms,
                max_message_bytes=settings.kafka_max_message_bytes,
                kafka_options=client_options(settings),
            )
            await relay.start()
        runtime = Runtime(settings, service, definition.schema_name, topics, pool, relay)
        state["runtime"] = runtime
        for spec in definition.consumers:
            state["consumers"][spec.name] = BatchConsumer(
                spec=spec,
                service=service,
                pool=pool,
                topics=topics,
                relay_shards=settings.relay_shards,
                on_commit=relay.wake if relay else (lambda: None),
                limits=ConsumerLimits(
                    max_message_bytes=settings.kafka_max_message_bytes,
                    dlq_max_value_bytes=settings.dlq_max_value_bytes,
                    handler_retry_attempts=settings.handler_retry_attempts,
                    handler_retry_backoff_s=settings.handler_retry_backoff_ms / 1000,
                ),
            )
        for task in definition.background_tasks:
            state["tasks"].append(asyncio.create_task(task(runtime), name=task.__name__))
        state["tasks"].append(
            asyncio.create_task(
                prune_forever(
                    pool,
                    timedelta(days=settings.inbox_retention_days),
                    timedelta(seconds=settings.inbox_prune_interval_s),
                ),
                name="inbox-retention",
            )
        )

    async def after_startup() -> None:
        log.info("service started", topics=[topics(c.topic) for c in definition.consumers])

    async def on_shutdown() -> None:
        for task in state["tasks"]:
            task.cancel()
        for task in state["tasks"]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def after_shutdown() -> None:
        runtime: Runtime | None = state["runtime"]
        if runtime is None:
            return
        if runtime.relay is not None:
            await runtime.relay.stop()
        await runtime.pool.close()
        log.info("service stopped")

    @get
    async def healthz(scope: Any) -> AsgiResponse:
        runtime: Runtime | None = state["runtime"]
        ok = (
            runtime is not None
            and all(sub.running for sub in broker.subscribers)
            and await broker.ping(timeout=2.0)
        )
        body = b'{"status":"ok"}' if ok else b'{"status":"starting"}'
        return AsgiResponse(
            body, status_code=200 if ok else 503, headers={"content-type": "application/json"}
        )

    app = AsgiFastStream(
        broker,
        asgi_routes=[("/healthz", healthz), ("/metrics", make_asgi_app())],
        logger=stdlib_logger,
        on_startup=[on_startup],
        after_startup=[after_startup],
        on_shutdown=[on_shutdown],
        after_shutdown=[after_shutdown],
    )
    return Service(app=app, broker=broker, state=state)


def _register_consumer(
    broker: KafkaBroker,
    spec: ConsumerSpec,
    settings: Settings,
    topics: TopicNames,
    service: str,
    state: dict[str, Any],
) -> None:
    subscriber = broker.subscriber(
        topics(spec.topic),
        group_id=topics(f"cm.{service}.{spec.name}"),  # environments on one cluster stay apart
        batch=True,
        max_records=settings.kafka_max_records,
        max_partition_fetch_bytes=settings.kafka_max_partition_fetch_bytes,
        batch_timeout_ms=settings.kafka_fetch_max_wait_ms,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=_raw_decoder,
        parser=_tolerant_parser,
        title=f"{service}.{spec.name}",
    )

    # Consecutive failed deliveries of this consumer's batches: the pause before the next
    # one doubles (from RETRY_BACKOFF_MS, at most 30 s) and each pause logs one line.
    failures = Backoff(initial_s=settings.retry_backoff_ms / 1000, max_s=30.0)

    @subscriber
    async def consume(body: Any, message: KafkaMessage) -> None:
        consumer: BatchConsumer = state["consumers"][spec.name]
        raw = message.raw_message
        records: tuple[ConsumerRecord[Any, Any], ...] = raw if isinstance(raw, tuple) else (raw,)
        batch = [
            RawRecord(r.topic, r.partition, r.offset, r.key, r.value, _unreadable(r))
            for r in records
        ]
        try:
            await consumer.handle_batch(batch)
        except Exception as exc:
            # Infrastructure failed (or, against every guard, something else did): the batch
            # is delivered again, after a pause that grows while the failure lasts.
            delay = failures.next_delay()
            log.warning(
                "the batch failed and will be delivered again",
                consumer=spec.name,
                infrastructure=is_infrastructure_error(exc),
                error_type=type(exc).__name__,
                at=failure_site(exc),
                failures_in_a_row=failures.failures,
                retry_in_s=delay,
            )
            await backoff(delay)
            raise
        failures.reset()


def run(definition: ServiceDefinition) -> None:
    """Entry point of `python -m services.<name>`."""
    settings = Settings()
    app = create_app(definition, settings)
    asyncio.run(
        app.run(
            log_level=logging.WARNING,
            run_extra_options={
                "host": settings.http_host,
                "port": settings.port_for(definition.name),
            },
        )
    )
