"""Each merchant's own Kafka topics: `cm.push.{website_key}.{feed}` (issue 11).

The shared topics a merchant's records land on (`cm.push.invoice`, `cm.command.results`,
`cm.subscription.events`, `cm.collection.events`) are platform-only. A merchant that sends
`EnableKafkaPush` gets one topic per feed of `contracts.topics.MERCHANT_FEEDS`, created
here with the Kafka admin API, and from then on the notifier copies that merchant's
records there:

- invoice pushes: where the push is written (handlers.invoice_event), the same bytes,
  key and headers go to `cm.push.{website_key}.invoice` too;
- command results, subscription events and case events: one consumer per shared topic
  (`definition()` in app.py, from `feed_consumers`) copies each record of an enabled
  merchant, as it is (same envelope, `message_id` and key), to the merchant's topic;
  not the answers to commands only the platform sends (the scheduler's to timers).

Everything goes through the transactional outbox of the consuming batch, so a copy is
written exactly when the record is handled. Merchants that did not enable it cost one
indexed lookup per batch (`FeedBatchHooks`), nothing per record.

A website key with a `.` is refused: a merchant's principal may read the prefix
`cm.push.{website_key}.`, which for merchant `a` would cover the topics of `a.b`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from contracts.catalog import key_for, platform_only_types
from contracts.envelope import WEBSITE_KEY_RE, Envelope, FieldError
from contracts.notifier import DisableKafkaPush, EnableKafkaPush
from contracts.topics import MERCHANT_FEEDS, PUSH_INVOICE, TopicNames, merchant_topic
from services.runtime.consumer import (
    ConsumerSpec,
    HandlerContext,
    HandlerSpec,
    InfrastructureError,
    RawRecord,
)
from services.runtime.db import Connection
from services.runtime.kafka_auth import client_options
from services.runtime.logs import get_logger
from services.runtime.settings import Settings

log = get_logger(__name__)

#: Kafka refuses topic names longer than this.
MAX_TOPIC_NAME = 249
#: How long one admin request (list, create, describe, add partitions) may take.
ADMIN_TIMEOUT_MS = 10_000
#: The commands whose answers reach the merchant's `results` topic even while copying is
#: off (the answer to DisableKafkaPush is the last record copied).
KAFKA_PUSH_COMMANDS = frozenset({EnableKafkaPush.TYPE, DisableKafkaPush.TYPE})
#: Commands only the platform sends (every topic they travel on is platform-only).
_PLATFORM_COMMANDS = platform_only_types()
_JSON = (("content-type", "application/json"),)


def feed_topics(website_key: str, names: TopicNames) -> dict[str, str]:
    """The merchant's topics as deployed (with CM_TOPIC_PREFIX), by feed."""
    return {feed: names(merchant_topic(website_key, feed)) for feed in MERCHANT_FEEDS}


def topic_safety_errors(website_key: str, names: TopicNames) -> list[FieldError]:
    """Why a website key cannot have topics of its own (empty when it can).

    The envelope already limits a key to `[A-Za-z0-9_.-]{1,64}`, the characters of a
    Kafka topic name; only the `.` is left to refuse (and Kafka treats `.` and `_` alike
    in topic names, so without it no two merchants' topics collide).
    """
    if "." in website_key:
        return [
            FieldError(
                "website_key",
                "website_key_not_topic_safe",
                "a website key with '.' cannot have topics of its own: the prefix"
                " cm.push.{website_key}. would cover another merchant's topics",
            )
        ]
    longest = max(len(name) for name in feed_topics(website_key, names).values())
    if longest > MAX_TOPIC_NAME:
        return [
            FieldError(
                "website_key",
                "topic_name_too_long",
                f"the merchant's topic names would have {longest} characters; Kafka takes"
                f" at most {MAX_TOPIC_NAME}",
            )
        ]
    return []


# --- who has it enabled ---------------------------------------------------------------------


