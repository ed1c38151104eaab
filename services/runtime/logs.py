"""One structlog processor chain for every service: pretty in a terminal, JSON elsewhere.

Stdlib logs (faststream, aiokafka, uvicorn) are routed through the same chain. Context
(`service`, `message_id`, `correlation_id`, `website_key`, ...) is bound per message with
contextvars. Personal data (names, e-mail addresses, IBANs, phone numbers) is never
logged: log keys and codes, not payloads.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog


def configure_logging(service: str, *, fmt: str = "console", level: str = "INFO") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(RepeatedRecordFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about group coordination.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


class RepeatedRecordFilter(logging.Filter):
    """The same warning of a library, again and again, logged once per window with a count.

    asyncpg's pool logs "Failed to restore the pool connection floor; retrying", with a
    traceback, every second while the database is away; aiokafka logs each failed
    reconnect. Records of WARNING and above from a library (a plain text message, not the
    runtime's own structlog events, which count their repeats themselves) are grouped by
    logger, level and message template: the first passes, the same again only once its
    window has passed (doubling from `first_window_s` to `max_window_s`), saying how many
    were left out. A group quiet for longer than `max_window_s` starts afresh.
    """

    def __init__(
        self,
        first_window_s: float = 1.0,
        max_window_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.first_window_s = first_window_s
        self.max_window_s = max_window_s
        self.clock = clock
        #: (logger, level, template) -> [next line at, window, left out, last seen]
        self._groups: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not isinstance(record.msg, str):
            return True
        key = (record.name, record.levelno, record.msg)
        now = self.clock()
        group = self._groups.get(key)
        if group is None or now - group[3] > self.max_window_s:
            if len(self._groups) >= 1000:  # templates are few; never let it grow unbounded
                self._groups.clear()
            self._groups[key] = [now + self.first_window_s, self.first_window_s, 0, now]
            return True
        group[3] = now
        if now < group[0]:
            group[2] += 1
            return False
        if group[2]:
            record.msg = f"{record.msg} [the same {int(group[2])} more times since the last line]"
        group[1] = min(self.max_window_s, group[1] * 2)
        group[0] = now + group[1]
        group[2] = 0
        return True


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)


def failure_site(exc: BaseException) -> str:
    """`file:line in function` of the innermost frame of the project's own code."""
    site = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        if "/services/" in frame.filename or "/contracts/" in frame.filename:
            site = f"{frame.filename.rsplit('/', 2)[-2]}/{frame.filename.rsplit('/', 1)[-1]}"
            site += f":{frame.lineno} in {frame.name}"
    return site


@dataclass
class RepeatedFailureLog:
    """One log line per window for a failure that keeps coming back, with its count.

    A loop that fails every round (the relay without its database, a consumer whose batch
    keeps failing) calls `failed()` each time. The first failure of a kind (its error type
    and where it happened) is logged at once; the same failure again is logged only once
    its window has passed, and the window doubles with each line, from `first_window_s`
    (the loop's first backoff: while the backoff still grows, every failure is logged)
    up to `max_window_s`. Each line says how many failures came in a row and how many
    were not logged since the line before (`unlogged`). `recovered()` logs the first
    success after failures once, with the same counts, and starts afresh.
    """

    log_as: Callable[..., Any]
    event: str
    first_window_s: float = 0.5
    max_window_s: float = 600.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    unlogged: int = 0
    _kind: tuple[str, str] | None = field(default=None, repr=False)
    _window_s: float = field(default=0.0, repr=False)
    _next_at: float = field(default=0.0, repr=False)

    def failed(self, exc: BaseException, **fields: Any) -> bool:
        """Count a failure; log it if it is new or its window has passed (returns whether
        it was logged). Only the error's type and site are logged, never its text: it
        may quote personal data."""
        self.failures += 1
        kind = (type(exc).__name__, failure_site(exc))
        now = self.clock()
        if kind != self._kind:
            self._kind = kind
            self._window_s = self.first_window_s
        # A timer may fire a hair early: a window counts as passed within 1% of its end.
        elif now < self._next_at - 0.01 * self._window_s:
            self.unlogged += 1
            return False
        self.log_as(
            self.event,
            error_type=kind[0],
            at=kind[1],
            failures_in_a_row=self.failures,
            unlogged=self.unlogged,
            **fields,
        )
        self.unlogged = 0
        self._next_at = now + self._window_s
        self._window_s = min(self.max_window_s, self._window_s * 2)
        return True

    def recovered(self, log_as: Callable[..., Any], event: str, **fields: Any) -> None:
        """After failures: one line (`after_failures`, `unlogged`), then a fresh start."""
        if self.failures:
            log_as(event, after_failures=self.failures, unlogged=self.unlogged, **fields)
        self.failures = 0
        self.unlogged = 0
        self._kind = None
