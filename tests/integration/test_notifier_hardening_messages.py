"""Issue 8, messages to debtors: each message is its own unit; an address the SMTP path
cannot send falls through to the next channel; letters stay inside the spool directory.
On the real broker and Postgres, with a real SMTP server (aiosmtpd) and a letter spool.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from services.notifier.channels.email import EmailSender
from services.notifier.repository import NotifierRepository
from tests.integration.test_notifier import cm, create, next_step, wait_codes
from tests.support.invoices import debtor, invoice_payload
from tests.support.kafka import poll_until
from tests.support.notifier import SmtpSink
from tests.support.platform import Platform

__all__ = ["cm"]  # the fixture: invoice, scheduler and notifier mailing to `smtp`, `spool`

#: After everything expected arrived: long enough for a repeat to show.
SETTLE_S = 1.0


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("outside") / "letters"


@pytest.fixture
def no_smtputf8(smtp: SmtpSink) -> Iterator[SmtpSink]:
    smtp.smtputf8 = False
    yield smtp
    smtp.smtputf8 = True


def schema_test_invoice(number: str, email: str) -> dict[str, Any]:
    """A test invoice running DefaultCM1 on TriggerNextStep, its debtor of its own (a
    debtor code is the merchant's key for the debtor: the latest data wins)."""
    return invoice_payload(
        number,
        is_test=True,
        description="schema_test notifier",
        pay_link=f"https://pay.example.test/{number}",
        debtor=debtor(code=f"D-{number}", email=email),
    )


def tag() -> str:
    return uuid.uuid4().hex[:8]


async def jobs(cm: Platform, website_key: str) -> list[asyncpg.Record]:
    async with cm.notifier_pool.acquire() as conn:
        return list(
            await conn.fetch(
                "SELECT j.id, j.invoice_number, j.step_index, j.status, j.outcome, j.channel,"
                " j.attempts, j.last_error, j.command,"
                " (SELECT array_agg(l.channel || ':' || l.result || ':' || coalesce(l.detail, '')"
                "   ORDER BY l.id) FROM message_log l WHERE l.job_id = j.id) AS log"
                " FROM message_jobs j WHERE j.website_key = $1 ORDER BY j.id",
                website_key,
            )
        )


async def settle() -> None:
    """A quiet moment in which a repeated send would arrive (not a wait for a message:
    everything expected has arrived before it)."""
    await asyncio.sleep(SETTLE_S)


# --- each message is its own unit -----------------------------------------------------------


async def test_an_unsendable_address_and_a_raising_channel_fail_only_their_own_message(
    cm: Platform,
    smtp: SmtpSink,
    spool: Path,
    no_smtputf8: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without SMTPUTF8 `müller@…` cannot be sent; another debtor's e-mail raises an
    unexpected error. Both count as the e-mail channel failing (the invitation has no
    other channel: not sent; the reminder goes by letter); every other debtor gets each
    message once."""
    inv = await cm.merchant()
    key = tag()
    good = [f"d{i}-{key}@example.test" for i in range(4)]
    unsendable = f"müller-{key}@example.de"
    raising = f"raise-{key}@example.test"
    build = EmailSender.message

    def exploding(self: EmailSender, to: str, *args: Any) -> Any:
        if to == raising:
            raise RuntimeError("a bug that hits one debtor's messages")
        return build(self, to, *args)

    monkeypatch.setattr(EmailSender, "message", exploding)
    try:
        numbers = {}
        for i, to in enumerate([*good, unsendable, raising]):
            numbers[to] = f"U-{i}"
            await create(inv, schema_test_invoice(numbers[to], to))
        for to in good:
            assert await wait_codes(inv, numbers[to], 2) == [2, 10]  # invitation sent
        for to in (unsendable, raising):
            assert await wait_codes(inv, numbers[to], 2) == [2, 6]  # not sent
        await settle()
        for to in good:
            assert len(smtp.to(to)) == 1
        assert smtp.to(unsendable) == [] and smtp.to(raising) == []

        # The reminder: e-mail fails the same way, the letter takes over.
        for to in (unsendable, raising):
            await next_step(inv, numbers[to])
            assert await wait_codes(inv, numbers[to], 3) == [2, 6, 5]  # sent by letter
        rows = {(r["invoice_number"], r["step_index"]): r for r in await jobs(cm, inv.website_key)}
        for to, code in (
            (unsendable, "email_address_unsendable"),
            (raising, "unexpected_RuntimeError"),
        ):
            invitation, reminder = rows[numbers[to], 1], rows[numbers[to], 2]
            assert invitation["outcome"] == "skipped_no_methods"
            assert invitation["log"] == [f"email:failed:{code}"]
            assert reminder["outcome"] == "sent_backup" and reminder["channel"] == "letter"
            assert reminder["log"][0] == f"email:failed:{code}"
        letters = sorted(p.name for p in (spool / inv.website_key).glob("U-*.pdf"))
        assert [name.split("-step")[0] for name in letters] == ["U-4", "U-5"]
        await settle()
        assert Counter(m.recipients[0] for m in smtp.mails if key in m.recipients[0]) == {
            to: 1 for to in good
        }
    finally:
        await inv.watcher.stop()


async def test_a_job_that_fails_outside_its_channels_is_postponed_alone(
    cm: Platform, smtp: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error before any channel (here: reading the merchant's templates)
    postpones that job with its code; the other merchant's message goes out once, and the
    postponed one once when it is due again."""
    broken, fine = await cm.merchant(), await cm.merchant()
    templates = NotifierRepository.templates

    async def exploding(self: NotifierRepository, website_key: str, key: str) -> Any:
        if website_key == broken.website_key:
            raise RuntimeError("a bug that hits one merchant's jobs")
        return await templates(self, website_key, key)

    monkeypatch.setattr(NotifierRepository, "templates", exploding)
    k = tag()
    try:
        await create(broken, schema_test_invoice("J-1", f"broken-{k}@example.test"))
        await create(fine, schema_test_invoice("J-1", f"fine-{k}@example.test"))
        assert await wait_codes(fine, "J-1", 2) == [2, 10]

        async def postponed() -> list[asyncpg.Record] | None:
            rows = await jobs(cm, broken.website_key)
            return rows if rows and rows[0]["attempts"] == 1 else None

        [row] = await poll_until(postponed, what="the broken job postponed")
        assert row["status"] == "pending" and row["last_error"] == "unexpected_RuntimeError"
        assert row["log"] == ["job:error:unexpected_RuntimeError"]

        monkeypatch.undo()
        async with cm.notifier_pool.acquire() as conn:
            await conn.execute(
                "UPDATE message_jobs SET available_at = now() WHERE id = $1", row["id"]
            )
        assert await wait_codes(broken, "J-1", 2) == [2, 10]
        await settle()
        assert len(smtp.to(f"broken-{k}@example.test")) == 1
        assert len(smtp.to(f"fine-{k}@example.test")) == 1
    finally:
        await broken.watcher.stop()
        await fine.watcher.stop()


async def test_a_non_ascii_address_is_sent_with_smtputf8_when_offered(
    cm: Platform, smtp: SmtpSink
) -> None:
    assert smtp.smtputf8
    inv = await cm.merchant()
    to = f"müller-{tag()}@example.de"
    try:
        await create(inv, schema_test_invoice("X-1", to))
        assert await wait_codes(inv, "X-1", 2) == [2, 10]
        [mail] = await smtp.wait_for(to, 1)
        assert mail.recipients == [to]
        assert f"<{to}>".encode() in mail.raw  # the header as UTF-8 (SMTPUTF8)
    finally:
        await inv.watcher.stop()


# --- the lease ------------------------------------------------------------------------------


async def copy_job(
    cm: Platform, source: asyncpg.Record, *, website_key: str | None = None, **columns: Any
) -> int:
    """A message job written directly: the command of `source` (another website key and
    only the letter channel when `website_key` is given), with the columns given."""
    command = dict(source["command"])
    if website_key is not None:
        command["website_key"] = website_key
        command["payload"] = {**command["payload"], "channels": ["letter"]}
    names = "".join(f", {name}" for name in columns)
    values = "".join(f", ${i + 6}" for i in range(len(columns)))
    async with cm.notifier_pool.acquire() as conn:
        job_id: int = await conn.fetchval(
            "INSERT INTO message_jobs (command_id, website_key, invoice_number, step_index,"
            f" command{names}) VALUES ($1, $2, $3, $4, $5{values}) RETURNING id",
            uuid.uuid4(),
            command["website_key"],
            source["invoice_number"],
            source["step_index"],
            command,
            *columns.values(),
        )
    return job_id


async def test_a_lapsed_claim_is_sent_again_and_a_recorded_one_never(
    cm: Platform, smtp: SmtpSink
) -> None:
    """Jobs as a worker that died would leave them: `sending` with a lease in the past
    is claimed and sent once; one with a lease still running and a finished one are not
    sent."""
    inv = await cm.merchant()
    to = f"lease-{tag()}@example.test"
    try:
        await create(inv, schema_test_invoice("L-1", to))
        assert await wait_codes(inv, "L-1", 2) == [2, 10]
        await smtp.wait_for(to, 1)
        [source] = await jobs(cm, inv.website_key)
        past, future = datetime(2020, 1, 1, tzinfo=UTC), datetime(2999, 1, 1, tzinfo=UTC)
        lapsed = await copy_job(
            cm, source, status="sending", available_at=past, claim_token=uuid.uuid4()
        )
        held = await copy_job(
            cm, source, status="sending", available_at=future, claim_token=uuid.uuid4()
        )
        await copy_job(cm, source, status="done", outcome="sent", attempts=1)
        await smtp.wait_for(to, 2)  # the lapsed one

        async def recorded() -> bool:
            rows = {r["id"]: r for r in await jobs(cm, inv.website_key)}
            return rows[lapsed]["status"] == "done"

        await poll_until(recorded, what="the lapsed job recorded")
        await settle()
        assert len(smtp.to(to)) == 2
        rows = {r["id"]: r for r in await jobs(cm, inv.website_key)}
        assert rows[lapsed]["outcome"] == "sent" and rows[lapsed]["attempts"] == 1
        assert rows[held]["status"] == "sending"
    finally:
        await inv.watcher.stop()


# --- letters --------------------------------------------------------------------------------


async def test_a_letter_of_website_key_dot_dot_stays_inside_the_spool(
    cm: Platform, smtp: SmtpSink, spool: Path
) -> None:
    inv = await cm.merchant()
    to = f"spool-{tag()}@example.test"
    try:
        await create(inv, schema_test_invoice("D-1", to))
        assert await wait_codes(inv, "D-1", 2) == [2, 10]
        [source] = await jobs(cm, inv.website_key)
        job_id = await copy_job(cm, source, website_key="..")

        async def done() -> list[asyncpg.Record] | None:
            rows = [r for r in await jobs(cm, "..") if r["id"] == job_id]
            return rows if rows and rows[0]["status"] == "done" else None

        [row] = await poll_until(done, what="the letter of website key '..'")
        assert row["outcome"] == "sent" and row["channel"] == "letter", row
        letters = [p for p in spool.rglob("*.pdf") if p.name.startswith(f"D-1-step1-{job_id}")]
        assert len(letters) == 1
        assert letters[0].parent.parent == spool
        assert letters[0].parent.name.startswith("_")  # a hashed name, never `..`
        assert list(spool.parent.glob("*.pdf")) == []
        assert not (spool.parent / "D-1").exists()
    finally:
        await inv.watcher.stop()


async def test_a_postponed_job_counts_as_a_retry_outside_any_channel(
    cm: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = await cm.merchant()
    templates = NotifierRepository.templates
    before = REGISTRY.get_sample_value("cm_notifier_retries_total", {"channel": "none"}) or 0.0

    async def exploding(self: NotifierRepository, website_key: str, key: str) -> Any:
        if website_key == broken.website_key:
            raise RuntimeError("a bug that hits one merchant's jobs")
        return await templates(self, website_key, key)

    monkeypatch.setattr(NotifierRepository, "templates", exploding)
    try:
        await create(broken, schema_test_invoice("R-1", f"retry-{tag()}@example.test"))

        async def postponed() -> list[asyncpg.Record] | None:
            rows = await jobs(cm, broken.website_key)
            return rows if rows and rows[0]["attempts"] == 1 else None

        await poll_until(postponed, what="the broken job postponed")
        after = REGISTRY.get_sample_value("cm_notifier_retries_total", {"channel": "none"})
        assert after == before + 1
    finally:
        await broken.watcher.stop()
