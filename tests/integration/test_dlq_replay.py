"""`cm dlq list|replay` on the real broker and database, against the `ledger` test service.

A command is dead-lettered by a handler bug (the test switch `ledger.BUGGY`), the bug is
"fixed", and the dead letter is replayed: the command is handled once and answered, and
replaying it again never handles it a second time (the inbox). A dead letter whose body
was cut for its size is listed as such and its replay is refused. The replay header alone,
without the replay recorded in the database, opens nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from cmcli import dlq
from contracts import topics
from services.runtime.app import Service, build_service
from tests.support import ledger
from tests.support.kafka import envelope, poll_until, publish, read_all
from tests.support.services import make_settings

#: Bodies above this are cut in the dead letter (the test's DLQ_MAX_VALUE_BYTES).
CUT_AT = 600


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def schema(prefix: str) -> str:
    return "ledger_" + prefix.strip(".")


@pytest.fixture
def buggy() -> Iterator[set[str]]:
    ledger.BUGGY.clear()
    yield ledger.BUGGY
    ledger.BUGGY.clear()


@pytest.fixture
async def service(
    kafka_bootstrap: str, database_url: str, prefix: str, schema: str
) -> AsyncIterator[Service]:
    settings = make_settings(
        kafka_bootstrap,
        database_url,
        prefix,
        handler_retry_attempts=1,
        dlq_max_value_bytes=CUT_AT,
    )
    svc = build_service(ledger.definition(schema), settings)
    async with svc.app:
        yield svc


def command(entry_id: str) -> dict[str, Any]:
    return envelope("RecordEntry", {"entry_id": entry_id, "amount": "12.50"})


async def send(bootstrap: str, prefix: str, *bodies: dict[str, Any]) -> None:
    await publish(
        bootstrap,
        prefix + topics.INVOICE_COMMANDS,
        [
            (f"{b['website_key']}:{b['payload']['entry_id']}", json.dumps(b).encode())
            for b in bodies
        ],
    )


async def answers(bootstrap: str, prefix: str, command_id: str) -> list[dict[str, Any]]:
    records = await read_all(bootstrap, prefix + topics.COMMAND_RESULTS)
    return [r.json() for r in records if r.json()["payload"]["command_id"] == command_id]


async def letters(database_url: str, schema: str, **filters: Any) -> list[dict[str, Any]]:
    return await dlq.fetch(database_url, [schema], dlq.Filters(**filters))


async def entries(pool: asyncpg.Pool, entry_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM entries WHERE entry_id = $1", entry_id)


async def cli(database_url: str, bootstrap: str, *args: str) -> tuple[int, str, str]:
    """`python -m cmcli ...` as an operator runs it."""
    env = {**os.environ, "DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cmcli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_dead_letter_replayed_after_the_fix_is_handled_once_and_answered(
    service: Service,
    kafka_bootstrap: str,
    database_url: str,
    prefix: str,
    schema: str,
    buggy: set[str],
) -> None:
    buggy.add("e-bug")
    bug, fine = command("e-bug"), command("e-fine")
    await send(kafka_bootstrap, prefix, bug, fine)
    [first] = await poll_until(
        lambda: letters(database_url, schema, codes=["handler_error"]), what="the dead letter"
    )
    rejected = await poll_until(
        lambda: answers(kafka_bootstrap, prefix, bug["message_id"]), what="the rejection"
    )
    assert [a["type"] for a in rejected] == ["CommandRejected"]
    listed = dlq.summary(first)
    assert listed["service"] == "ledger"
    assert listed["topic"] == prefix + topics.INVOICE_COMMANDS
    assert listed["codes"] == ["handler_error"]
    assert listed["message_id"] == bug["message_id"]
    assert listed["replayable"] is True and listed["replays"] == 0
    # The same dead letter is on cm.dlq, under the same id.
    on_topic = await poll_until(
        lambda: read_all(kafka_bootstrap, prefix + topics.DLQ), what="the dead letter on cm.dlq"
    )
    assert [r.json()["message_id"] for r in on_topic] == [listed["id"]]
    assert [r["entry_id"] for r in await entries(service.runtime.pool, "e-fine")] == ["e-fine"]

    # Replayed before the fix: dead-lettered again, under a new dead letter.
    report = await dlq.replay(
        database_url, kafka_bootstrap, [schema], dlq.Filters(ids=[first["id"]])
    )
    assert list(report.replayed) == [str(first["id"])] and report.ok
    both = await poll_until(
        lambda: _at_least(letters(database_url, schema), 2), what="the second dead letter"
    )
    second = both[1]
    assert second["message_id"] == first["message_id"] and second["id"] != first["id"]
    assert await entries(service.runtime.pool, "e-bug") == []

    # Fixed, and replayed: handled once, and answered.
    buggy.discard("e-bug")
    report = await dlq.replay(
        database_url, kafka_bootstrap, [schema], dlq.Filters(ids=[second["id"]])
    )
    assert list(report.replayed) == [str(second["id"])]
    rows = await poll_until(
        lambda: entries(service.runtime.pool, "e-bug"), what="the replayed command's effect"
    )
    assert [(r["entry_id"], str(r["amount"])) for r in rows] == [("e-bug", "12.50")]
    accepted = await poll_until(
        lambda: _accepted(answers(kafka_bootstrap, prefix, bug["message_id"]), 1),
        what="the answer to the replay",
    )
    assert accepted[0]["payload"]["keys"] == {"entry_id": "e-bug"}

    # Not replayed twice by accident; replayed on purpose (twice, both dead letters):
    # still handled once, and answered with the same answer.
    again = await dlq.replay(
        database_url, kafka_bootstrap, [schema], dlq.Filters(ids=[second["id"]])
    )
    assert again.replayed == {} and list(again.skipped) == [str(second["id"])]
    assert "--again" in again.skipped[str(second["id"])]
    forced = await dlq.replay(
        database_url,
        kafka_bootstrap,
        [schema],
        dlq.Filters(ids=[first["id"], second["id"]]),
        again=True,
    )
    assert set(forced.replayed) == {str(first["id"]), str(second["id"])}
    repeated = await poll_until(
        lambda: _accepted(answers(kafka_bootstrap, prefix, bug["message_id"]), 3),
        what="the answers to the repeated replays",
    )
    assert all(a == repeated[0] for a in repeated), "the stored answer, unchanged"
    assert len(await entries(service.runtime.pool, "e-bug")) == 1
    events = await poll_until(
        lambda: _at_least(read_all(kafka_bootstrap, prefix + topics.INVOICE_EVENTS), 2),
        what="the events",
    )
    assert sorted(e.json()["payload"]["entry_id"] for e in events) == ["e-bug", "e-fine"]
    assert len(await letters(database_url, schema)) == 2, "no new dead letter"
    marked = {str(r["id"]): r["replays"] for r in await letters(database_url, schema)}
    assert marked == {str(first["id"]): 2, str(second["id"]): 2}


async def test_a_dead_letter_cut_for_its_size_is_listed_so_and_its_replay_refused(
    service: Service,
    kafka_bootstrap: str,
    database_url: str,
    prefix: str,
    schema: str,
    buggy: set[str],
) -> None:
    long_id = "e-" + "x" * CUT_AT
    buggy.update({long_id, "e-short"})
    await send(kafka_bootstrap, prefix, command(long_id), command("e-short"))
    found = await poll_until(
        lambda: _at_least(letters(database_url, schema), 2), what="two dead letters"
    )
    cut = next(r for r in found if r["value_truncated"])
    whole = next(r for r in found if not r["value_truncated"])
    assert len(cut["value"]) == CUT_AT and cut["value_length"] > CUT_AT

    code, out, err = await cli(
        database_url, kafka_bootstrap, "dlq", "list", "--schema", schema, "--json"
    )
    assert code == 0, err
    listed = {line["id"]: line for line in map(json.loads, out.splitlines())}
    assert listed[str(cut["id"])]["replayable"] is False
    assert listed[str(whole["id"])]["replayable"] is True
    code, out, _ = await cli(database_url, kafka_bootstrap, "dlq", "list", "--schema", schema)
    assert code == 0 and "not replayable" in out and "handler_error" in out
    code, out, _ = await cli(
        database_url, kafka_bootstrap, "dlq", "list", "--schema", schema, "--code", "too_large"
    )
    assert code == 0 and out == ""

    buggy.clear()
    code, out, err = await cli(
        database_url, kafka_bootstrap, "dlq", "replay", "--schema", schema, str(cut["id"])
    )
    assert code == 1 and out == ""
    assert "refused: the body was cut" in err and "cannot be replayed" in err
    code, out, err = await cli(
        database_url,
        kafka_bootstrap,
        "dlq",
        "replay",
        "--schema",
        schema,
        "--code",
        "handler_error",
    )
    assert code == 1, "the cut one is refused, the other replayed"
    assert f"{whole['id']}\treplayed" in out and str(cut["id"]) in err
    await poll_until(lambda: entries(service.runtime.pool, "e-short"), what="the replayed one")
    assert await entries(service.runtime.pool, long_id) == []
    after = {str(r["id"]): r for r in await letters(database_url, schema)}
    assert after[str(cut["id"])]["replay_requested_at"] is None
    assert after[str(whole["id"])]["replays"] == 1


async def test_the_replay_header_alone_does_not_take_a_message_past_the_inbox(
    service: Service,
    kafka_bootstrap: str,
    database_url: str,
    prefix: str,
    schema: str,
    buggy: set[str],
) -> None:
    """A sender who puts `cm-replay-of` on a record (even with the right dead letter's id)
    gets a duplicate's answer: only a replay `cm dlq replay` recorded opens the inbox."""
    buggy.add("e-forged")
    bug = command("e-forged")
    await send(kafka_bootstrap, prefix, bug)
    [letter] = await poll_until(lambda: letters(database_url, schema), what="the dead letter")
    buggy.clear()
    await publish(
        kafka_bootstrap,
        prefix + topics.INVOICE_COMMANDS,
        [(f"shop-1:{bug['payload']['entry_id']}", json.dumps(bug).encode())],
        headers=[("cm-replay-of", str(letter["id"]).encode())],
    )
    repeated = await poll_until(
        lambda: _at_least(answers(kafka_bootstrap, prefix, bug["message_id"]), 2),
        what="the duplicate's answer",
    )
    assert [a["type"] for a in repeated] == ["CommandRejected", "CommandRejected"]
    assert repeated[0] == repeated[1], "the stored rejection, again"
    assert await entries(service.runtime.pool, "e-forged") == []
    [unchanged] = await letters(database_url, schema)
    assert unchanged["replay_requested_at"] is None and unchanged["replays"] == 0


async def _at_least(rows: Any, count: int) -> list[dict[str, Any]] | None:
    found = await rows
    return found if len(found) >= count else None


async def _accepted(found: Any, count: int) -> list[dict[str, Any]] | None:
    accepted = [a for a in await found if a["type"] == "CommandAccepted"]
    return accepted if len(accepted) >= count else None
