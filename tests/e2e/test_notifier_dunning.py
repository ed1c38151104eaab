"""DefaultCM1 with real messages: invoice, scheduler and notifier on the manual clock, a
real SMTP server and the merchant's webhook endpoint."""

from __future__ import annotations

from datetime import UTC, datetime

from standardwebhooks import Webhook

from tests.support.invoices import invoice_payload
from tests.support.kafka import poll_until
from tests.support.notifier import HttpSink, SmtpSink, new_secret, notifier_command
from tests.support.platform import days, platform

CREATED = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
DUE = datetime(2026, 11, 15, tzinfo=UTC)


async def test_default_cm1_with_real_e_mails_and_signed_webhooks(
    kafka_bootstrap: str, database_url: str
) -> None:
    smtp, endpoint = SmtpSink(), HttpSink()
    smtp.start()
    endpoint.start()
    secret = new_secret()
    try:
        async with platform(
            kafka_bootstrap, database_url, "invoice", "scheduler", "notifier", smtp_port=smtp.port
        ) as cm:
            inv = cm.invoices
            mid = await notifier_command(
                cm.bootstrap,
                cm.prefix,
                "RegisterWebhook",
                {"url": endpoint.url, "secret": secret},
                website_key=inv.website_key,
                key=f"{inv.website_key}:webhook",
            )
            assert (await inv.answer(mid))["type"] == "CommandAccepted"
            await cm.tick(CREATED)
            mid = await inv.command(
                "CreateInvoice", invoice_payload("INV-1"), occurred_at=CREATED.isoformat()
            )
            assert (await inv.answer(mid))["type"] == "CommandAccepted"
            await inv.events("INV-1", 2)  # the invitation, at registration
            # Tick on the days steps fall due (every timer due by a Tick fires).
            for count, moment in enumerate(
                (DUE + days(7), DUE + days(21), DUE + days(38), DUE + days(52)), start=3
            ):
                await cm.tick(moment)
                await inv.events("INV-1", count)

            async def six() -> list[dict[str, object]] | None:
                bodies = [r.json()["Invoice"] for r in endpoint.accepted()]
                return bodies if len(bodies) >= 6 else None

            pushes = await poll_until(six, what="six webhook pushes")
    finally:
        endpoint.stop()
        smtp.stop()

    assert [(p["Event"], str(p["EventDateTime"])[:10]) for p in pushes] == [
        ("ChangedStatus", "2026-11-01"),
        ("SentPaymentInvitationMessage", "2026-11-01"),
        ("SentReminderMessage", "2026-11-22"),
        ("SentReminderMessage", "2026-12-06"),
        ("IncreasedAdminFee", "2026-12-23"),
        ("TransferredToCollectionAgency", "2027-01-06"),
    ]
    assert [p["EventSequence"] for p in pushes] == [1, 2, 3, 4, 5, 6]
    for request in endpoint.accepted():
        Webhook(secret).verify(request.body, request.headers)
    mails = smtp.to("jan@example.test")
    assert [m.subject for m in mails] == [
        "Factuur INV-1",
        "Herinnering factuur INV-1",
        "Laatste herinnering factuur INV-1 (veertiendagenbrief)",
    ]
    assert "€ 121,00" in mails[1].text
    assert "€ 40,00" in mails[2].text and "14 dagen" in mails[2].text
    assert all("https://pay.example.test/INV" in m.text for m in mails)
