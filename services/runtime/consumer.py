"""The consumer wrapper: parse, deduplicate, handle and enqueue, one transaction per batch.

What happens to a message:
- it does not parse (bad JSON, unknown `type`, missing/unknown field, wrong type) → a
  `DeadLetter` on `cm.dlq`, plus a `CommandRejected` when it is an attributable command;
- it was handled before (its website's `message_id` is in the inbox) → no effect; the stored
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
import base64
import contextlib
import functools
import hashlib
import re
import time
import uuid
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any, Protocol, TypeVar

import asyncpg
import structlog
from prometheus_client import Counter, Histogram

from contracts.catalog import TOPICS, platform_only_types, topic_for_type
from contracts.envelope import (
    Envelope,
    FieldError,
    Message,
    ParseError,
    envelope_class,
    new_envelope,
    parse_envelope,
    payload_class,
    registered_types,
)
from contracts.results import CommandAccepted, CommandRejected, DeadLetter, ResultError
from contracts.topics import COMMAND_RESULTS, DLQ, TopicNames
from services.runtime.db import Connection
from services.runtime.logs import failure_site, get_logger
from services.runtime.metrics import BATCH_FAILURES, DEAD_LETTERS, dead_letter_code
from services.runtime.outbox import OutboxMessage, OutboxMessageTooLarge, check_sizes, enqueue
from services.runtime.records import UNREADABLE

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


#: A message as the inbox and the stored answers know it: ids are unique per website.
MessageRef = tuple[str, uuid.UUID]


def _ref(envelope: Envelope[Any]) -> MessageRef:
    return (envelope.website_key, envelope.message_id)


@dataclass(frozen=True)
class Failure:
    """Why a record is dead-lettered, and whose it is when that could be read: it did not
    parse (`of_parse`), or its handler failed on it (`of_handler`). An attributable
    command is answered with CommandRejected as well."""

    errors: Sequence[FieldError]
    message_id: uuid.UUID | None = None
    website_key: str | None = None
    type: str | None = None
    correlation_id: uuid.UUID | None = None

    @classmethod
    def of_parse(cls, error: ParseError) -> Failure:
        return cls(
            error.errors, error.message_id, error.website_key, error.type, error.correlation_id
        )

    @classmethod
    def of_handler(cls, envelope: Envelope[Any], errors: Sequence[FieldError]) -> Failure:
        return cls(
            errors, envelope.message_id, envelope.website_key, envelope.type, envelope.correlation
        )

    @property
    def attributable(self) -> bool:
        return self.message_id is not None and self.website_key is not None

    @property
    def code_label(self) -> str:
        """The `code` label of its dead letter: its first error's, from a closed set."""
        return dead_letter_code(self.errors[0].code if self.errors else None)

    def __str__(self) -> str:
        return "; ".join(f"{e.field}: {e.code}: {e.message}" for e in self.errors)


StateT = TypeVar("StateT")


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
    #: What the consumer's `BatchHooks.begin` prepared for the batch (for a replayed
    #: message, for that message alone; None without hooks). Read it typed with
    #: `batch_state`.
    batch: object = None

    @property
    def now(self) -> datetime:
        """Business time: the message's `occurred_at`, never the wall clock."""
        return self.envelope.occurred_at

    @property
    def website_key(self) -> str:
        return self.envelope.website_key

    def batch_state(self, kind: type[StateT]) -> StateT:
        """The state the consumer's `BatchHooks.begin` prepared, as the type the hooks
        return (a unit of work: rows read, writes kept until `finish`)."""
        if not isinstance(self.batch, kind):
            raise TypeError(f"this consumer's batch hooks prepare no {kind.__name__}")
        return self.batch

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

    def reject(self, errors: Sequence[FieldError]) -> None:
        """Answer the command with `CommandRejected` (a broken business rule is an answer,
        not an exception)."""
        self.result = self._result(
            CommandRejected(
                command_type=self.envelope.type,
                command_id=self.envelope.message_id,
                errors=[ResultError(field=e.field, code=e.code, message=e.message) for e in errors],
            )
        )

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


