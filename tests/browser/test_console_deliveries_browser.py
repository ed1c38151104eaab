"""Webhook deliveries in the console, in a real headless Chromium, with the invoice,
scheduler and notifier services on the real broker and PostgreSQL: a push the merchant's
endpoint refuses once shows on the invoice page as failed with its retry time; when the
retry delivers it, the page shows that by itself; the webhook's delivery log lists both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.console.web import fmt_datetime
from tests.support.console import (
    PASSWORD,
    ConsoleStack,
    console_fixtures,
    create,
    register_webhook,
)
from tests.support.invoices import InvoiceClient
from tests.support.notifier import HttpSink, Request

#: Generous: a loaded machine renders slowly; these are deadlines, not waits.
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def endpoint() -> Iterator[HttpSink]:
    with HttpSink() as sink:
        yield sink


stack, merchant = console_fixtures(
    "scheduler", "notifier", with_browser=True, webhook_timeout_s=2.0
)


async def test_a_failed_delivery_and_its_retry_on_the_invoice_page_and_in_the_log(
    browser: Any,
    stack: ConsoleStack,
    merchant: InvoiceClient,
    endpoint: HttpSink,
    screenshots: Path | None,
) -> None:
    website_key = merchant.website_key
    failures = {"left": 1}

    def fails_once(request: Request) -> int:
        if request.json()["Invoice"]["WebsiteKey"] != website_key:
            return 200
        if failures["left"] > 0:
            failures["left"] -= 1
            return 503
        return 200

    endpoint.responder = fails_once
    await register_webhook(stack, merchant, endpoint.url)
    await create(merchant, "WDB-1", scheme_key="DefaultNone")
    invoice = await stack.row_when(website_key, "WDB-1", status_code=10)
    (failed,) = await stack.webhook_attempts(website_key, 1)
    retry_at = failed["next_retry_at"]
    shown_retry = fmt_datetime(retry_at, "nl-NL", "Europe/Amsterdam")

    ctx = await browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        page = await ctx.new_page()
        await page.goto(f"{stack.url}/invoices/{invoice['invoice_key']}")
        await page.get_by_label("Username").fill(await stack.user(website_key))
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(f"**/invoices/{invoice['invoice_key']}")

        deliveries = page.locator("#deliveries")
        failed_row = deliveries.locator('tr[data-outcome="failed"][data-attempt="1"]')
        await failed_row.wait_for()
        assert "HTTP 503" in await failed_row.inner_text()
        assert shown_retry in await failed_row.inner_text()

        # The retry timer fires and delivers: the section refreshes by itself (htmx).
        await stack.cm.tick(retry_at)
        delivered_row = deliveries.locator('tr[data-outcome="delivered"][data-attempt="2"]')
        await delivered_row.wait_for()
        assert "HTTP 200" in await delivered_row.inner_text()
        assert await deliveries.locator("tr.attempt").count() == 2

        # The delivery log, reached from the webhook page.
        await page.get_by_role("link", name="Webhook", exact=True).click()
        await page.locator("#delivery-log-link").click()
        await page.wait_for_url("**/webhooks/deliveries")
        log = page.locator("#attempts")
        await log.locator('tr[data-outcome="delivered"][data-attempt="2"]').wait_for()
        assert await log.locator('tr[data-outcome="failed"][data-attempt="1"]').count() == 1
        assert "No delivery is waiting for a retry." in await page.locator("#retries").inner_text()
        await page.get_by_role("link", name="Show failures only").click()
        await page.wait_for_url("**failed=1")
        assert await page.locator('#attempts tr[data-outcome="delivered"]').count() == 0
        assert await page.locator('#attempts tr[data-outcome="failed"]').count() == 1
        if screenshots is not None:
            await page.goto(f"{stack.url}/webhooks/deliveries")
            await page.screenshot(path=str(screenshots / "webhook-deliveries.png"), full_page=True)
    finally:
        await ctx.close()
