"""One way to run background work: a loop around a step, with backoff and bounded logging.

Every service's background work (the outbox relay, the scheduler's clock, the notifier's
senders, inbox retention) is a *step*: an async function that does one round of work and
returns how much it did. `run_worker` calls it forever:

- work was done → the next round starts at once;
- nothing to do → it waits `idle_s` (or until `wake` is set);
- the step raised → it waits with exponential backoff (`Backoff`) and logs the failure
  once per log window (`RepeatedFailureLog`: a line per wait while the backoff still
  grows, then ever rarer, at most one per 10 minutes), with the number of failures in a
  row and of those not logged, never once per attempt in a tight loop. The first success
  after failures is logged once too.
- the worker reports each failure and success to its service's `Health` (`/healthz`
  turns unhealthy when it has been failing for longer than the threshold).

`CancelledError` always ends the loop. A `stop` flag lets a caller end it between rounds
without cancelling a step half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from services.runtime import health as health_board
from services.runtime.logs import RepeatedFailureLog, get_logger


def _error(event: str, **fields: Any) -> None:
    """Log through a logger looked up at the call: a module-level one would keep the
    configuration of its first use (`cache_logger_on_first_use`), so a test capturing
    logs after a service ran in the same process would see nothing."""
    get_logger(__name__).error(event, **fields)


def _info(event: str, **fields: Any) -> None:
    """As `_error`, at info level."""
    get_logger(__name__).info(event, **fields)


WORKER_FAILURES = Counter(
    "cm_worker_failures_total", "Background work rounds that raised, by worker", ["worker"]
)


@dataclass
class Backoff:
    """Exponential backoff: `initial_s`, doubled per failure in a row, capped at `max_s`."""

    initial_s: float = 0.5
    max_s: float = 30.0
    failures: int = 0

    def next_delay(self) -> float:
        self.failures += 1
        return min(self.max_s, self.initial_s * 2.0 ** (self.failures - 1))

    def reset(self) -> None:
        self.failures = 0


@dataclass
class StopFlag:
    """Set to end a worker after its current round (no cancellation mid-step)."""

    stopped: bool = False


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (when there is one) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def run_worker(
    name: str,
    step: Callable[[], Awaitable[int]],
    *,
    idle_s: float,
    wake: asyncio.Event | None = None,
    backoff: Backoff | None = None,
    stop: StopFlag | None = None,
    failure_log: RepeatedFailureLog | None = None,
) -> None:
    """Run `step` until cancelled (or `stop` is set); see the module docstring."""
    backoff = backoff or Backoff()
    stop = stop or StopFlag()
    failures = failure_log or RepeatedFailureLog(
        _error, "background work failed; backing off", first_window_s=backoff.initial_s
    )
    health = health_board.current()
    part = f"worker:{name}"
    try:
        await _loop(name, step, idle_s, wake, backoff, stop, failures, health, part)
    finally:
        if health is not None:
            health.ok(part)  # a worker that ended is no longer failing (nor running)


async def _loop(
    name: str,
    step: Callable[[], Awaitable[int]],
    idle_s: float,
    wake: asyncio.Event | None,
    backoff: Backoff,
    stop: StopFlag,
    failures: RepeatedFailureLog,
    health: health_board.Health | None,
    part: str,
) -> None:
    while not stop.stopped:
        if wake is not None:
            wake.clear()  # a wake-up during the step makes the idle wait end at once
        try:
            done = await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            WORKER_FAILURES.labels(name).inc()
            if health is not None:
                health.failed(part)
            delay = backoff.next_delay()
            # Type, site and counts only: an exception's text may carry personal data.
            failures.failed(exc, worker=name, retry_in_s=delay)
            await _wait(delay, None, stop)
            continue
        if health is not None:
            health.ok(part)
        if backoff.failures:
            failures.recovered(_info, "background work recovered", worker=name)
            backoff.reset()
        if done == 0 and not stop.stopped:
            await _wait(idle_s, wake, stop)


async def _wait(seconds: float, wake: asyncio.Event | None, stop: StopFlag) -> None:
    if stop.stopped:
        return
    if wake is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), seconds)
