"""Proofs of the runtime's guarantees on the real broker and the real database.

The `ledger` test service (tests/support/ledger.py) runs on the same runtime as every
platform service: these tests hold for all of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from contracts import topics
from services.runtime.app import Service, build_service
from services.runtime.db import create_pool
from services.runtime.outbox import OutboxMessage, OutboxRelay, enqueue
from services.runtime.retention import prune
from tests.support import ledger
from tests.support.kafka import envelope, poll_until, publish, read_all
from tests.support.process import ServiceProcess
from tests.support.services import make_settings


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


def schema_for(prefix: str) -> str:
    return "ledger_" + prefix.strip(".")


@pytest.fixture
async def service(kafka_bootstrap: str, database_url: str, prefix: str) -> AsyncIterator[Service]:
    svc = build_service(
        ledger.definition(schema_for(prefix)), make_settings(kafka_bootstrap, database_url, prefix)
    )
    async with svc.app:
        yield svc


def record_entry(entry_id: str, amount: object = "10.00", **extra: object) -> dict[str, object]:
    return envelope("RecordEntry", {"entry_id": entry_id, "amount": amount, **extra})


def key_of(body: dict[str, object]) -> str:
    return f"{body['website_key']}:{body['payload']['entry_id']}"  # type: ignore[index]


async def send(bootstrap: str, topic: str, *bodies: dict[str, object] | bytes) -> None:
    await publish(
        bootstrap,
        topic,
        [
            (None, body) if isinstance(body, bytes) else (key_of(body), json.dumps(body).encode())
            for body in bodies
        ],
    )


async def results_for(bootstrap: str, prefix: str, command_id: str) -> list[dict[str, object]]:
    records = await read_all(bootstrap, prefix + topics.COMMAND_RESULTS)
    return [r.json() for r in records if r.json()["payload"]["command_id"] == command_id]


async def entries(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM entries ORDER BY entry_id")


# --- inbox ------------------------------------------------------------------------------


async def test_the_same_message_delivered_twice_has_one_effect(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    body = record_entry("e-1")
    topic = prefix + topics.INVOICE_COMMANDS
    await send(kafka_bootstrap, topic, body)
    await send(kafka_bootstrap, topic, body)  # redelivered: same message_id

    answers = await poll_until(
        lambda: _at_least(results_for(kafka_bootstrap, prefix, body["message_id"]), 2),  # type: ignore[arg-type]
        what="two answers to the same command",
    )
    assert {a["type"] for a in answers} == {"CommandAccepted"}
    assert answers[0] == answers[1], "the stored result is published again, unchanged"
    assert answers[0]["payload"]["keys"] == {"entry_id": "e-1"}  # type: ignore[index]
    rows = await entries(service.runtime.pool)
    assert [(r["entry_id"], str(r["amount"])) for r in rows] == [("e-1", "10.00")]
    events = await poll_until(
        lambda: read_all(kafka_bootstrap, prefix + topics.INVOICE_EVENTS), what="the event"
    )
    assert [e.json()["payload"]["entry_id"] for e in events] == ["e-1"]


async def test_the_same_message_id_from_two_websites_is_two_commands(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    """Ids are unique per website: B reusing A's message_id is B's own command, handled
    and answered with B's answer, and B's redelivery gets B's stored answer, not A's."""
    topic = prefix + topics.INVOICE_COMMANDS
    first = envelope("RecordEntry", {"entry_id": "e-a", "amount": "1.00"}, website_key="shop-a")
    second = envelope(
        "RecordEntry",
        {"entry_id": "e-b", "amount": "2.00"},
        website_key="shop-b",
        message_id=str(first["message_id"]),
    )
    await send(kafka_bootstrap, topic, first, second, second)

    answers = await poll_until(
        lambda: _at_least(results_for(kafka_bootstrap, prefix, str(first["message_id"])), 3),
        what="three answers to one message id",
    )
    by_website: dict[str, list[dict[str, object]]] = defaultdict(list)
    for answer in answers:
        by_website[str(answer["website_key"])].append(answer)
    assert [a["payload"]["keys"] for a in by_website["shop-a"]] == [{"entry_id": "e-a"}]  # type: ignore[index]
    assert [a["payload"]["keys"] for a in by_website["shop-b"]] == [{"entry_id": "e-b"}] * 2  # type: ignore[index]
    assert by_website["shop-b"][0] == by_website["shop-b"][1], "B's stored answer, repeated"
    rows = await entries(service.runtime.pool)
    assert [(r["entry_id"], str(r["amount"])) for r in rows] == [("e-a", "1.00"), ("e-b", "2.00")]


async def _at_least(coro: object, n: int) -> list[dict[str, object]] | None:
    items = await coro  # type: ignore[misc]
    return items if len(items) >= n else None


# --- dead letters and rejections ---------------------------------------------------------


async def test_a_malformed_message_is_dead_lettered_and_the_next_is_handled(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    topic = prefix + topics.INVOICE_COMMANDS
    typo = record_entry("e-typo")
    typo["payload"]["amout"] = typo["payload"].pop("amount")  # type: ignore[attr-defined]
    await send(kafka_bootstrap, topic, b"{not json", typo, record_entry("e-after"))

    await poll_until(
        lambda: _entry_ids(service.runtime.pool, {"e-after"}), what="the next message handled"
    )
    letters = [
        r.json()
        for r in await poll_until(
            lambda: _at_least_records(kafka_bootstrap, prefix + topics.DLQ, 2),
            what="two dead letters",
        )
    ]
    assert len(letters) == 2
    by_error = {letter["payload"]["errors"][0]["code"]: letter["payload"] for letter in letters}
    assert by_error["invalid_json"]["raw_value"] == "{not json"
    assert by_error["invalid_json"]["topic"] == topic
    assert {e["field"] for e in by_error["missing"]["errors"]} == {
        "payload.amount",
        "payload.amout",
    }

    answer = await poll_until(
        lambda: results_for(kafka_bootstrap, prefix, typo["message_id"]),  # type: ignore[arg-type]
        what="the rejection of the typo",
    )
    assert len(answer) == 1 and answer[0]["type"] == "CommandRejected"
    assert {e["code"] for e in answer[0]["payload"]["errors"]} == {"missing", "extra_forbidden"}  # type: ignore[index]
    assert await _entry_ids(service.runtime.pool, {"e-after"}) == {"e-after"}


async def test_a_broken_business_rule_is_rejected_with_field_errors_and_nothing_applied(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    bad = record_entry("e-neg", "-1.00")
    await send(kafka_bootstrap, prefix + topics.INVOICE_COMMANDS, bad)
    answers = await poll_until(
        lambda: results_for(kafka_bootstrap, prefix, bad["message_id"]),  # type: ignore[arg-type]
        what="the rejection",
    )
    assert answers[0]["type"] == "CommandRejected"
    assert answers[0]["payload"]["errors"] == [  # type: ignore[index]
        {
            "field": "payload.amount",
            "code": "negative",
            "message": "the amount must not be negative",
        }
    ]
    assert await entries(service.runtime.pool) == []
    assert await read_all(kafka_bootstrap, prefix + topics.INVOICE_EVENTS) == []


async def test_a_handler_bug_dead_letters_only_that_message(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    before, bug, after = (
        record_entry("e-1"),
        record_entry("e-bug", explode=True),
        record_entry("e-2"),
    )
    await send(kafka_bootstrap, prefix + topics.INVOICE_COMMANDS, before, bug, after)
    await poll_until(
        lambda: _entry_ids(service.runtime.pool, {"e-1", "e-2"}), what="both good entries"
    )
    letters = [
        r.json()["payload"]
        for r in await poll_until(
            lambda: read_all(kafka_bootstrap, prefix + topics.DLQ), what="the dead letter"
        )
    ]
    assert [letter["errors"][0]["code"] for letter in letters] == ["handler_error"]
    assert "a bug in the handler" in letters[0]["error"]
    answer = await poll_until(
        lambda: results_for(kafka_bootstrap, prefix, bug["message_id"]),  # type: ignore[arg-type]
        what="the answer to the failing command",
    )
    assert [a["type"] for a in answer] == ["CommandRejected"]
    assert answer[0]["payload"]["errors"][0]["code"] == "handler_error"  # type: ignore[index]
    # The exception's text (which may quote personal data) stays in the dead letter.
    assert "a bug in the handler" not in json.dumps(answer[0])
    assert {r["entry_id"] for r in await entries(service.runtime.pool)} == {"e-1", "e-2"}


async def _entry_ids(pool: asyncpg.Pool, expected: set[str]) -> set[str] | None:
    found = {r["entry_id"] for r in await entries(pool)}
    return found if expected <= found else None


# --- outbox ------------------------------------------------------------------------------


async def test_a_rolled_back_transaction_publishes_nothing(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    runtime = service.runtime
    topic = prefix + "rollback-proof"
    with pytest.raises(RuntimeError):
        async with runtime.pool.acquire() as conn, conn.transaction():
            await enqueue(
                conn, [OutboxMessage(topic, "k", b"rolled back")], runtime.settings.relay_shards
            )
            raise RuntimeError("the handler failed after enqueueing")
    async with runtime.pool.acquire() as conn, conn.transaction():
        await enqueue(
            conn, [OutboxMessage(topic, "k", b"committed")], runtime.settings.relay_shards
        )
    assert runtime.relay is not None
    runtime.relay.wake()

    records = await poll_until(
        lambda: read_all(kafka_bootstrap, topic), what="the committed message"
    )
    assert [r.value for r in records] == [b"committed"]


async def test_relay_keeps_per_key_order_for_1000_messages_over_10_keys(
    service: Service, kafka_bootstrap: str, database_url: str, prefix: str
) -> None:
    runtime = service.runtime
    topic = prefix + "order-proof"
    keys = [f"shop-1:inv-{i}" for i in range(10)]

    async def writer(my_keys: list[str]) -> None:
        # 100 messages per key, written in small transactions interleaving the keys.
        for seq in range(0, 100, 5):
            async with runtime.pool.acquire() as conn, conn.transaction():
                await enqueue(
                    conn,
                    [
                        OutboxMessage(topic, key, json.dumps({"key": key, "seq": s}).encode())
                        for s in range(seq, seq + 5)
                        for key in my_keys
                    ],
                    runtime.settings.relay_shards,
                )
            await asyncio.sleep(0)

    # A second relay on the same outbox races the service's own one.
    other_pool = await create_pool(database_url, runtime.schema)
    rival = OutboxRelay(
        pool=other_pool,
        bootstrap_servers=kafka_bootstrap,
        schema=runtime.schema,
        service="rival",
        shards=runtime.settings.relay_shards,
        batch_size=7,
        poll_interval_s=0.01,
    )
    await rival.start()
    try:
        await asyncio.gather(*(writer(keys[i::5]) for i in range(5)))
        records = await poll_until(
            lambda: _at_least_records(kafka_bootstrap, topic, 1000), what="1000 relayed messages"
        )
    finally:
        await rival.stop()
        await other_pool.close()

    seen: dict[str, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        body = record.json()
        assert record.key == body["key"]
        seen[body["key"]].append(body["seq"])
    assert set(seen) == set(keys)
    for key, seqs in seen.items():
        assert seqs == list(range(100)), f"{key} out of order or duplicated"


async def _at_least_records(bootstrap: str, topic: str, n: int) -> list | None:  # type: ignore[type-arg]
    records = await read_all(bootstrap, topic)
    return records if len(records) >= n else None


# --- crashes -----------------------------------------------------------------------------


class LedgerProcess(ServiceProcess):
    """The ledger service as a real OS process."""

    def __init__(self, kafka_bootstrap: str, database_url: str, prefix: str, logs: Path) -> None:
        super().__init__(
            "tests.support.ledger",
            {
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "DATABASE_URL": database_url,
                "CM_TOPIC_PREFIX": prefix,
                "LEDGER_SCHEMA": schema_for(prefix),
                "KAFKA_SESSION_TIMEOUT_MS": "2000",
                "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
                "LOG_LEVEL": "WARNING",
            },
            logs,
        )

    async def start(self, *, relay: bool = True) -> None:  # type: ignore[override]
        await super().start(RELAY_ENABLED="true" if relay else "false")


@pytest.fixture
def ledger_process(
    kafka_bootstrap: str, database_url: str, prefix: str, tmp_path: Path
) -> Iterator[LedgerProcess]:
    with LedgerProcess(kafka_bootstrap, database_url, prefix, tmp_path) as process:
        yield process


@pytest.fixture
async def ledger_pool(database_url: str, prefix: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, schema_for(prefix))
    yield pool
    await pool.close()


async def test_sigkill_after_commit_before_relay_still_publishes_once_restarted(
    ledger_process: LedgerProcess, ledger_pool: asyncpg.Pool, kafka_bootstrap: str, prefix: str
) -> None:
    await ledger_process.start(relay=False)
    body = record_entry("e-crash")
    await send(kafka_bootstrap, prefix + topics.INVOICE_COMMANDS, body)

    async def committed() -> bool:
        outbox = await ledger_pool.fetchval("SELECT count(*) FROM outbox")
        return outbox == 2 and await ledger_pool.fetchval("SELECT count(*) FROM entries") == 1

    await poll_until(committed, what="the command's state and outbox rows committed")
    ledger_process.kill()
    assert await read_all(kafka_bootstrap, prefix + topics.INVOICE_EVENTS) == []
    assert await read_all(kafka_bootstrap, prefix + topics.COMMAND_RESULTS) == []

    await ledger_process.start(relay=True)
    await poll_until(lambda: _outbox_empty(ledger_pool), what="the outbox drained after restart")
    events = await read_all(kafka_bootstrap, prefix + topics.INVOICE_EVENTS)
    assert [e.json()["payload"]["entry_id"] for e in events] == ["e-crash"]
    answers = await results_for(kafka_bootstrap, prefix, body["message_id"])  # type: ignore[arg-type]
    assert [a["type"] for a in answers] == ["CommandAccepted"]
    assert await ledger_pool.fetchval("SELECT count(*) FROM entries") == 1


async def _outbox_empty(pool: asyncpg.Pool) -> bool:
    return await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_sigkill_at_random_moments_loses_nothing_and_applies_nothing_twice(
    ledger_process: LedgerProcess, ledger_pool: asyncpg.Pool, kafka_bootstrap: str, prefix: str
) -> None:
    rng = random.Random(7)
    bodies = [record_entry(f"e-{i:04d}", f"{i}.01") for i in range(400)]
    await ledger_process.start()
    for chunk in range(4):
        await send(
            kafka_bootstrap,
            prefix + topics.INVOICE_COMMANDS,
            *bodies[chunk * 100 : (chunk + 1) * 100],
        )
        await asyncio.sleep(rng.uniform(0.0, 0.3))  # let the process get somewhere, then kill it
        ledger_process.kill()
        await ledger_process.start()

    async def all_done() -> bool:
        count = await ledger_pool.fetchval("SELECT count(*) FROM entries")
        return count == len(bodies) and await _outbox_empty(ledger_pool)

    await poll_until(all_done, timeout=60, what="every command applied and relayed")
    rows = await entries(ledger_pool)
    assert [(r["entry_id"], str(r["amount"])) for r in rows] == [
        (b["payload"]["entry_id"], b["payload"]["amount"])
        for b in bodies  # type: ignore[index]
    ]
    events = [e.json() for e in await read_all(kafka_bootstrap, prefix + topics.INVOICE_EVENTS)]
    # A crash between publish and delete may publish a message again, with the same
    # message_id (consumers deduplicate); never a second, different effect.
    by_entry: dict[str, set[str]] = defaultdict(set)
    for event in events:
        by_entry[event["payload"]["entry_id"]].add(event["message_id"])
    assert sorted(by_entry) == [b["payload"]["entry_id"] for b in bodies]  # type: ignore[index]
    assert all(len(ids) == 1 for ids in by_entry.values())
    answers = [r.json() for r in await read_all(kafka_bootstrap, prefix + topics.COMMAND_RESULTS)]
    assert {a["payload"]["command_id"] for a in answers} == {b["message_id"] for b in bodies}
    assert {a["type"] for a in answers} == {"CommandAccepted"}


async def test_inbox_ids_and_answers_past_the_retention_window_are_pruned(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    old, recent = record_entry("e-old"), record_entry("e-new")
    await send(kafka_bootstrap, prefix + topics.INVOICE_COMMANDS, old, recent)
    pool = service.runtime.pool
    await poll_until(lambda: _entry_ids(pool, {"e-old", "e-new"}), what="both handled")
    await pool.execute(
        "UPDATE inbox SET received_at = now() - interval '8 days' WHERE message_id = $1",
        uuid.UUID(old["message_id"]),  # type: ignore[arg-type]
    )
    await pool.execute(
        "UPDATE command_results SET created_at = now() - interval '8 days' WHERE command_id = $1",
        uuid.UUID(old["message_id"]),  # type: ignore[arg-type]
    )
    assert await prune(pool, timedelta(days=7)) == 2
    kept = {r["message_id"] for r in await pool.fetch("SELECT message_id FROM inbox")}
    assert kept == {uuid.UUID(recent["message_id"])}  # type: ignore[arg-type]


async def test_a_header_that_is_not_utf8_does_not_stop_the_consumer(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    body = record_entry("e-binary-header")
    await publish(
        kafka_bootstrap,
        prefix + topics.INVOICE_COMMANDS,
        [(key_of(body), json.dumps(body).encode())],
        headers=[("trace", b"\xff\xfe\x00binary")],
    )
    await send(kafka_bootstrap, prefix + topics.INVOICE_COMMANDS, record_entry("e-after-it"))
    await poll_until(
        lambda: _entry_ids(service.runtime.pool, {"e-binary-header", "e-after-it"}),
        what="both messages handled",
    )
