"""Issue 8, webhooks: each delivery is its own unit, and slow or hostile endpoints are
bounded. On the real broker and Postgres, with local HTTP endpoints.

Rows that RegisterWebhook would refuse today (a secret that is not base64, a URL with a
port that is not a number) are written straight into the notifier's table: they stand
for rows stored before the command checked them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.notifier import webhooks
from services.notifier.channels import ChannelFailed, Rendered
from services.notifier.channels.email import EmailSender
from services.notifier.channels.letter import spool_path
from services.notifier.limits import header_value
from tests.integration.test_notifier_webhooks import inv, invoice_with_events, mine, register
from tests.support.invoices import InvoiceClient
from tests.support.kafka import poll_until
from tests.support.notifier import HttpSink, Reply, Request, new_secret
from tests.support.platform import Platform, notifier_platform

__all__ = ["inv"]  # the fixture: a merchant of its own, its endpoint answering 200

#: The overall deadline of one delivery in this module.
DEADLINE_S = 4.0
#: After everything expected arrived: long enough for a repeat to show (the old failure
#: repeated a whole batch within a second), short enough for a fast suite.
SETTLE_S = 1.0


@pytest.fixture(scope="module")
async def cm(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Platform]:
    async with notifier_platform(
        kafka_bootstrap, database_url, webhook_timeout_s=DEADLINE_S
    ) as running:
        yield running


def website() -> str:
    return f"shop-{uuid.uuid4().hex[:8]}"


async def store_webhook(cm: Platform, website_key: str, url: str, secret: str) -> None:
    """A webhook row as an older RegisterWebhook may have stored it."""
    async with cm.notifier_pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO webhooks (website_key, url, secret) VALUES ($1, $2, $3)"
            " ON CONFLICT (website_key) DO UPDATE SET url = $2, secret = $3, enabled = true",
            website_key,
            url,
            secret,
        )


async def store_deliveries(
    cm: Platform, rows: list[tuple[str, str, int]], *, status: str = "pending", **columns: Any
) -> list[int]:
    """Deliveries (website_key, invoice_number, sequence) written directly, in one
    transaction, in this order; returns their ids."""
    extra = "".join(f", {name}" for name in columns)
    values = "".join(f", ${i + 6}" for i in range(len(columns)))
    ids = []
    async with cm.notifier_pool.acquire() as conn, conn.transaction():
        for website_key, number, sequence in rows:
            invoice = {"WebsiteKey": website_key, "InvoiceNumber": number}
            body = json.dumps({"Invoice": {**invoice, "EventSequence": sequence}}).encode()
            ids.append(
                await conn.fetchval(
                    "INSERT INTO webhook_deliveries (website_key, invoice_number, sequence,"
                    f" push_message_id, correlation_id, body, business_time, status{extra})"
                    f" VALUES ($1, $2, $3, gen_random_uuid(), gen_random_uuid(), $4, now(), $5"
                    f"{values}) RETURNING id",
                    website_key,
                    number,
                    sequence,
                    body,
                    status,
                    *columns.values(),
                )
            )
    return ids


async def deliveries(cm: Platform, website_key: str) -> list[asyncpg.Record]:
    async with cm.notifier_pool.acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT d.id, d.invoice_number, d.sequence, d.status, d.attempts, d.last_error,"
                " (SELECT array_agg(l.error ORDER BY l.id) FROM webhook_delivery_log l"
                "   WHERE l.delivery_id = d.id) AS errors"
                " FROM webhook_deliveries d WHERE d.website_key = $1"
                " ORDER BY d.invoice_number, d.sequence",
                website_key,
            )
        )


def of_site(requests: list[Request], website_key: str) -> list[Request]:
    return [r for r in requests if r.json()["Invoice"]["WebsiteKey"] == website_key]


async def settle() -> None:
    """A quiet moment in which a repeated send would arrive (not a wait for a message:
    everything expected has arrived before it)."""
    await asyncio.sleep(SETTLE_S)


# --- each delivery is its own unit ----------------------------------------------------------


async def test_one_bad_or_raising_delivery_never_repeats_the_others(
    cm: Platform, inv: InvoiceClient, endpoint: HttpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored secret that is not base64, a URL whose port is not a number and a signer
    that raises each fail only their own delivery; every other push arrives once."""
    good = [InvoiceClient(cm.bootstrap, cm.prefix, cm.services["invoice"]) for _ in range(3)]
    bad_secret, bad_url, raising = (
        InvoiceClient(cm.bootstrap, cm.prefix, cm.services["invoice"]) for _ in range(3)
    )
    clients = [*good, bad_secret, bad_url, raising]
    for client in clients:
        await client.watcher.start()
    try:
        for client in good:
            await register(cm, client, endpoint.url, new_secret())
        await store_webhook(cm, bad_secret.website_key, endpoint.url, "whsec_abcde")
        await store_webhook(cm, bad_url.website_key, "http://shop.example:abc/", new_secret())
        raising_secret = new_secret()
        await store_webhook(cm, raising.website_key, endpoint.url, raising_secret)

        signed_headers = webhooks.signed_headers

        def exploding(secret: str, *args: Any) -> dict[str, str]:
            if secret == raising_secret:
                raise RuntimeError("a bug that hits one merchant's deliveries")
            return signed_headers(secret, *args)

        monkeypatch.setattr(webhooks, "signed_headers", exploding)

        at = datetime(2026, 11, 2, 9, tzinfo=UTC)
        for client in clients:
            for number in ("H-1", "H-2"):
                await invoice_with_events(client, number, 2, at)

        expected = 2 * 2 * len(good)

        async def all_good_arrived() -> bool:
            return sum(len(mine(endpoint.accepted(), c)) for c in good) >= expected

        await poll_until(all_good_arrived, what=f"{expected} pushes of the good merchants")

        async def bad_ones_recorded() -> bool:
            for client in (bad_secret, bad_url, raising):
                rows = await deliveries(cm, client.website_key)
                if sum(r["status"] == "retrying" for r in rows) < 2:
                    return False
            return True

        await poll_until(bad_ones_recorded, what="the failed deliveries recorded")
        await settle()

        for client in good:
            ids = Counter(r.headers["webhook-id"] for r in mine(endpoint.started, client))
            assert len(ids) == 4 and set(ids.values()) == {1}, ids  # each push once
        for client in (bad_secret, bad_url, raising):
            assert mine(endpoint.started, client) == []
        for client, code in (
            (bad_secret, "invalid_secret"),
            (bad_url, "invalid_url"),
            (raising, "unexpected_RuntimeError"),
        ):
            rows = await deliveries(cm, client.website_key)
            # The first push of each invoice failed once with its code and waits for its
            # retry; the second waits behind it (per-invoice order).
            assert [(r["invoice_number"], r["sequence"], r["status"]) for r in rows] == [
                ("H-1", 1, "retrying"),
                ("H-1", 2, "pending"),
                ("H-2", 1, "retrying"),
                ("H-2", 2, "pending"),
            ]
            failed = [r for r in rows if r["status"] == "retrying"]
            assert all(r["attempts"] == 1 and r["last_error"] == code for r in failed)
            assert all(r["errors"] == [code] for r in failed)
    finally:
        for client in clients:
            await client.watcher.stop()


