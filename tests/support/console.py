"""The console in-process (web app on a free port, its runtime on the platform's topic
prefix, a schema of its own per test) next to the invoice service."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn

from services.console.accounts import add_user
from services.console.app import ConsoleSettings, build_console
from services.runtime.app import Service
from tests.support.invoices import InvoiceClient, invoice_payload
from tests.support.kafka import poll_until
from tests.support.net import free_port
from tests.support.notifier import new_secret, notifier_command
from tests.support.platform import Platform, platform
from tests.support.services import make_settings

PASSWORD = "correct horse battery staple"


@dataclass
class ConsoleStack:
    cm: Platform
    service: Service
    url: str
    schema: str
    database_url: str

    @property
    def pool(self) -> asyncpg.Pool:
        return self.service.runtime.pool

    async def user(self, website_key: str, culture: str = "nl-NL") -> str:
        """A console account of `website_key`; returns its username (password PASSWORD)."""
        username = f"{website_key}-{uuid.uuid4().hex[:6]}@example.test"
        assert await add_user(
            self.database_url,
            username,
            website_key,
            PASSWORD,
            culture=culture,
            time_zone="Europe/Amsterdam",
            schema=self.schema,
        )
        return username

    @contextlib.asynccontextmanager
    async def signed_in(self, username: str) -> AsyncIterator[httpx.AsyncClient]:
        """An HTTP client with a session of `username` (and its CSRF token in
        `client.headers`, as the API wants it)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            await self._sign_in(client, username)
            yield client

    async def _sign_in(self, client: httpx.AsyncClient, username: str) -> None:
        page = await client.get("/login")
        token = page.cookies.get("cm_console_login") or client.cookies.get("cm_console_login")
        answer = await client.post(
            "/login",
            data={"username": username, "password": PASSWORD, "csrf_token": token, "next": "/"},
        )
        assert answer.status_code == 303, answer.text
        async with self.pool.acquire() as conn:
            csrf = await conn.fetchval(
                f'SELECT csrf_token FROM "{self.schema}".sessions WHERE username = $1'
                " ORDER BY created_at DESC LIMIT 1",
                username,
            )
        client.headers["x-csrf-token"] = csrf

    async def row(self, website_key: str, number: str) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn:
            found = await conn.fetchrow(
                f'SELECT * FROM "{self.schema}".invoices'
                " WHERE website_key = $1 AND invoice_number = $2",
                website_key,
                number,
            )
        return dict(found) if found else None

    async def row_when(self, website_key: str, number: str, **expected: Any) -> dict[str, Any]:
        """The invoice's read-model row once it exists and its columns have the `expected`
        values."""

        async def check() -> dict[str, Any] | None:
            row = await self.row(website_key, number)
            if row and all(row[k] == v for k, v in expected.items()):
                return row
            return None

        return await poll_until(check, what=f"console row of {number} with {expected}")

    async def webhook_attempts(self, website_key: str, count: int) -> list[dict[str, Any]]:
        """The merchant's webhook delivery attempts in the read model (by attempt), once
        there are at least `count`."""

        async def found() -> list[dict[str, Any]] | None:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(
                    f'SELECT * FROM "{self.schema}".webhook_attempts WHERE website_key = $1'
                    " ORDER BY attempt, delivery_id",
                    website_key,
                )
            return [dict(r) for r in rows] if len(rows) >= count else None

        return await poll_until(found, what=f"{count} webhook attempts in the console")


