"""The same failure repeated is logged once per window, with a count, never per attempt."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from structlog.testing import capture_logs

from services.runtime.health import Health, reporting_to
from services.runtime.logs import RepeatedFailureLog, RepeatedRecordFilter, get_logger
from services.runtime.worker import Backoff, StopFlag, run_worker


class FakeClock:
    def __init__(self, step: float = 0.0) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def fail(kind: type[Exception] = ConnectionError) -> Exception:
    try:
        raise kind("müller@example.de")  # personal data in the text: never logged
    except Exception as exc:
        return exc


def test_a_failure_every_half_second_is_logged_at_doubling_windows_with_its_counts() -> None:
    clock = FakeClock()
    lines = Lines()
    failures = RepeatedFailureLog(lines, "failed", first_window_s=0.5, clock=clock)
    logged = []
    for _ in range(100):
        logged.append(failures.failed(fail(), worker="w"))
        clock.now += 0.5  # the backoff, at its cap
    failures.recovered(lines, "recovered", worker="w")

    failed = [fields for event, fields in lines.lines if event == "failed"]
    # Windows of 0.5, 1, 2, 4, ... seconds: the failures that end one are logged.
    assert [f["failures_in_a_row"] for f in failed] == [1, 2, 4, 8, 16, 32, 64]
    assert sum(logged) == len(failed)
    assert [f["unlogged"] for f in failed] == [0, 0, 1, 3, 7, 15, 31]
    [(_event, recovered)] = [line for line in lines.lines if line[0] == "recovered"]
    assert recovered["after_failures"] == 100
    assert len(failed) + sum(f["unlogged"] for f in failed) + recovered["unlogged"] == 100
    assert all(f["error_type"] == "ConnectionError" for f in failed)
    assert "müller" not in repr(lines.lines)


def test_the_window_is_capped_and_a_new_kind_of_failure_is_logged_at_once() -> None:
    clock = FakeClock()
    lines = Lines()
    failures = RepeatedFailureLog(lines, "failed", first_window_s=1, max_window_s=4, clock=clock)
    for _ in range(40):  # one per second
        failures.failed(fail())
        clock.now += 1
    times = [f["failures_in_a_row"] for _, f in lines.lines]
    assert times[:4] == [1, 2, 4, 8]
    assert all(b - a == 4 for a, b in itertools.pairwise(times[3:])), times
    assert failures.failed(fail(TimeoutError)), "another failure is news"
    assert lines.lines[-1][1]["error_type"] == "TimeoutError"
    assert not failures.failed(fail(TimeoutError)), "and then it repeats"


async def test_a_worker_failing_every_round_logs_a_few_lines_and_reports_its_health() -> None:
    stop = StopFlag()
    calls = 0
    health = Health(threshold_s=0)
    seen_failing: list[bool] = []

    async def step() -> int:
        nonlocal calls
        calls += 1
        if calls == 30:
            seen_failing.append("worker:relay" in health.failing())
        if calls <= 60:
            raise OSError("the database went away")
        stop.stopped = True
        return 1

    with capture_logs() as logs:
        failure_log = RepeatedFailureLog(
            get_logger("test").error,
            "background work failed; backing off",
            first_window_s=1,
            clock=FakeClock(1),
        )
        with reporting_to(health):
            task = asyncio.create_task(
                run_worker(
                    "relay",
                    step,
                    idle_s=10,
                    backoff=Backoff(initial_s=0.0001, max_s=0.0001),
                    stop=stop,
                    failure_log=failure_log,
                )
            )
        await asyncio.wait_for(task, timeout=30)
    failed = [e for e in logs if e["event"] == "background work failed; backing off"]
    assert [e["failures_in_a_row"] for e in failed] == [1, 2, 4, 8, 16, 32]
    assert all(e["worker"] == "relay" for e in failed)
    [recovered] = [e for e in logs if e["event"] == "background work recovered"]
    assert recovered["after_failures"] == 60
    assert sum(e["unlogged"] for e in failed) + len(failed) + recovered["unlogged"] == 60
    assert seen_failing == [True]
    assert health.failing() == {}, "recovered"


def test_a_library_warning_repeated_every_second_is_logged_at_doubling_windows() -> None:
    clock = FakeClock()
    dedup = RepeatedRecordFilter(first_window_s=1, max_window_s=600, clock=clock)

    def record(msg: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("asyncpg.pool", level, __file__, 1, msg, None, None)

    passed = []
    for second in range(64):
        clock.now = float(second)
        line = record("Failed to restore the pool connection floor; retrying")
        if dedup.filter(line):
            passed.append((second, line.getMessage()))
    assert [second for second, _ in passed] == [0, 1, 3, 7, 15, 31, 63]
    assert passed[0][1] == "Failed to restore the pool connection floor; retrying"
    assert passed[2][1].endswith("[the same 1 more times since the last line]")
    assert passed[-1][1].endswith("[the same 31 more times since the last line]")
    assert dedup.filter(record("another warning")), "another message is news"
    assert dedup.filter(record("an info line", logging.INFO))
    assert dedup.filter(record("an info line", logging.INFO)), "below WARNING: never held"
    clock.now = 63 + 601  # quiet for longer than the largest window: afresh
    again = record("Failed to restore the pool connection floor; retrying")
    assert dedup.filter(again) and "the same" not in again.getMessage()
    assert not dedup.filter(record("Failed to restore the pool connection floor; retrying"))