# --- the lease ------------------------------------------------------------------------------


async def test_a_lapsed_claim_is_sent_again_and_a_recorded_one_never(
    cm: Platform, endpoint: HttpSink
) -> None:
    """Rows as a worker that died would leave them: `sending` with a lease in the past
    is claimed and sent once; `sending` with a lease still running is left alone and
    blocks its invoice's next push; a delivered one is never sent again."""
    key = website()
    await store_webhook(cm, key, endpoint.url, new_secret())
    await store_deliveries(
        cm,
        [(key, "L-1", 1)],
        status="sending",
        lease_until=datetime(2020, 1, 1, tzinfo=UTC),
        claim_token=uuid.uuid4(),
    )
    [held] = await store_deliveries(
        cm,
        [(key, "L-2", 1)],
        status="sending",
        lease_until=datetime(2999, 1, 1, tzinfo=UTC),
        claim_token=uuid.uuid4(),
    )
    await store_deliveries(cm, [(key, "L-3", 1)], status="delivered", attempts=1)
    await store_deliveries(cm, [(key, "L-2", 2), (key, "L-3", 2)])

    async def lapsed_and_next_sent() -> list[Request] | None:
        found = of_site(endpoint.accepted(), key)
        return found if len(found) >= 2 else None

    await poll_until(lapsed_and_next_sent, what="the lapsed claim and L-3's next push")
    await settle()
    sent = sorted(
        (r.json()["Invoice"]["InvoiceNumber"], r.json()["Invoice"]["EventSequence"])
        for r in of_site(endpoint.started, key)
    )
    assert sent == [("L-1", 1), ("L-3", 2)]  # L-2 waits for its live claim, L-3/1 is done
    rows = {(r["invoice_number"], r["sequence"]): r for r in await deliveries(cm, key)}
    assert rows["L-1", 1]["status"] == "delivered" and rows["L-1", 1]["attempts"] == 1
    assert rows["L-2", 1]["status"] == "sending" and rows["L-2", 2]["status"] == "pending"

    # The claim lapses: L-2 goes, then its next push, each once.
    async with cm.notifier_pool.acquire() as conn:
        await conn.execute(
            "UPDATE webhook_deliveries SET lease_until = now() - interval '1 second' WHERE id = $1",
            held,
        )

    async def all_four() -> list[Request] | None:
        found = of_site(endpoint.accepted(), key)
        return found if len(found) >= 4 else None

    await poll_until(all_four, what="L-2's pushes after its claim lapsed")
    await settle()
    assert [
        (r.json()["Invoice"]["InvoiceNumber"], r.json()["Invoice"]["EventSequence"])
        for r in of_site(endpoint.started, key)
    ][2:] == [("L-2", 1), ("L-2", 2)]
    assert [r["attempts"] for r in await deliveries(cm, key)] == [1, 1, 1, 1, 1]


