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
from dataclasses import dataclass
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


def command(entry_id: str) -> dict[str, Any]:
    return envelope("RecordEntry", {"entry_id": entry_id, "amount": "12.50"})


@dataclass
class LedgerRun:
    """The running `ledger` service with its dead letters in `schema`, and the ways the
    tests reach it: the broker, the database and `cm dlq`."""

    service: Service
    bootstrap: str
    database_url: str
    prefix: str
    schema: str
    #: The entry ids the handler fails on (the test switch `ledger.BUGGY`).
    buggy: set[str]

    async def send(self, *bodies: dict[str, Any]) -> None:
        await publish(
            self.bootstrap,
            self.prefix + topics.INVOICE_COMMANDS,
            [
                (f"{b['website_key']}:{b['payload']['entry_id']}", json.dumps(b).encode())
                for b in bodies
            ],
        )

    async def answers(self, command_id: str) -> list[dict[str, Any]]:
        records = await read_all(self.bootstrap, self.prefix + topics.COMMAND_RESULTS)
        return [r.json() for r in records if r.json()["payload"]["command_id"] == command_id]

    async def letters(self, **filters: Any) -> list[dict[str, Any]]:
        return await dlq.fetch(self.database_url, [self.schema], dlq.Filters(**filters))

    async def entries(self, entry_id: str) -> list[asyncpg.Record]:
        return await self.service.runtime.pool.fetch(
            "SELECT * FROM entries WHERE entry_id = $1", entry_id
        )

    async def replay(self, *ids: uuid.UUID, again: bool = False) -> dlq.ReplayReport:
        return await dlq.replay(
            self.database_url,
            self.bootstrap,
            [self.schema],
            dlq.Filters(ids=list(ids)),
            again=again,
        )

    async def cli(self, verb: str, *args: str) -> tuple[int, str, str]:
        """`python -m cmcli dlq VERB --schema SCHEMA ...` as an operator runs it."""
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cmcli",
            "dlq",
            verb,
            "--schema",
            self.schema,
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def svc(
    kafka_bootstrap: str, database_url: str, prefix: str, schema: str, buggy: set[str]
) -> AsyncIterator[LedgerRun]:
    settings = make_settings(
        kafka_bootstrap,
        database_url,
        prefix,
        handler_retry_attempts=1,
        dlq_max_value_bytes=CUT_AT,
    )
    service = build_service(ledger.definition(schema), settings)
    async with service.app:
        yield LedgerRun(service, kafka_bootstrap, database_url, prefix, schema, buggy)


async def test_a_dead_letter_replayed_after_the_fix_is_handled_once_and_answered(
    svc: LedgerRun,
) -> None:
    svc.buggy.add("e-bug")
    bug, fine = command("e-bug"), command("e-fine")
    await svc.send(bug, fine)
    [first] = await poll_until(lambda: svc.letters(codes=["handler_error"]), what="the dead letter")
    rejected = await poll_until(lambda: svc.answers(bug["message_id"]), what="the rejection")
    assert [a["type"] for a in rejected] == ["CommandRejected"]
    listed = dlq.summary(first)
    assert listed["service"] == "ledger"
    assert listed["topic"] == svc.prefix + topics.INVOICE_COMMANDS
    assert listed["codes"] == ["handler_error"]
    assert listed["message_id"] == bug["message_id"]
    assert listed["replayable"] is True and listed["replays"] == 0
    # The same dead letter is on cm.dlq, under the same id.
    on_topic = await poll_until(
        lambda: read_all(svc.bootstrap, svc.prefix + topics.DLQ), what="the dead letter on cm.dlq"
    )
    assert [r.json()["message_id"] for r in on_topic] == [listed["id"]]
    assert [r["entry_id"] for r in await svc.entries("e-fine")] == ["e-fine"]

    # Replayed before the fix: dead-lettered again, under a new dead letter.
    report = await svc.replay(first["id"])
    assert list(report.replayed) == [str(first["id"])] and report.ok
    both = await poll_until(lambda: _at_least(svc.letters(), 2), what="the second dead letter")
    second = both[1]
    assert second["message_id"] == first["message_id"] and second["id"] != first["id"]
    assert await svc.entries("e-bug") == []

    # Fixed, and replayed: handled once, and answered.
    svc.buggy.discard("e-bug")
    report = await svc.replay(second["id"])
    assert list(report.replayed) == [str(second["id"])]
    rows = await poll_until(lambda: svc.entries("e-bug"), what="the replayed command's effect")
    assert [(r["entry_id"], str(r["amount"])) for r in rows] == [("e-bug", "12.50")]
    accepted = await poll_until(
        lambda: _accepted(svc.answers(bug["message_id"]), 1),
        what="the answer to the replay",
    )
    assert accepted[0]["payload"]["keys"] == {"entry_id": "e-bug"}

    # Not replayed twice by accident; replayed on purpose (twice, both dead letters):
    # still handled once, and answered with the same answer.
    again = await svc.replay(second["id"])
    assert again.replayed == {} and list(again.skipped) == [str(second["id"])]
    assert "--again" in again.skipped[str(second["id"])]
    forced = await svc.replay(first["id"], second["id"], again=True)
    assert set(forced.replayed) == {str(first["id"]), str(second["id"])}
    repeated = await poll_until(
        lambda: _accepted(svc.answers(bug["message_id"]), 3),
        what="the answers to the repeated replays",
    )
    assert all(a == repeated[0] for a in repeated), "the stored answer, unchanged"
    assert len(await svc.entries("e-bug")) == 1
    events = await poll_until(
        lambda: _at_least(read_all(svc.bootstrap, svc.prefix + topics.INVOICE_EVENTS), 2),
        what="the events",
    )
    assert sorted(e.json()["payload"]["entry_id"] for e in events) == ["e-bug", "e-fine"]
    assert len(await svc.letters()) == 2, "no new dead letter"
    marked = {str(r["id"]): r["replays"] for r in await svc.letters()}
    assert marked == {str(first["id"]): 2, str(second["id"]): 2}


