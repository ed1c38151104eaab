"""The notifier's trust boundaries on the real broker and PostgreSQL (issue 11):

- webhook targets: with private networks not allowed, loopback, private and link-local
  targets (literal or by name) and plain http are refused at registration, and a name
  that passes at registration but resolves to loopback when the push goes out (DNS
  rebinding) fails that delivery with `target_not_allowed`;
- webhook secrets are stored encrypted with CM_SECRET_KEY, plain-text rows of older
  versions are encrypted when the notifier starts, and pushes still verify with the
  original secret;
- personal data of delivered pushes and finished message jobs is dropped after the
  retention window; what is still open keeps it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from standardwebhooks import Webhook

from services.notifier.app import definition, secrets_at_rest
from services.notifier.netguard import system_resolve
from services.notifier.secrets import PREFIX, SecretBox
from services.notifier.trust import WebhookTrust
from services.runtime.app import build_service
from tests.integration.test_notifier_webhooks import (
    accepted_for,
    invoice_with_events,
    mine,
    register,
    retry_scheduled,
)
from tests.support.invoices import InvoiceClient
from tests.support.kafka import poll_until
from tests.support.notifier import HttpSink, Request, new_secret, notifier_command
from tests.support.platform import Platform, notifier_platform, platform, webhook_merchant
from tests.support.services import TEST_SECRET_KEY, make_settings


class FakeDns:
    """Names of the tests' own (`*.test`), answered from `answers`; any other name goes to
    the system resolver (`localhost` resolves to 127.0.0.1 there)."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str]] = {}

    async def resolve(self, host: str, port: int) -> list[str]:
        if host.endswith(".test"):
            return list(self.answers[host])
        return await system_resolve(host, port)


DNS = FakeDns()


@pytest.fixture(scope="module")
async def strict(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Platform]:
    """Invoice, scheduler and a notifier with private networks NOT allowed (as in
    production), resolving `*.test` names through `DNS`."""
    async with platform(
        kafka_bootstrap, database_url, "invoice", "scheduler", webhook_allow_private_networks=False
    ) as cm:
        notifier = build_service(
            replace(
                definition(WebhookTrust(resolve=DNS.resolve)),
                schema=f"notifier_{cm.prefix.strip('.')}",
            ),
            make_settings(
                kafka_bootstrap,
                database_url,
                cm.prefix,
                cm_clock="manual",
                webhook_allow_private_networks=False,
                webhook_timeout_s=2.0,
            ),
        )
        async with notifier.app:
            cm.services["notifier"] = notifier
            yield cm


@pytest.fixture(scope="module")
async def local(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Platform]:
    """The same with private networks allowed (as `make run` and the other tests), a
    one-day retention window and pruning every 0.1 s."""
    async with notifier_platform(
        kafka_bootstrap,
        database_url,
        webhook_timeout_s=2.0,
        notifier_retention_days=1.0,
        notifier_prune_interval_s=0.1,
    ) as cm:
        yield cm


async def register_answer(cm: Platform, inv: InvoiceClient, url: str) -> dict[str, Any]:
    mid = await notifier_command(
        cm.bootstrap,
        cm.prefix,
        "RegisterWebhook",
        {"url": url, "secret": new_secret()},
        website_key=inv.website_key,
        key=f"{inv.website_key}:webhook",
    )
    return await inv.answer(mid)


# --- webhook targets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8443/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://localhost/hook",  # the system resolver: 127.0.0.1
        "https://loopback.test/hook",  # a name of our own that resolves to 127.0.0.1
        "http://public.test/hook",  # a public address, but not https
    ],
)
async def test_webhook_targets_that_are_not_public_https_are_refused_at_registration(
    strict: Platform, url: str
) -> None:
    DNS.answers |= {"loopback.test": ["127.0.0.1"], "public.test": ["93.184.215.14"]}
    inv = await strict.merchant()
    try:
        answer = await register_answer(strict, inv, url)
    finally:
        await inv.watcher.stop()
    assert answer["type"] == "CommandRejected", answer
    [error] = answer["payload"]["errors"]
    assert (error["field"], error["code"]) == ("payload.url", "webhook_target_not_allowed")
    assert url not in error["message"] and str(answer).count(url) == 0
    async with strict.notifier_pool.acquire() as conn:
        stored = await conn.fetchval(
            "SELECT count(*) FROM webhooks WHERE website_key = $1", inv.website_key
        )
    assert stored == 0


