"""SMS through an HTTP provider: a JSON POST to SMS_PROVIDER_URL; non-2xx fails the channel.

The body is `{"to": …, "text": …, "reference": …}`, with `"sender"` (the merchant's
sender name) when the merchant set one; put an adapter in front of a provider with
another format (or other rules for sender ids). One deadline covers the whole request, and at most
`max_response_bytes` of the answer are read.
"""

from __future__ import annotations

import httpx

from services.notifier.channels import Provider
from services.notifier.limits import header_value


class SmsSender:
    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        timeout_s: float = 30.0,
        max_response_bytes: int = 65_536,
    ) -> None:
        self.provider = Provider(client, url, "sms", timeout_s, max_response_bytes)

    async def send(
        self, mobile: str, text: str, reference: str, sender_name: str | None = None
    ) -> None:
        body = {"to": mobile, "text": text, "reference": header_value(reference)}
        if sender_name:
            body["sender"] = header_value(sender_name)
        await self.provider.post(json=body)
