"""An Emergency on a pending transfer (70), lifted: the invoice goes back to 70 and the
collection service opens a case of its own for the return (docs/invoices.md "Emergency on
a pending transfer"). The invoice service, the scheduler and the collection service run
in-process on the real broker and PostgreSQL."""

from __future__ import annotations

from typing import Any

from services.collection.handlers import auto_case_key
from tests.integration.test_collection_service import Collection, _invoice_at_70, col, configure
from tests.support.kafka import poll_until

__all__ = ["col"]  # the fixture: invoice, scheduler and collection services, a merchant


async def test_unpause_after_an_emergency_on_70_keeps_the_transfer(col: Collection) -> None:
    await configure(col, "main", "AG-1", ("0", "review"))  # the case waits for a review
    await _invoice_at_70(col, "INV-E")
    first = auto_case_key(col.website_key, "INV-E")
    prepared = (await col.events(first, 2))[-1]
    assert (prepared["event"], prepared["case"]["state"]) == ("CasePrepared", "reviewing")
    invoices = col.cm.invoices

    stop = await invoices.command("SetEmergency", {"invoice_number": "INV-E"})
    assert (await invoices.answer(stop))["type"] == "CommandAccepted"
    closed = (await col.events(first, 3))[-1]
    assert (closed["event"], closed["reason"]) == (
        "CaseClosed",
        "the invoice was emergency-stopped",
    )

    lift = await invoices.command("UnpauseInvoice", {"invoice_number": "INV-E"})
    assert (await invoices.answer(lift))["type"] == "CommandAccepted"

    async def back_at_70() -> dict[str, Any] | None:
        events = invoices.events_now("INV-E")
        last = events[-1] if events else None
        if last and last["event"] == "ChangedStatus" and last["invoice"]["status_code"] == 70:
            return last  # type: ignore[no-any-return]
        return None

    returned = await poll_until(back_at_70, what="INV-E back at 70")
    assert returned["event_parameters"] == [{"key": "StatusCode", "value": "70"}]
    second = auto_case_key(col.website_key, f"INV-E:{returned['sequence']}")
    reopened = await col.events(second, 2)
    assert [e["event"] for e in reopened] == ["CaseCreated", "CasePrepared"]
    assert reopened[-1]["case"]["invoice_number"] == "INV-E"
    # the first case stays closed
    assert col.events_now(first)[-1]["event"] == "CaseClosed"
