"""The invoice consumers have one path: a batch, and its replay message by message after a
handler crashed, give every other message the same effects.

The consumers are driven with records directly (no broker): one merchant's messages go
through in whole batches, another's, the same, with a crashing message that sends each
batch into the replay. Both merchants must then get the same events, timers and answers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from contracts.topics import COMMAND_RESULTS, DLQ, TopicNames
from services.invoice.app import definition
from services.runtime.consumer import BatchConsumer, HandlerContext, HandlerSpec, RawRecord
from services.runtime.db import create_pool, migrate
from tests.support.invoices import OCCURRED_AT, debtor, invoice_payload
from tests.support.kafka import envelope, poll_until

CRASH = "I-CRASH"

#: Fields that differ between two runs of the same messages (ids, random guids).
VOLATILE = {
    "message_id",
    "correlation_id",
    "causation_id",
    "command_id",
    "debtor_guid",
    "invoice_key",
}


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    schema = f"invoice_batches_{uuid.uuid4().hex[:10]}"
    pool = await create_pool(database_url, schema)
    await migrate(pool, schema, definition().migrations)
    yield pool
    await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await pool.close()


def consumer(pool: asyncpg.Pool, name: str) -> BatchConsumer:
    """The service's consumer, whose handlers crash on invoice `CRASH`."""
    spec = next(c for c in definition().consumers if c.name == name)

    def crashing(handler: HandlerSpec) -> HandlerSpec:
        async def handle(ctx: HandlerContext, payload: Any) -> None:
            if getattr(payload, "invoice_number", None) == CRASH:
                raise RuntimeError("a handler bug")
            await handler.handle(ctx, payload)

        return HandlerSpec(handle, handler.answers)

    spec.handlers = {name: crashing(handler) for name, handler in spec.handlers.items()}
    return BatchConsumer(
        spec=spec, service="invoice", pool=pool, topics=TopicNames(""), relay_shards=1
    )


def records(bodies: list[dict[str, Any]]) -> list[RawRecord]:
    return [
        RawRecord("t", 0, offset, None, json.dumps(body).encode())
        for offset, body in enumerate(bodies)
    ]


def transaction(number: str, key: str, amount: str, site: str) -> dict[str, Any]:
    return envelope(
        "TransactionStatusChanged",
        {
            "invoice_number": number,
            "transaction_key": key,
            "service": "ideal",
            "amount": amount,
            "status": "success",
            "is_slow": False,
        },
        website_key=site,
        occurred_at=OCCURRED_AT,
    )


def command(type_: str, payload: dict[str, Any], site: str) -> dict[str, Any]:
    return envelope(type_, payload, website_key=site, occurred_at=OCCURRED_AT)


async def run(pool: asyncpg.Pool, site: str, *, crash: bool) -> None:
    """Early payments, then creations and changes, then payments: three batches."""
    transactions, commands = consumer(pool, "transactions"), consumer(pool, "commands")
    crashes = [transaction(CRASH, "T-X", "1.00", site)] if crash else []
    early = [transaction("I-3", "T-1", "121.00", site), *crashes]
    assert (await transactions.handle_batch(records(early))).dead_lettered == len(crashes)

    crashes = [command("CreateCustomEvent", {"invoice_number": CRASH, "message": "x"}, site)]
    batch: list[dict[str, Any]] = [
        command("CreateInvoice", invoice_payload("I-1", debtor=debtor("D-1")), site),
        command("CreateInvoice", invoice_payload("I-2", debtor=debtor("D-1")), site),
        command("CreateInvoice", invoice_payload("I-3", debtor=debtor("D-2")), site),
        command("PauseInvoice", {"invoice_number": "I-1"}, site),
        command(
            "CreateCreditNote",
            {
                "original_invoice_number": "I-2",
                "credit_note_number": "C-1",
                "amount": "21.00",
                "description": "returned",
            },
            site,
        ),
        command("AddOrUpdateDebtor", {"debtor": debtor("D-1", email="new@example.test")}, site),
        command("CreateInvoice", invoice_payload("I-1", description="other"), site),
        *(crashes if crash else []),
    ]
    assert (await commands.handle_batch(records(batch))).dead_lettered == crash

    crashes = [transaction(CRASH, "T-Y", "1.00", site)] if crash else []
    later = [transaction("I-2", "T-2", "100.00", site), *crashes]
    assert (await transactions.handle_batch(records(later))).dead_lettered == len(crashes)


