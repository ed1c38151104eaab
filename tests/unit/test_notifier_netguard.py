"""Webhook targets: which addresses are public, what registration refuses, and that the
webhook client connects only to checked addresses (never to the name), with TLS still
checked against the name."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
import pytest

from services.notifier.limits import NotifierLimits
from services.notifier.netguard import (
    GuardedBackend,
    TargetNotAllowed,
    TargetPolicy,
    address_allowed,
    guarded_transport,
)
from services.notifier.webhooks import webhook_client

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "0.0.0.0",
    "0.1.2.3",
    "255.255.255.255",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "192.0.0.8",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "::1",
    "::",
    "fe80::1",
    "fe80::1%1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::7f00:1",  # IPv4-compatible
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b:1::1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:db8::1",
    "100::1",
]
ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("text", REFUSED)
def test_non_public_addresses_are_refused(text: str) -> None:
    assert not address_allowed(ipaddress.ip_address(text))


@pytest.mark.parametrize("text", ALLOWED)
def test_public_addresses_are_allowed(text: str) -> None:
    assert address_allowed(ipaddress.ip_address(text))


def resolver(answers: dict[str, list[str]]) -> Any:
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


PUBLIC = {"shop.example": ["93.184.215.14"]}


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.0.0.1:8443/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://internal.example/hook",  # resolves to a private address
        "https://mixed.example/hook",  # one public, one private address
        "https://localhost/hook",  # the system's own resolver
        "https://127.1/hook",  # a shorthand the resolver turns into 127.0.0.1
        "http://shop.example/hook",  # not https
    ],
)
async def test_registration_refuses_non_public_targets(url: str) -> None:
    answers = {
        **PUBLIC,
        "internal.example": ["10.1.2.3"],
        "mixed.example": ["93.184.215.14", "192.168.0.10"],
    }
    policy = TargetPolicy(resolve=resolver(answers))
    if "localhost" in url or "127.1" in url:
        policy = TargetPolicy()  # the real getaddrinfo
    refusal = await policy.registration_refusal(url)
    assert refusal is not None
    host = httpx.URL(url).host
    assert host not in refusal and url not in refusal  # the message never echoes the URL


async def test_registration_accepts_a_public_https_target() -> None:
    assert (
        await TargetPolicy(resolve=resolver(PUBLIC)).registration_refusal(
            "https://shop.example/cm/push"
        )
        is None
    )


async def test_a_name_that_does_not_resolve_at_registration_is_accepted() -> None:
    """It is checked again at every delivery (docs/notifier.md)."""
    policy = TargetPolicy(resolve=resolver({}))
    assert await policy.registration_refusal("https://not-yet.example/hook") is None


async def test_a_slow_resolver_delays_registration_only_up_to_the_dns_timeout() -> None:
    async def never(host: str, port: int) -> list[str]:
        await asyncio.Event().wait()  # never answers
        return []

    policy = TargetPolicy(resolve=never, dns_timeout_s=0.05)
    assert await policy.registration_refusal("https://slow.example/hook") is None


async def test_private_networks_allowed_turns_every_check_off() -> None:
    resolve = resolver({})
    policy = TargetPolicy(allow_private_networks=True, resolve=resolve)
    for url in ("http://127.0.0.1:8080/hook", "https://10.0.0.1/hook", "http://localhost/"):
        assert await policy.registration_refusal(url) is None
    assert resolve.calls == []  # not even looked up


# --- the connection ---------------------------------------------------------------------


class RecordingStream(httpcore.AsyncNetworkStream):
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.log.append(("write", buffer))

    async def aclose(self) -> None:
        pass

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.log.append(("start_tls", server_hostname))
        raise httpcore.ConnectError("no TLS in this test")


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records where connections go; `refuse` addresses fail to connect."""

    def __init__(self, refuse: Iterable[str] = ()) -> None:
        self.log: list[tuple[str, Any]] = []
        self.refuse = set(refuse)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.log.append(("connect", (host, port)))
        if host in self.refuse:
            raise httpcore.ConnectError("refused")
        return RecordingStream(self.log)

    async def sleep(self, seconds: float) -> None:
        pass


