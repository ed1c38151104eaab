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


@dataclass(frozen=True)
class Provider:
    """An HTTP provider (SMS, print) a channel POSTs to: under one deadline of
    `timeout_s`, reading at most `max_response_bytes` of the answer. Failure codes start
    with `code` (`sms`, `print`)."""

    client: httpx.AsyncClient
    url: str
    code: str
    timeout_s: float
    max_response_bytes: int

    async def post(self, **request: Any) -> None:
        """Returns on 2xx; raises `TransientFailure` when the provider could not be
        reached, timed out, or answered 5xx/429, and `ChannelFailed` for any other
        answer."""
        code = self.code
        status: int | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.client.stream("POST", self.url, **request) as response:
                    status = response.status_code
                    await read_capped(response, self.max_response_bytes)
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