class BatchHooks(Protocol[StateT]):
    """Set-based work around a batch, so a hot path costs round trips per batch, not per
    message: `begin` reads (and locks) what the batch's messages will need, handlers work
    on that state (`HandlerContext.batch_state`), `finish` writes what they changed. Both
    run inside the batch's transaction. When a batch is replayed message by message
    (after a handler failed), each message is a batch of its own: `begin` with that one
    envelope and `finish` inside its savepoint, so handlers have one code path. `begin`
    only reads and locks (writes wait for `finish`): the replay first calls it for the
    whole batch and drops the state, to take the batch's locks in the batch's order."""

    async def begin(self, conn: Connection, envelopes: Sequence[Envelope[Any]]) -> StateT: ...

    async def finish(self, conn: Connection, state: StateT) -> None: ...


#: A catalog key template that names one aggregate of the merchant by one payload field.
_ONE_FIELD_KEY = re.compile(r"\{website_key\}:\{payload\.(?P<field>[a-z_.]+)\}")


@functools.cache
def key_field(type_name: str) -> str | None:
    """The payload field (a dotted path) that a message's Kafka key names, when its
    catalog key template is `{website_key}:{payload.<field>}`; None for other keys."""
    template = TOPICS[topic_for_type(type_name)].key_template(type_name)
    match = _ONE_FIELD_KEY.fullmatch(template)
    return match["field"] if match else None


def aggregate_keys(
    envelopes: Iterable[Envelope[Any]], fields: Collection[str]
) -> list[tuple[str, str]]:
    """The sorted (website_key, value) pairs of the messages keyed by one of `fields`
    (per the catalog: `key_field`), for `BatchHooks.begin` to read and lock at once."""
    keys = set()
    for envelope in envelopes:
        name = key_field(envelope.type)
        if name is not None and name in fields:
            keys.add((envelope.website_key, attrgetter(name)(envelope.payload)))
    return sorted(keys)


@dataclass
class ConsumerSpec:
    """One subscription of a service: a topic, its group and the handlers by `type`."""

    name: str
    topic: str
    handlers: dict[str, HandlerSpec]
    #: types that may appear on the topic but that this consumer ignores (no effect).
    ignored_types: frozenset[str] = frozenset()
    batch_hooks: BatchHooks[Any] | None = None
    #: Drops the records this consumer has nothing to do with before they are parsed
    #: (no inbox row, no effect), for a consumer that acts on few of a busy topic's
    #: records. Should it fail, every record goes the normal way.
    prefilter: RecordFilter | None = None


def consumer_specs(
    handlers: Mapping[tuple[str, str], dict[str, HandlerSpec]],
    batch_hooks: Callable[[], BatchHooks[Any]] | None = None,
) -> list[ConsumerSpec]:
    """A service's consumers from its handlers by (consumer name, topic). With
    `batch_hooks`, every consumer works on a batch at once, with hooks of its own."""
    return [
        ConsumerSpec(
            name=name,
            topic=topic,
            handlers=specs,
            batch_hooks=batch_hooks() if batch_hooks is not None else None,
        )
        for (name, topic), specs in handlers.items()
    ]


