"""The console in a real headless Chromium, against the invoice service on the real broker
and PostgreSQL: sign in, list and filter, open an invoice, pause it and see the status
change arrive, a rejected form, a second merchant who cannot reach the first's invoice by
URL, the aging report matching the invoice events, and the list on a phone."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.support.console import (
    AGING_AS_OF,
    PASSWORD,
    ConsoleStack,
    aging_from_events,
    console_fixtures,
    create,
    seed_aging,
)
from tests.support.invoices import InvoiceClient, debtor, invoice_payload

#: Generous: a loaded machine renders slowly; these are deadlines, not waits.
TIMEOUT_MS = 60_000


stack, merchant = console_fixtures(with_browser=True)


async def sign_in(
    browser: Any,
    stack: ConsoleStack,
    username: str,
    screenshots: Path | None = None,
    **context: Any,
) -> Any:
    ctx = await browser.new_context(**context)
    ctx.set_default_timeout(TIMEOUT_MS)
    page = await ctx.new_page()
    await page.goto(f"{stack.url}/invoices")
    assert "/login" in page.url  # not signed in: sent to the sign-in page
    await shot(page, screenshots, "sign-in")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{stack.url}/invoices")
    return page


async def unlabelled_fields(page: Any) -> list[str]:
    """Visible form fields without a label (accessibility)."""
    return await page.evaluate(  # type: ignore[no-any-return]
        """() => [...document.querySelectorAll('input, select, textarea')]
             .filter(e => e.type !== 'hidden' && e.labels.length === 0
                          && !e.getAttribute('aria-label'))
             .map(e => e.name)"""
    )


async def shot(page: Any, screenshots: Path | None, name: str) -> None:
    if screenshots is not None:
        await page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)


async def test_sign_in_list_filter_open_and_pause(
    browser: Any, stack: ConsoleStack, merchant: InvoiceClient, screenshots: Path | None
) -> None:
    await create(merchant, "WEB-1", debtor=debtor("D-100"), amount_debit="1234.50")
    # WEB-2 is overdue since 1 July 2026 and paid in part: its page shows the statutory
    # interest with a per-period breakdown.
    created = await merchant.command(
        "CreateInvoice",
        invoice_payload(
            "WEB-2",
            debtor=debtor("D-200"),
            invoice_date="2026-06-01",
            due_date="2026-06-30",
            amount_debit="2420.00",
            amount_vat="420.00",
        ),
        occurred_at="2026-06-01T09:00:00+00:00",
    )
    assert (await merchant.answer(created))["type"] == "CommandAccepted"
    await merchant.transaction(
        "WEB-2", "T-WEB-2", "400.00", "success", occurred_at="2026-08-14T10:00:00+00:00"
    )
    await create(merchant, "OTHER-3", debtor=debtor("D-200"))
    paused = await merchant.command("PauseInvoice", {"invoice_number": "OTHER-3"})
    assert (await merchant.answer(paused))["type"] == "CommandAccepted"
    await stack.row_when(merchant.website_key, "OTHER-3", status_code=20)
    await stack.row_when(merchant.website_key, "WEB-1", status_code=10)
    await stack.row_when(merchant.website_key, "WEB-2", status_code=10, last_sequence=2)
    page = await sign_in(browser, stack, await stack.user(merchant.website_key), screenshots)

    rows = page.locator("table.list tbody tr")
    await rows.nth(2).wait_for()
    assert await rows.count() == 3
    assert "€\xa01.234,50" in await page.locator("table.list").inner_text()  # nl-NL
    assert await unlabelled_fields(page) == []
    await shot(page, screenshots, "invoices")

    # Filter by status: htmx swaps the results in and the address keeps the filter.
    await page.get_by_label("Status").select_option(label="Paused")
    await page.wait_for_url("**status=20**")
    await page.locator("table.list tbody tr").first.wait_for()
    assert await page.locator("table.list tbody tr").count() == 1
    assert "OTHER-3" in await page.locator("table.list").inner_text()
    # Search by invoice number, and by debtor code.
    await page.goto(f"{stack.url}/invoices?number=WEB")
    assert await page.locator("table.list tbody tr").count() == 2
    await page.goto(f"{stack.url}/invoices?debtor=D-200&number=WEB")
    assert await page.locator("table.list tbody tr").count() == 1

    # Open an invoice, pause it, see the answer and the status change arrive.
    await page.get_by_role("link", name="WEB-2").click()
    await page.get_by_role("heading", name="Invoice WEB-2").wait_for()
    assert (await page.locator("#status").inner_text()).strip() == "Active"
    assert await unlabelled_fields(page) == []
    await page.get_by_label("Reason (optional)").first.fill("customer called")
    await page.locator("#action-pause").click()
    await page.locator("#status", has_text="Paused").wait_for()
    await page.locator(".command.accepted", has_text="PauseInvoice").wait_for()
    assert "CommandAccepted" in await page.locator("#commands").inner_text()
    assert "Changed status" in await page.locator(".timeline").inner_text()
    # Overdue: the statutory interest, its kind and the periods (the payment splits one).
    interest = page.locator("#interest")
    await interest.wait_for()
    assert await interest.is_visible()
    assert "art. 6:119 BW" in await page.locator("#interest-kind").inner_text()
    assert await page.locator("#interest-accrued").is_visible()
    periods = page.locator("#interest-periods tbody tr")
    assert await periods.count() >= 2
    assert "1 jul 2026" in await periods.first.inner_text()  # the day after the due date
    await shot(page, screenshots, "invoice")
    await stack.row_when(merchant.website_key, "WEB-2", status_code=20)
    await page.context.close()


async def test_a_rejected_form_shows_the_field_errors(
    browser: Any, stack: ConsoleStack, merchant: InvoiceClient
) -> None:
    await create(merchant, "FORM-1")
    row = await stack.row_when(merchant.website_key, "FORM-1", status_code=10)
    page = await sign_in(browser, stack, await stack.user(merchant.website_key))
    await page.goto(f"{stack.url}/invoices/{row['invoice_key']}")
    await page.get_by_label("Amount (EUR, including VAT)").fill("twelve")
    await page.locator("#action-credit-note").click()
    errors = page.locator("#form-errors")
    await errors.wait_for()
    text = await errors.inner_text()
    assert "credit_note_number" in text and "amount" in text
    # A form that is well-formed but breaks a rule of the invoice service (more than is
    # open) is sent, and the service's CommandRejected shows.
    await page.get_by_label("Credit note number").fill("FORM-1-BIG")
    await page.get_by_label("Amount (EUR, including VAT)").fill("500.00")
    await page.locator("#action-credit-note").click()
    await page.locator(".command.rejected", has_text="CreateCreditNote").wait_for()
    # Then the corrected form goes through and the answer comes back.
    await page.get_by_label("Credit note number").fill("FORM-1-CN")
    await page.get_by_label("Amount (EUR, including VAT)").fill("21.00")
    await page.locator("#action-credit-note").click()
    await page.locator(".command.accepted", has_text="CreateCreditNote").wait_for()
    await page.locator("#open-amount", has_text="100,00").wait_for()
    await page.context.close()


async def test_another_merchant_cannot_reach_the_invoice_by_url(
    browser: Any, stack: ConsoleStack, merchant: InvoiceClient
) -> None:
    await create(merchant, "SECRET-1")
    row = await stack.row_when(merchant.website_key, "SECRET-1", status_code=10)
    other = await stack.cm.merchant()
    try:
        page = await sign_in(browser, stack, await stack.user(other.website_key))
        for path in (f"/invoices/{row['invoice_key']}", f"/api/invoices/{row['invoice_key']}"):
            answer = await page.goto(f"{stack.url}{path}")
            assert answer.status == 404, path
            assert "SECRET-1" not in await page.content()
        await page.goto(f"{stack.url}/invoices?number=SECRET")
        assert "No invoices match." in await page.locator("#results").inner_text()
        await page.context.close()
    finally:
        await other.watcher.stop()


async def test_the_aging_report_matches_the_events(
    browser: Any, stack: ConsoleStack, merchant: InvoiceClient, screenshots: Path | None
) -> None:
    events = await seed_aging(stack, merchant)
    expected = aging_from_events(events, AGING_AS_OF)
    page = await sign_in(browser, stack, await stack.user(merchant.website_key, "en-GB"))
    await page.get_by_role("link", name="Aging report").click()
    await page.get_by_label("As of").fill(AGING_AS_OF.isoformat())
    await page.get_by_role("button", name="Show").click()
    await page.wait_for_url(f"**as_of={AGING_AS_OF.isoformat()}")
    for currency, buckets in expected.items():
        table = page.locator(f"#aging-table-{currency}")
        for bucket, amount in buckets.items():
            cell = table.locator(f'tr[data-bucket="{bucket}"] td[data-amount]')
            assert Decimal(await cell.get_attribute("data-amount")) == amount, (currency, bucket)
        total = table.locator('tr[data-bucket="total"] td[data-amount]')
        assert Decimal(await total.get_attribute("data-amount")) == sum(buckets.values())
    # en-GB amounts, and a chart drawn by Chart.js for each currency.
    assert "€150.15" in await page.locator("#aging-table-EUR").inner_text()
    drawn = await page.evaluate(
        "() => [...document.querySelectorAll('canvas.report-chart')]"
        ".map(c => Chart.getChart(c) !== undefined)"
    )
    assert drawn == [True, True]
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Download CSV").click()
    download = await download_info.value
    csv_text = Path(await download.path()).read_text()
    assert f"{AGING_AS_OF},EUR,total,8," in csv_text
    await shot(page, screenshots, "aging")
    await page.context.close()


async def test_the_list_on_a_phone(
    browser: Any, stack: ConsoleStack, merchant: InvoiceClient, screenshots: Path | None
) -> None:
    await create(merchant, "PHONE-1")
    await stack.row_when(merchant.website_key, "PHONE-1", status_code=10)
    page = await sign_in(
        browser,
        stack,
        await stack.user(merchant.website_key),
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
    )
    await page.locator("table.list tbody tr").first.wait_for()
    widths = await page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth, window.visualViewport.width]"
    )
    # A phone browser widens the layout viewport to fit wide content: compare with the
    # device's 390 px, not only with what the page reports.
    assert widths[0] <= 390 and widths[1] <= 390, f"the page is wider than the phone: {widths}"
    # Each row is a card whose cells say what they are.
    label = await page.evaluate(
        "() => getComputedStyle(document.querySelector('table.list td'), '::before').content"
    )
    assert label == '"Invoice"'
    await shot(page, screenshots, "invoices-phone")
    await page.context.close()


async def test_a_scheme_form_rejected_then_saved(
    browser: Any, stack: ConsoleStack, merchant: InvoiceClient, screenshots: Path | None
) -> None:
    page = await sign_in(browser, stack, await stack.user(merchant.website_key))
    await page.get_by_role("link", name="Schemes").click()
    await page.get_by_role("link", name="Create a scheme").click()
    await page.get_by_label("Scheme key").fill("Web-Soft")
    await page.get_by_label("Name").fill("Soft, then statutory")
    await page.locator("#steps-0-action").select_option("PaymentInvitation")
    await page.locator("#steps-0-days").fill("0")
    await page.locator('input[name="steps-0-channels"][value="email"]').check()
    await page.locator("#steps-1-action").select_option("Reminder")
    await page.locator("#steps-1-days").fill("7")
    await page.locator('input[name="steps-1-channels"][value="letter"]').check()
    await page.locator("#steps-1-states_costs").check()
    await page.locator("#steps-2-action").select_option("AdminCostIncrease")
    await page.locator("#steps-2-days").fill("14")
    await page.locator("#steps-2-admin_cost").fill("statutory")
    assert await unlabelled_fields(page) == []
    await page.locator("#save-scheme").click()

    errors = page.locator("#form-errors")
    await errors.wait_for()
    assert await errors.locator('[data-code="statutory_without_14_day_letter"]').count() == 1
    assert await page.locator("#steps-2-admin_cost").get_attribute("aria-invalid") == "true"
    await shot(page, screenshots, "scheme-rejected")
    # The form kept what was typed: move the costs past the letter's term and save.
    assert await page.locator("#steps-1-states_costs").is_checked()
    await page.locator("#steps-2-days").fill("30")
    await page.locator("#save-scheme").click()
    await page.wait_for_url("**/schemes#sent")
    await page.locator(".command.accepted", has_text="Web-Soft").wait_for()
    assert "3. AdminCostIncrease at day 30" in await page.locator("#sent").inner_text()
    await page.context.close()


async def test_a_template_preview_follows_the_typing(
    browser: Any, stack: ConsoleStack, merchant: InvoiceClient, screenshots: Path | None
) -> None:
    await create(merchant, "TPL-9")
    await stack.row_when(merchant.website_key, "TPL-9", status_code=10)
    page = await sign_in(browser, stack, await stack.user(merchant.website_key))
    await page.get_by_role("link", name="Templates").click()
    await page.get_by_role("link", name="Write a template").click()
    await page.get_by_label("Template key").fill("friendly")
    await page.get_by_label("Subject (e-mail, letter)").fill("Factuur [InvoiceNumber]")
    await page.get_by_label("Text").fill("Beste [DebtorName], open: [OpenAmount].")
    # htmx posts the form as it changes and swaps the preview in: no button pressed.
    await page.locator("#preview-subject", has_text="Factuur TPL-9").wait_for()
    assert "Sam Sample" in await page.locator("#preview-body").inner_text()
    await page.get_by_label("Text").fill("Beste [Nope]")
    await page.locator('#form-errors [data-code="unknown_tag"]').wait_for()
    assert await unlabelled_fields(page) == []
    await page.get_by_label("Text").fill("Beste [DebtorName], open: [OpenAmount].")
    await page.locator("#preview-body").wait_for()
    await shot(page, screenshots, "template")
    await page.locator("#save-template").click()
    await page.wait_for_url("**/templates#sent")
    assert "friendly" in await page.locator("#sent").inner_text()
    await page.context.close()
