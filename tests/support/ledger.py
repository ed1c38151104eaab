"""A tiny service built on the runtime, used to prove the runtime's guarantees.

It handles `RecordEntry` (insert a row, emit `EntryRecorded`), can be told to break a
business rule (`reject`) or to fail like a bug (`explode`). Run it as a process with
`python -m tests.support.ledger` (same environment variables as every service).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import Field

from contracts import topics
from contracts.envelope import Command, Event, FieldError, Money, register
from services.runtime.app import ServiceDefinition, run
from services.runtime.consumer import ConsumerSpec, HandlerContext, HandlerSpec

#: The ledger reads its commands from this (prefixed) topic and writes events to the other.
COMMAND_TOPIC = topics.INVOICE_COMMANDS
EVENT_TOPIC = topics.INVOICE_EVENTS


class RecordEntry(Command):
    entry_id: str = Field(min_length=1)
    amount: Money
    reject: bool = False
    explode: bool = False
    #: Fail like a passing glitch this many times (per message id), then succeed.
    fail_attempts: int = 0
    #: Characters of padding in the emitted event (to make an effect too large).
    pad: int = 0


class EntryRecorded(Event):
    entry_id: str
    amount: Money
    padding: str = ""


#: Attempts seen per message id (in-process tests only).
ATTEMPTS: dict[str, int] = {}

#: Entry ids whose handler fails like a bug while they are in here (in-process tests
#: only): a test "fixes the bug" by taking the id out, then replays the dead letter.
BUGGY: set[str] = set()


register(RecordEntry, EntryRecorded)


async def record_entry(ctx: HandlerContext, cmd: RecordEntry) -> None:
    if cmd.explode:
        raise ValueError("a bug in the handler")
    if cmd.entry_id in BUGGY:
        raise ValueError("a bug in the handler, until the test fixes it")
    if cmd.fail_attempts:
        seen = ATTEMPTS[str(ctx.envelope.message_id)] = (
            ATTEMPTS.get(str(ctx.envelope.message_id), 0) + 1
        )
        if seen <= cmd.fail_attempts:
            raise RuntimeError("a passing glitch")
    if cmd.reject or cmd.amount < Decimal(0):
        ctx.reject([FieldError("payload.amount", "negative", "the amount must not be negative")])
        return
    await ctx.conn.execute(
        "INSERT INTO entries (website_key, entry_id, amount, message_id) VALUES ($1, $2, $3, $4)",
        ctx.website_key,
        cmd.entry_id,
        cmd.amount,
        ctx.envelope.message_id,
    )
    ctx.emit(
        EVENT_TOPIC,
        f"{ctx.website_key}:{cmd.entry_id}",
        EntryRecorded(entry_id=cmd.entry_id, amount=cmd.amount, padding="x" * cmd.pad),
    )
    ctx.accept(entry_id=cmd.entry_id)


def definition(schema: str = "ledger") -> ServiceDefinition:
    handlers: dict[str, Any] = {"RecordEntry": HandlerSpec(record_entry)}
    return ServiceDefinition(
        name="ledger",
        schema=schema,
        migrations=Path(__file__).parent / "ledger_migrations",
        consumers=[ConsumerSpec(name="commands", topic=COMMAND_TOPIC, handlers=handlers)],
    )


if __name__ == "__main__":
    import os

    run(definition(os.environ.get("LEDGER_SCHEMA", "ledger")))