# --- slow and hostile endpoints -------------------------------------------------------------


async def test_a_slow_merchant_neither_delays_another_nor_takes_more_than_its_share(
    cm: Platform,
) -> None:
    slow, quick = HttpSink(lambda r: Reply(200, hold_s=60)), HttpSink()
    slow.start()
    quick.start()
    a, b = website(), website()
    try:
        await store_webhook(cm, a, slow.url, new_secret())
        await store_webhook(cm, b, quick.url, new_secret())
        # A's pushes are older than B's: a first-come claim would hand A every slot.
        await store_deliveries(
            cm, [(a, f"S-{i}", 1) for i in range(12)] + [(b, f"Q-{i}", 1) for i in range(8)]
        )
        await quick.wait_accepted(8)
        # B was done while A's first requests were still within their deadline: nothing
        # of A has been recorded yet.
        assert all(r["attempts"] == 0 for r in await deliveries(cm, a))
        assert 1 <= slow.max_in_progress <= 4  # the per-merchant bound

        async def a_timed_out() -> list[asyncpg.Record] | None:
            rows = [r for r in await deliveries(cm, a) if r["status"] == "retrying"]
            return rows if rows else None

        timed_out = await poll_until(a_timed_out, what="A's deliveries timing out")
        assert {r["last_error"] for r in timed_out} == {"timeout"}
    finally:
        async with cm.notifier_pool.acquire() as conn:
            await conn.execute("UPDATE webhooks SET enabled = false WHERE website_key = $1", a)
        slow.stop()
        quick.stop()