async def test_the_backend_connects_to_the_checked_address_not_to_the_name() -> None:
    inner = RecordingBackend(refuse={"93.184.215.14"})
    answers = {"shop.example": ["93.184.215.14", "2606:4700:4700::1111"]}
    backend = GuardedBackend(TargetPolicy(resolve=resolver(answers)), inner)
    await backend.connect_tcp("shop.example", 443, timeout=1.0)
    # The first address refused the connection; the second one was tried.
    assert inner.log == [
        ("connect", ("93.184.215.14", 443)),
        ("connect", ("2606:4700:4700::1111", 443)),
    ]


async def test_the_backend_refuses_before_connecting_when_any_address_is_private() -> None:
    inner = RecordingBackend()
    answers = {"rebound.example": ["93.184.215.14", "127.0.0.1"]}
    backend = GuardedBackend(TargetPolicy(resolve=resolver(answers)), inner)
    with pytest.raises(TargetNotAllowed):
        await backend.connect_tcp("rebound.example", 443, timeout=1.0)
    with pytest.raises(TargetNotAllowed):
        await backend.connect_tcp("10.0.0.1", 443, timeout=1.0)
    assert inner.log == []


async def test_dns_rebinding_between_registration_and_delivery_is_refused() -> None:
    """The name passes at registration; at connect time it resolves to loopback."""
    answers = {"rebind.example": ["93.184.215.14"]}
    policy = TargetPolicy(resolve=resolver(answers))
    assert await policy.registration_refusal("https://rebind.example/hook") is None
    answers["rebind.example"] = ["127.0.0.1"]
    inner = RecordingBackend()
    with pytest.raises(TargetNotAllowed):
        await GuardedBackend(policy, inner).connect_tcp("rebind.example", 443, timeout=1.0)
    assert inner.log == []


async def test_a_name_that_does_not_resolve_is_a_connect_error() -> None:
    backend = GuardedBackend(TargetPolicy(resolve=resolver({})), RecordingBackend())
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("gone.example", 443, timeout=1.0)


async def test_tls_is_checked_against_the_host_name_while_connecting_to_the_address() -> None:
    """Through httpx: the connection goes to the resolved IP, SNI carries the name."""
    inner = RecordingBackend()
    policy = TargetPolicy(resolve=resolver(PUBLIC))
    transport = guarded_transport(policy, httpx.Limits(max_connections=1))
    transport._pool = httpcore.AsyncConnectionPool(network_backend=GuardedBackend(policy, inner))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("https://shop.example/cm/push", content=b"{}")
    assert inner.log == [("connect", ("93.184.215.14", 443)), ("start_tls", "shop.example")]


async def test_the_webhook_client_refuses_private_targets_and_plain_http() -> None:
    """The real client as the notifier builds it (strict policy): nothing is sent."""
    async with webhook_client(NotifierLimits(webhook_timeout_s=2.0)) as client:
        assert client.follow_redirects is False
        for url in (
            "https://127.0.0.1:9/hook",
            "https://[::1]:9/hook",
            "https://localhost:9/hook",
            "http://93.184.215.14/hook",
        ):
            with pytest.raises(TargetNotAllowed):
                await client.post(url, content=b"{}")


async def test_the_guarded_stream_answers_is_readable_as_httpcore_does() -> None:
    """`_Stream` answers httpcore's idle-connection probe from its socket: not readable
    while the peer is quiet, readable once it sent something or closed."""
    from httpcore._utils import is_socket_readable  # noqa: PLC0415

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    backend = GuardedBackend(TargetPolicy(allow_private_networks=True))
    stream = await backend.connect_tcp("127.0.0.1", port, timeout=2.0)
    peer, _ = await asyncio.to_thread(listener.accept)
    try:
        raw = stream.get_extra_info("socket")
        assert stream.get_extra_info("is_readable") is False
        assert is_socket_readable(raw) is False
        peer.sendall(b"x")
        await asyncio.sleep(0.05)
        assert stream.get_extra_info("is_readable") is True
        assert is_socket_readable(raw) is True
        assert stream.get_extra_info("server_addr")[1] == port
    finally:
        peer.close()
        listener.close()
        await stream.aclose()
