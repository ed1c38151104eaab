"""The consumer wrapper: parse, deduplicate, handle and enqueue, one transaction per batch.

What happens to a message:
- it does not parse (bad JSON, unknown `type`, missing/unknown field, wrong type) → a
  `DeadLetter` on `cm.dlq`, plus a `CommandRejected` when it is an attributable command;
- it was handled before (its `message_id` is in the inbox) → no effect; the stored
  result of a command is published again;
- its handler reports a broken business rule → `CommandRejected` with field errors;
- its handler raises an unexpected (non-infrastructure) error → the batch is rolled back
  and replayed with a savepoint per message, so only that message is dead-lettered;
- the database or broker fails → the exception propagates, the batch is not committed,
  and faststream (`NACK_ON_ERROR`) seeks back so the whole batch is delivered again.

Everything a batch produces (effects, inbox rows, results, dead letters, outgoing
messages) commits in one transaction; the offsets are committed only afterwards.
"""

from __future__ import annotations

import asyncio
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import asyncpg
import structlog
from prometheus_client import Counter, Histogram

from contracts.envelope import (
    Envelope,
    FieldError,
    Message,
    ParseError,
    new_envelope,
    parse_envelope,
)
from contracts.results import CommandAccepted, CommandRejected, DeadLetter, ResultError
from contracts.topics import COMMAND_RESULTS, DLQ, TopicNames
from services.runtime.db import Connection
from services.runtime.logs import get_logger
from services.runtime.outbox import OutboxMessage, enqueue

log = get_logger(__name__)