async def merchant_states(conn: Connection, website_keys: Iterable[str]) -> dict[str, bool]:
    """Merchants among `website_keys` that have topics of their own → copying on or off."""
    keys = sorted(set(website_keys))
    if not keys:
        return {}
    rows = await conn.fetch(
        "SELECT website_key, enabled FROM kafka_push_merchants WHERE website_key = ANY($1::text[])",
        keys,
    )
    return {row["website_key"]: row["enabled"] for row in rows}


async def enabled_merchants(conn: Connection, website_keys: Iterable[str]) -> set[str]:
    """The merchants among `website_keys` whose records are copied now."""
    return {key for key, on in (await merchant_states(conn, website_keys)).items() if on}


async def _record_enabled(
    conn: Connection, website_key: str, partitions: int, now: datetime
) -> None:
    await conn.execute(
        "INSERT INTO kafka_push_merchants"
        " (website_key, enabled, partitions, enabled_at, updated_at)"
        " VALUES ($1, true, $2, $3, $3)"
        " ON CONFLICT (website_key) DO UPDATE SET enabled = true,"
        " partitions = EXCLUDED.partitions,"
        " enabled_at = CASE WHEN kafka_push_merchants.enabled"
        " THEN kafka_push_merchants.enabled_at ELSE EXCLUDED.enabled_at END,"
        " updated_at = EXCLUDED.updated_at",
        website_key,
        partitions,
        now,
    )


async def _record_disabled(conn: Connection, website_key: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE kafka_push_merchants SET enabled = false, updated_at = $2 WHERE website_key = $1",
        website_key,
        now,
    )


# --- the merchant's topics on the broker ----------------------------------------------------


@dataclass
class TopicsOutcome:
    """What ensuring the topics came to: their partitions, or why the broker refused."""

    partitions: int = 0
    errors: list[FieldError] = field(default_factory=list)


def _refused(field_name: str, code: str, error: BaseException | type[BaseException]) -> FieldError:
    name = error.__name__ if isinstance(error, type) else type(error).__name__
    return FieldError(field_name, code, f"the Kafka broker refused: {name}")


def _check_code(code: int) -> type[KafkaError] | None:
    """None for success; the error class of a refusal for good; raises for a passing one
    (the command is delivered again)."""
    if code == 0:
        return None
    error: type[KafkaError] = for_code(code)
    if error.retriable:
        raise InfrastructureError(f"the Kafka broker answered {error.__name__}")
    return error


