"""The ways to reach a debtor: e-mail (SMTP), SMS (an HTTP provider) and letters (PDF).

A sender either returns (the message went out), raises `ChannelFailed` (this channel
cannot reach the debtor: a refused recipient, a provider's refusal; the next channel is
tried) or raises `TransientFailure` (the provider is unreachable right now; the message
is tried again later). Failures carry codes, never the address or text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rendered:
    """A message filled in for one channel."""

    subject: str | None
    body: str


class ChannelFailed(Exception):
    """This channel did not reach the debtor; try the next one."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class TransientFailure(Exception):
    """The provider could not be reached; try the message again later."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code
