"""Hostile records on the real broker and database: each ends on `cm.dlq` or answered,
the offset moves on, and the records around it are handled as if it were not there.

The `ledger` test service (tests/support/ledger.py) runs on the runtime every platform
service runs on; it is started with small limits so that "too large" is cheap to send.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from prometheus_client import REGISTRY

from contracts import topics
from services.runtime.app import Service, build_service
from services.runtime.consumer import BatchConsumer, RawRecord
from services.runtime.outbox import OutboxMessage, enqueue
from tests.support import ledger
from tests.support.kafka import envelope, poll_until, read_all
from tests.support.services import make_settings

MAX_BYTES = 64 * 1024
DLQ_SLICE = 1024


@pytest.fixture
def prefix() -> str:
    return f"h{uuid.uuid4().hex[:10]}."


@pytest.fixture
async def service(kafka_bootstrap: str, database_url: str, prefix: str) -> AsyncIterator[Service]:
    settings = make_settings(
        kafka_bootstrap,
        database_url,
        prefix,
        kafka_max_message_bytes=MAX_BYTES,
        dlq_max_value_bytes=DLQ_SLICE,
        handler_retry_backoff_ms=20,
    )
    svc = build_service(ledger.definition("ledger_" + prefix.strip(".")), settings)
    async with svc.app:
        yield svc


def entry(entry_id: str, **extra: Any) -> dict[str, Any]:
    return envelope("RecordEntry", {"entry_id": entry_id, "amount": "1.00", **extra})


async def send_raw(
    bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]], partition: int = 0
) -> None:
    """Publish exact bytes (keys included) to one partition, so order is known."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,
        max_request_size=8 * 1024 * 1024,
        max_batch_size=4 * 1024 * 1024,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=value, key=key, partition=partition)
            for key, value in items
        ]
        for future in futures:
            await future
    finally:
        await producer.stop()


