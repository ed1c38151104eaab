"""The SMS and print providers get the same bounds as webhooks: one deadline per send,
answers read up to a cap, header values without CR/LF; a slow, huge or refusing provider
fails only that send, with a code that says which way it failed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from services.notifier.channels import ChannelFailed, Rendered, TransientFailure
from services.notifier.channels.letter import LetterSender
from services.notifier.channels.sms import SmsSender
from tests.support.kafka import poll_until
from tests.support.notifier import HttpSink, Reply, Request

CAP = 4096


@pytest.fixture
def provider() -> Iterator[HttpSink]:
    sink = HttpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


def answer(reply: Reply) -> object:
    return lambda request: reply


async def test_sms_goes_out_with_a_clean_reference(
    provider: HttpSink, client: httpx.AsyncClient
) -> None:
    sms = SmsSender(client, provider.url, timeout_s=5, max_response_bytes=CAP)
    await sms.send("+31600000000", "Pay please", "INV-1-step2\r\nX-Injected: yes")
    [request] = provider.started  # recorded before the answer goes out
    assert request.json()["reference"] == "INV-1-step2 X-Injected: yes"


@pytest.mark.parametrize(
    ("reply", "failure", "code"),
    [
        (Reply(status=503), TransientFailure, "sms_http_503"),
        (Reply(status=429), TransientFailure, "sms_http_429"),
        (Reply(status=400), ChannelFailed, "sms_http_400"),
    ],
)
async def test_a_refusing_sms_provider_fails_the_send_with_its_code(
    provider: HttpSink,
    client: httpx.AsyncClient,
    reply: Reply,
    failure: type[Exception],
    code: str,
) -> None:
    provider.responder = answer(reply)  # type: ignore[assignment]
    sms = SmsSender(client, provider.url, timeout_s=5, max_response_bytes=CAP)
    with pytest.raises(failure) as raised:
        await sms.send("+31600000000", "Pay please", "ref")
    assert raised.value.code == code  # type: ignore[attr-defined]


async def test_a_slow_provider_is_cut_off_at_one_deadline(
    provider: HttpSink, client: httpx.AsyncClient
) -> None:
    provider.responder = answer(Reply(hold_s=30))  # type: ignore[assignment]
    sms = SmsSender(client, provider.url, timeout_s=0.5, max_response_bytes=CAP)
    started = time.monotonic()
    with pytest.raises(TransientFailure) as raised:
        await sms.send("+31600000000", "Pay please", "ref")
    assert raised.value.code == "sms_timeout"
    assert time.monotonic() - started < 10, "the deadline covers the whole request"


async def test_a_huge_answer_from_the_print_provider_is_read_only_up_to_the_cap(
    provider: HttpSink, client: httpx.AsyncClient
) -> None:
    provider.responder = answer(Reply(status=200, body_bytes=1 << 30))  # type: ignore[assignment]
    letters = LetterSender(client, None, provider.url, timeout_s=20, max_response_bytes=CAP)
    where = await letters.send(
        ["A. Debtor", "Street 1", "1234 AB City", "NL"],
        "1 November 2026",
        Rendered("Reminder", "Please pay."),
        "shop-1",
        "INV-1-step3\nX-Injected: yes",
    )
    assert where == "print_provider"

    def seen(request: Request) -> bool:
        return request.headers.get("x-reference") == "INV-1-step3 X-Injected: yes"

    assert [seen(r) for r in provider.started] == [True]
    sent = await poll_until(lambda: _sent(provider), what="the provider to stop writing")
    assert sent < 1 << 26, "the client stopped reading long before the end of the answer"


async def _sent(provider: HttpSink) -> int | None:
    return provider.body_sent[0] if provider.body_sent else None