HANDLED = Counter(
    "cm_messages_handled_total",
    "Messages handled, by outcome",
    ["service", "consumer", "type", "outcome"],
)
BATCH_RECORDS = Histogram(
    "cm_consumer_batch_records",
    "Records per consumed batch",
    ["service", "consumer"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)
BATCH_SECONDS = Histogram(
    "cm_consumer_batch_seconds", "Time to handle and commit one batch", ["service", "consumer"]
)


class InfrastructureError(Exception):
    """Raise from a handler when a dependency failed and the message must be redelivered."""


_INFRA_ERRORS: tuple[type[BaseException], ...] = (
    InfrastructureError,
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.QueryCanceledError,
)


def failure_site(exc: BaseException) -> str:
    """`file:line in function` of the innermost frame of the project's own code."""
    site = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        if "/services/" in frame.filename or "/contracts/" in frame.filename:
            site = f"{frame.filename.rsplit('/', 2)[-2]}/{frame.filename.rsplit('/', 1)[-1]}"
            site += f":{frame.lineno} in {frame.name}"
    return site


def is_infrastructure_error(exc: BaseException) -> bool:
    """Failures of the world around the handler, not of the message: redeliver."""
    if isinstance(exc, _INFRA_ERRORS):
        return True
    module = type(exc).__module__
    return module.startswith(("aiokafka", "kafka"))


class Unprocessable(Exception):
    """Raise from a handler of an event (no answer owed) that breaks a business rule:
    the message is dead-lettered with these errors and nothing of it is applied."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.code}" for e in errors))
        self.errors = list(errors)


@dataclass
class Rejection:
    """A broken business rule, as a value."""

    errors: list[FieldError]


@dataclass
class HandlerContext:
    """What a handler gets: its connection (inside the batch transaction), the message,
    and ways to emit messages and answer the command."""

    conn: Connection
    envelope: Envelope[Any]
    service: str
    topics: TopicNames
    outbox: list[OutboxMessage]
    result: Envelope[Any] | None = None
    keys: dict[str, str] = field(default_factory=dict)
    #: What the consumer's `BatchHooks.begin` prepared for the batch (None when replaying
    #: message by message): prefetched rows, writes to make once at the end.
    batch: Any = None

    @property
    def now(self) -> datetime:
        """Business time: the message's `occurred_at`, never the wall clock."""
        return self.envelope.occurred_at

    @property
    def website_key(self) -> str:
        return self.envelope.website_key

    def emit(
        self,
        topic: str,
        key: str | None,
        payload: Message,
        *,
        website_key: str | None = None,
        occurred_at: datetime | None = None,
        message_id: uuid.UUID | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Envelope[Any]:
        """Queue a message caused by the current one; published after commit."""
        envelope = new_envelope(
            payload,
            website_key=website_key or self.envelope.website_key,
            occurred_at=occurred_at or self.envelope.occurred_at,
            caused_by=self.envelope,
            message_id=message_id,
        )
        self.outbox.append(
            OutboxMessage(
                topic=self.topics(topic),
                key=key,
                value=envelope.to_json(),
                headers=(("content-type", "application/json"), *headers),
            )
        )
        return envelope

    def emit_raw(
        self, topic: str, key: str | None, value: bytes, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Queue a non-enveloped body (the merchant push)."""
        self.outbox.append(
            OutboxMessage(topic=self.topics(topic), key=key, value=value, headers=tuple(headers))
        )

    def accept(self, **keys: str) -> None:
        """Answer the command with `CommandAccepted` naming the keys it touched."""
        self.keys.update(keys)
        self.result = self._result(
            CommandAccepted(
                command_type=self.envelope.type, command_id=self.envelope.message_id, keys=self.keys
            )
        )

    def reject(self, errors: Sequence[FieldError]) -> Rejection:
        """Answer the command with `CommandRejected`; returns the rejection as a value."""
        self.result = self._result(
            CommandRejected(
                command_type=self.envelope.type,
                command_id=self.envelope.message_id,
                errors=[ResultError(field=e.field, code=e.code, message=e.message) for e in errors],
            )
        )
        return Rejection(list(errors))

    def _result(self, payload: Message) -> Envelope[Any]:
        return new_envelope(
            payload,
            website_key=self.envelope.website_key,
            occurred_at=self.envelope.occurred_at,
            caused_by=self.envelope,
        )


Handler = Callable[[HandlerContext, Any], Awaitable[Any]]


@dataclass(frozen=True)
class HandlerSpec:
    """A handler and whether its message is an external command that gets a result."""

    handle: Handler
    answers: bool = True


class BatchHooks(Protocol):
    """Set-based work around a batch, so a hot path costs round trips per batch, not per
    message: `begin` reads (and locks) what the batch's messages will need, handlers work
    on that state, `finish` writes what they changed. Both run inside the batch's
    transaction. When a batch is replayed message by message (after a handler failed),
    the hooks are not used and handlers fall back to per-message queries."""

    async def begin(self, conn: Connection, envelopes: Sequence[Envelope[Any]]) -> Any: ...

    async def finish(self, conn: Connection, state: Any) -> None: ...


@dataclass
class ConsumerSpec:
    """One subscription of a service: a topic, its group and the handlers by `type`."""

    name: str
    topic: str
    handlers: dict[str, HandlerSpec]
    #: types that may appear on the topic but that this consumer ignores (no effect).
    ignored_types: frozenset[str] = frozenset()
    batch_hooks: BatchHooks | None = None


@dataclass(frozen=True)
class RawRecord:
    """The parts of a Kafka record the consumer needs."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class BatchOutcome:
    handled: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    rejected: int = 0


class BatchConsumer:
    """Handles batches of records for one `ConsumerSpec` of one service."""

    def __init__(
        self,
        *,
        spec: ConsumerSpec,
        service: str,
        pool: asyncpg.Pool,
        topics: TopicNames,
        relay_shards: int,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.spec = spec
        self.service = service
        self.pool = pool
        self.topics = topics
        self.relay_shards = relay_shards
        self.on_commit = on_commit
        self.inbox_name = f"{service}.{spec.name}"
        self.allowed = set(spec.handlers) | set(spec.ignored_types)

    async def handle_batch(self, records: Sequence[RawRecord]) -> BatchOutcome:
        started = time.perf_counter()
        BATCH_RECORDS.labels(self.service, self.spec.name).observe(len(records))
        try:
            outcome = await self._transact(records, careful=False)
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise
            log.info(
                "batch failed on a message; replaying it message by message",
                consumer=self.spec.name,
                error_type=type(exc).__name__,
            )
            outcome = await self._transact(records, careful=True)
        BATCH_SECONDS.labels(self.service, self.spec.name).observe(time.perf_counter() - started)
        self.on_commit()
        return outcome

    async def _transact(self, records: Sequence[RawRecord], *, careful: bool) -> BatchOutcome:
        outcome = BatchOutcome()
        outbox: list[OutboxMessage] = []
        results: list[tuple[uuid.UUID, OutboxMessage]] = []
        parsed: list[tuple[RawRecord, Envelope[Any]]] = []
        for record in records:
            try:
                parsed.append((record, parse_envelope(record.value or b"", self.allowed)))
            except ParseError as error:
                outcome.dead_lettered += 1
                self._dead_letter(outbox, results, record, error, error.errors)
                HANDLED.labels(self.service, self.spec.name, error.type or "?", "dead_letter").inc()

        async with self.pool.acquire() as conn, conn.transaction():
            ids = [envelope.message_id for _, envelope in parsed]
            fresh: set[uuid.UUID] = set()
            if ids:
                rows = await conn.fetch(
                    "INSERT INTO inbox (consumer, message_id) SELECT $1, unnest($2::uuid[])"
                    " ON CONFLICT DO NOTHING RETURNING message_id",
                    self.inbox_name,
                    ids,
                )
                fresh = {row["message_id"] for row in rows}
            hooks = None if careful else self.spec.batch_hooks
            state = None
            if hooks is not None and fresh:
                state = await hooks.begin(
                    conn, [envelope for _, envelope in parsed if envelope.message_id in fresh]
                )
            duplicates: list[uuid.UUID] = []
            for record, envelope in parsed:
                if envelope.message_id not in fresh:
                    duplicates.append(envelope.message_id)
                    outcome.duplicates += 1
                    continue
                fresh.discard(envelope.message_id)  # a repeat inside the batch is a duplicate
                await self._handle_one(
                    conn, record, envelope, outbox, results, outcome, careful, state
                )
            if hooks is not None and state is not None:
                await hooks.finish(conn, state)
            if duplicates:
                stored = await conn.fetch(
                    "SELECT topic, key, value FROM command_results"
                    " WHERE command_id = ANY($1::uuid[])",
                    duplicates,
                )
                outbox.extend(
                    OutboxMessage(r["topic"], r["key"], bytes(r["value"])) for r in stored
                )
            if results:
                await conn.executemany(
                    "INSERT INTO command_results (command_id, topic, key, value)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT (command_id) DO NOTHING",
                    [(cid, m.topic, m.key, m.value) for cid, m in results],
                )
            await enqueue(conn, outbox, self.relay_shards)
        return outcome

    async def _handle_one(
        self,
        conn: Connection,
        record: RawRecord,
        envelope: Envelope[Any],
        outbox: list[OutboxMessage],
        results: list[tuple[uuid.UUID, OutboxMessage]],
        outcome: BatchOutcome,
        careful: bool,
        batch: Any = None,
    ) -> None:
        spec = self.spec.handlers.get(envelope.type)
        structlog.contextvars.bind_contextvars(
            message_id=str(envelope.message_id),
            correlation_id=str(envelope.correlation),
            website_key=envelope.website_key,
            message_type=envelope.type,
        )
        try:
            if spec is None:  # an ignored type: recorded in the inbox, no effect
                HANDLED.labels(self.service, self.spec.name, envelope.type, "ignored").inc()
                return
            ctx = HandlerContext(
                conn=conn,
                envelope=envelope,
                service=self.service,
                topics=self.topics,
                outbox=[],
                batch=batch,
            )
            if careful:
                try:
                    async with conn.transaction():  # a savepoint
                        await spec.handle(ctx, envelope.payload)
                except Exception as exc:
                    if is_infrastructure_error(exc):
                        raise
                    outcome.dead_lettered += 1
                    if isinstance(exc, Unprocessable):
                        errors = exc.errors
                    else:
                        # The message itself may hold personal data: the log names the
                        # failure and where it happened; the dead letter has the rest.
                        log.error(
                            "handler failed; dead-lettering the message",
                            error_type=type(exc).__name__,
                            at=failure_site(exc),
                        )
                        errors = [FieldError("$", "handler_error", f"{type(exc).__name__}: {exc}")]
                    error = ParseError(
                        errors,
                        envelope.message_id,
                        envelope.website_key,
                        envelope.type,
                        envelope.correlation,
                    )
                    self._dead_letter(outbox, results, record, error, errors)
                    HANDLED.labels(self.service, self.spec.name, envelope.type, "dead_letter").inc()
                    return
            else:
                await spec.handle(ctx, envelope.payload)
            outbox.extend(ctx.outbox)
            if spec.answers:
                if ctx.result is None:
                    ctx.accept()
                assert ctx.result is not None
                result = OutboxMessage(
                    self.topics(COMMAND_RESULTS), envelope.website_key, ctx.result.to_json()
                )
                outbox.append(result)
                results.append((envelope.message_id, result))
                rejected = isinstance(ctx.result.payload, CommandRejected)
                outcome.rejected += rejected
                kind = "rejected" if rejected else "accepted"
            else:
                kind = "handled"
            outcome.handled += 1
            HANDLED.labels(self.service, self.spec.name, envelope.type, kind).inc()
        finally:
            structlog.contextvars.unbind_contextvars(
                "message_id", "correlation_id", "website_key", "message_type"
            )

    def _dead_letter(
        self,
        outbox: list[OutboxMessage],
        results: list[tuple[uuid.UUID, OutboxMessage]],
        record: RawRecord,
        error: ParseError,
        errors: Sequence[FieldError],
    ) -> None:
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        result_errors = [ResultError(field=e.field, code=e.code, message=e.message) for e in errors]
        letter = DeadLetter(
            service=self.service,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=key,
            raw_value=(record.value or b"").decode("utf-8", "replace"),
            error=str(error),
            errors=result_errors,
        )
        now = datetime.now().astimezone()  # transport time: the message has no readable time
        website_key = error.website_key or "unknown"
        dead = new_envelope(letter, website_key=website_key, occurred_at=now)
        outbox.append(OutboxMessage(self.topics(DLQ), key, dead.to_json()))
        log.warning(
            "message dead-lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            error=str(error)[:500],
        )
        if error.attributable and self._is_command(error.type):
            assert error.message_id is not None and error.website_key is not None
            rejected = CommandRejected(
                command_type=error.type, command_id=error.message_id, errors=result_errors
            )
            answer = Envelope[CommandRejected](
                message_id=uuid.uuid4(),
                type=CommandRejected.TYPE,
                website_key=error.website_key,
                occurred_at=now,
                correlation_id=error.correlation_id or error.message_id,
                causation_id=error.message_id,
                payload=rejected,
            )
            message = OutboxMessage(
                self.topics(COMMAND_RESULTS), error.website_key, answer.to_json()
            )
            outbox.append(message)
            results.append((error.message_id, message))

    def _is_command(self, type_name: str | None) -> bool:
        """An unknown type on a command topic is still answered; internal ones are not."""
        if type_name is None:
            return False
        spec = self.spec.handlers.get(type_name)
        if spec is not None:
            return spec.answers
        return (
            any(h.answers for h in self.spec.handlers.values())
            and type_name not in self.spec.ignored_types
        )


async def backoff(seconds: float) -> None:
    """Pause before redelivery after an infrastructure failure (not a wait for a message)."""
    await asyncio.sleep(seconds)
