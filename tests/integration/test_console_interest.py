"""The console's statutory interest on the real broker and PostgreSQL with the invoice
service (docs/console.md "Statutory interest"): rebuilt from the invoice events alone, it
agrees to the cent with the invoice service's `interest_accrued` for an invoice with a
payment and a credit note across a rate change, in a merchant time zone that moves the
days; the page shows it with the per-period table."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from zoneinfo import ZoneInfo

from tests.support.console import ConsoleStack, console_fixtures
from tests.support.invoices import InvoiceClient, debtor, invoice_payload

stack, merchant = console_fixtures()


ZONE = "Pacific/Kiritimati"  # UTC+14: every change below is on the next day there


async def test_the_console_agrees_with_the_invoice_service_to_the_cent(
    stack: ConsoleStack, merchant: InvoiceClient
) -> None:
    settings = await merchant.command(
        "UpdateMerchantSettings",
        {"time_zone": ZONE},
        key=f"{merchant.website_key}:merchant",
        occurred_at="2023-05-01T09:00:00+00:00",
    )
    assert (await merchant.answer(settings))["type"] == "CommandAccepted"
    company = {k: v for k, v in debtor("B-1").items() if k != "person"}
    company["company"] = {"name": "Acme BV"}
    # Due 2023-05-31 (handelsrente: 10.5% in the half year to 2023-06-30, 12% after).
    created = await merchant.command(
        "CreateInvoice",
        invoice_payload(
            "INT-1",
            invoice_date="2023-05-17",
            due_date="2023-05-31",
            amount_debit="5000.00",
            amount_vat="0.00",
            debtor=company,
        ),
        occurred_at="2023-05-17T09:00:00+00:00",
    )
    assert (await merchant.answer(created))["type"] == "CommandAccepted"
    await merchant.transaction(
        "INT-1", f"T-{uuid.uuid4().hex[:6]}", "1200.00", "success",
        occurred_at="2023-06-20T11:00:00+00:00",
    )  # fmt: skip
    await merchant.events("INT-1", 2)  # the payment's event first: a deterministic order
    note = await merchant.command(
        "CreateCreditNote",
        {"original_invoice_number": "INT-1", "credit_note_number": "CN-1", "amount": "800.00"},
        occurred_at="2023-08-31T12:00:00+00:00",
    )
    assert (await merchant.answer(note))["type"] == "CommandAccepted"

    events = await merchant.events("INT-1", 3)
    last = events[-1]
    service_figure = Decimal(last["invoice"]["interest_accrued"])
    assert service_figure > 0
    assert last["invoice"]["time_zone"] == ZONE
    assert last["invoice"]["interest_kind"] == "commercial"
    row = await stack.row_when(merchant.website_key, "INT-1", last_sequence=last["sequence"])
    assert row["last_event_at"].astimezone(ZoneInfo(ZONE)).date() == date(2023, 9, 1)

    async with stack.signed_in(await stack.user(merchant.website_key)) as client:
        answer = await client.get(
            f"/api/invoices/{row['invoice_key']}", params={"as_of": "2023-09-01"}
        )
        assert answer.status_code == 200, answer.text
        interest = answer.json()["interest"]
        assert interest["reconciled"], interest["why_not"]
        assert Decimal(interest["accrued"]) == service_figure
        assert Decimal(interest["snapshot"]["accrued"]) == service_figure
        assert interest["kind"] == "commercial" and interest["article"] == "art. 6:119a BW"
        periods = interest["periods"]
        # The payment on 21 June (Kiritimati) splits the first half year; 1 July the rate.
        assert [(p["from"], p["to"], p["percent"]) for p in periods] == [
            ("2023-06-01", "2023-06-21", "10.5"),
            ("2023-06-22", "2023-06-30", "10.5"),
            ("2023-07-01", "2023-09-01", "12"),
        ]
        assert abs(sum(Decimal(p["interest"]) for p in periods) - service_figure) <= Decimal(
            "0.01"
        ) * len(periods)

        # Counting on (today, by default): the credit note lowers the base from 2 September.
        later = (
            await client.get(f"/api/invoices/{row['invoice_key']}", params={"as_of": "2023-12-31"})
        ).json()["interest"]
        assert later["reconciled"] and Decimal(later["accrued"]) > service_figure
        assert Decimal(later["periods"][-1]["base"]) == Decimal(periods[-1]["base"]) - Decimal(
            "800.00"
        )
        bad = await client.get(f"/api/invoices/{row['invoice_key']}", params={"as_of": "soon"})
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "as_of"

        page = await client.get(f"/invoices/{row['invoice_key']}")
        assert page.status_code == 200
        assert 'id="interest-periods"' in page.text
        assert "Wettelijke handelsrente (art. 6:119a BW)" in page.text
        figure = f"{service_figure:,.2f}".replace(",", "x").replace(".", ",").replace("x", ".")
        assert f"€ {figure}" in page.text.replace("\xa0", " ")  # nl-NL, as of the last event
