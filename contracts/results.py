"""Command results (`cm.command.results`) and dead letters (`cm.dlq`)."""

from __future__ import annotations

import uuid

from pydantic import Field

from contracts.envelope import Event, register


class ResultError(Event):
    """One field-level reason a command was refused."""

    field: str = Field(description="Dotted path of the field, e.g. `payload.due_date`.")
    code: str = Field(description="Machine-readable reason, e.g. `before_invoice_date`.")
    message: str = Field(description="Human-readable explanation.")


class CommandAccepted(Event):
    """The command was applied (or was a no-op that repeats its earlier answer)."""

    command_type: str = Field(description="The `type` of the command.")
    command_id: uuid.UUID = Field(description="The command's `message_id`.")
    keys: dict[str, str] = Field(
        default_factory=dict,
        description="Keys the command created or touched, e.g. `invoice_key`, `case_key`.",
    )


class CommandRejected(Event):
    """The command was refused; nothing of it was applied."""

    command_type: str | None = Field(description="The `type` of the command, when readable.")
    command_id: uuid.UUID = Field(description="The command's `message_id`.")
    errors: list[ResultError] = Field(description="Every reason, per field.")


class DeadLetter(Event):
    """A message a service could not parse or handle, with where it came from."""

    service: str = Field(description="The service that gave up on the message.")
    topic: str
    partition: int
    offset: int
    key: str | None = Field(
        default=None,
        description="The original Kafka key, decoded as UTF-8 with replacement, without NUL"
        " characters, at most 256 characters.",
    )
    raw_value: str = Field(
        description="The start of the original body (at most `DLQ_MAX_VALUE_BYTES`),"
        " decoded as UTF-8 with replacement; NUL characters become U+FFFD."
    )
    raw_length: int | None = Field(default=None, description="The original body's length in bytes.")
    raw_sha256: str | None = Field(
        default=None, description="SHA-256 (hex) of the whole original body."
    )
    raw_truncated: bool = Field(
        default=False, description="Whether `raw_value` is only the start of the body."
    )
    error: str = Field(description="Why the message could not be handled.")
    errors: list[ResultError] = Field(default_factory=list)


register(CommandAccepted, CommandRejected, DeadLetter)