def normalized(value: Any, site: str) -> Any:
    if isinstance(value, dict):
        return {k: normalized(v, site) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalized(v, site) for v in value]
    if isinstance(value, str):
        return value.replace(site, "SITE")
    return value


async def seen(pool: asyncpg.Pool, site: str) -> list[Any]:
    """What the merchant's messages sent, in order, but for the crashing message's own
    dead letter and answer."""
    rows = await pool.fetch("SELECT topic, key, value FROM outbox ORDER BY id")
    sent = []
    for row in rows:
        body = json.loads(bytes(row["value"]))
        if body.get("website_key") != site or row["topic"] == DLQ:
            continue
        if body["payload"].get("command_type") == "CreateCustomEvent":
            continue  # the crashing command's answer (the only CreateCustomEvent)
        sent.append((row["topic"], normalized(row["key"], site), normalized(body, site)))
    return sent


async def test_a_replayed_batch_has_the_effects_the_batch_has(pool: asyncpg.Pool) -> None:
    await run(pool, "shop-batch", crash=False)
    await run(pool, "shop-replay", crash=True)

    in_batches, replayed = await seen(pool, "shop-batch"), await seen(pool, "shop-replay")
    assert replayed == in_batches
    answers = [
        (body["payload"]["command_type"], body["type"])
        for topic, _, body in in_batches
        if topic == COMMAND_RESULTS
    ]
    assert answers == [
        ("CreateInvoice", "CommandAccepted"),
        ("CreateInvoice", "CommandAccepted"),
        ("CreateInvoice", "CommandAccepted"),
        ("PauseInvoice", "CommandAccepted"),
        ("CreateCreditNote", "CommandAccepted"),
        ("AddOrUpdateDebtor", "CommandAccepted"),
        ("CreateInvoice", "CommandRejected"),
    ]
    for site in ("shop-batch", "shop-replay"):
        events = await pool.fetch(
            "SELECT invoice_number, sequence, event FROM invoice_events WHERE website_key = $1"
            " ORDER BY invoice_number, sequence",
            site,
        )
        # I-1 paused; I-2 credited, then paid; I-3 paid before it existed.
        assert [tuple(event) for event in events] == [
            ("I-1", 1, "ChangedStatus"),
            ("I-1", 2, "ChangedStatus"),
            ("I-2", 1, "ChangedStatus"),
            ("I-2", 2, "CreatedCreditNote"),
            ("I-2", 3, "ChangedTransactionStatus"),
            ("I-3", 1, "ChangedStatus"),
            ("I-3", 2, "ChangedTransactionStatus"),
        ], site
        statuses = await pool.fetch(
            "SELECT invoice_number, status FROM invoices WHERE website_key = $1"
            " ORDER BY invoice_number",
            site,
        )
        assert [tuple(row) for row in statuses] == [("I-1", 20), ("I-2", 10), ("I-3", 10)]


async def test_a_replay_takes_its_batch_locks_in_key_order(pool: asyncpg.Pool) -> None:
    """Replayed message by message, a batch still takes its invoices' locks in key order
    before any message runs, as every batch does: another batch that holds I-1 and then
    asks for I-2 gets it, where locks taken in message order (I-2, then I-1) would
    deadlock."""
    site = "shop-locks"
    replay = records(
        [
            command("CreateInvoice", invoice_payload("I-2"), site),
            command("CreateInvoice", invoice_payload("I-1"), site),
            command("CreateCustomEvent", {"invoice_number": CRASH, "message": "x"}, site),
        ]
    )
    commands = consumer(pool, "commands")
    async with pool.acquire() as other, other.transaction():
        await other.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{site}:I-1")
        replaying = asyncio.create_task(commands._transact_careful(replay))
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        await poll_until(lambda: pool.fetchval(waiting), what="the replay waiting for I-1")
        await other.execute("SET LOCAL lock_timeout = '5s'")
        await other.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{site}:I-2")
    outcome = await replaying
    assert (outcome.handled, outcome.dead_lettered) == (2, 1)
