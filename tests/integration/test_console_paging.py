"""The console's invoice list stays an index range read at scale: for a merchant with
many invoices (next to other merchants'), every filter and a deep page read at most a
page's worth of rows, in index order (no sort of the merchant's invoices, no sequential
scan), with the plans PostgreSQL picks once the table is analysed.

Rows are generated in SQL (the read model's table as the consumers fill it), so the
test measures the queries, not the consumers."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import asyncpg
import pytest

from services.console.app import definition
from services.console.repository import InvoiceFilter, PageKey, invoice_page, page_query
from services.runtime.db import create_pool, migrate

#: The large merchant's invoices (a million behaves the same: the plans read one index
#: range; this keeps the test's setup quick on a shared machine).
BIG = 200_000
OTHERS = 50_000
LIMIT = 50


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    schema = f"console_paging_{uuid.uuid4().hex[:8]}"
    running = await create_pool(database_url, schema, min_size=1, max_size=2)
    await migrate(running, schema, definition().migrations)
    async with running.acquire() as conn:
        for website_key, count in (("big", BIG), ("small-1", OTHERS), ("small-2", OTHERS)):
            await conn.execute(
                "INSERT INTO invoices (website_key, invoice_key, invoice_number, type,"
                " status_code, is_test, is_paid, scheme_key, step_index, next_step_index,"
                " next_step_due_at, debtor_code, currency, amount_debit, open_amount,"
                " invoice_date, due_date, last_sequence, last_event_at, snapshot, amount_paid,"
                " admin_costs, admin_costs_paid)"
                " SELECT $1, 'k' || lpad(g::text, 9, '0'), 'INV-' || g, 'RegularInvoice',"
                " (ARRAY[10, 10, 10, 20, 21, 80, 91])[1 + g % 7], false, g % 11 = 0,"
                " (ARRAY['DefaultCM1', 'Soft', 'Hard'])[1 + g % 3], NULLIF(g % 6, 0),"
                " NULL, NULL, 'D-' || (g % 5000), 'EUR', 100, 100,"
                " date '2025-01-01' + (g % 700), date '2025-01-15' + (g % 700), 1, now(),"
                " '{}'::jsonb, 0, 0, 0 FROM generate_series(1, $2) AS g",
                website_key,
                count,
            )
        await conn.execute("ANALYZE invoices")
    try:
        yield running
    finally:
        async with running.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await running.close()


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += nodes(child)
    return found


async def explain(conn: Any, filters: InvoiceFilter, after: PageKey | None) -> dict[str, Any]:
    sql, args = page_query("big", filters, after, LIMIT)
    # A generic plan too: the pool's prepared statements may switch to one.
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    try:
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
    finally:
        await conn.execute("RESET plan_cache_mode")
    document = raw if isinstance(raw, list) else json.loads(raw)
    return document[0]["Plan"]  # type: ignore[no-any-return]


CASES = {
    "no filter": InvoiceFilter(),
    "status": InvoiceFilter(status=20),
    "scheme": InvoiceFilter(scheme="Soft"),
    "step": InvoiceFilter(step=3),
    "debtor": InvoiceFilter(debtor="D-42"),
    "number prefix": InvoiceFilter(number="INV-1999"),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("deep", [False, True], ids=["first page", "deep page"])
async def test_a_page_reads_one_index_range(pool: asyncpg.Pool, name: str, deep: bool) -> None:
    filters = CASES[name]
    after = PageKey(date(2026, 1, 1), "k000100000") if deep else None
    async with pool.acquire() as conn:
        if deep and filters.number:  # 111 numbers match: the second page is the deep one
            _, after = await invoice_page(conn, "big", filters, None, LIMIT)
        plan = await explain(conn, filters, after)
        rows, _ = await invoice_page(conn, "big", filters, after, LIMIT)
    every = nodes(plan)
    kinds = {n["Node Type"] for n in every}
    assert "Seq Scan" not in kinds, (name, kinds)
    scans = [n for n in every if "Index" in n["Node Type"]]
    assert scans and all(n["Relation Name"] == "invoices" for n in scans), kinds
    read = sum(n["Actual Rows"] * n.get("Actual Loops", 1) for n in scans)
    removed = sum(n.get("Rows Removed by Filter", 0) for n in scans)
    # At most the page (plus one), or for a prefix search the few numbers that match;
    # never the merchant's 200,000 invoices.
    assert read + removed <= 2_000, (name, read, removed, kinds)
    if name != "number prefix":
        assert "Sort" not in kinds, (name, kinds)
    assert rows, name
    assert all(r["invoice_number"].startswith(filters.number or "") for r in rows)
    keys = [(r["due_date"], r["invoice_key"]) for r in rows]
    assert keys == sorted(keys, reverse=True)
    if after is not None:
        assert all(k < (after.due_date, after.invoice_key) for k in keys)
