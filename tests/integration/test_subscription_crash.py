"""The subscription service killed (SIGKILL) at random moments of its bill runs.

The service runs as a real OS process (`python -m services.subscription`), as in
production, and is killed and restarted while it bills: while a batch of RunBilling
commands is in its transaction, between the commit and the outbox relay, between the
relay's publish and its delete, before the consumer's offset is committed. Afterwards
nothing accepted is lost and no period is billed twice: every command has its answer,
every period its one `billed_periods` row, and its CreateInvoice and PeriodBilled keep
one message id (a crash between publish and delete may publish a message again, the
same bytes; never a second, different one) — docs/subscriptions.md, "Bill runs".

The subscription service always uses the schema `subscription` (no setting moves it),
so the process gets a database of its own: it meets no other test's rows, outbox or
relay, and "the outbox is drained" means its own outbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from contracts import topics
from services.runtime.db import create_pool
from services.subscription.handlers import _INVOICE_IDS
from tests.support.kafka import Record, envelope, poll_until, publish, read_all, topic_of
from tests.support.process import ServiceProcess
from tests.support.subscriptions import subscription

#: Subscriptions, each billed for PERIODS monthly advance periods (January to March).
N = 150
PERIODS = 3
AS_OF = "2026-03-15"
#: RunBilling chunks; the process is killed (and restarted) once per chunk.
CHUNKS = 4
#: Per chunk: the same RunBilling again (same message id), and another RunBilling of an
#: already queued subscription for the same date (a new message id).
REPEATS_PER_CHUNK = 6
RERUNS_PER_CHUNK = 6
#: Where a kill lands.
PAUSE = "after a random pause"
IN_TRANSACTION = "in a bill run's transaction"
AFTER_COMMIT = "just after a commit"


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


def _on_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
async def own_database_url(database_url: str) -> AsyncIterator[str]:
    """A database of this test's own on the session's server (dropped afterwards)."""
    name = f"subcrash_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _on_database(database_url, name)
    finally:
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class SubscriptionProcess(ServiceProcess):
    """The subscription service as a real OS process."""

    def __init__(self, kafka_bootstrap: str, database_url: str, prefix: str, logs: Path) -> None:
        super().__init__(
            "services.subscription",
            {
                **os.environ,
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "DATABASE_URL": database_url,
                "CM_TOPIC_PREFIX": prefix,
                "KAFKA_SESSION_TIMEOUT_MS": "2000",
                "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
                "RELAY_POLL_INTERVAL_MS": "50",
                "LOG_LEVEL": "WARNING",
            },
            logs,
        )


@pytest.fixture
def subscription_process(
    kafka_bootstrap: str, own_database_url: str, prefix: str, tmp_path: Path
) -> Iterator[SubscriptionProcess]:
    with SubscriptionProcess(kafka_bootstrap, own_database_url, prefix, tmp_path) as process:
        yield process


@pytest.fixture
async def pool(own_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(own_database_url, "subscription")
    yield pool
    await pool.close()


# --- helpers ----------------------------------------------------------------------------


async def send(bootstrap: str, prefix: str, bodies: list[dict[str, Any]]) -> None:
    await publish(
        bootstrap,
        prefix + topic_of(bodies[0]["type"], topics.SUBSCRIPTION_COMMANDS),  # one type each
        [
            (f"{b['website_key']}:{b['payload']['subscription_key']}", json.dumps(b).encode())
            for b in bodies
        ],
    )


async def answers_to(bootstrap: str, prefix: str, ids: set[str]) -> list[Record] | None:
    """Every answer on the results topic, once each of `ids` has at least one."""
    records = await read_all(bootstrap, prefix + topics.COMMAND_RESULTS)
    answered = {r.json()["payload"]["command_id"] for r in records}
    return records if ids <= answered else None


async def handled(pool: asyncpg.Pool) -> int:
    """Commands in the inbox: what committed transactions have handled so far."""
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM inbox"
            " WHERE consumer IN ('subscription.commands', 'subscription.internal')"
        )
    )


def canonical(body: Any) -> str:
    return json.dumps(body, sort_keys=True)


# --- the proof ----------------------------------------------------------------------------


async def test_sigkill_during_bill_runs_loses_no_command_and_bills_no_period_twice(
    subscription_process: SubscriptionProcess,
    pool: asyncpg.Pool,
    kafka_bootstrap: str,
    prefix: str,
) -> None:
    rng = random.Random(20260315)
    website = f"crash-{prefix.strip('.')}"
    keys = [f"s-{i:03d}" for i in range(N)]
    await subscription_process.start()

    # N monthly advance subscriptions from 2026-01-01, one plan (10.00 + 21% VAT).
    creates = [
        envelope(
            "CreateSubscription",
            subscription(key),
            website_key=website,
            occurred_at="2026-01-01T09:00:00+00:00",
        )
        for key in keys
    ]
    create_ids = {c["message_id"] for c in creates}
    await send(kafka_bootstrap, prefix, creates)
    await poll_until(
        lambda: answers_to(kafka_bootstrap, prefix, create_ids),
        timeout=120,
        interval=0.2,
        what=f"the answers to {N} CreateSubscription",
    )

    def run_billing(key: str) -> dict[str, Any]:
        return envelope(
            "RunBilling",
            {"subscription_key": key, "as_of": AS_OF},
            website_key=website,
            occurred_at=f"{AS_OF}T06:00:00+00:00",
        )

    # RunBilling for every subscription (3 periods due each), in chunks, each with
    # repeats of commands sent (same message id) and second runs (new message id).
    originals = {key: run_billing(key) for key in keys}
    bounds = [c * N // CHUNKS for c in range(CHUNKS + 1)]
    chunks: list[list[dict[str, Any]]] = []
    for c in range(CHUNKS):
        queued = keys[: bounds[c + 1]]
        chunk = [originals[key] for key in keys[bounds[c] : bounds[c + 1]]]
        chunk += [originals[key] for key in rng.sample(queued, REPEATS_PER_CHUNK)]
        chunk += [run_billing(key) for key in rng.sample(queued, RERUNS_PER_CHUNK)]
        rng.shuffle(chunk)
        chunks.append(chunk)
    runs = [body for chunk in chunks for body in chunk]
    run_ids = {body["message_id"] for body in runs}

    # Where each kill lands: each kind at least once, in a seeded order.
    plan = [IN_TRANSACTION, AFTER_COMMIT, PAUSE]
    plan += [rng.choice(plan) for _ in range(CHUNKS - len(plan))]
    rng.shuffle(plan)
    moments: list[str] = []
    sent: set[str] = set()
    for chunk, moment in zip(chunks, plan, strict=True):
        before = await handled(pool)
        fresh = {body["message_id"] for body in chunk} - sent
        sent |= fresh
        await send(kafka_bootstrap, prefix, chunk)
        if moment == PAUSE:
            # Anywhere: the consumer joining its group, fetching, in its transaction...
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            moments.append(moment)
        elif moment == IN_TRANSACTION:
            # While a batch of bill runs is in its (uncommitted) transaction; if the chunk
            # went through between two looks, just after its last commit.
            seen = await poll_until(
                lambda before=before, fresh=fresh: _in_transaction_or_done(
                    pool, before + len(fresh)
                ),
                timeout=120,
                interval=0.002,
                what="a bill run's transaction open, or the chunk handled",
            )
            moments.append(seen)
        else:
            # Just after a batch committed: the relay publishing and deleting, the
            # consumer's offsets not yet committed.
            await poll_until(
                lambda before=before: _grew(pool, before),
                timeout=120,
                interval=0.005,
                what="a batch of the chunk committed",
            )
            await asyncio.sleep(rng.uniform(0.0, 0.03))
            moments.append(moment)
        subscription_process.kill()
        await subscription_process.start()

    expected_periods = {(key, p) for key in keys for p in range(1, PERIODS + 1)}
    all_ids = create_ids | run_ids

    async def settled() -> list[Record] | None:
        billed = await pool.fetchval(
            "SELECT count(*) FROM billed_periods WHERE website_key = $1", website
        )
        if billed != len(expected_periods):
            return None
        if await pool.fetchval("SELECT count(*) FROM outbox") != 0:
            return None
        return await answers_to(kafka_bootstrap, prefix, all_ids)

    answer_records = await poll_until(
        settled,
        timeout=180,
        interval=0.2,
        what="every period billed, the outbox drained and every command answered",
    )

    # --- the database: one row per period, no more -------------------------------------
    rows = await pool.fetch(
        "SELECT subscription_key, period_index, invoice_number, message_id"
        " FROM billed_periods WHERE website_key = $1",
        website,
    )
    assert len(rows) == N * PERIODS
    assert {(r["subscription_key"], r["period_index"]) for r in rows} == expected_periods
    billed_ids = {r["invoice_number"]: str(r["message_id"]) for r in rows}
    assert set(billed_ids) == {f"{key}-{p}" for key, p in expected_periods}
    states = await pool.fetch(
        "SELECT subscription_key, status, state FROM subscriptions WHERE website_key = $1",
        website,
    )
    assert len(states) == N
    assert {(s["status"], s["state"]["next_period_index"]) for s in states} == {
        ("active", PERIODS + 1)
    }

    # --- cm.invoice.commands: one CreateInvoice per period, the same bytes if again ----
    invoices: dict[str, list[Record]] = defaultdict(list)
    for record in await read_all(kafka_bootstrap, prefix + topics.INVOICE_COMMANDS):
        body = record.json()
        assert body["type"] == "CreateInvoice", body
        invoices[body["payload"]["invoice_number"]].append(record)
    assert set(invoices) == set(billed_ids), "an invoice lost or one too many"
    for key, period in sorted(expected_periods):
        number = f"{key}-{period}"
        bodies = [r.json() for r in invoices[number]]
        assert {r.key for r in invoices[number]} == {f"{website}:{number}"}
        assert {b["message_id"] for b in bodies} == {
            str(uuid.uuid5(_INVOICE_IDS, f"{website}:{key}:{period}"))
        }, f"{number}: more than one command, or not the period's own message id"
        assert {b["message_id"] for b in bodies} == {billed_ids[number]}
        assert len({canonical(b) for b in bodies}) == 1, f"{number}: different payloads"
        payload = bodies[0]["payload"]
        assert payload["subscription_key"] == key
        assert payload["invoice_date"] == f"2026-{period:02d}-01"
        assert payload["currency"] == "EUR"
        assert [line["sku"] for line in payload["lines"]] == ["BASIC"]
    republished = sum(len(records) - 1 for records in invoices.values())

    # --- cm.subscription.events: one PeriodBilled per period, one message id each ------
    period_ids: dict[tuple[str, int], set[str]] = defaultdict(set)
    created: dict[str, set[str]] = defaultdict(set)
    for record in await read_all(kafka_bootstrap, prefix + topics.SUBSCRIPTION_EVENTS):
        event = record.json()
        payload = event["payload"]
        key = payload["subscription"]["subscription_key"]
        if payload["event"] == "PeriodBilled":
            assert payload["invoice_number"] == f"{key}-{payload['period_index']}"
            period_ids[(key, payload["period_index"])].add(event["message_id"])
        elif payload["event"] == "SubscriptionCreated":
            created[key].add(event["message_id"])
    assert set(period_ids) == expected_periods
    twice = {period: ids for period, ids in period_ids.items() if len(ids) != 1}
    assert not twice, f"periods billed by more than one PeriodBilled: {twice}"
    assert set(created) == set(keys)
    assert all(len(ids) == 1 for ids in created.values())

    # --- cm.command.results: every command answered, the same answer if again ---------
    answers: dict[str, set[str]] = defaultdict(set)
    answered: Counter[str] = Counter()
    for record in answer_records:
        answer = record.json()
        answers[answer["payload"]["command_id"]].add(canonical(answer))
        answered[answer["payload"]["command_id"]] += 1
    assert set(answers) == all_ids, "an answer to a command nobody sent, or one missing"
    sent_times = Counter(body["message_id"] for body in [*creates, *runs])
    unanswered = {cid: n for cid, n in sent_times.items() if answered[cid] < n}
    assert not unanswered, f"a command sent again got no answer again: {unanswered}"
    differing = {cid: bodies for cid, bodies in answers.items() if len(bodies) != 1}
    assert not differing, f"commands answered differently when answered again: {differing}"
    final = {cid: json.loads(next(iter(bodies))) for cid, bodies in answers.items()}
    assert {a["type"] for a in final.values()} == {"CommandAccepted"}, [
        a for a in final.values() if a["type"] != "CommandAccepted"
    ]
    assert {final[cid]["payload"]["keys"]["status"] for cid in create_ids} == {"active"}
    # Every period billed by exactly one of the subscription's RunBilling commands.
    billed_by_answers: Counter[str] = Counter()
    for cid in run_ids:
        keys_of = final[cid]["payload"]["keys"]
        billed_by_answers[keys_of["subscription_key"]] += int(keys_of["periods_billed"])
    assert billed_by_answers == dict.fromkeys(keys, PERIODS)

    assert await read_all(kafka_bootstrap, prefix + topics.DLQ) == []
    assert await pool.fetchval("SELECT count(*) FROM outbox_parked") == 0
    assert subscription_process.starts == CHUNKS + 1
    print(
        f"kills: {moments}; {len(runs)} RunBilling ({len(run_ids)} distinct);"
        f" CreateInvoice published again: {republished}"
    )


async def _grew(pool: asyncpg.Pool, before: int) -> bool:
    return await handled(pool) > before


async def _in_transaction_or_done(pool: asyncpg.Pool, done_at: int) -> str | None:
    """IN_TRANSACTION while the consumer has a transaction open on its tables (not the
    relay's, on the outbox only); "chunk handled" once the inbox holds `done_at` rows."""
    open_ = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND application_name = 'cm-subscription' AND xact_start IS NOT NULL"
        " AND state IN ('active', 'idle in transaction')"
        " AND query ~* '(inbox|subscriptions|billed_periods|rate_plan_versions|command_results)'"
        " AND query !~* '(received_at|created_at) <'"  # the inbox retention, not a bill run
    )
    if open_:
        return IN_TRANSACTION
    return "chunk handled" if await handled(pool) >= done_at else None
