"""`/healthz` (liveness) and `/readyz` (readiness) on the real broker and database.

The `ledger` test service runs on a database of its own; the test then takes the database
away from it (no new connections, the open ones terminated, the relay's among them):
`/readyz` says so at once, `/healthz` only once the relay and the database have been
failing for longer than the threshold, and both are healthy again once it is back.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from contracts import topics
from services.runtime.app import Service, build_service
from tests.support import ledger
from tests.support.kafka import envelope, poll_until, publish, read_all
from tests.support.services import make_settings

THRESHOLD_S = 2.0


def _with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@pytest.fixture
async def own_database(database_url: str) -> AsyncIterator[tuple[str, str]]:
    """A database for this test alone: (its name, its DSN)."""
    name = f"health_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield name, _with_database(database_url, name)
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def service(
    kafka_bootstrap: str, own_database: tuple[str, str]
) -> AsyncIterator[tuple[Service, str]]:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    settings = make_settings(
        kafka_bootstrap, own_database[1], prefix, health_failing_threshold_s=THRESHOLD_S
    )
    svc = build_service(ledger.definition("ledger"), settings)
    async with svc.app:
        yield svc, prefix


async def get(svc: Service, path: str) -> tuple[int, dict[str, Any]]:
    transport = httpx.ASGITransport(app=svc.app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        response = await client.get(path, timeout=30)
    return response.status_code, response.json()


async def _status(svc: Service, path: str, code: int) -> dict[str, Any] | None:
    status, body = await get(svc, path)
    return body if status == code else None


async def test_healthz_turns_unhealthy_when_the_database_fails_for_longer_than_the_threshold(
    service: tuple[Service, str],
    own_database: tuple[str, str],
    database_url: str,
    kafka_bootstrap: str,
) -> None:
    svc, prefix = service
    name = own_database[0]
    await poll_until(lambda: _status(svc, "/readyz", 200), what="ready")
    status, body = await get(svc, "/healthz")
    assert status == 200 and body == {"status": "ok", "failing_s": {}}

    admin = await asyncpg.connect(database_url)
    try:
        broken_at = time.monotonic()
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        assert killed >= 1, "the service's connections (the relay's among them) were open"

        status, body = await get(svc, "/readyz")
        assert status == 503 and "database" in body["problems"], "not ready at once"
        unhealthy = await poll_until(
            lambda: _status(svc, "/healthz", 503), what="unhealthy", timeout=90
        )
        assert time.monotonic() - broken_at >= THRESHOLD_S, "only after the threshold"
        assert unhealthy["status"] == "unhealthy"
        relay = "worker:outbox-relay-ledger"
        failing = await poll_until(
            lambda: _problems(svc, {relay, "database"}), what="the relay and the database"
        )
        # Listed as problems only past the threshold (`failing_s` is rounded to 0.1 s).
        assert all(seconds >= THRESHOLD_S for seconds in failing.values()), failing
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()

    healthy = await poll_until(
        lambda: _status(svc, "/healthz", 200), what="healthy again", timeout=90
    )
    assert healthy["status"] == "ok"
    # The relay recovers too (its backoff may still be running when the database is back).
    await poll_until(lambda: _nothing_failing(svc), what="nothing failing", timeout=90)
    assert (await get(svc, "/readyz"))[0] == 200
    # And the service works again: a command is handled and answered.
    command = envelope("RecordEntry", {"entry_id": "after", "amount": "1.00"})
    await publish(
        kafka_bootstrap,
        prefix + topics.INVOICE_COMMANDS,
        [("shop-1:after", json.dumps(command).encode())],
    )
    answered = await poll_until(
        lambda: _answers(kafka_bootstrap, prefix, command["message_id"]), what="the answer"
    )
    assert [a["type"] for a in answered] == ["CommandAccepted"]


async def _problems(svc: Service, parts: set[str]) -> dict[str, float] | None:
    status, body = await get(svc, "/healthz")
    if status != 503 or not parts <= set(body["problems"]):
        return None
    return {part: body["failing_s"][part] for part in parts}


async def _nothing_failing(svc: Service) -> bool:
    status, body = await get(svc, "/healthz")
    return status == 200 and body["failing_s"] == {}


async def _answers(bootstrap: str, prefix: str, command_id: str) -> list[dict[str, Any]]:
    records = await read_all(bootstrap, prefix + topics.COMMAND_RESULTS)
    return [r.json() for r in records if r.json()["payload"]["command_id"] == command_id]