async def test_a_name_rebound_to_loopback_after_registration_fails_at_delivery(
    strict: Platform, endpoint: HttpSink
) -> None:
    """DNS rebinding: the name is public when registered, loopback when the push goes
    out (where a receiver listens). The connection is refused before any byte is sent;
    the delivery fails like any other and is retried on the usual schedule."""
    endpoint.responder = lambda request: 200
    port = int(endpoint.url.rsplit(":", 1)[1].split("/")[0])
    name = f"rebind-{uuid.uuid4().hex[:8]}.test"
    DNS.answers[name] = ["93.184.215.14"]
    inv = await strict.merchant()
    try:
        url = f"https://{name}:{port}/hook"
        answer = await register_answer(strict, inv, url)
        assert answer["type"] == "CommandAccepted", answer
        DNS.answers[name] = ["127.0.0.1"]  # rebound
        await invoice_with_events(inv, "SEC-1", 1, datetime(2026, 11, 1, 9, tzinfo=UTC))

        async def failed() -> list[asyncpg.Record] | None:
            async with strict.notifier_pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT d.status, d.last_error, l.outcome, l.error"
                    " FROM webhook_deliveries d JOIN webhook_delivery_log l"
                    " ON l.delivery_id = d.id WHERE d.website_key = $1",
                    inv.website_key,
                )
            return list(rows) or None

        [row] = await poll_until(failed, what="the refused delivery")
        assert dict(row) == {
            "status": "retrying",
            "last_error": "target_not_allowed",
            "outcome": "attempt_failed",
            "error": "target_not_allowed",
        }
        await retry_scheduled(strict, inv, 2)  # the usual retry schedule
        assert mine(endpoint.started, inv) == []  # nothing reached the loopback receiver
    finally:
        await inv.watcher.stop()


async def test_a_name_that_does_not_resolve_at_registration_is_accepted(
    strict: Platform,
) -> None:
    """It cannot be judged yet; every delivery checks it again."""
    inv = await strict.merchant()
    try:
        DNS.answers[f"{inv.website_key}.test"] = []
        answer = await register_answer(strict, inv, f"https://{inv.website_key}.test/hook")
    finally:
        await inv.watcher.stop()
    assert answer["type"] == "CommandAccepted", answer


# --- secrets at rest ------------------------------------------------------------------------


async def stored_secret(cm: Platform, website_key: str) -> str:
    async with cm.notifier_pool.acquire() as conn:
        value: str = await conn.fetchval(
            "SELECT secret FROM webhooks WHERE website_key = $1", website_key
        )
    return value


def verified(requests: list[Request], secret: str) -> list[dict[str, Any]]:
    return [Webhook(secret).verify(r.body, r.headers) for r in requests]


async def test_a_registered_secret_is_stored_encrypted_and_pushes_verify_with_it(
    local: Platform, endpoint: HttpSink
) -> None:
    async with webhook_merchant(local, endpoint) as inv:
        secret = new_secret()
        await register(local, inv, endpoint.url, secret)
        stored = await stored_secret(local, inv.website_key)
        assert stored.startswith(PREFIX)
        assert secret not in stored and secret.removeprefix("whsec_") not in stored
        assert SecretBox.from_setting(TEST_SECRET_KEY).open(stored) == secret

        await invoice_with_events(inv, "SEC-2", 2, datetime(2026, 11, 1, 9, tzinfo=UTC))
        received = await accepted_for(endpoint, inv, 2)
        pushes = verified(received, secret)  # standardwebhooks, the original secret
        assert [p["Invoice"]["EventSequence"] for p in pushes] == [1, 2]


async def test_a_plain_text_secret_of_an_older_version_works_and_is_encrypted_on_start(
    local: Platform, endpoint: HttpSink
) -> None:
    async with webhook_merchant(local, endpoint) as inv:
        secret = new_secret()
        async with local.notifier_pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO webhooks (website_key, url, secret) VALUES ($1, $2, $3)",
                inv.website_key,
                endpoint.url,
                secret,
            )
        await invoice_with_events(inv, "SEC-3", 1, datetime(2026, 11, 1, 9, tzinfo=UTC))
        verified(await accepted_for(endpoint, inv, 1), secret)  # as stored, plain text

        # What a notifier does when it starts: encrypt what is not encrypted yet.
        await secrets_at_rest(local.services["notifier"].runtime, WebhookTrust())
        stored = await stored_secret(local, inv.website_key)
        assert stored.startswith(PREFIX) and secret not in stored
        assert SecretBox.from_setting(TEST_SECRET_KEY).open(stored) == secret

        await inv.command(
            "CreateCustomEvent",
            {"invoice_number": "SEC-3", "message": "after encryption"},
            occurred_at="2026-11-01T09:00:00+00:00",
        )
        assert len(verified(await accepted_for(endpoint, inv, 2), secret)) == 2


