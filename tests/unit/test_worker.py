"""The one background-work loop: backoff on failure, one log line per wait, no tight loop."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from services.runtime.worker import Backoff, StopFlag, run_worker


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(initial_s=0.5, max_s=3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


async def test_a_failing_step_backs_off_logs_once_per_wait_and_recovers() -> None:
    calls: list[str] = []
    stop = StopFlag()
    waits: list[float] = []
    backoff = Backoff(initial_s=0.001, max_s=0.004)
    original = backoff.next_delay

    def recorded() -> float:
        delay = original()
        waits.append(delay)
        return delay

    backoff.next_delay = recorded  # type: ignore[method-assign]

    async def step() -> int:
        calls.append("call")
        if len(calls) <= 4:
            raise ValueError("müller@example.de is not a valid recipient")  # personal data
        stop.stopped = True
        return 1

    with capture_logs() as logs:
        await asyncio.wait_for(
            run_worker("test", step, idle_s=10, backoff=backoff, stop=stop), timeout=5
        )
    assert len(calls) == 5
    assert waits == [0.001, 0.002, 0.004, 0.004]
    failures = [e for e in logs if e["event"] == "background work failed; backing off"]
    assert [e["failures_in_a_row"] for e in failures] == [1, 2, 3, 4]
    assert all(e["error_type"] == "ValueError" for e in failures)
    assert "müller" not in repr(logs), "an exception's text never reaches the log"
    assert [e["after_failures"] for e in logs if e["event"] == "background work recovered"] == [4]


async def test_an_idle_worker_wakes_at_once_when_told() -> None:
    wake = asyncio.Event()
    stop = StopFlag()
    rounds = 0
    first_round = asyncio.Event()

    async def step() -> int:
        nonlocal rounds
        rounds += 1
        first_round.set()
        if rounds == 2:
            stop.stopped = True
        return 0

    task = asyncio.create_task(run_worker("idle", step, idle_s=60, wake=wake, stop=stop))
    await asyncio.wait_for(first_round.wait(), timeout=5)
    await asyncio.sleep(0)  # let it reach its idle wait
    wake.set()
    await asyncio.wait_for(task, timeout=5)  # without the wake-up it would idle for 60 s
    assert rounds == 2
