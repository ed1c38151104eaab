"""Messages to one debtor about one invoice go out in the order they were asked for,
however slow a send is: their outcomes become the invoice's events, in sequence order.

Seen before the fix: with one 60-day jump of the manual clock, the notifier sent the
invitation, the reminders and the 14-day letter concurrently; when the invitation's
send was slow, the reminder's outcome came first and the invoice recorded
SentReminderMessage before SentPaymentInvitationMessage.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support import notifier as support
from tests.support.invoices import invoice_payload
from tests.support.notifier import SmtpSink
from tests.support.platform import days, platform

CREATED = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
DUE = datetime(2026, 11, 15, tzinfo=UTC)


async def test_a_slow_invitation_is_not_overtaken_by_the_reminders(
    kafka_bootstrap: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = support._SmtpHandler.handle_DATA

    async def slow_invitation(self: Any, server: Any, session: Any, envelope: Any) -> Any:
        # The SMTP server takes a second over the invitation (a slow link, a busy server).
        if b"Subject: Factuur" in envelope.content:
            await asyncio.sleep(1.0)
        return await original(self, server, session, envelope)

    monkeypatch.setattr(support._SmtpHandler, "handle_DATA", slow_invitation)
    smtp = SmtpSink()
    smtp.start()
    try:
        async with platform(
            kafka_bootstrap, database_url, "invoice", "scheduler", "notifier", smtp_port=smtp.port
        ) as cm:
            inv = cm.invoices
            await cm.tick(CREATED)
            command_id = await inv.command(
                "CreateInvoice", invoice_payload("INV-1"), occurred_at=CREATED.isoformat()
            )
            assert (await inv.answer(command_id))["type"] == "CommandAccepted"
            await cm.tick(DUE + days(60))  # every step of DefaultCM1 is due at once
            events = await inv.events("INV-1", 6)
    finally:
        smtp.stop()
    # ChangedStatus, then the invitation, two reminders, the 14-day letter, the costs step.
    assert [e["event_code"] for e in events] == [2, 10, 4, 4, 7, 8]
    subjects = [mail.subject for mail in smtp.to("jan@example.test")]
    assert subjects and subjects[0].startswith("Factuur"), subjects
