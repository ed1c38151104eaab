"""Bounds on the notifier's talk with the outside world, and helpers that keep one bad
item from harming another: error codes without personal data, header values without
CR/LF, response bodies read up to a cap.

The settings are read with defaults (`NotifierLimits.of`), so they work before the
runtime's Settings declares them; each is also an environment variable of that name in
upper case once it does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

import httpx


@dataclass(frozen=True)
class NotifierLimits:
    #: One deadline per webhook delivery: connect, send and read together.
    webhook_timeout_s: float = 10.0
    #: Webhook requests in flight per process, and per merchant within those.
    webhook_max_in_flight: int = 128
    webhook_max_in_flight_per_merchant: int = 4
    #: How long a claimed delivery stays `sending` before another worker may take it
    #: (at least `webhook_lease`'s floor).
    webhook_lease_s: float = 60.0
    #: Most bytes read of any HTTP answer (webhook endpoint, SMS or print provider).
    response_max_bytes: int = 65_536
    #: One deadline per message send on one channel (SMTP, SMS or print provider).
    message_send_timeout_s: float = 30.0
    #: Message jobs in progress per process, and sends per provider within those.
    message_max_in_flight: int = 16
    message_max_in_flight_per_provider: int = 8
    #: How long a claimed message job stays `sending` before another worker may take it
    #: (at least `message_lease`'s floor).
    message_lease_s: float = 300.0

    @classmethod
    def of(cls, settings: Any) -> NotifierLimits:
        """The limits from `settings`, each falling back to its default (the response
        cap is `notifier_response_max_bytes` there)."""
        names = {f.name: f.name for f in fields(cls)}
        names["response_max_bytes"] = "notifier_response_max_bytes"
        defaults = cls()
        values: dict[str, Any] = {
            name: getattr(settings, setting, getattr(defaults, name))
            for name, setting in names.items()
        }
        return cls(**values)

    @property
    def webhook_lease(self) -> float:
        """The webhook lease in force: never shorter than four deadlines plus 10 s (a
        claimed delivery may wait a few rounds for a slot before its own deadline)."""
        return max(self.webhook_lease_s, 4 * self.webhook_timeout_s + 10)

    @property
    def message_lease(self) -> float:
        """The message lease in force: never shorter than six send deadlines plus 20 s
        (up to three channels, each perhaps waiting a round for its provider)."""
        return max(self.message_lease_s, 6 * self.message_send_timeout_s + 20)


def error_code(error: BaseException) -> str:
    """The code recorded for an unexpected error: its type name only (the message may
    carry personal data: an address, a name)."""
    return f"unexpected_{type(error).__name__}"


#: CR, LF and the other control characters (a header value or a header-like reference).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def header_value(text: str) -> str:
    """`text` made safe for a header value: control characters (CR and LF among them)
    become one space each run, so no value can end a header or start another."""
    return _CONTROL.sub(" ", text).strip()


async def read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """At most `max_bytes` of a streamed response's body; the rest is never read (the
    connection is closed instead of reused)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        parts.append(chunk[: max_bytes - size])
        size += len(parts[-1])
        if size >= max_bytes:
            break
    return b"".join(parts)
