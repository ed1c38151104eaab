"""An invoice keeps the scheme version it was created with (docs/invoices.md, "An invoice
keeps its scheme version"), on the real broker and Postgres: UpsertScheme a new version
while invoices run on the old one; the old invoices follow the old steps (by hand and by
the timer the scheduler holds for them), new invoices the new ones."""

from __future__ import annotations

import json
from typing import Any

from contracts import topics
from tests.support.invoices import InvoiceClient, inv, invoice_payload, service
from tests.support.kafka import poll_until, publish, read_all

SCHEME = "Versioned"

#: Version 1: two custom events, 0 and 10 days after the due date (2026-11-15).
V1 = [
    {"index": 1, "action": "CustomEvent", "days": 0, "message": "v1 step 1 [InvoiceNumber]"},
    {"index": 2, "action": "CustomEvent", "days": 10, "message": "v1 step 2"},
]
#: Version 2: other days, an admin cost and a third step.
V2 = [
    {"index": 1, "action": "CustomEvent", "days": 3, "message": "v2 step 1 [InvoiceNumber]"},
    {"index": 2, "action": "AdminCostIncrease", "days": 5, "admin_cost": "7.50"},
    {"index": 3, "action": "CustomEvent", "days": 20, "message": "v2 step 3"},
]


__all__ = ["inv", "service"]  # the fixtures


async def accepted(
    inv: InvoiceClient, type_: str, payload: dict[str, Any], **kw: Any
) -> dict[str, Any]:
    answer = await inv.answer(await inv.command(type_, payload, **kw))
    assert answer["type"] == "CommandAccepted", answer
    return answer  # type: ignore[no-any-return]


async def upsert(inv: InvoiceClient, steps: list[dict[str, Any]]) -> str:
    answer = await accepted(
        inv,
        "UpsertScheme",
        {"scheme_key": SCHEME, "name": "Versioned", "steps": steps},
        key=f"{inv.website_key}:scheme:{SCHEME}",
    )
    return str(answer["payload"]["keys"]["scheme_version"])


async def create(inv: InvoiceClient, number: str, *, test: bool) -> dict[str, Any]:
    extra = {"is_test": True, "description": "schema_test versions"} if test else {}
    await accepted(inv, "CreateInvoice", invoice_payload(number, scheme_key=SCHEME, **extra))
    return (await inv.events(number, 1))[0]["invoice"]  # type: ignore[no-any-return]


async def trigger(inv: InvoiceClient, number: str) -> dict[str, Any]:
    """Run the test invoice's next step; its answer."""
    return await inv.answer(await inv.command("TriggerNextStep", {"invoice_number": number}))


def what_ran(event: dict[str, Any]) -> tuple[str, str]:
    """A step's event as (event, its message or amount)."""
    parameters = {p["key"]: p["value"] for p in event["event_parameters"]}
    return event["event"], parameters.get("CustomEventMessage") or parameters.get("Amount", "")


async def step_timer(inv: InvoiceClient, number: str) -> dict[str, Any]:
    """The last ScheduleTimer the invoice service asked the scheduler for, for `number`."""
    topic = inv.prefix + topics.SCHEDULER_COMMANDS
    key = f"{inv.website_key}:{number}"

    async def found() -> dict[str, Any] | None:
        timers = [
            record.json()["payload"]
            for record in await read_all(inv.bootstrap, topic)
            if record.json()["type"] == "ScheduleTimer"
            and record.json()["website_key"] == inv.website_key
            and record.json()["payload"]["key"] == key
        ]
        return timers[-1] if timers else None

    return await poll_until(found, what=f"the step timer of {number}")


async def test_an_invoice_keeps_its_scheme_version_when_the_scheme_changes(
    inv: InvoiceClient,
) -> None:
    assert await upsert(inv, V1) == "1"
    old_test = await create(inv, "OLD-T", test=True)
    old = await create(inv, "OLD-1", test=False)
    for snapshot in (old_test, old):
        assert snapshot["scheme_version"] == 1
        assert snapshot["next_step_index"] == 1
        assert snapshot["next_step_due_at"] == "2026-11-15T00:00:00Z"  # v1: due + 0
    timer = await step_timer(inv, "OLD-1")  # set for version 1's step 1
    assert timer["message"]["payload"]["scheme_version"] == 1
    assert (await trigger(inv, "OLD-T"))["type"] == "CommandAccepted"  # v1 step 1 ran

    # A new version while the old invoices are halfway.
    assert await upsert(inv, V2) == "2"
    new_test = await create(inv, "NEW-T", test=True)
    new = await create(inv, "NEW-1", test=False)
    for snapshot in (new_test, new):
        assert snapshot["scheme_version"] == 2
        assert snapshot["next_step_due_at"] == "2026-11-18T00:00:00Z"  # v2: due + 3

    # The old test invoice goes on with version 1 and ends where version 1 ends.
    assert (await trigger(inv, "OLD-T"))["type"] == "CommandAccepted"
    end = await trigger(inv, "OLD-T")
    assert [e["code"] for e in end["payload"]["errors"]] == ["no_next_step"]
    events = await inv.events("OLD-T", 3)
    assert [what_ran(e) for e in events[1:]] == [
        ("CustomEvent", "v1 step 1 OLD-T"),
        ("CustomEvent", "v1 step 2"),
    ]
    assert {e["invoice"]["scheme_version"] for e in events} == {1}
    assert events[-1]["invoice"]["amount_admin_costs"] == "0.00"

    # The new test invoice runs version 2's three steps.
    for _ in V2:
        assert (await trigger(inv, "NEW-T"))["type"] == "CommandAccepted"
    events = await inv.events("NEW-T", 4)
    assert [what_ran(e) for e in events[1:]] == [
        ("CustomEvent", "v2 step 1 NEW-T"),
        ("IncreasedAdminFee", "7.50"),
        ("CustomEvent", "v2 step 3"),
    ]
    assert events[-1]["invoice"]["amount_admin_costs"] == "7.50"

    # The old invoice's timer, set before version 2, fires as the scheduler fires it:
    # version 1's step 1 runs, and its next step is version 1's step 2 (due + 10).
    fired = {**timer["message"], "occurred_at": timer["due_at"]}
    await publish(
        inv.bootstrap,
        inv.prefix + timer["topic"],
        [(timer["key"], json.dumps(fired).encode())],
    )
    ran = (await inv.events("OLD-1", 2))[1]
    assert what_ran(ran) == ("CustomEvent", "v1 step 1 OLD-1")
    assert ran["invoice"]["scheme_version"] == 1
    assert ran["invoice"]["previous_step_index"] == 1
    assert ran["invoice"]["next_step_index"] == 2
    assert ran["invoice"]["next_step_due_at"] == "2026-11-25T00:00:00Z"
    # The new invoice's timer is version 2's.
    assert (await step_timer(inv, "NEW-1"))["message"]["payload"]["scheme_version"] == 2