@dataclass(frozen=True)
class RawRecord:
    """The parts of a Kafka record the consumer needs."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: Why the record's bytes could not be decoded (services/runtime/records.py), if so.
    unreadable: str | None = None
    #: The record's Kafka headers (kept in a dead letter, for a replay).
    headers: tuple[tuple[str, bytes], ...] = ()

    def replay_of(self) -> uuid.UUID | None:
        """The dead letter this record replays (`cm dlq replay` sets `REPLAY_HEADER`)."""
        for name, value in self.headers:
            if name == REPLAY_HEADER:
                try:
                    return uuid.UUID(bytes(value or b"").decode("ascii", "replace"))
                except ValueError:
                    return None
        return None


#: The header `cm dlq replay` puts on a replayed record: the id of its dead letter. The
#: consumer lets such a record past the inbox only when the inbox row is the one that dead
#: letter wrote and the replay was asked for in the database (`_reopen`).
REPLAY_HEADER = "cm-replay-of"
#: Headers a dead letter does not keep: the runtime's own markers, never the sender's.
_RUNTIME_HEADERS = frozenset({REPLAY_HEADER, UNREADABLE})

#: A `dead_letters` row as `_write` inserts it (migrations/004_dead_letters.sql).
DeadLetterRow = tuple[Any, ...]


@dataclass
class BatchOutcome:
    handled: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    rejected: int = 0
    dropped: int = 0
    #: Records the consumer's prefilter left out.
    skipped: int = 0


#: (pool, records) → the records to handle, in their order (`ConsumerSpec.prefilter`).
RecordFilter = Callable[[asyncpg.Pool, Sequence["RawRecord"]], Awaitable[Sequence["RawRecord"]]]


@dataclass(frozen=True)
class ConsumerLimits:
    """The bounds a consumer works within (from `Settings`)."""

    max_message_bytes: int = 1_048_576
    dlq_max_value_bytes: int = 16_384
    handler_retry_attempts: int = 3
    handler_retry_backoff_s: float = 0.1


#: At most this many field errors go into one answer or dead letter (plus a marker).
MAX_RESULT_ERRORS = 50
#: Field paths and messages of errors are cut to these lengths (hostile keys are paths).
MAX_ERROR_FIELD_CHARS = 200
MAX_ERROR_MESSAGE_CHARS = 500
#: A dead letter's copy of the Kafka key is cut to this many characters.
MAX_DLQ_KEY_CHARS = 256


#: Lone surrogates: a JSON body may escape them (`"\\ud800"`), but no UTF-8 writer
#: (pydantic-core, Postgres) takes them back.
_SURROGATES = re.compile("[\ud800-\udfff]")


def _clean(text: str, limit: int) -> str:
    """Text that Postgres and every JSON reader and writer take: no NUL, no lone
    surrogate (both become U+FFFD), at most `limit` characters."""
    text = text[:limit]
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        text = _SURROGATES.sub("\ufffd", text)
    return text


def result_errors(errors: Sequence[FieldError]) -> list[ResultError]:
    """Field errors as they go on the wire: bounded in number and size."""
    shown = [
        ResultError.model_construct(
            field=_clean(e.field, MAX_ERROR_FIELD_CHARS),
            code=_clean(e.code, MAX_ERROR_FIELD_CHARS),
            message=_clean(e.message, MAX_ERROR_MESSAGE_CHARS),
        )
        for e in errors[:MAX_RESULT_ERRORS]
    ]
    if len(errors) > MAX_RESULT_ERRORS:
        shown.append(
            ResultError.model_construct(
                field="$",
                code="too_many_errors",
                message=f"{len(errors) - MAX_RESULT_ERRORS} more errors not shown",
            )
        )
    return shown


def _for_answer(error: ResultError) -> ResultError:
    """An error as the sender reads it. A handler's crash is described only by its code:
    an exception's text may quote the data it failed on (a name, an address), and the
    dead letter, which only the platform reads, keeps it."""
    if error.code != "handler_error":
        return error
    return ResultError.model_construct(
        field=error.field,
        code=error.code,
        message="the platform could not handle this command; an operator has it",
    )


def _key_error(key: bytes | None) -> FieldError | None:
    """A Kafka key the platform would never write: not UTF-8, or with control characters
    (keys are `{website_key}:{aggregate}` text; no key at all is fine)."""
    if key is None:
        return None
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return FieldError("$key", "invalid_key", "the Kafka key is not UTF-8")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return FieldError("$key", "invalid_key", "the Kafka key holds control characters")
    return None


def _not_allowed_here(error: ParseError) -> None:
    """A known type on a topic that does not carry it (StepDue on cm.invoice.commands,
    an agency's answer on the merchants' topic) is refused as `not_allowed_here`, not
    as an unknown type: the sender may be trying to pass for the platform."""
    if error.type is None or payload_class(error.type) is None:
        return
    for index, found in enumerate(error.errors):
        if found.field == "type" and found.code == "unknown_type":
            platform = error.type in _PLATFORM_ONLY
            error.errors[index] = FieldError(
                "type",
                "not_allowed_here",
                f"{error.type} is sent by the platform only"
                if platform
                else f"{error.type} is not accepted on this topic",
            )


#: Types only the platform sends (every topic they travel on is platform-only).
_PLATFORM_ONLY = platform_only_types()


_KNOWN_TYPES: frozenset[str] | None = None


def type_label(type_name: str | None) -> str:
    """A metrics label for a message type: a catalog type, else `unknown` (labels from
    the wire would let a hostile producer create unbounded time series)."""
    global _KNOWN_TYPES  # noqa: PLW0603 - filled once, after every contract module registered
    if _KNOWN_TYPES is None:
        _KNOWN_TYPES = frozenset(registered_types())
    return type_name if type_name in _KNOWN_TYPES else "unknown"


@dataclass(kw_only=True, eq=False)
class BatchConsumer:
    """Handles batches of records for one `ConsumerSpec` of one service.

    The fast path handles a whole batch in one transaction. When anything in it fails for
    a reason other than infrastructure, the batch is rolled back and replayed record by
    record (`_careful_one`), each record inside its own savepoint and its own guard:
    whatever its bytes, a record ends as handled, answered, or dead-lettered, and the
    records around it are not touched.
    """

    spec: ConsumerSpec
    service: str
    pool: asyncpg.Pool
    topics: TopicNames
    relay_shards: int
    on_commit: Callable[[], None] = lambda: None
    limits: ConsumerLimits = field(default_factory=ConsumerLimits)
    inbox_name: str = field(init=False)
    #: The types this consumer handles or ignores; any other is not allowed here.
    allowed: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.inbox_name = f"{self.service}.{self.spec.name}"
        self.allowed = set(self.spec.handlers) | set(self.spec.ignored_types)

    async def handle_batch(self, records: Sequence[RawRecord]) -> BatchOutcome:
        started = time.perf_counter()
        BATCH_RECORDS.labels(self.service, self.spec.name).observe(len(records))
        try:
            kept = await self._prefilter(records)
            try:
                outcome = await self._transact(kept)
            except Exception as exc:
                self._going_on(
                    exc, log.info, "batch failed on a message; replaying it message by message"
                )
                outcome = await self._transact_careful(kept)
        except Exception:
            BATCH_FAILURES.labels(self.service, self.spec.name).inc()
            raise
        outcome.skipped = len(records) - len(kept)
        BATCH_SECONDS.labels(self.service, self.spec.name).observe(time.perf_counter() - started)
        self.on_commit()
        return outcome

    async def _prefilter(self, records: Sequence[RawRecord]) -> Sequence[RawRecord]:
        prefilter = self.spec.prefilter
        if prefilter is None or not records:
            return records
        try:
            return await prefilter(self.pool, records)
        except Exception as exc:
            self._going_on(
                exc, log.error, "the prefilter failed; handling every record of the batch"
            )
            return records

    def _going_on(self, exc: Exception, log_as: Callable[..., Any], what: str) -> None:
        """Log a failure the consumer goes on after; a failure of the world around it
        (infrastructure) is raised again instead, for the batch to be redelivered."""
        if is_infrastructure_error(exc):
            raise exc
        log_as(what, consumer=self.spec.name, error_type=type(exc).__name__, at=failure_site(exc))

    def _parse(self, record: RawRecord) -> Envelope[Any]:
        """The record's envelope, or `ParseError` whatever is wrong with its bytes."""
        if record.unreadable is not None:
            raise ParseError([FieldError("$", "unreadable_record", _clean(record.unreadable, 300))])
        value = record.value or b""
        if len(value) > self.limits.max_message_bytes:
            raise ParseError(
                [
                    FieldError(
                        "$",
                        "too_large",
                        f"the body has {len(value)} bytes; at most"
                        f" {self.limits.max_message_bytes} are read",
                    )
                ]
            )
        key_error = _key_error(record.key)
        try:
            envelope = parse_envelope(value, self.allowed)
        except ParseError as error:
            _not_allowed_here(error)
            if key_error is not None:
                error.errors.insert(0, key_error)
            raise
        except RecursionError:
            raise ParseError(
                [FieldError("$", "too_deep", "the body is nested too deeply")]
            ) from None
        except Exception as exc:  # a parser failure is still this record's alone
            raise ParseError(
                [
                    FieldError(
                        "$", "unparseable", f"the body could not be read ({type(exc).__name__})"
                    )
                ]
            ) from None
        if key_error is not None:
            raise ParseError(
                [key_error],
                envelope.message_id,
                envelope.website_key,
                envelope.type,
                envelope.correlation,
            )
        return envelope

    async def _transact(self, records: Sequence[RawRecord]) -> BatchOutcome:
        """The fast path: the whole batch in one transaction, set-based where it can."""
        outcome = BatchOutcome()
        if not records:  # the prefilter left nothing
            return outcome
        outbox: list[OutboxMessage] = []
        results: list[tuple[MessageRef, OutboxMessage]] = []
        letters: list[DeadLetterRow] = []
        parsed: list[tuple[RawRecord, Envelope[Any]]] = []
        counts: list[tuple[str, str]] = []
        dead: list[str] = []
        replays: list[tuple[Envelope[Any], uuid.UUID]] = []
        for record in records:
            try:
                envelope = self._parse(record)
            except ParseError as error:
                outcome.dead_lettered += 1
                failure = Failure.of_parse(error)
                self._dead_letter(outbox, results, letters, record, failure)
                counts.append((type_label(error.type), "dead_letter"))
                dead.append(failure.code_label)
                continue
            parsed.append((record, envelope))
            if record.headers and (letter := record.replay_of()) is not None:
                replays.append((envelope, letter))

        async with self.pool.acquire() as conn, conn.transaction():
            fresh: set[MessageRef] = set()
            if replays:
                await self._reopen(conn, replays)
            if parsed:
                rows = await conn.fetch(
                    "INSERT INTO inbox (consumer, website_key, message_id)"
                    " SELECT $1, unnest($2::text[]), unnest($3::uuid[])"
                    " ON CONFLICT DO NOTHING RETURNING website_key, message_id",
                    self.inbox_name,
                    [envelope.website_key for _, envelope in parsed],
                    [envelope.message_id for _, envelope in parsed],
                )
                fresh = {(row["website_key"], row["message_id"]) for row in rows}
            hooks = self.spec.batch_hooks
            state = None
            if hooks is not None and fresh:
                state = await hooks.begin(
                    conn, [envelope for _, envelope in parsed if _ref(envelope) in fresh]
                )
            duplicates: list[MessageRef] = []
            for _, envelope in parsed:
                ref = _ref(envelope)
                if ref not in fresh:
                    duplicates.append(ref)
                    outcome.duplicates += 1
                    continue
                fresh.discard(ref)  # a repeat inside the batch is a duplicate
                kind = await self._handle_one(conn, envelope, outbox, results, state)
                self._count(outcome, kind)
                counts.append((type_label(envelope.type), kind))
            if hooks is not None and state is not None:
                await hooks.finish(conn, state)
            if duplicates:
                # A repeat of a command answered in this very batch gets that answer (it
                # is not stored yet); earlier ones get their stored answer.
                answered_now = dict(results)
                earlier = [d for d in duplicates if d not in answered_now]
                outbox.extend(answered_now[d] for d in duplicates if d in answered_now)
                if earlier:
                    outbox.extend(await self._stored_answers(conn, earlier))
            await self._write(conn, outbox, results, letters)
        for (label, kind), count in Tally(counts).items():  # one metric update per kind
            HANDLED.labels(self.service, self.spec.name, label, kind).inc(count)
        if dead:
            for code, count in Tally(dead).items():
                DEAD_LETTERS.labels(self.service, code).inc(count)
        return outcome

    async def _transact_careful(self, records: Sequence[RawRecord]) -> BatchOutcome:
        """The replay: one transaction, one savepoint and one guard per record."""
        outcome = BatchOutcome()
        async with self.pool.acquire() as conn, conn.transaction():
            await self._lock_in_batch_order(conn, records)
            for record in records:
                await self._careful_one(conn, record, outcome)
        return outcome

    async def _lock_in_batch_order(self, conn: Connection, records: Sequence[RawRecord]) -> None:
        """Take the locks of the whole batch first, as the batch would (the hooks' `begin`,
        its state dropped): the replay then takes no lock in message order that another
        batch takes in key order. Should that fail, the replay goes on without."""
        hooks = self.spec.batch_hooks
        if hooks is None:
            return
        envelopes = []
        for record in records:
            with contextlib.suppress(ParseError):
                envelopes.append(self._parse(record))
        try:
            async with conn.transaction():
                await hooks.begin(conn, envelopes)
        except Exception as exc:
            self._going_on(
                exc, log.warning, "the replay could not take its batch's locks first; going on"
            )

    async def _careful_one(
        self, conn: Connection, record: RawRecord, outcome: BatchOutcome
    ) -> None:
        try:
            envelope = self._parse(record)
        except ParseError as error:
            await self._dead_letter_now(conn, record, Failure.of_parse(error), outcome)
            return
        label = type_label(envelope.type)
        limits = self.limits
        errors: list[FieldError] = []
        for attempt in range(1, max(1, limits.handler_retry_attempts) + 1):
            outbox: list[OutboxMessage] = []
            results: list[tuple[MessageRef, OutboxMessage]] = []
            try:
                async with conn.transaction():  # a savepoint: all of this record or none
                    if record.headers and (letter := record.replay_of()) is not None:
                        await self._reopen(conn, [(envelope, letter)])
                    fresh = await conn.fetchval(
                        "INSERT INTO inbox (consumer, website_key, message_id)"
                        " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING message_id",
                        self.inbox_name,
                        envelope.website_key,
                        envelope.message_id,
                    )
                    if fresh is None:
                        kind = "duplicate"
                        outbox.extend(await self._stored_answers(conn, [_ref(envelope)]))
                    else:
                        kind = await self._handle_alone(conn, envelope, outbox, results)
                    await self._write(conn, outbox, results)
            except Exception as exc:
                if is_infrastructure_error(exc):
                    raise
                if isinstance(exc, Unprocessable):
                    errors = exc.errors
                    break
                if isinstance(exc, OutboxMessageTooLarge):
                    errors = [FieldError("$", "effect_too_large", str(exc))]
                    break
                # An unexpected error: perhaps passing (a lock, a race), perhaps a bug.
                # The message itself may hold personal data: the log names the failure
                # and where it happened; the dead letter has the rest.
                log_fields = {
                    "consumer": self.spec.name,
                    "message_type": label,
                    "error_type": type(exc).__name__,
                    "at": failure_site(exc),
                }
                if attempt < limits.handler_retry_attempts:
                    delay = limits.handler_retry_backoff_s * 2 ** (attempt - 1)
                    log.warning(
                        "handler failed; retrying the message after a pause",
                        **log_fields,
                        attempt=attempt,
                        retry_in_s=delay,
                    )
                    await backoff(delay)
                    continue
                log.error(
                    "handler failed; dead-lettering the message", **log_fields, attempts=attempt
                )
                errors = [FieldError("$", "handler_error", f"{type(exc).__name__}: {exc}")]
                break
            else:
                if kind == "duplicate":
                    outcome.duplicates += 1
                else:
                    self._count(outcome, kind)
                    HANDLED.labels(self.service, self.spec.name, label, kind).inc()
                return
        failed = Failure.of_handler(envelope, errors)
        await self._dead_letter_now(conn, record, failed, outcome, _ref(envelope))

    async def _handle_alone(
        self,
        conn: Connection,
        envelope: Envelope[Any],
        outbox: list[OutboxMessage],
        results: list[tuple[MessageRef, OutboxMessage]],
    ) -> str:
        """One replayed message as a batch of its own: the hooks prepare and write its
        state as they do a batch's."""
        hooks = self.spec.batch_hooks
        state = None if hooks is None else await hooks.begin(conn, [envelope])
        kind = await self._handle_one(conn, envelope, outbox, results, state)
        if hooks is not None:
            await hooks.finish(conn, state)
        return kind

    async def _dead_letter_now(
        self,
        conn: Connection,
        record: RawRecord,
        failure: Failure,
        outcome: BatchOutcome,
        inbox_ref: MessageRef | None = None,
    ) -> None:
        """Write one record's dead letter in its own savepoint; if even that fails, a bare
        one (no answer, no attribution); if that fails too, count it dropped and go on."""
        label = type_label(failure.type)
        code = failure.code_label
        try:
            async with conn.transaction():
                outbox: list[OutboxMessage] = []
                results: list[tuple[MessageRef, OutboxMessage]] = []
                letters: list[DeadLetterRow] = []
                self._dead_letter(outbox, results, letters, record, failure)
                if inbox_ref is not None:  # a redelivery gets the same answer, not a retry
                    # The row names this dead letter: its replay (and only its) may pass.
                    # A row a failed replay left names the new dead letter from now on.
                    await conn.execute(
                        "INSERT INTO inbox (consumer, website_key, message_id, dead_letter)"
                        " VALUES ($1, $2, $3, $4) ON CONFLICT (consumer, website_key, message_id)"
                        " DO UPDATE SET dead_letter = EXCLUDED.dead_letter"
                        " WHERE inbox.dead_letter IS NOT NULL",
                        self.inbox_name,
                        *inbox_ref,
                        letters[0][0],
                    )
                await self._write(conn, outbox, results, letters)
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise
            log.error(
                "the dead letter could not be written; writing a bare one",
                error_type=type(exc).__name__,
                at=failure_site(exc),
            )
            try:
                async with conn.transaction():
                    bare = self._bare_dead_letter(record, f"{type(exc).__name__}")
                    await enqueue(conn, [bare], self.relay_shards)
                code = "dead_letter_failed"
            except Exception as inner:
                if is_infrastructure_error(inner):
                    raise
                outcome.dropped += 1
                HANDLED.labels(self.service, self.spec.name, label, "dropped").inc()
                log.error(
                    "message dropped: not even a bare dead letter could be written",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    error_type=type(inner).__name__,
                )
                return
        outcome.dead_lettered += 1
        HANDLED.labels(self.service, self.spec.name, label, "dead_letter").inc()
        DEAD_LETTERS.labels(self.service, code).inc()

    async def _stored_answers(
        self, conn: Connection, commands: list[MessageRef]
    ) -> list[OutboxMessage]:
        """The stored answers of these commands, each of its own website only."""
        stored = await conn.fetch(
            "SELECT r.topic, r.key, r.value FROM command_results r"
            " JOIN unnest($1::text[], $2::uuid[]) AS c (website_key, command_id)"
            " USING (website_key, command_id)",
            [website_key for website_key, _ in commands],
            [command_id for _, command_id in commands],
        )
        return [OutboxMessage(r["topic"], r["key"], bytes(r["value"])) for r in stored]

    async def _reopen(
        self, conn: Connection, replays: Sequence[tuple[Envelope[Any], uuid.UUID]]
    ) -> None:
        """Let replayed records past the inbox: a message whose inbox row was written by
        the very dead letter it replays, a replay `cm dlq replay` asked for in the database
        (`replay_requested_at`), loses that row and its stored answer (the rejection the
        dead letter gave), and is handled as new. Once handled, its row no longer names a
        dead letter: a second replay is a duplicate, answered with the new answer."""
        await conn.execute(
            "WITH reopened AS ("
            " DELETE FROM inbox i USING unnest($2::text[], $3::uuid[], $4::uuid[])"
            " AS r (website_key, message_id, letter)"
            " WHERE i.consumer = $1 AND i.website_key = r.website_key"
            " AND i.message_id = r.message_id AND i.dead_letter = r.letter"
            " AND EXISTS (SELECT 1 FROM dead_letters d"
            " WHERE d.id = r.letter AND d.replay_requested_at IS NOT NULL)"
            " RETURNING i.website_key, i.message_id)"
            " DELETE FROM command_results c USING reopened r"
            " WHERE c.website_key = r.website_key AND c.command_id = r.message_id",
            self.inbox_name,
            [envelope.website_key for envelope, _ in replays],
            [envelope.message_id for envelope, _ in replays],
            [letter for _, letter in replays],
        )

    async def _write(
        self,
        conn: Connection,
        outbox: list[OutboxMessage],
        results: list[tuple[MessageRef, OutboxMessage]],
        letters: Sequence[DeadLetterRow] = (),
    ) -> None:
        """Store the answers and dead letters and enqueue everything (sizes checked
        before any write)."""
        check_sizes(outbox, self.limits.max_message_bytes)
        if letters:
            await conn.executemany(
                "INSERT INTO dead_letters (id, consumer, topic, kafka_partition, kafka_offset,"
                " key, value, value_length, value_truncated, headers, website_key, message_id,"
                " message_type, codes, error)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                letters,
            )
        if results:
            await conn.executemany(
                "INSERT INTO command_results (website_key, command_id, topic, key, value)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (website_key, command_id) DO NOTHING",
                [(ref[0], ref[1], m.topic, m.key, m.value) for ref, m in results],
            )
        await enqueue(conn, outbox, self.relay_shards)

    @staticmethod
    def _count(outcome: BatchOutcome, kind: str) -> None:
        if kind == "rejected":
            outcome.rejected += 1
        if kind != "ignored":
            outcome.handled += 1

    async def _handle_one(
        self,
        conn: Connection,
        envelope: Envelope[Any],
        outbox: list[OutboxMessage],
        results: list[tuple[MessageRef, OutboxMessage]],
        batch: object,
    ) -> str:
        """Run the message's handler and build its answer; returns what happened
        (`accepted`, `rejected`, `handled`, `ignored`). Raises what the handler raises."""
        spec = self.spec.handlers.get(envelope.type)
        if spec is None:  # an ignored type: recorded in the inbox, no effect
            return "ignored"
        structlog.contextvars.bind_contextvars(
            message_id=str(envelope.message_id),
            correlation_id=str(envelope.correlation),
            website_key=envelope.website_key,
            message_type=envelope.type,
        )
        try:
            ctx = HandlerContext(
                conn=conn,
                envelope=envelope,
                service=self.service,
                topics=self.topics,
                outbox=[],
                batch=batch,
            )
            await spec.handle(ctx, envelope.payload)
            outbox.extend(ctx.outbox)
            if not spec.answers:
                return "handled"
            if ctx.result is None:
                ctx.accept()
            assert ctx.result is not None
            result = OutboxMessage(
                self.topics(COMMAND_RESULTS), envelope.website_key, ctx.result.to_json()
            )
            outbox.append(result)
            results.append((_ref(envelope), result))
            return "rejected" if isinstance(ctx.result.payload, CommandRejected) else "accepted"
        finally:
            structlog.contextvars.unbind_contextvars(
                "message_id", "correlation_id", "website_key", "message_type"
            )

    def _raw_parts(self, record: RawRecord) -> dict[str, Any]:
        """What a dead letter says of the record's bytes: a bounded slice, length, hash."""
        value = record.value or b""
        cut = value[: self.limits.dlq_max_value_bytes]
        key = None
        if record.key is not None:
            key = _clean(record.key.decode("utf-8", "replace"), MAX_DLQ_KEY_CHARS)
        return {
            "service": self.service,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": key,
            "raw_value": _clean(cut.decode("utf-8", "replace"), len(cut)),
            "raw_length": len(value),
            "raw_sha256": hashlib.sha256(value).hexdigest(),
            "raw_truncated": len(cut) < len(value),
        }

    def _bare_dead_letter(self, record: RawRecord, why: str) -> OutboxMessage:
        parts = self._raw_parts(record)
        letter = DeadLetter.model_construct(
            **parts,
            error=f"dead_letter_failed: {why}",
            errors=[
                ResultError.model_construct(
                    field="$", code="dead_letter_failed", message=_clean(why, 200)
                )
            ],
        )
        now = datetime.now().astimezone()
        dead = new_envelope(letter, website_key="unknown", occurred_at=now)
        return OutboxMessage(self.topics(DLQ), parts["key"], dead.to_json())

    def _dead_letter(
        self,
        outbox: list[OutboxMessage],
        results: list[tuple[MessageRef, OutboxMessage]],
        letters: list[DeadLetterRow],
        record: RawRecord,
        failure: Failure,
    ) -> None:
        parts = self._raw_parts(record)
        shown = result_errors(failure.errors)
        letter = DeadLetter.model_construct(
            **parts,
            error=_clean(str(failure), MAX_ERROR_MESSAGE_CHARS * 4),
            errors=shown,
        )
        now = datetime.now().astimezone()  # transport time: the message has no readable time
        website_key = failure.website_key or "unknown"
        dead = new_envelope(letter, website_key=website_key, occurred_at=now)
        outbox.append(OutboxMessage(self.topics(DLQ), parts["key"], dead.to_json()))
        letters.append(self._letter_row(dead.message_id, record, failure, letter))
        log.warning(
            "message dead-lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            codes=sorted({e.code for e in shown})[:10],
        )
        if failure.attributable and self._is_command(failure.type):
            assert failure.message_id is not None and failure.website_key is not None
            rejected = CommandRejected.model_construct(
                command_type=_clean(failure.type or "", MAX_ERROR_FIELD_CHARS),
                command_id=failure.message_id,
                errors=[_for_answer(e) for e in shown],
            )
            answer = envelope_class(CommandRejected).model_construct(
                message_id=uuid.uuid4(),
                type=CommandRejected.TYPE,
                website_key=failure.website_key,
                occurred_at=now,
                correlation_id=failure.correlation_id or failure.message_id,
                causation_id=failure.message_id,
                payload=rejected,
            )
            message = OutboxMessage(
                self.topics(COMMAND_RESULTS), failure.website_key, answer.to_json()
            )
            outbox.append(message)
            results.append(((failure.website_key, failure.message_id), message))

    def _letter_row(
        self, letter_id: uuid.UUID, record: RawRecord, failure: Failure, letter: DeadLetter
    ) -> DeadLetterRow:
        """The `dead_letters` row of a dead letter: what a replay sends again (the key and
        headers as they came, the body's first `dlq_max_value_bytes` bytes)."""
        value = record.value or b""
        headers = [
            [_clean(name, MAX_ERROR_FIELD_CHARS), base64.b64encode(data or b"").decode()]
            for name, data in record.headers
            if name not in _RUNTIME_HEADERS
        ]
        return (
            letter_id,
            self.inbox_name,
            record.topic,
            record.partition,
            record.offset,
            record.key,
            value[: self.limits.dlq_max_value_bytes],
            len(value),
            letter.raw_truncated,
            headers,
            None if failure.website_key is None else _clean(failure.website_key, 200),
            failure.message_id,
            None if failure.type is None else _clean(failure.type, MAX_ERROR_FIELD_CHARS),
            sorted({e.code for e in letter.errors}),
            letter.error,
        )

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