@contextlib.asynccontextmanager
async def console_stack(
    kafka_bootstrap: str, database_url: str, *services: str, **settings: Any
) -> AsyncIterator[ConsoleStack]:
    """The console next to the invoice service and the `services` (with the platform's
    `settings`, e.g. the notifier's webhook timeout)."""
    async with platform(kafka_bootstrap, database_url, "invoice", *services, **settings) as cm:
        schema = f"console_{cm.prefix.strip('.')}"
        web, service = build_console(
            make_settings(kafka_bootstrap, database_url, cm.prefix),
            ConsoleSettings(console_cookie_secure=False, console_result_wait_s=5.0),
            schema=schema,
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(web, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        # The test runner keeps its own Ctrl-C handling.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        task = asyncio.create_task(server.serve())

        async def started() -> bool:
            if task.done():
                task.result()  # raises what stopped it
            return server.started

        await poll_until(started, what="the console's web server")
        try:
            yield ConsoleStack(cm, service, f"http://127.0.0.1:{port}", schema, database_url)
        finally:
            server.should_exit = True
            await task


#: The oracle's own bucket bounds (days past due, inclusive upper bounds).
ORACLE_BOUNDS = [("current", 0), ("1-30", 30), ("31-60", 60), ("61-90", 90), ("90+", 10**9)]


def aging_from_events(events: list[dict[str, Any]], as_of: date) -> dict[str, dict[str, Decimal]]:
    """The aging report computed from the invoice events alone: the last snapshot of each
    invoice, open amount incl. costs, real invoices, not written off/rejected/cancelled."""
    last: dict[str, dict[str, Any]] = {}
    for event in sorted(events, key=lambda e: e["sequence"]):
        last[event["invoice"]["invoice_key"]] = event["invoice"]
    out: dict[str, dict[str, Decimal]] = {}
    for snap in last.values():
        open_amount = Decimal(snap["open_amount_incl_admin_costs"])
        if snap["is_test"] or snap["status_code"] in (80, 90, 91) or open_amount <= 0:
            continue
        days = (as_of - date.fromisoformat(snap["due_date"])).days
        bucket = next(name for name, high in ORACLE_BOUNDS if days <= high)
        per = out.setdefault(snap["currency"], {name: Decimal(0) for name, _ in ORACLE_BOUNDS})
        per[bucket] += open_amount
    return out


AGING_AS_OF = date(2026, 12, 31)
#: Invoices of every bucket and every rule of the aging report (as of AGING_AS_OF).
AGING_PLAN = [  # number, due date, amount, currency
    ("AG-1", "2027-01-10", "100.10", "EUR"),  # current
    ("AG-2", "2026-12-31", "50.05", "EUR"),  # due today: current
    ("AG-3", "2026-12-30", "10.01", "EUR"),  # 1 day
    ("AG-4", "2026-12-01", "20.02", "EUR"),  # 30 days
    ("AG-5", "2026-11-30", "30.03", "EUR"),  # 31 days
    ("AG-6", "2026-10-02", "40.04", "EUR"),  # 90 days
    ("AG-7", "2026-10-01", "60.06", "EUR"),  # 91 days
    ("AG-8", "2026-09-01", "70.07", "USD"),  # 121 days, another currency
    ("AG-9", "2026-11-20", "80.08", "EUR"),  # written off: left out
    ("AG-10", "2026-11-20", "90.09", "EUR"),  # a test invoice: left out
    ("AG-11", "2026-11-20", "99.99", "EUR"),  # paid in part: 49.99 open
]


async def register_webhook(stack: ConsoleStack, merchant: InvoiceClient, url: str) -> None:
    """Register `url` as the merchant's webhook (RegisterWebhook, as its own systems would)
    and wait for it to be accepted."""
    command_id = await notifier_command(
        stack.cm.bootstrap,
        stack.cm.prefix,
        "RegisterWebhook",
        {"url": url, "secret": new_secret()},
        website_key=merchant.website_key,
        key=f"{merchant.website_key}:webhook",
    )
    assert (await merchant.answer(command_id))["type"] == "CommandAccepted"


async def create(inv: InvoiceClient, number: str, **overrides: Any) -> None:
    answer = await inv.answer(
        await inv.command("CreateInvoice", invoice_payload(number, **overrides))
    )
    assert answer["type"] == "CommandAccepted", answer


async def seed_aging(stack: ConsoleStack, merchant: InvoiceClient) -> list[dict[str, Any]]:
    """Create AGING_PLAN's invoices (AG-9 written off, AG-11 paid in part) and wait until
    the console has them; returns their invoice events."""
    for number, due, amount, currency in AGING_PLAN:
        await create(
            merchant,
            number,
            invoice_date="2026-08-01",
            due_date=due,
            amount_debit=amount,
            amount_vat="0.00",
            currency=currency,
            is_test=number == "AG-10",
        )
    written_off = await merchant.command("WriteOffInvoice", {"invoice_number": "AG-9"})
    assert (await merchant.answer(written_off))["type"] == "CommandAccepted"
    await merchant.transaction("AG-11", f"T-{uuid.uuid4().hex[:6]}", "50.00", "success")
    await stack.row_when(merchant.website_key, "AG-9", status_code=80)
    await stack.row_when(merchant.website_key, "AG-11", open_amount=Decimal("49.99"))
    events: list[dict[str, Any]] = []
    for number, *_ in AGING_PLAN:
        row = await stack.row_when(merchant.website_key, number)
        events += await merchant.events(number, row["last_sequence"])
    return events


@contextlib.asynccontextmanager
async def merchant_client(stack: ConsoleStack) -> AsyncIterator[InvoiceClient]:
    """A new merchant of the console stack's platform, its watcher stopped afterwards."""
    client = await stack.cm.merchant()
    try:
        yield client
    finally:
        await client.watcher.stop()


def console_fixtures(
    *services: str, with_browser: bool = False, **settings: Any
) -> tuple[Any, Any]:
    """A console test module's two fixtures, assigned as `stack, merchant =
    console_fixtures(...)`: `stack`, the console stack with `services` and `settings` for
    the module, and `merchant`, a new merchant of it for each test. `with_browser`: the
    stack asks for the `browser` fixture first, so that without a Chromium the module's
    tests skip before a stack starts."""

    async def plain(kafka_bootstrap: str, database_url: str) -> AsyncIterator[ConsoleStack]:
        async with console_stack(kafka_bootstrap, database_url, *services, **settings) as running:
            yield running

    async def after_browser(
        browser: Any, kafka_bootstrap: str, database_url: str
    ) -> AsyncIterator[ConsoleStack]:
        async for running in plain(kafka_bootstrap, database_url):
            yield running

    async def merchant(stack: ConsoleStack) -> AsyncIterator[InvoiceClient]:
        async with merchant_client(stack) as client:
            yield client

    return (
        pytest.fixture(scope="module", name="stack")(after_browser if with_browser else plain),
        pytest.fixture(name="merchant")(merchant),
    )
