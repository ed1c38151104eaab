"""What `/healthz` (liveness) and `/readyz` (readiness) of a service answer from.

Liveness: a service is alive while nothing it depends on has been failing for longer than
`HEALTH_FAILING_THRESHOLD_S`. The parts that report here: every background worker
(`run_worker`: the outbox relay, the scheduler's clock, the notifier's senders,
retention), every consumer (a batch that fails and is delivered again), and the probes
`/healthz` itself makes of the database and the broker. A part is failing from its first
failure until its next success; a short failure (a database restart, a broker election)
does not make the service unhealthy, one that lasts does, and it is healthy again as soon
as the part succeeds again. A consumer that stopped or a background task that ended is
unhealthy at once.

Readiness: migrated, connected (the database and the broker answer now) and every
consumer started. A service that is not ready should get no traffic; one that is not
alive should be restarted.

Background workers find the service's `Health` through a context variable the runtime
sets while it starts them (`reporting_to`), so a service's own tasks need no wiring.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

_CURRENT: contextvars.ContextVar[Health | None] = contextvars.ContextVar("cm_health", default=None)


@dataclass
class Health:
    """Which parts of one service are failing, and since when."""

    threshold_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _since: dict[str, float] = field(default_factory=dict)

    def failed(self, part: str) -> None:
        """`part` failed (it stays failing, from its first failure, until `ok`)."""
        self._since.setdefault(part, self.clock())

    def ok(self, part: str) -> None:
        """`part` succeeded: it is no longer failing."""
        self._since.pop(part, None)

    def failing(self) -> dict[str, float]:
        """Every failing part and for how many seconds it has been failing."""
        now = self.clock()
        return {part: now - since for part, since in sorted(self._since.items())}

    def failing_too_long(self) -> dict[str, float]:
        """The parts failing for longer than the threshold: the service is unhealthy."""
        return {part: s for part, s in self.failing().items() if s > self.threshold_s}


def current() -> Health | None:
    """The `Health` of the service whose task this is (None outside a service)."""
    return _CURRENT.get()


@contextlib.contextmanager
def reporting_to(health: Health) -> Iterator[None]:
    """Tasks created inside this block report to `health` (they copy the context)."""
    token = _CURRENT.set(health)
    try:
        yield
    finally:
        _CURRENT.reset(token)
