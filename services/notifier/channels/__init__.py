"""The ways to reach a debtor: e-mail (SMTP), SMS (an HTTP provider) and letters (PDF).

A sender either returns (the message went out), raises `ChannelFailed` (this channel
cannot reach the debtor: a refused recipient, a provider's refusal; the next channel is
tried) or raises `TransientFailure` (the provider is unreachable right now; the message
is tried again later). Failures carry codes, never the address or text.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from services.notifier.limits import read_capped


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


async def post_to_provider(
    client: httpx.AsyncClient,
    url: str,
    code: str,
    *,
    timeout_s: float,
    max_response_bytes: int,
    **request: Any,
) -> None:
    """POST to a provider (SMS, print) under one deadline, reading at most
    `max_response_bytes` of the answer. Returns on 2xx; raises `TransientFailure` when the
    provider could not be reached, timed out, or answered 5xx/429, and `ChannelFailed`
    for any other answer. Codes start with `code` (`sms`, `print`)."""
    status: int | None = None
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, **request) as response:
                status = response.status_code
                await read_capped(response, max_response_bytes)
    except TimeoutError:
        if status is None:
            raise TransientFailure(f"{code}_timeout") from None
    except httpx.HTTPError as error:
        if status is None:
            raise TransientFailure(f"{code}_{type(error).__name__}") from None
    assert status is not None
    if status >= 500 or status == 429:
        raise TransientFailure(f"{code}_http_{status}")
    if not 200 <= status < 300:
        raise ChannelFailed(f"{code}_http_{status}")
