"""The bill-run benchmark's rows come from the services' own code (bench/billrun_data.py):
building its template runs the subscription handler and the scheduler's storage against a
recording connection, so a change to either that the bench did not follow fails here, not
at the start of a benchmark run."""

from __future__ import annotations

from datetime import UTC, datetime

from bench.billrun_data import Templates, build_one


async def test_the_template_is_built_through_the_services_code_and_matches_slow_rows() -> None:
    start = datetime.now(UTC).date()
    built = await build_one("00000007", "bench-shop-007", start, "DefaultNone")
    assert set(built.subscription) == {"subscriptions", "rate_plan_versions"}
    assert set(built.timers) == {"timers"}
    assert len(built.subscription["rate_plan_versions"][1]) == 2  # two plans
    templates = await Templates.make(3, start, "DefaultNone")
    await templates.verify([0, 1, 2])  # rows from the template = rows built the slow way