# --- retention ------------------------------------------------------------------------------


async def add_job(conn: asyncpg.Connection, website_key: str, number: str, **columns: Any) -> int:
    """A message job as the sender leaves it, its command carrying a debtor's name."""
    command = {"payload": {"invoice": {"debtor": {"person": {"last_name": "Jansen"}}}}}
    names = "".join(f", {name}" for name in columns)
    values = "".join(f", ${i + 4}" for i in range(len(columns)))
    job_id: int = await conn.fetchval(
        "INSERT INTO message_jobs (command_id, website_key, invoice_number, step_index,"
        f" command{names}) VALUES (gen_random_uuid(), $1, $2, 1, $3{values}) RETURNING id",
        website_key,
        number,
        command,
        *columns.values(),
    )
    return job_id


async def test_personal_data_of_finished_work_is_dropped_after_the_retention_window(
    local: Platform, endpoint: HttpSink
) -> None:
    done, failing = await local.merchant(), await local.merchant()
    endpoint.responder = lambda request: (
        500 if request.json()["Invoice"]["WebsiteKey"] == failing.website_key else 200
    )
    try:
        at = datetime(2026, 11, 1, 9, tzinfo=UTC)
        await register(local, done, endpoint.url, new_secret())
        await register(local, failing, endpoint.url, new_secret())
        await invoice_with_events(done, "RET-1", 2, at)
        await invoice_with_events(failing, "RET-2", 1, at)
        await accepted_for(endpoint, done, 2)
        await retry_scheduled(local, failing, 2)  # its only push is retrying
        keys = [done.website_key, failing.website_key]

        async with local.notifier_pool.acquire() as conn:
            # Push 1 of `done` was delivered two days ago, push 2 just now; the open push
            # of `failing` was created two days ago.
            two_days_ago = await conn.fetchval("SELECT now() - interval '2 days'")
            await conn.execute(
                "UPDATE webhook_deliveries SET settled_at = $2"
                " WHERE website_key = $1 AND sequence = 1",
                done.website_key,
                two_days_ago,
            )
            await conn.execute(
                "UPDATE webhook_deliveries SET created_at = $2 WHERE website_key = $1",
                failing.website_key,
                two_days_ago,
            )
            jobs = {
                "done_long_ago": await add_job(
                    conn, done.website_key, "J-1", status="done", done_at=two_days_ago
                ),
                "failed_long_ago": await add_job(
                    conn, done.website_key, "J-2", status="failed", done_at=two_days_ago
                ),
                "done_just_now": await add_job(
                    conn, done.website_key, "J-3", status="done", done_at=datetime.now(UTC)
                ),
                # Not due: no worker takes it meanwhile.
                "open_for_long": await add_job(
                    conn,
                    done.website_key,
                    "J-4",
                    status="pending",
                    created_at=two_days_ago,
                    available_at=datetime(2100, 1, 1, tzinfo=UTC),
                ),
            }

        async def pruned() -> bool:
            async with local.notifier_pool.acquire() as conn:
                return bool(
                    await conn.fetchval(
                        "SELECT command IS NULL FROM message_jobs WHERE id = $1",
                        jobs["failed_long_ago"],
                    )
                )

        await poll_until(pruned, what="the retention task's round")

        async with local.notifier_pool.acquire() as conn:
            pushes = await conn.fetch(
                "SELECT website_key, sequence, status, body IS NOT NULL AS has_body,"
                " pruned_at IS NOT NULL AS pruned, push_message_id IS NOT NULL AS has_id"
                " FROM webhook_deliveries WHERE website_key = ANY($1::text[])"
                " ORDER BY website_key = $2 DESC, sequence",
                keys,
                done.website_key,
            )
            job_rows = {
                row["id"]: (row["status"], row["has_command"])
                for row in await conn.fetch(
                    "SELECT id, status, command IS NOT NULL AS has_command FROM message_jobs"
                    " WHERE id = ANY($1::bigint[])",
                    list(jobs.values()),
                )
            }
        assert [tuple(r.values()) for r in pushes] == [
            (done.website_key, 1, "delivered", False, True, True),  # dropped, the row stays
            (done.website_key, 2, "delivered", True, False, True),  # within the window
            (failing.website_key, 1, "retrying", True, False, True),  # still to deliver
        ]
        assert {name: job_rows[job_id] for name, job_id in jobs.items()} == {
            "done_long_ago": ("done", False),
            "failed_long_ago": ("failed", False),
            "done_just_now": ("done", True),
            "open_for_long": ("pending", True),
        }
    finally:
        await done.watcher.stop()
        await failing.watcher.stop()
