"""The app factory every service uses: broker, subscribers, relay, health and metrics.

`create_app(service)` wires a `ServiceDefinition` into an `AsgiFastStream`: on start it
configures logging, opens the pool, migrates the service schema, creates the topics,
starts the outbox relay and any background tasks, then the broker's subscribers.
`GET /healthz` (liveness) answers 200 once started and while nothing has been failing for
longer than `HEALTH_FAILING_THRESHOLD_S`; `GET /readyz` (readiness) answers 200 while
migrated, connected and consuming (services/runtime/health.py); `GET /metrics` serves
Prometheus metrics. Run it with `run(service)` (uvicorn on `HTTP_PORT`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from services.runtime.health import Health, reporting_to
from services.runtime.kafka_auth import broker_security, client_options
from services.runtime.logs import (
    RepeatedFailureLog,
    configure_logging,
    get_logger,
)
from services.runtime.metrics import ConsumerGroup, MetricsSampler
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
                            topic_configs=settings.topic_configs(),
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
        acks="all",  # as the outbox relay's producer: a record is written once replicated
        client_id=f"cm-{service}",
        log_level=logging.DEBUG,  # per-message lines only when debugging
        security=broker_security(settings),
    )
    health = Health(threshold_s=settings.health_failing_threshold_s)
    state: dict[str, Any] = {
        "runtime": None,
        "tasks": [],
        "consumers": {},
        "health": health,
        "started": False,
    }

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
        with reporting_to(health):  # the tasks started here report to this service's health
            await _start_work(pool)

    async def _start_work(pool: asyncpg.Pool) -> None:
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
        if settings.metrics_sample_interval_s > 0:
            state["tasks"].append(
                asyncio.create_task(
                    _sampler(definition, runtime).run(settings.metrics_sample_interval_s),
                    name="metrics-sampler",
                )
            )
        state["tasks"].append(
            asyncio.create_task(
                prune_forever(
                    pool,
                    timedelta(days=settings.inbox_retention_days),
                    timedelta(seconds=settings.inbox_prune_interval_s),
                    timedelta(days=settings.dlq_retention_days),
                ),
                name="inbox-retention",
            )
        )

    async def after_startup() -> None:
        state["started"] = True  # the subscribers have been started
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

    async def probe(runtime: Runtime) -> dict[str, str]:
        """Ask the database and the broker now; record the answers in `health`."""
        down: dict[str, str] = {}
        try:
            async with runtime.pool.acquire(timeout=2.0) as conn:
                await conn.fetchval("SELECT 1", timeout=2.0)
        except Exception as exc:
            down["database"] = type(exc).__name__
        try:
            if not await broker.ping(timeout=2.0):
                down["broker"] = "no answer"
        except Exception as exc:
            down["broker"] = type(exc).__name__
        for part in ("database", "broker"):
            (health.failed if part in down else health.ok)(part)
        return down

    def stopped() -> dict[str, str]:
        """Consumers that stopped and background tasks that ended with an error: never
        alive again."""
        found = {
            f"consumer:{','.join(getattr(sub, 'topic_names', ()))}": "stopped"
            for sub in broker.subscribers
            if not sub.running
        }
        for task in state["tasks"]:  # some end by design (their work done): not those
            if task.done() and not task.cancelled() and task.exception() is not None:
                found[f"task:{task.get_name()}"] = f"ended: {type(task.exception()).__name__}"
        return found

    @get
    async def healthz(scope: Any) -> AsgiResponse:
        runtime: Runtime | None = state["runtime"]
        if runtime is None or not state["started"]:
            return _json({"status": "starting"}, 503)
        await probe(runtime)
        problems: dict[str, str] = stopped()
        for part, seconds in health.failing_too_long().items():
            problems[part] = f"failing for {seconds:.0f}s"
        failing = {part: round(seconds, 1) for part, seconds in health.failing().items()}
        if problems:
            return _json({"status": "unhealthy", "problems": problems, "failing_s": failing}, 503)
        return _json({"status": "ok", "failing_s": failing}, 200)

    @get
    async def readyz(scope: Any) -> AsgiResponse:
        runtime: Runtime | None = state["runtime"]
        if runtime is None or not state["started"]:
            return _json({"status": "starting"}, 503)
        problems: dict[str, str] = {**await probe(runtime), **stopped()}
        if problems:
            return _json({"status": "not ready", "problems": problems}, 503)
        return _json({"status": "ready"}, 200)

    app = AsgiFastStream(
        broker,
        asgi_routes=[
            ("/healthz", healthz),
            ("/readyz", readyz),
            ("/metrics", make_asgi_app()),
        ],
        logger=stdlib_logger,
        on_startup=[on_startup],
        after_startup=[after_startup],
        on_shutdown=[on_shutdown],
        after_shutdown=[after_shutdown],
    )
    return Service(app=app, broker=broker, state=state)


def consumer_group(topics: TopicNames, service: str, consumer: str) -> str:
    """A consumer's group id (prefixed: environments on one cluster stay apart)."""
    return topics(f"cm.{service}.{consumer}")


def _sampler(definition: ServiceDefinition, runtime: Runtime) -> MetricsSampler:
    """The backlog and lag gauges of this service (services/runtime/metrics.py)."""
    return MetricsSampler(
        service=runtime.service,
        pool=runtime.pool,
        groups=[
            ConsumerGroup(
                consumer_group(runtime.topics, runtime.service, spec.name),
                runtime.topics(spec.topic),
            )
            for spec in definition.consumers
        ],
        bootstrap_servers=runtime.settings.kafka_bootstrap_servers,
        kafka_options=client_options(runtime.settings),
    )


def _json(body: dict[str, Any], status: int) -> AsgiResponse:
    return AsgiResponse(
        json.dumps(body).encode(),
        status_code=status,
        headers={"content-type": "application/json"},
    )


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
        group_id=consumer_group(topics, service, spec.name),
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
    # one doubles (from RETRY_BACKOFF_MS, at most 30 s); the same failure is logged once
    # per log window with its count (RepeatedFailureLog), and reported to the health.
    failures = Backoff(initial_s=settings.retry_backoff_ms / 1000, max_s=30.0)
    failure_log = RepeatedFailureLog(
        log.warning,
        "the batch failed and will be delivered again",
        first_window_s=failures.initial_s,
    )
    health: Health = state["health"]
    part = f"consumer:{spec.name}"

    @subscriber
    async def consume(body: Any, message: KafkaMessage) -> None:
        consumer: BatchConsumer = state["consumers"][spec.name]
        raw = message.raw_message
        records: tuple[ConsumerRecord[Any, Any], ...] = raw if isinstance(raw, tuple) else (raw,)
        batch = [
            RawRecord(
                r.topic,
                r.partition,
                r.offset,
                r.key,
                r.value,
                _unreadable(r),
                tuple(r.headers) if r.headers else (),
            )
            for r in records
        ]
        try:
            await consumer.handle_batch(batch)
        except Exception as exc:
            # Infrastructure failed (or, against every guard, something else did): the batch
            # is delivered again, after a pause that grows while the failure lasts.
            delay = failures.next_delay()
            health.failed(part)
            failure_log.failed(
                exc,
                consumer=spec.name,
                infrastructure=is_infrastructure_error(exc),
                retry_in_s=delay,
            )
            await backoff(delay)
            raise
        health.ok(part)
        if failures.failures:
            failure_log.recovered(log.info, "the batch went through again", consumer=spec.name)
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