async def test_a_dead_letter_cut_for_its_size_is_listed_so_and_its_replay_refused(
    svc: LedgerRun,
) -> None:
    long_id = "e-" + "x" * CUT_AT
    svc.buggy.update({long_id, "e-short"})
    await svc.send(command(long_id), command("e-short"))
    found = await poll_until(lambda: _at_least(svc.letters(), 2), what="two dead letters")
    cut = next(r for r in found if r["value_truncated"])
    whole = next(r for r in found if not r["value_truncated"])
    assert len(cut["value"]) == CUT_AT and cut["value_length"] > CUT_AT

    code, out, err = await svc.cli("list", "--json")
    assert code == 0, err
    listed = {line["id"]: line for line in map(json.loads, out.splitlines())}
    assert listed[str(cut["id"])]["replayable"] is False
    assert listed[str(whole["id"])]["replayable"] is True
    code, out, _ = await svc.cli("list")
    assert code == 0 and "not replayable" in out and "handler_error" in out
    code, out, _ = await svc.cli("list", "--code", "too_large")
    assert code == 0 and out == ""

    svc.buggy.clear()
    code, out, err = await svc.cli("replay", str(cut["id"]))
    assert code == 1 and out == ""
    assert "refused: the body was cut" in err and "cannot be replayed" in err
    code, out, err = await svc.cli("replay", "--code", "handler_error")
    assert code == 1, "the cut one is refused, the other replayed"
    assert f"{whole['id']}\treplayed" in out and str(cut["id"]) in err
    await poll_until(lambda: svc.entries("e-short"), what="the replayed one")
    assert await svc.entries(long_id) == []
    after = {str(r["id"]): r for r in await svc.letters()}
    assert after[str(cut["id"])]["replay_requested_at"] is None
    assert after[str(whole["id"])]["replays"] == 1


async def test_the_replay_header_alone_does_not_take_a_message_past_the_inbox(
    svc: LedgerRun,
) -> None:
    """A sender who puts `cm-replay-of` on a record (even with the right dead letter's id)
    gets a duplicate's answer: only a replay `cm dlq replay` recorded opens the inbox."""
    svc.buggy.add("e-forged")
    bug = command("e-forged")
    await svc.send(bug)
    [letter] = await poll_until(svc.letters, what="the dead letter")
    svc.buggy.clear()
    await publish(
        svc.bootstrap,
        svc.prefix + topics.INVOICE_COMMANDS,
        [(f"shop-1:{bug['payload']['entry_id']}", json.dumps(bug).encode())],
        headers=[("cm-replay-of", str(letter["id"]).encode())],
    )
    repeated = await poll_until(
        lambda: _at_least(svc.answers(bug["message_id"]), 2),
        what="the duplicate's answer",
    )
    assert [a["type"] for a in repeated] == ["CommandRejected", "CommandRejected"]
    assert repeated[0] == repeated[1], "the stored rejection, again"
    assert await svc.entries("e-forged") == []
    [unchanged] = await svc.letters()
    assert unchanged["replay_requested_at"] is None and unchanged["replays"] == 0


async def _at_least(rows: Any, count: int) -> list[dict[str, Any]] | None:
    found = await rows
    return found if len(found) >= count else None


async def _accepted(found: Any, count: int) -> list[dict[str, Any]] | None:
    accepted = [a for a in await found if a["type"] == "CommandAccepted"]
    return accepted if len(accepted) >= count else None
