"""The limits of the wire on the real broker and PostgreSQL: a command holding a value that
cannot be stored or computed is answered with a `CommandRejected` naming the field and
dead-lettered, and the next good command on the same partition is handled."""

from __future__ import annotations

from contracts import topics
from contracts.limits import MAX_INVOICE_LINES
from tests.support.invoices import (
    InvoiceClient,
    inv,
    invoice_payload,
    service,
)
from tests.support.kafka import poll_until

__all__ = ["inv", "service"]  # the fixtures

LINE = {"description": "Widget", "quantity": "1", "unit_price": "100.00", "vat_percentage": "21"}


async def test_unstorable_values_are_refused_naming_the_field_and_the_partition_moves_on(
    inv: InvoiceClient,
) -> None:
    number = "INV-LIMITS"  # one Kafka key: every command below is on the same partition
    refused = {
        await inv.command("CreateInvoice", invoice_payload(number, description="Order\x001")): {
            ("payload.description", "nul_character")
        },
        await inv.command(
            "CreateInvoice",
            invoice_payload(number, invoice_date="3001-01-01", due_date="3001-01-15"),
        ): {
            ("payload.invoice_date", "date_out_of_range"),
            ("payload.due_date", "date_out_of_range"),
        },
        await inv.command(
            "CreateInvoice", invoice_payload(number, lines=[LINE] * (MAX_INVOICE_LINES + 1))
        ): {("payload.lines", "too_long")},
    }
    good = await inv.command("CreateInvoice", invoice_payload(number, lines=[LINE]))

    for command_id, errors in refused.items():
        answer = await inv.answer(command_id)
        assert answer["type"] == "CommandRejected", answer
        assert {(e["field"], e["code"]) for e in answer["payload"]["errors"]} == errors

    answer = await inv.answer(good)
    assert answer["type"] == "CommandAccepted", answer
    [event] = await inv.events(number, 1)
    assert event["invoice"]["description"] == "Order 1"
    assert event["invoice"]["invoice_date"] == "2026-11-01"
    assert len(event["invoice"]["lines"]) == 1

    async def dead_lettered() -> bool:
        letters = [r.json()["payload"] for r in inv.watcher.on(inv.prefix + topics.DLQ)]
        return all(any(mid in letter["raw_value"] for letter in letters) for mid in refused)

    assert await poll_until(dead_lettered, what="the refused commands on the DLQ")