def body(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


async def entry_ids(pool: asyncpg.Pool) -> set[str]:
    return {r["entry_id"] for r in await pool.fetch("SELECT entry_id FROM entries")}


async def until_entries(service: Service, expected: set[str]) -> set[str]:
    async def check() -> set[str] | None:
        found = await entry_ids(service.runtime.pool)
        return found if expected <= found else None

    return await poll_until(check, what=f"entries {sorted(expected)}")


async def dead_letters(bootstrap: str, prefix: str, n: int) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        records = await read_all(bootstrap, prefix + topics.DLQ)
        return [r.json()["payload"] for r in records] if len(records) >= n else None

    return await poll_until(check, what=f"{n} dead letters")


async def answers(bootstrap: str, prefix: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for record in await read_all(bootstrap, prefix + topics.COMMAND_RESULTS):
        answer = record.json()
        found.setdefault(answer["payload"]["command_id"], []).append(answer)
    return found


async def test_hostile_records_are_dead_lettered_one_by_one_and_the_partition_moves_on(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    topic = prefix + topics.INVOICE_COMMANDS
    bad_key = entry("e-bad-key")
    bad_key["website_key"] = "shop 1"  # cannot be answered: the website key is invalid
    nul_key = entry("e-nul-key")
    huge = b'{"x": "' + b"y" * (MAX_BYTES + 10) + b'"}'
    hostile: list[tuple[bytes | None, bytes]] = [
        (b"k", body(bad_key)),
        (b"k", b"[" * 60_000),  # nested far deeper than the parser goes
        (b"bad\x00key", body(nul_key)),  # a good body, but a key no producer should write
        (b"\xff\xfe-not-utf8", b"\xff\xfe\x00 random bytes"),
        (b"k", b"[1, 2, 3]"),
        (b"k", b'"a string"'),
        (b"k", b"null"),
        (b"k", huge),
    ]
    goods = [entry(f"e-good-{i}") for i in range(3)]
    await send_raw(
        kafka_bootstrap,
        topic,
        [(b"k", body(goods[0])), *hostile, *[(b"k", body(g)) for g in goods[1:]]],
    )

    found = await until_entries(service, {"e-good-0", "e-good-1", "e-good-2"})
    assert "e-nul-key" not in found
    letters = await dead_letters(kafka_bootstrap, prefix, 8)
    by_offset = {letter["offset"]: letter for letter in letters}
    assert len(by_offset) == len(letters) == 8, "each bad record is dead-lettered once"
    codes = [by_offset[o]["errors"][0]["code"] for o in sorted(by_offset)]
    assert codes == [
        "string_pattern_mismatch",  # website_key "shop 1"
        "too_deep",
        "invalid_key",
        "invalid_key",  # random bytes under a key that is not UTF-8: both are named
        "not_an_object",
        "not_an_object",
        "not_an_object",
        "too_large",
    ]
    first = by_offset[min(by_offset)]
    assert first["errors"][0]["field"] == "website_key"
    random_bytes = by_offset[sorted(by_offset)[3]]
    assert [e["code"] for e in random_bytes["errors"]] == ["invalid_key", "invalid_json"]
    assert random_bytes["key"] == "\ufffd\ufffd-not-utf8"
    assert by_offset[sorted(by_offset)[2]]["key"] == "bad\ufffdkey"
    assert "\x00" not in random_bytes["raw_value"]

    too_large = next(o for o in letters if o["errors"][0]["code"] == "too_large")
    assert too_large["raw_length"] == len(huge)
    assert too_large["raw_sha256"] == hashlib.sha256(huge).hexdigest()
    assert too_large["raw_truncated"] is True
    assert len(too_large["raw_value"].encode()) <= DLQ_SLICE
    deep = next(o for o in letters if o["errors"][0]["code"] == "too_deep")
    assert deep["raw_truncated"] is True and len(deep["raw_value"]) == DLQ_SLICE

    results = await answers(kafka_bootstrap, prefix)
    assert bad_key["message_id"] not in results, "no answer to an invalid website key"
    rejected = results[nul_key["message_id"]]
    assert [a["payload"]["errors"][0]["code"] for a in rejected] == ["invalid_key"]
    for good in goods:
        assert [a["type"] for a in results[good["message_id"]]] == ["CommandAccepted"]


async def test_a_passing_handler_error_is_retried_and_then_applied_once(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    glitch = entry("e-glitch", fail_attempts=2)  # fails in the batch and once in the replay
    await send_raw(kafka_bootstrap, prefix + topics.INVOICE_COMMANDS, [(b"k", body(glitch))])
    await until_entries(service, {"e-glitch"})
    results = await poll_until(
        lambda: _answer(kafka_bootstrap, prefix, glitch["message_id"]), what="the answer"
    )
    assert [a["type"] for a in results] == ["CommandAccepted"]
    assert ledger.ATTEMPTS[glitch["message_id"]] == 3
    assert await read_all(kafka_bootstrap, prefix + topics.DLQ) == []


async def test_a_handler_that_always_fails_is_dead_lettered_after_bounded_attempts(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    stuck = entry("e-stuck", fail_attempts=1_000)
    after = entry("e-after")
    await send_raw(
        kafka_bootstrap,
        prefix + topics.INVOICE_COMMANDS,
        [(b"k", body(stuck)), (b"k", body(after))],
    )
    await until_entries(service, {"e-after"})
    letters = await dead_letters(kafka_bootstrap, prefix, 1)
    assert [letter["errors"][0]["code"] for letter in letters] == ["handler_error"]
    # One try in the batch, then `handler_retry_attempts` (3) in the replay.
    assert ledger.ATTEMPTS[stuck["message_id"]] == 4
    results = await poll_until(
        lambda: _answer(kafka_bootstrap, prefix, stuck["message_id"]), what="the rejection"
    )
    assert [a["type"] for a in results] == ["CommandRejected"]

    # Delivered again: a duplicate, answered the same way, not tried again.
    await send_raw(kafka_bootstrap, prefix + topics.INVOICE_COMMANDS, [(b"k", body(stuck))])
    again = await poll_until(
        lambda: _answer(kafka_bootstrap, prefix, stuck["message_id"], 2), what="a second answer"
    )
    assert again[0] == again[1]
    assert ledger.ATTEMPTS[stuck["message_id"]] == 4


async def test_an_effect_larger_than_the_limit_is_refused_and_only_that_message_fails(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    big = entry("e-big", pad=MAX_BYTES)
    small = entry("e-small")
    await send_raw(
        kafka_bootstrap, prefix + topics.INVOICE_COMMANDS, [(b"k", body(big)), (b"k", body(small))]
    )
    await until_entries(service, {"e-small"})
    letters = await dead_letters(kafka_bootstrap, prefix, 1)
    assert [letter["errors"][0]["code"] for letter in letters] == ["effect_too_large"]
    assert await entry_ids(service.runtime.pool) == {"e-small"}, "nothing of it was applied"


async def test_a_row_the_broker_refuses_for_good_is_parked_and_the_rows_behind_it_go_out(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    runtime = service.runtime
    topic = prefix + topics.INVOICE_EVENTS
    async with runtime.pool.acquire() as conn, conn.transaction():
        # Written without a size check (as background work may): the relay must cope.
        await enqueue(
            conn,
            [
                OutboxMessage(topic, "same-key", b"x" * (MAX_BYTES + 1)),
                OutboxMessage(topic, "same-key", b"behind the big one"),
            ],
            runtime.settings.relay_shards,
        )
    assert runtime.relay is not None
    runtime.relay.wake()

    async def published() -> list[Any] | None:
        return [r for r in await read_all(kafka_bootstrap, topic) if r.key == "same-key"] or None

    records = await poll_until(published, what="the row behind the refused one")
    assert [r.value for r in records] == [b"behind the big one"]
    parked = await poll_until(
        lambda: runtime.pool.fetch(
            "SELECT topic, key, reason, length(value) AS n FROM outbox_parked"
        ),
        what="the parked row",
    )
    assert [(p["topic"], p["key"], p["reason"], p["n"]) for p in parked] == [
        (topic, "same-key", "too_large", MAX_BYTES + 1)
    ]
    assert await runtime.pool.fetchval("SELECT count(*) FROM outbox") == 0
    parked_metric = REGISTRY.get_sample_value(
        "cm_outbox_parked_total", {"service": "ledger", "reason": "too_large"}
    )
    assert parked_metric is not None and parked_metric >= 1


async def test_message_types_from_the_wire_do_not_become_metric_labels(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    invented = f"Invented{uuid.uuid4().hex}"
    await send_raw(
        kafka_bootstrap,
        prefix + topics.INVOICE_COMMANDS,
        [(b"k", body(envelope(invented, {}))), (b"k", body(entry("e-next")))],
    )
    await until_entries(service, {"e-next"})
    await dead_letters(kafka_bootstrap, prefix, 1)
    types = {
        sample.labels["type"]
        for metric in REGISTRY.collect()
        if metric.name == "cm_messages_handled"
        for sample in metric.samples
    }
    assert invented not in types
    assert "unknown" in types


async def test_when_even_the_dead_letter_cannot_be_built_a_bare_one_is_written(
    service: Service, kafka_bootstrap: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = BatchConsumer._dead_letter

    def broken(self: BatchConsumer, outbox: Any, results: Any, record: Any, *rest: Any) -> None:
        if b"e-cursed" in (record.value or b""):
            raise RuntimeError("cannot build this dead letter")
        original(self, outbox, results, record, *rest)

    monkeypatch.setattr(BatchConsumer, "_dead_letter", broken)
    cursed = entry("e-cursed", explode=True)
    await send_raw(
        kafka_bootstrap,
        prefix + topics.INVOICE_COMMANDS,
        [(b"k", body(cursed)), (b"k", body(entry("e-fine")))],
    )
    await until_entries(service, {"e-fine"})
    letters = await dead_letters(kafka_bootstrap, prefix, 1)
    assert [letter["errors"][0]["code"] for letter in letters] == ["dead_letter_failed"]
    assert letters[0]["raw_sha256"] == hashlib.sha256(body(cursed)).hexdigest()


async def _answer(
    bootstrap: str, prefix: str, command_id: str, n: int = 1
) -> list[dict[str, Any]] | None:
    found = (await answers(bootstrap, prefix)).get(command_id, [])
    return found if len(found) >= n else None


async def test_a_command_repeated_inside_one_batch_is_applied_once_and_answered_twice(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    command = entry("e-twice")
    raw = RawRecord(prefix + topics.INVOICE_COMMANDS, 0, 10_000, b"k", body(command))
    consumer: BatchConsumer = service.state["consumers"]["commands"]
    outcome = await consumer.handle_batch([raw, raw])  # one batch, as a fetch may bring it
    assert (outcome.handled, outcome.duplicates) == (1, 1)
    results = await poll_until(
        lambda: _answer(kafka_bootstrap, prefix, command["message_id"], 2), what="two answers"
    )
    assert [a["type"] for a in results] == ["CommandAccepted", "CommandAccepted"]
    assert results[0] == results[1]
    assert await entry_ids(service.runtime.pool) == {"e-twice"}


class _NotUtf8(str):
    """A header key that the producer writes as bytes that are not UTF-8."""

    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        return b"\xff\xfe-key"


async def test_a_record_the_kafka_client_cannot_decode_is_dead_lettered_and_the_rest_read(
    service: Service, kafka_bootstrap: str, prefix: str
) -> None:
    """A header key that is not UTF-8 made aiokafka raise inside `getmany`, so the
    partition was fetched again for ever; a batch with a bad CRC did the same."""
    topic = prefix + topics.INVOICE_COMMANDS
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:

        def python_batch() -> Any:
            batch = producer.create_batch()
            batch._builder = _DefaultRecordBatchBuilderPy(
                2, 0, is_transactional=0, producer_id=-1, producer_epoch=-1,
                base_sequence=0, batch_size=1 << 20,
            )  # fmt: skip
            return batch

        odd_header = python_batch()  # the pure-Python builder writes what encode() returns
        odd_header.append(key=b"k", value=body(entry("e-before")), timestamp=None, headers=[])
        odd_header.append(
            key=b"k",
            value=body(entry("e-odd-header")),
            timestamp=None,
            headers=[(_NotUtf8("h"), b"v")],
        )
        odd_header.append(key=b"k", value=body(entry("e-same-batch")), timestamp=None, headers=[])
        await (await producer.send_batch(odd_header, topic, partition=0))

        corrupt = python_batch()
        corrupt.append(key=b"k", value=body(entry("e-corrupt")), timestamp=None, headers=[])
        buffer = corrupt._build()
        buffer[-3] ^= 0xFF  # flip bits inside the record: the CRC no longer matches
        await (await producer.send_batch(corrupt, topic, partition=0))

        await (await producer.send(topic, body(entry("e-after")), key=b"k", partition=0))
    finally:
        await producer.stop()

    found = await until_entries(service, {"e-before", "e-odd-header", "e-same-batch", "e-after"})
    assert "e-corrupt" not in found
    letters = await dead_letters(kafka_bootstrap, prefix, 1)
    assert [letter["errors"][0]["code"] for letter in letters] == ["unreadable_record"]
    assert "crc_mismatch" in letters[0]["errors"][0]["message"]