class MerchantTopics:
    """Creates (and grows) a merchant's topics with the Kafka admin API, one short-lived
    admin client per command (EnableKafkaPush is rare). A broker that cannot be reached
    or answers with a passing error raises `InfrastructureError` (the command comes
    again); a refusal for good (invalid partitions, a policy, no authorisation, a broker
    that cannot add partitions) is returned as field errors: the command is answered,
    and the notifier's other commands go on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def ensure(self, names: Sequence[str], requested: int | None) -> TopicsOutcome:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            request_timeout_ms=ADMIN_TIMEOUT_MS,
            client_id="cm-notifier-feeds",
            **client_options(self.settings),  # the notifier's own user (ACL: cm.push.*)
        )
        try:
            await admin.start()
            return await self._ensure(admin, names, requested)
        except KafkaError as error:
            if error.retriable or not _is_refusal(error):
                raise InfrastructureError(f"Kafka admin: {type(error).__name__}") from error
            return TopicsOutcome(errors=[_refused("$", "topics_not_created", error)])
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    async def _ensure(
        self, admin: AIOKafkaAdminClient, names: Sequence[str], requested: int | None
    ) -> TopicsOutcome:
        # The list first: on some brokers (Tansu) describing a topic creates it.
        existing = set(await admin.list_topics())
        present = [name for name in names if name in existing]
        counts: dict[str, int] = {}
        if present:
            for topic in await admin.describe_topics(present):
                refusal = _check_code(topic["error_code"])
                if refusal is not None:
                    return TopicsOutcome(errors=[_refused("$", "topics_not_created", refusal)])
                counts[topic["topic"]] = len(topic["partitions"])
        if requested is not None:
            largest = max(counts.values(), default=0)
            if largest > requested:
                return TopicsOutcome(
                    errors=[
                        FieldError(
                            "payload.partitions",
                            "partitions_cannot_shrink",
                            f"the merchant's topics have up to {largest} partitions;"
                            " Kafka cannot remove partitions",
                        )
                    ]
                )
        partitions = requested or self.settings.kafka_topic_partitions
        missing = [name for name in names if name not in existing]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name,
                        partitions,
                        self.settings.kafka_replication_factor,
                        topic_configs=self.settings.topic_configs(),
                    )
                    for name in missing
                ],
                timeout_ms=ADMIN_TIMEOUT_MS,
            )
            for created in response.topic_errors:
                code = created[1]
                if code == TopicAlreadyExistsError.errno:  # a replica of ours, or a race
                    continue
                refusal = _check_code(code)
                if refusal is not None:
                    return TopicsOutcome(errors=[_refused("$", "topics_not_created", refusal)])
        smaller = {name: n for name, n in counts.items() if requested and n < requested}
        if smaller and requested is not None:
            try:
                await admin.create_partitions(
                    {name: NewPartitions(requested) for name in smaller},
                    timeout_ms=ADMIN_TIMEOUT_MS,
                )
            except KafkaError as error:
                if error.retriable or not _is_refusal(error):
                    raise
                return TopicsOutcome(
                    errors=[_refused("payload.partitions", "partitions_not_changed", error)]
                )
        if requested is None and counts:
            partitions = min(counts.values())
        return TopicsOutcome(partitions=partitions)


def _is_refusal(error: KafkaError) -> bool:
    """A broker's answer that will be the same next time (not a lost connection)."""
    return not error.retriable and type(error).__name__ not in (
        "KafkaConnectionError",
        "KafkaTimeoutError",
        "NodeNotReadyError",
        "RequestTimedOutError",
    )


# --- the handlers ---------------------------------------------------------------------------


class MerchantFeeds:
    """The EnableKafkaPush and DisableKafkaPush handlers and the copying consumers.

    The settings (bootstrap servers, default partitions) come from the running service
    through the `configure` background task; until then an EnableKafkaPush is delivered
    again (`InfrastructureError`)."""

    def __init__(self, topics: MerchantTopics | None = None) -> None:
        self.topics = topics

    async def configure(self, runtime: Any) -> None:
        """A background task: take the service's settings (then end)."""
        if self.topics is None:
            self.topics = MerchantTopics(runtime.settings)

    def require(self) -> MerchantTopics:
        if self.topics is None:
            raise InfrastructureError("the notifier has not started yet")
        return self.topics

    async def enable_kafka_push(self, ctx: HandlerContext, cmd: EnableKafkaPush) -> None:
        """Create the merchant's topics and copy its records there from now on."""
        website_key = ctx.website_key
        errors = topic_safety_errors(website_key, ctx.topics)
        if errors:
            ctx.reject(errors)
            return
        names = feed_topics(website_key, ctx.topics)
        outcome = await self.require().ensure(list(names.values()), cmd.partitions)
        if outcome.errors:
            log.warning(
                "the merchant's topics could not be set up",
                codes=sorted({e.code for e in outcome.errors}),
            )
            ctx.reject(outcome.errors)
            return
        await _record_enabled(ctx.conn, website_key, outcome.partitions, ctx.now)
        ctx.accept(
            kafka_push=f"{website_key}:kafka-push",
            **{f"{feed}_topic": name for feed, name in names.items()},
        )

    async def disable_kafka_push(self, ctx: HandlerContext, cmd: DisableKafkaPush) -> None:
        """Stop copying; the topics stay (a merchant that never enabled it: a no-op)."""
        await _record_disabled(ctx.conn, ctx.website_key, ctx.now)
        ctx.accept(kafka_push=f"{ctx.website_key}:kafka-push")


