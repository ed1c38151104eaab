"""The console on the real broker and PostgreSQL with the invoice service: invoice events
and command results become read-model rows; sign-in; every answer scoped to the merchant
signed in; actions publish commands whose answers come back; the aging report reconciles
with the invoice events to the cent."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import httpx

from contracts import topics
from tests.support.console import (
    AGING_AS_OF,
    PASSWORD,
    ConsoleStack,
    aging_from_events,
    console_fixtures,
    create,
    seed_aging,
)
from tests.support.invoices import InvoiceClient, invoice_payload
from tests.support.kafka import TopicWatcher, at_least, poll_until

stack, merchant = console_fixtures()


async def test_invoice_events_and_results_fill_the_read_models(
    stack: ConsoleStack, merchant: InvoiceClient
) -> None:
    await create(merchant, "RM-1", debtor={**invoice_payload("x")["debtor"], "code": "DEB-7"})
    row = await stack.row_when(merchant.website_key, "RM-1", status_code=10)
    assert row["open_amount"] == Decimal("121.00")
    assert row["currency"] == "EUR"
    assert row["debtor_code"] == "DEB-7"
    assert row["due_date"] == date(2026, 11, 15)
    assert row["scheme_key"] == row["snapshot"]["scheme_key"]
    assert "debtor" not in row["snapshot"]  # no personal data in the console
    assert row["next_step_index"] == row["snapshot"]["next_step_index"]

    paused = await merchant.command("PauseInvoice", {"invoice_number": "RM-1"})
    assert (await merchant.answer(paused))["type"] == "CommandAccepted"
    refused = await merchant.command("UnpauseInvoice", {"invoice_number": "NOPE"})
    assert (await merchant.answer(refused))["type"] == "CommandRejected"
    row = await stack.row_when(merchant.website_key, "RM-1", status_code=20)
    events = await merchant.events("RM-1", 2)
    assert row["last_sequence"] == events[-1]["sequence"]

    async def results() -> list[Any]:
        async with stack.pool.acquire() as conn:
            found = await conn.fetch(
                f'SELECT command_id, accepted, errors FROM "{stack.schema}".results'
                " WHERE website_key = $1 ORDER BY accepted",
                merchant.website_key,
            )
        return found if len(found) >= 3 else []  # CreateInvoice, Pause, the refused Unpause

    found = await poll_until(results, what="three command results")
    by_id = {str(r["command_id"]): r for r in found}
    assert by_id[paused]["accepted"] is True
    assert by_id[refused]["accepted"] is False
    assert by_id[refused]["errors"][0]["field"].startswith("payload.")

    async with stack.pool.acquire() as conn:
        timeline = await conn.fetch(
            f'SELECT sequence, event, status_code FROM "{stack.schema}".invoice_events'
            " WHERE website_key = $1 ORDER BY sequence",
            merchant.website_key,
        )
    assert [(r["sequence"], r["event"]) for r in timeline] == [
        (e["sequence"], e["event"]) for e in events
    ]
    assert timeline[-1]["status_code"] == 20


async def test_sign_in_refuses_a_wrong_password_and_a_missing_csrf_token(
    stack: ConsoleStack, merchant: InvoiceClient
) -> None:
    username = await stack.user(merchant.website_key)
    async with httpx.AsyncClient(base_url=stack.url) as client:
        page = await client.get("/login")
        assert page.status_code == 200
        token = client.cookies.get("cm_console_login")
        assert token and f'value="{token}"' in page.text
        cookie = page.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        wrong = await client.post(
            "/login", data={"username": username, "password": "not it at all", "csrf_token": token}
        )
        assert wrong.status_code == 401
        token = client.cookies.get("cm_console_login")
        no_csrf = await client.post("/login", data={"username": username, "password": PASSWORD})
        assert no_csrf.status_code == 403
        assert (await client.get("/invoices")).status_code == 303
        assert (await client.get("/api/invoices")).status_code == 401
    async with stack.pool.acquire() as conn:
        stored = await conn.fetchval(
            f'SELECT password_hash FROM "{stack.schema}".users WHERE username = $1', username
        )
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


async def test_every_answer_is_scoped_to_the_merchant_signed_in(stack: ConsoleStack) -> None:
    first, second = await stack.cm.merchant(), await stack.cm.merchant()
    try:
        await create(first, "MINE-1")
        await create(second, "THEIRS-1")
        mine = await stack.row_when(first.website_key, "MINE-1", status_code=10)
        theirs = await stack.row_when(second.website_key, "THEIRS-1", status_code=10)
        async with stack.signed_in(await stack.user(first.website_key)) as client:
            listed = (await client.get("/api/invoices")).json()
            assert [i["invoice_number"] for i in listed["invoices"]] == ["MINE-1"]
            assert (await client.get(f"/api/invoices/{mine['invoice_key']}")).status_code == 200
            for path in (
                f"/api/invoices/{theirs['invoice_key']}",
                f"/invoices/{theirs['invoice_key']}",
                f"/invoices/{theirs['invoice_key']}/live",
            ):
                answer = await client.get(path)
                assert answer.status_code == 404, path
                assert "THEIRS-1" not in answer.text
            acted = await client.post(f"/api/invoices/{theirs['invoice_key']}/actions/pause")
            assert acted.status_code == 404
            page = await client.get("/invoices", params={"number": "THEIRS"})
            assert "THEIRS-1" not in page.text
        assert (await stack.row(second.website_key, "THEIRS-1") or {})["status_code"] == 10
    finally:
        await first.watcher.stop()
        await second.watcher.stop()


async def test_an_action_publishes_the_command_and_shows_its_answer(
    stack: ConsoleStack, merchant: InvoiceClient
) -> None:
    await create(merchant, "ACT-1")
    row = await stack.row_when(merchant.website_key, "ACT-1", status_code=10)
    async with stack.signed_in(await stack.user(merchant.website_key)) as client:
        no_csrf = await client.post(
            f"/api/invoices/{row['invoice_key']}/actions/pause",
            headers={"x-csrf-token": "wrong"},
        )
        assert no_csrf.status_code == 403
        acted = await client.post(
            f"/api/invoices/{row['invoice_key']}/actions/pause", json={"reason": "on hold"}
        )
        body = acted.json()
        command_id = body["command_id"]

        async def answered() -> dict[str, Any] | None:
            found = (await client.get(f"/api/commands/{command_id}")).json()
            return found if found["status"] != "pending" else None

        answer = await poll_until(answered, what="the pause's answer in the console")
        assert answer["status"] == "accepted"
        await stack.row_when(merchant.website_key, "ACT-1", status_code=20)
        # Not disputed: the invoice service refuses, and the console shows why.
        again = await client.post(f"/api/invoices/{row['invoice_key']}/actions/resolve-dispute")
        rejected = await poll_until(
            lambda: _answer(client, again.json()["command_id"]), what="the second pause's answer"
        )
        assert rejected["status"] == "rejected" and rejected["errors"]
        detail = (await client.get(f"/api/invoices/{row['invoice_key']}")).json()
        assert {c["command_type"] for c in detail["commands"]} == {
            "PauseInvoice",
            "ResolveDispute",
        }
        assert any(c["accepted"] is False for c in detail["commands"])
        # The command travelled as the merchant's own, with the catalog's key.
        sent = merchant.answers(command_id)
        assert sent and sent[0]["website_key"] == merchant.website_key


async def _answer(client: Any, command_id: str) -> dict[str, Any] | None:
    found = (await client.get(f"/api/commands/{command_id}")).json()
    return found if found["status"] != "pending" else None  # type: ignore[no-any-return]


async def test_credit_note_form_shows_field_errors_and_sends_nothing(
    stack: ConsoleStack, merchant: InvoiceClient
) -> None:
    await create(merchant, "CN-1")
    row = await stack.row_when(merchant.website_key, "CN-1", status_code=10)
    async with stack.signed_in(await stack.user(merchant.website_key)) as client:
        csrf = client.headers["x-csrf-token"]
        bad = await client.post(
            f"/invoices/{row['invoice_key']}/credit-note",
            data={"csrf_token": csrf, "credit_note_number": "", "amount": "five"},
        )
        assert bad.status_code == 422
        assert "<code>credit_note_number</code>" in bad.text
        assert "<code>amount</code>" in bad.text
        async with stack.pool.acquire() as conn:
            sent = await conn.fetchval(
                f'SELECT count(*) FROM "{stack.schema}".sent_commands WHERE website_key = $1',
                merchant.website_key,
            )
        assert sent == 0
        good = await client.post(
            f"/invoices/{row['invoice_key']}/credit-note",
            data={"csrf_token": csrf, "credit_note_number": "CN-1-C", "amount": "21.00"},
        )
        assert good.status_code == 303
        await stack.row_when(merchant.website_key, "CN-1", open_amount=Decimal("100.00"))


async def test_the_aging_report_reconciles_with_the_invoice_events(
    stack: ConsoleStack, merchant: InvoiceClient
) -> None:
    as_of = AGING_AS_OF
    events = await seed_aging(stack, merchant)
    expected = aging_from_events(events, as_of)
    assert expected["EUR"]["current"] == Decimal("150.15")  # the oracle itself, by hand
    assert expected["EUR"]["61-90"] == Decimal("40.04")

    async with stack.signed_in(await stack.user(merchant.website_key)) as client:
        report = (await client.get("/api/reports/aging", params={"as_of": "2026-12-31"})).json()
        got = {
            c["currency"]: {k: Decimal(v) for k, v in c["amounts"].items()}
            for c in report["currencies"]
        }
        assert got == expected
        eur = next(c for c in report["currencies"] if c["currency"] == "EUR")
        assert Decimal(eur["total"]) == sum(expected["EUR"].values())
        csv_text = (await client.get("/reports/aging.csv", params={"as_of": "2026-12-31"})).text
        assert "2026-12-31,EUR,90+,1,60.06" in csv_text
        assert "2026-12-31,USD,90+,1,70.07" in csv_text
        page = await client.get("/reports/aging", params={"as_of": "2026-12-31"})
        assert page.status_code == 200 and "€" in page.text


def scheme_form(csrf: str, key: str, cost_day: str) -> dict[str, Any]:
    return {
        "csrf_token": csrf,
        "scheme_key": key,
        "name": "Soft, then statutory",
        "steps-0-action": "PaymentInvitation",
        "steps-0-days": "0",
        "steps-0-channels": "email",
        "steps-1-action": "Reminder",
        "steps-1-days": "7",
        "steps-1-channels": ["email", "letter"],
        "steps-1-states_costs": "on",
        "steps-3-action": "AdminCostIncrease",  # a blank row in between is left out
        "steps-3-days": cost_day,
        "steps-3-admin_cost": "statutory",
    }


async def test_the_scheme_form_shows_the_services_rules_and_saves_a_version(
    stack: ConsoleStack, merchant: InvoiceClient
) -> None:
    async with stack.signed_in(await stack.user(merchant.website_key)) as client:
        csrf = client.headers["x-csrf-token"]
        # Statutory costs 7 days after the 14-day letter: the invoice service's own rule.
        refused = await client.post("/schemes", data=scheme_form(csrf, "Soft-1", "14"))
        assert refused.status_code == 422
        assert 'data-code="statutory_without_14_day_letter"' in refused.text
        assert 'href="#steps-3-admin_cost">Step 3, admin cost' in refused.text
        assert 'value="Soft, then statutory"' in refused.text  # the form keeps its values
        built_in = await client.post("/schemes", data=scheme_form(csrf, "DefaultCM1", "30"))
        assert 'data-code="built_in_scheme"' in built_in.text
        async with stack.pool.acquire() as conn:
            sent = await conn.fetchval(
                f'SELECT count(*) FROM "{stack.schema}".sent_commands WHERE website_key = $1',
                merchant.website_key,
            )
        assert sent == 0

        saved = await client.post("/schemes", data=scheme_form(csrf, "Soft-1", "30"))
        assert saved.status_code == 303

        async def accepted() -> str | None:
            page = (await client.get("/schemes/sent")).text
            return page if "CommandAccepted" in page else None

        page = await poll_until(accepted, what="the scheme's answer")
        assert "3. AdminCostIncrease at day 30, costs statutory" in page
        # Its next version starts from what was saved.
        again = await client.get("/schemes/new", params={"from": "Soft-1"})
        assert 'name="steps-2-admin_cost" value="statutory"' in again.text
    await create(merchant, "SCH-1", scheme_key="Soft-1")
    row = await stack.row_when(merchant.website_key, "SCH-1", status_code=10)
    assert row["scheme_key"] == "Soft-1"


async def test_repeated_wrong_passwords_lock_the_username_for_a_while(
    stack: ConsoleStack, merchant: InvoiceClient
) -> None:
    username = await stack.user(merchant.website_key)
    async with httpx.AsyncClient(base_url=stack.url) as client:

        async def attempt(password: str) -> int:
            await client.get("/login")
            token = client.cookies.get("cm_console_login")
            answer = await client.post(
                "/login", data={"username": username, "password": password, "csrf_token": token}
            )
            return answer.status_code

        assert [await attempt("wrong password!") for _ in range(5)] == [401] * 5
        assert await attempt(PASSWORD) == 429  # even the right one, until the window ends
    async with stack.pool.acquire() as conn:
        await conn.execute(
            f'DELETE FROM "{stack.schema}".sign_in_failures WHERE key = $1', f"user:{username}"
        )
    async with stack.signed_in(username) as client:  # the window over: in again
        assert (await client.get("/api/invoices")).status_code == 200


def dso_from_events(
    events: list[dict[str, Any]], months: list[tuple[str, datetime, datetime, int]]
) -> dict[str, tuple[Decimal, Decimal, Decimal | None]]:
    """(open at the month's end, invoiced in it, DSO) per month, from the events alone."""
    out = {}
    for label, start, end, days in months:
        last: dict[str, dict[str, Any]] = {}
        for event in sorted(events, key=lambda e: e["sequence"]):
            if datetime.fromisoformat(event["occurred_at"]) < end:
                last[event["invoice"]["invoice_key"]] = event["invoice"]
        open_total = sum(
            (
                Decimal(s["open_amount_incl_admin_costs"])
                for s in last.values()
                if not s["is_test"]
                and s["status_code"] not in (80, 90, 91)
                and Decimal(s["open_amount_incl_admin_costs"]) > 0
            ),
            Decimal(0),
        )
        first = {e["invoice"]["invoice_key"]: e["invoice"] for e in events if e["sequence"] == 1}
        sales = sum(
            (
                Decimal(s["amount_debit"])
                for s in first.values()
                if not s["is_test"]
                and start.date() <= date.fromisoformat(s["invoice_date"]) < end.date()
            ),
            Decimal(0),
        )
        dso = (open_total / sales * days).quantize(Decimal("0.1")) if sales else None
        out[label] = (open_total, sales, dso)
    return out


async def test_days_sales_outstanding_reconciles_with_the_events(
    stack: ConsoleStack, merchant: InvoiceClient
) -> None:
    plan = [
        ("DSO-1", "2026-10-05", "100.00", False),
        ("DSO-2", "2026-11-10", "200.00", False),
        ("DSO-3", "2026-11-10", "500.00", True),  # a test invoice: left out
    ]
    for number, day, amount, is_test in plan:
        answer = await merchant.answer(
            await merchant.command(
                "CreateInvoice",
                invoice_payload(
                    number,
                    invoice_date=day,
                    due_date=day,
                    amount_debit=amount,
                    amount_vat="0.00",
                    is_test=is_test,
                ),
                occurred_at=f"{day}T09:00:00+00:00",
            )
        )
        assert answer["type"] == "CommandAccepted"
    await merchant.transaction(
        "DSO-1", "T-DSO-1", "40.00", "success", occurred_at="2026-11-20T10:00:00+00:00"
    )
    await stack.row_when(merchant.website_key, "DSO-1", open_amount=Decimal("60.00"))
    events = []
    for number, *_ in plan:
        row = await stack.row_when(merchant.website_key, number)
        events += await merchant.events(number, row["last_sequence"])
    for record in merchant.watcher.on(stack.cm.prefix + "cm.invoice.events"):
        body = record.json()
        for event in events:
            if event["invoice"]["invoice_key"] == body["payload"]["invoice"]["invoice_key"] and (
                event["sequence"] == body["payload"]["sequence"]
            ):
                event["occurred_at"] = body["occurred_at"]
    utc = UTC
    expected = dso_from_events(
        events,
        [
            ("2026-10", datetime(2026, 10, 1, tzinfo=utc), datetime(2026, 11, 1, tzinfo=utc), 31),
            ("2026-11", datetime(2026, 11, 1, tzinfo=utc), datetime(2026, 12, 1, tzinfo=utc), 30),
        ],
    )
    assert expected == {  # the oracle, by hand
        "2026-10": (Decimal("100.00"), Decimal("100.00"), Decimal("31.0")),
        "2026-11": (Decimal("260.00"), Decimal("200.00"), Decimal("39.0")),
    }
    async with stack.signed_in(await stack.user(merchant.website_key)) as client:
        report = (
            await client.get("/api/reports/dso", params={"until": "2026-11-15", "months": "2"})
        ).json()
        [eur] = report["currencies"]
        got = {
            m["month"]: (
                Decimal(m["receivables"]),
                Decimal(m["sales"]),
                Decimal(m["dso"]) if m["dso"] else None,
            )
            for m in eur["months"]
        }
        assert got == expected
        page = await client.get("/reports/dso", params={"until": "2026-11-15", "months": "2"})
        assert page.status_code == 200 and 'data-dso="39.0"' in page.text
        assert (
            "EUR,2026-11,260.00,200.00,30,39.0"
            in (
                await client.get("/reports/dso.csv", params={"until": "2026-11-15", "months": "2"})
            ).text
        )


async def test_a_template_is_previewed_from_an_invoice_checked_and_sent(
    stack: ConsoleStack, merchant: InvoiceClient
) -> None:
    await create(merchant, "TPL-1", amount_debit="242.00", amount_vat="42.00")
    await stack.row_when(merchant.website_key, "TPL-1", status_code=10)
    watcher = TopicWatcher(stack.cm.bootstrap, stack.cm.prefix + topics.NOTIFIER_COMMANDS)
    await watcher.start()
    try:
        async with stack.signed_in(await stack.user(merchant.website_key)) as client:
            csrf = client.headers["x-csrf-token"]
            form = {
                "csrf_token": csrf,
                "template_key": "friendly",
                "culture": "nl-NL",
                "channel": "email",
                "subject": "Factuur [InvoiceNumber]",
                "body": "Beste [DebtorName], nog open: [OpenAmount].",
            }
            preview = await client.post("/templates/preview", data=form)
            assert preview.status_code == 200
            assert "Factuur TPL-1" in preview.text
            assert "Beste Sam Sample, nog open: € 242,00." in preview.text.replace("\xa0", " ")
            wrong = await client.post(
                "/templates", data={**form, "body": "Hi [NoSuchTag] {{ debtor }}", "action": "save"}
            )
            assert wrong.status_code == 422
            assert 'data-code="unknown_tag"' in wrong.text
            assert 'data-code="template_syntax"' in wrong.text
            saved = await client.post("/templates", data={**form, "action": "save"})
            assert saved.status_code == 303
            listed = (await client.get("/templates")).text
            assert "friendly" in listed and "waiting for the answer" in listed

        def sent() -> list[Any]:
            return [
                r.json()
                for r in watcher.on(stack.cm.prefix + topics.NOTIFIER_COMMANDS)
                if r.json()["website_key"] == merchant.website_key
            ]

        [command] = await at_least(1, sent, what="the UpsertTemplate on the notifier's topic")
        assert command["type"] == "UpsertTemplate"
        assert command["payload"]["body"] == form["body"]
    finally:
        await watcher.stop()


async def test_a_webhook_is_registered_and_its_secret_is_not_kept(
    stack: ConsoleStack, merchant: InvoiceClient
) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    watcher = TopicWatcher(stack.cm.bootstrap, stack.cm.prefix + topics.NOTIFIER_COMMANDS)
    await watcher.start()
    try:
        async with stack.signed_in(await stack.user(merchant.website_key)) as client:
            csrf = client.headers["x-csrf-token"]
            bad = await client.post(
                "/webhooks",
                data={
                    "csrf_token": csrf,
                    "url": "not a url",
                    "secret": "whsec_short!",
                    "enabled": "on",
                },
            )
            assert bad.status_code == 422
            assert "<code>url</code>" in bad.text and "<code>secret</code>" in bad.text
            assert "whsec_short!" not in bad.text  # the secret is not sent back
            good = await client.post(
                "/webhooks",
                data={
                    "csrf_token": csrf,
                    "url": "https://hooks.example.test/cm",
                    "secret": secret,
                    "enabled": "on",
                },
            )
            assert good.status_code == 303
            assert "https://hooks.example.test/cm" in (await client.get("/webhooks")).text
        async with stack.pool.acquire() as conn:
            kept = await conn.fetchval(
                f'SELECT payload FROM "{stack.schema}".sent_commands'
                " WHERE website_key = $1 AND command_type = 'RegisterWebhook'",
                merchant.website_key,
            )
        assert kept["secret"] == "(not kept)" and secret not in json.dumps(kept)

        def sent() -> list[Any]:
            return [
                r.json()
                for r in watcher.on(stack.cm.prefix + topics.NOTIFIER_COMMANDS)
                if r.json()["website_key"] == merchant.website_key
            ]

        [command] = await at_least(1, sent, what="the RegisterWebhook on the notifier's topic")
        assert command["payload"]["secret"] == secret  # the notifier gets it, encrypts it
    finally:
        await watcher.stop()


async def test_a_page_part_asked_without_a_session_sends_the_page_to_sign_in(
    stack: ConsoleStack,
) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as client:
        answer = await client.get("/invoices/some-key/live", headers={"HX-Request": "true"})
    assert answer.status_code == 200
    assert answer.headers["hx-redirect"].startswith("/login?next=")
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")
