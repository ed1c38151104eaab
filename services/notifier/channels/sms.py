"""SMS through an HTTP provider: a JSON POST to SMS_PROVIDER_URL; non-2xx fails the channel.

The body is `{"to": …, "text": …, "reference": …}`; put an adapter in front of a
provider with another format.
"""

from __future__ import annotations

import httpx

from services.notifier.channels import ChannelFailed, TransientFailure


class SmsSender:
    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url

    async def send(self, mobile: str, text: str, reference: str) -> None:
        try:
            response = await self.client.post(
                self.url, json={"to": mobile, "text": text, "reference": reference}
            )
        except httpx.HTTPError as error:
            raise TransientFailure(f"sms_{type(error).__name__}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientFailure(f"sms_http_{response.status_code}")
        if not response.is_success:
            raise ChannelFailed(f"sms_http_{response.status_code}")
