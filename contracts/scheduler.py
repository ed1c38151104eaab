"""Messages of the scheduler: durable timers (`cm.scheduler.commands`,
`cm.scheduler.events`).

The scheduler knows nothing about dunning: a timer is "at `due_at`, publish `message` to
`topic` with Kafka key `key`". When it fires, the message is published as given except
that its `occurred_at` becomes the timer's `due_at` (business time is when the step was
due). Its `message_id` is kept, so a timer that fires twice is deduplicated by the
consumer's inbox.

Kafka key: `timer_id` (commands); TimersFired `website_key`; Tick and TickCompleted use
the key `clock`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import AwareDatetime, Field, field_validator
from pydantic_core import PydanticCustomError

from contracts.envelope import Command, Event, register
from contracts.fields import BusinessDateTime, OneLine, SnapshotPart, unstorable_strings
from contracts.limits import MAX_TOPIC_LENGTH
from contracts.topics import ALL_TOPICS, PUSH_INVOICE

#: The Kafka key of Tick and TickCompleted.
CLOCK_KEY = "clock"

#: The keys a timer's `message` must have to be an envelope (`occurred_at` is set when
#: the timer fires; `correlation_id` and `causation_id` are optional).
_ENVELOPE_KEYS = ("message_id", "type", "website_key", "payload")

#: A timer's id, chosen by the caller so that scheduling again replaces the timer.
TimerId = Annotated[OneLine, Field(min_length=1, max_length=255)]


class ScheduleTimer(Command):
    """Publish `message` to `topic` at `due_at`; scheduling the same `timer_id` again
    replaces the timer.

    A timer due at or before the clock's now fires at once. A service builds one for its
    envelope with `contracts.catalog.timer_for` (topic and key from the catalog).
    """

    timer_id: TimerId = Field(
        description="The caller's stable id, e.g. `invoice:shop-1:INV-1:step:2`."
    )
    due_at: BusinessDateTime = Field(description="When the timer fires (business time).")
    topic: str = Field(
        max_length=MAX_TOPIC_LENGTH,
        description="Base topic name (without CM_TOPIC_PREFIX; the scheduler adds its own), "
        "e.g. `cm.invoice.commands`.",
    )
    key: OneLine = Field(min_length=1, max_length=500, description="The Kafka key to publish with.")
    message: dict[str, Any] = Field(
        description="A full envelope (JSON object) to publish; its `occurred_at` is "
        "replaced by `due_at` when the timer fires."
    )

    @field_validator("topic")
    @classmethod
    def _known_topic(cls, topic: str) -> str:
        if topic not in ALL_TOPICS or topic == PUSH_INVOICE:
            raise PydanticCustomError(
                "unknown_topic",
                "unknown topic '{topic}': give the base name (without CM_TOPIC_PREFIX) "
                "of an enveloped topic from contracts.topics",
                {"topic": topic},
            )
        return topic

    @field_validator("message")
    @classmethod
    def _looks_like_an_envelope(cls, message: dict[str, Any]) -> dict[str, Any]:
        missing = [key for key in _ENVELOPE_KEYS if key not in message]
        if missing:
            raise ValueError(f"the message is not an envelope: missing {', '.join(missing)}")
        unstorable = unstorable_strings(message)  # the timer stores it as it is (jsonb)
        if unstorable:
            path, error = unstorable[0]
            raise PydanticCustomError(
                error.type, "{path}: {reason}", {"path": path, "reason": error.message()}
            )
        return message


class CancelTimer(Command):
    """Forget a timer; cancelling an unknown or fired timer changes nothing."""

    timer_id: TimerId = Field(description="The timer to cancel.")


class Tick(Command):
    """Move the manual clock forward to `as_of` and fire every timer due by then.

    Only honoured with `CM_CLOCK=manual`. The clock starts at 1970-01-01T00:00:00+00:00
    and never moves back: a Tick to an earlier time changes nothing (but still answers
    with TickCompleted). Kafka key: `clock`.
    """

    as_of: BusinessDateTime = Field(description="The new time of the manual clock.")


#: At most this many timers in one TimersFired (a batch of one merchant's timers is split
#: into events of up to this many, so an event stays far below the broker's message size
#: limit: ~200 bytes a timer, ~1.5 kB at the longest timer ids and topics).
MAX_TIMERS_PER_EVENT = 200


class FiredTimer(SnapshotPart):
    """One timer of a TimersFired."""

    timer_id: TimerId = Field(description="The timer.")
    due_at: AwareDatetime = Field(description="When it was due (its message's `occurred_at`).")
    topic: str = Field(description="The base topic its message went to.")
    message_id: uuid.UUID = Field(description="The `message_id` of the message it published.")
    correlation_id: uuid.UUID = Field(
        description="That message's correlation id (its own id when it had none): the chain "
        "the timer belongs to."
    )


class TimersFired(Event):
    """Timers of one merchant whose messages were enqueued for publishing, in the
    transaction that deleted them: one event per firing batch and merchant (up to
    `MAX_TIMERS_PER_EVENT` timers each), not one per timer. Kafka key: `website_key`."""

    fired_at: AwareDatetime = Field(description="The scheduler clock's time when they fired.")
    timers: list[FiredTimer] = Field(
        min_length=1,
        max_length=MAX_TIMERS_PER_EVENT,
        description="The timers, in the order they fired (due order).",
    )


class TickCompleted(Event):
    """Every timer due by `as_of` has been published (not: handled). Kafka key: `clock`."""

    as_of: AwareDatetime = Field(description="The manual clock's time after the Tick.")
    fired: int = Field(ge=0, description="How many timers this Tick fired.")


register(ScheduleTimer, CancelTimer, Tick, TimersFired, TickCompleted)
