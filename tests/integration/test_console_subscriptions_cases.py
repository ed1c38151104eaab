"""The console's subscriptions and collection cases, with the subscription and collection
services on the real broker and PostgreSQL: their events fill the read models, the lists
and detail pages are the merchant's own, the stop and close actions publish commands
whose answers and effects come back, and the collection results reconcile with the case
events."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from contracts import topics
from tests.support.collection import manual_case
from tests.support.console import ConsoleStack, console_stack
from tests.support.kafka import TopicWatcher, envelope, poll_until, publish, topic_of
from tests.support.subscriptions import subscription


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, database_url: str) -> AsyncIterator[ConsoleStack]:
    async with console_stack(
        kafka_bootstrap, database_url, "scheduler", "subscription", "collection"
    ) as running:
        yield running


async def send(stack: ConsoleStack, website_key: str, type_: str, payload: dict[str, Any]) -> None:
    body = envelope(
        type_, payload, website_key=website_key, occurred_at="2026-01-01T09:00:00+00:00"
    )
    key = payload.get("subscription_key") or payload["case_key"]
    default = (
        topics.SUBSCRIPTION_COMMANDS
        if "subscription_key" in payload
        else topics.COLLECTION_COMMANDS
    )
    await publish(
        stack.cm.bootstrap,
        stack.cm.prefix + topic_of(type_, default),
        [(f"{website_key}:{key}", json.dumps(body).encode())],
    )


async def row(
    stack: ConsoleStack, table: str, key_column: str, website_key: str, key: str, **expected: Any
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        async with stack.pool.acquire() as conn:
            found = await conn.fetchrow(
                f'SELECT * FROM "{stack.schema}".{table} WHERE website_key = $1 AND {key_column} = $2',
                website_key,
                key,
            )
        if found and all(found[k] == v for k, v in expected.items()):
            return dict(found)
        return None

    return await poll_until(check, what=f"{table} row {key} with {expected}")


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def test_subscriptions_list_detail_and_stop(stack: ConsoleStack) -> None:
    shop, other = f"shop-{uuid.uuid4().hex[:8]}", f"shop-{uuid.uuid4().hex[:8]}"
    await send(stack, shop, "CreateSubscription", subscription("SUB-1"))
    await send(stack, other, "CreateSubscription", subscription("SUB-OTHER"))
    await row(stack, "subscriptions", "subscription_key", shop, "SUB-1", status="active")
    await row(stack, "subscriptions", "subscription_key", other, "SUB-OTHER")
    async with stack.signed_in(await stack.user(shop)) as client:
        listed = (await client.get("/subscriptions")).text
        assert "SUB-1" in listed and "SUB-OTHER" not in listed
        assert "SUB-1" not in (await client.get("/subscriptions", params={"key": "X"})).text
        assert (await client.get("/subscriptions/SUB-OTHER")).status_code == 404
        detail = await client.get("/subscriptions/SUB-1")
        assert detail.status_code == 200 and "Basic plan" in detail.text
        stopped = await client.post(
            "/subscriptions/SUB-1/stop",
            data={
                "csrf_token": CSRF.search(detail.text).group(1),  # type: ignore[union-attr]
                "end_date": "2026-01-31",
                "reason": "moved",
            },
        )
        assert stopped.status_code == 303
        # It stops once its last period is billed: until then it has an end date.
        stopped_row = await row(
            stack,
            "subscriptions",
            "subscription_key",
            shop,
            "SUB-1",
            last_event="SubscriptionStopped",
        )
        assert stopped_row["snapshot"]["end_date"] == "2026-01-31"

        async def answered() -> str | None:
            page = (await client.get("/subscriptions/SUB-1")).text
            return page if "CommandAccepted" in page else None

        page = await poll_until(answered, what="the stop's answer on the page")
        assert "Subscription stopped" in page


async def test_cases_list_close_and_collection_results(stack: ConsoleStack) -> None:
    shop = f"shop-{uuid.uuid4().hex[:8]}"
    watcher = TopicWatcher(stack.cm.bootstrap, stack.cm.prefix + topics.COLLECTION_EVENTS)
    await watcher.start()
    try:
        await send(stack, shop, "CreateCase", manual_case("CASE-1"))
        await send(
            stack,
            shop,
            "CreateCase",
            manual_case(
                "CASE-2",
                amount="50.50",
                line_items=[
                    {
                        "description": "Hours",
                        "quantity": "1",
                        "unit_price": "50.50",
                        "vat_percentage": "0",
                    }
                ],
            ),
        )
        await row(stack, "cases", "case_key", shop, "CASE-1", state="preparing")
        await row(stack, "cases", "case_key", shop, "CASE-2", state="preparing")
        async with stack.signed_in(await stack.user(shop)) as client:
            assert "CASE-2" in (await client.get("/cases", params={"state": "preparing"})).text
            found = (await client.get("/cases", params={"key": "CASE-2"})).text
            assert "CASE-2" in found and "CASE-1<" not in found
            detail = await client.get("/cases/CASE-1")
            csrf = CSRF.search(detail.text).group(1)  # type: ignore[union-attr]
            # Closing needs a reason: the form says so and nothing is sent.
            no_reason = await client.post("/cases/CASE-1/actions/close", data={"csrf_token": csrf})
            assert no_reason.status_code == 422 and "<code>reason</code>" in no_reason.text
            # CASE-2 goes on: prepared, and (no configuration) to its review.
            prepared = await client.post("/cases/CASE-2/actions/prepare", data={"csrf_token": csrf})
            assert prepared.status_code == 303
            moved = await row(stack, "cases", "case_key", shop, "CASE-2", last_event="CasePrepared")
            assert moved["state"] == "reviewing"
            page = (await client.get("/cases/CASE-2")).text
            assert 'id="action-approve"' in page and 'id="action-reject"' in page
            closed = await client.post(
                "/cases/CASE-1/actions/close",
                data={"csrf_token": CSRF.search(detail.text).group(1), "reason": "paid to us"},  # type: ignore[union-attr]
            )
            assert closed.status_code == 303
            await row(stack, "cases", "case_key", shop, "CASE-1", state="closed")

            def last_snapshots() -> dict[str, dict[str, Any]]:
                out: dict[str, dict[str, Any]] = {}
                for record in watcher.on(stack.cm.prefix + topics.COLLECTION_EVENTS):
                    body = record.json()
                    if body["website_key"] == shop:
                        out[body["payload"]["case"]["case_key"]] = body["payload"]["case"]
                return out

            async def settled() -> dict[str, dict[str, Any]] | None:
                found = last_snapshots()
                return (
                    found
                    if found.get("CASE-1", {}).get("state") == "closed"
                    and found.get("CASE-2", {}).get("state") == "reviewing"
                    else None
                )

            cases = await poll_until(settled, what="both cases' events")
            expected: dict[str, tuple[int, Decimal, Decimal]] = {}
            for case in cases.values():
                count, amount, collected = expected.get(case["state"], (0, Decimal(0), Decimal(0)))
                expected[case["state"]] = (
                    count + 1,
                    amount + Decimal(case["amount"]),
                    collected + Decimal(case["collected_amount"]),
                )
            report = (await client.get("/api/reports/collection")).json()["currencies"]
            assert [r["currency"] for r in report] == ["EUR"]
            got = {
                s["state"]: (s["cases"], Decimal(s["amount"]), Decimal(s["collected"]))
                for s in report[0]["states"]
                if s["cases"]
            }
            assert (
                got
                == expected
                == {
                    "closed": (1, Decimal("121.00"), Decimal("0.00")),
                    "reviewing": (1, Decimal("50.50"), Decimal("0.00")),
                }
            )
            assert (await client.get("/reports/collection")).status_code == 200
    finally:
        await watcher.stop()
