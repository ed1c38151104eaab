"""One structlog processor chain for every service: pretty in a terminal, JSON elsewhere.

Stdlib logs (faststream, aiokafka, uvicorn) are routed through the same chain. Context
(`service`, `message_id`, `correlation_id`, `website_key`, ...) is bound per message with
contextvars. Personal data (names, e-mail addresses, IBANs, phone numbers) is never
logged: log keys and codes, not payloads.
"""

from __future__ import annotations

import logging
import sys
import traceback
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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about group coordination.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


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