# --- copying the shared topics --------------------------------------------------------------


@dataclass
class FeedBatch:
    """The batch's merchants that have topics of their own → copying on or off."""

    merchants: dict[str, bool] = field(default_factory=dict)


class FeedBatchHooks:
    """One lookup per batch of a shared topic: which of its merchants copy."""

    async def begin(self, conn: Connection, envelopes: Sequence[Envelope[Any]]) -> FeedBatch:
        return FeedBatch(await merchant_states(conn, (e.website_key for e in envelopes)))

    async def finish(self, conn: Connection, state: FeedBatch) -> None:
        return None


def _answers_the_platform(envelope: Envelope[Any]) -> bool:
    """An answer to a command only the platform sends (the scheduler's to a timer the
    invoice service set for the merchant's invoice): the platform's, not the merchant's.
    A platform-only type that the merchant sent on its own topic was refused as
    `not_allowed_here`: that answer is the merchant's."""
    payload = envelope.payload
    if getattr(payload, "command_type", None) not in _PLATFORM_COMMANDS:
        return False
    return not any(error.code == "not_allowed_here" for error in getattr(payload, "errors", ()))


def _copies(envelope: Envelope[Any], enabled: bool | None) -> bool:
    """Whether a record goes to its merchant's topic: copying is on, or it answers the
    merchant's EnableKafkaPush or DisableKafkaPush (its topics exist: `enabled` is
    False, not None); never an answer to the platform's own commands."""
    if enabled is None or _answers_the_platform(envelope):
        return False
    return enabled or getattr(envelope.payload, "command_type", None) in KAFKA_PUSH_COMMANDS


def copier(feed: str) -> Callable[[HandlerContext, Any], Awaitable[None]]:
    """The handler that copies a record of a shared topic to its merchant's `feed`."""

    async def copy(ctx: HandlerContext, message: Any) -> None:
        website_key = ctx.website_key
        enabled = ctx.batch_state(FeedBatch).merchants.get(website_key)
        if not _copies(ctx.envelope, enabled):
            return
        ctx.emit_raw(
            merchant_topic(website_key, feed),
            key_for(ctx.envelope),
            ctx.envelope.to_json(),
            headers=_JSON,
        )

    copy.__name__ = f"copy_to_{feed}_feed"
    return copy


def website_of(key: bytes | None) -> str | None:
    """The website a shared topic's Kafka key names (`{website_key}` or
    `{website_key}:…`), or None when the key does not name one."""
    if key is None:
        return None
    text = key.decode("utf-8", "replace").split(":", 1)[0]
    return text if WEBSITE_KEY_RE.fullmatch(text) else None


async def merchants_with_feeds(pool: Any, records: Sequence[RawRecord]) -> Sequence[RawRecord]:
    """The records that may concern a merchant with topics of its own, found by their
    keys in one query, before any is parsed: the rest cost no parse and no inbox row.
    A record whose key names no website goes the normal way."""
    sites = {website_of(record.key) for record in records}
    sites.discard(None)
    async with pool.acquire() as conn:
        known = await merchant_states(conn, (site for site in sites if site is not None))
    return [r for r in records if (site := website_of(r.key)) is None or site in known]


def feed_consumers(types_for_topic: Callable[[str], set[str]]) -> list[ConsumerSpec]:
    """One consumer per shared topic the notifier does not write itself."""
    specs = []
    for feed, source in MERCHANT_FEEDS.items():
        if source == PUSH_INVOICE:  # written by invoice_event, copied there
            continue
        handle = copier(feed)
        specs.append(
            ConsumerSpec(
                name=f"{feed}-feed",
                topic=source,
                handlers={
                    name: HandlerSpec(handle, answers=False)
                    for name in sorted(types_for_topic(source))
                },
                batch_hooks=FeedBatchHooks(),
                prefilter=merchants_with_feeds,
            )
        )
    return specs
