"""SMS through an HTTP provider: a JSON POST to SMS_PROVIDER_URL; non-2xx fails the channel.

The body is `{"to": …, "text": …, "reference": …}`; put an adapter in front of a
provider with another format. One deadline covers the whole request, and at most
`max_response_bytes` of the answer are read.
"""

from __future__ import annotations

import asyncio

import httpx

from services.notifier.channels import ChannelFailed, TransientFailure
from services.notifier.limits import header_value, read_capped


class SmsSender:
    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        timeout_s: float = 30.0,
        max_response_bytes: int = 65_536,
    ) -> None:
        self.client = client
        self.url = url
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes

    async def send(self, mobile: str, text: str, reference: str) -> None:
        body = {"to": mobile, "text": text, "reference": header_value(reference)}
        status: int | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.client.stream("POST", self.url, json=body) as response:
                    status = response.status_code
                    await read_capped(response, self.max_response_bytes)
        except TimeoutError:
            if status is None:
                raise TransientFailure("sms_timeout") from None
        except httpx.HTTPError as error:
            if status is None:
                raise TransientFailure(f"sms_{type(error).__name__}") from None
        assert status is not None
        if status >= 500 or status == 429:
            raise TransientFailure(f"sms_http_{status}")
        if not 200 <= status < 300:
            raise ChannelFailed(f"sms_http_{status}")