async def test_a_huge_answer_is_read_only_up_to_the_cap(cm: Platform) -> None:
    huge = HttpSink(lambda r: Reply(200, body_bytes=1 << 30))
    huge.start()
    key = website()
    try:
        await store_webhook(cm, key, huge.url, new_secret())
        await store_deliveries(cm, [(key, "B-1", 1)])

        async def answered() -> list[int] | None:
            return huge.body_sent or None

        [sent] = await poll_until(answered, what="the huge answer to end")

        async def delivered() -> list[asyncpg.Record] | None:
            rows = await deliveries(cm, key)
            return rows if rows[0]["status"] == "delivered" else None

        await poll_until(delivered, what="the delivery recorded")
        # 64 KiB read; the rest of 1 GiB never was (what the sockets buffered aside).
        assert sent < 32 << 20, sent
    finally:
        huge.stop()


# --- what a stored row or a debtor's data may hold (no broker needed) ------------------------


@pytest.mark.parametrize("secret", ["whsec_abcde", "whsec_", "whsec_!!!!", "c2VjcmV0"])
def test_a_secret_that_is_not_a_whsec_key_is_invalid(secret: str) -> None:
    with pytest.raises(webhooks.InvalidDelivery, match="invalid_secret"):
        webhooks.signing_key(secret)


@pytest.mark.parametrize(
    "url", ["http://shop.example:abc/", "ftp://shop.example/", "http://", "shop.example/hook"]
)
def test_a_url_that_does_not_parse_is_invalid(url: str) -> None:
    with pytest.raises(webhooks.InvalidDelivery, match="invalid_url"):
        webhooks.endpoint_url(url)


def test_a_valid_secret_and_url_sign_and_parse() -> None:
    secret = new_secret()
    headers = webhooks.signed_headers(secret, "msg_1", b"{}", datetime.now(UTC))
    assert webhooks.signing_key(secret).verify(b"{}", headers) == {}
    assert webhooks.endpoint_url("https://shop.example:8443/cm").port == 8443


def test_header_values_never_carry_cr_or_lf() -> None:
    assert header_value("Factuur 1\r\nBcc: x@example.test") == "Factuur 1 Bcc: x@example.test"
    assert header_value("a\nb\rc\x00d") == "a b c d"


def test_an_e_mail_carries_no_injected_header() -> None:
    sender = EmailSender("127.0.0.1", 25, "noreply@example.invalid")
    mail = sender.message(
        "jan@example.test",
        "Jan\r\nBcc: spy@example.test",
        Rendered("Factuur 1\r\nBcc: spy@example.test", "Hallo"),
        "INV 1>\r\n-step1-3",
    )
    assert mail["Bcc"] is None
    for name in ("To", "Subject", "Message-ID"):
        assert "\r" not in str(mail[name]) and "\n" not in str(mail[name])
    with pytest.raises(ChannelFailed, match="email_address_unsendable"):
        sender.message("jan@example.test\r\nBcc: spy@example.test", "Jan", Rendered("s", "b"), "r")


@pytest.mark.parametrize(
    "website_key", ["..", ".", "../etc", "/etc", "a/../..", "..\\..", "", "shop-1", "x" * 300]
)
def test_a_letter_path_always_lies_inside_the_spool(tmp_path: Path, website_key: str) -> None:
    spool = tmp_path / "letters"
    for reference in ("INV-1-step2-3", "../../INV-1-step2-3", "/etc/passwd", "." * 300):
        path = spool_path(spool, website_key, reference)
        assert path.parent.parent == spool.resolve(), path
        assert path.parent.name not in (".", "..") and path.name.endswith(".pdf")
    assert spool_path(spool, "shop-1", "INV-1-step2-3") == spool.resolve() / "shop-1" / (
        "INV-1-step2-3.pdf"
    )
