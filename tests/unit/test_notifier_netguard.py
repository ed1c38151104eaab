"""Webhook targets: which addresses are public, what registration refuses, and that the
webhook client (aiohttp on the guarded connector) connects only to checked addresses
(never to the name), with TLS still checked against the name, and follows no redirect."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from yarl import URL

from services.notifier.limits import NotifierLimits
from services.notifier.netguard import (
    TargetNotAllowed,
    TargetPolicy,
    address_allowed,
    guarded_connector,
)
from services.notifier.webhooks import WebhookClient, transport_error_code, webhook_client

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


class Recorder:
    """Stands in for opening sockets: records where each connection attempt would go and
    refuses it, so no traffic leaves the machine."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    def __call__(self, addr_info: Any) -> socket.socket:
        self.log.append((str(addr_info[4][0]), int(addr_info[4][1])))
        raise ConnectionRefusedError(111, "refused (recorded)")


@contextlib.asynccontextmanager
async def recorded_client(policy: TargetPolicy) -> AsyncIterator[tuple[WebhookClient, Recorder]]:
    recorder = Recorder()
    connector = guarded_connector(policy, limit=1, open_socket=recorder)
    async with webhook_client(LIMITS, policy, connector=connector) as client:
        yield client, recorder


async def send(client: WebhookClient, url: str) -> int:
    async with client.send(URL(url), b"{}", {"content-type": "application/json"}) as response:
        return response.status


LIMITS = NotifierLimits(webhook_timeout_s=2.0)


async def test_the_client_connects_to_the_checked_addresses_in_turn_not_to_the_name() -> None:
    answers = {"shop.example": ["93.184.215.14", "2606:4700:4700::1111"]}
    async with recorded_client(TargetPolicy(resolve=resolver(answers))) as (client, recorder):
        with pytest.raises(aiohttp.ClientConnectorError) as refused:
            await send(client, "https://shop.example/cm/push")
    # The first address refused the connection; the second one was tried.
    assert recorder.log == [
        ("93.184.215.14", 443),
        ("2606:4700:4700::1111", 443),
    ]
    assert transport_error_code(refused.value) == "ConnectError"


async def test_the_client_refuses_before_connecting_when_any_address_is_private() -> None:
    answers = {"rebound.example": ["93.184.215.14", "127.0.0.1"]}
    async with recorded_client(TargetPolicy(resolve=resolver(answers))) as (client, recorder):
        for url in ("https://rebound.example/hook", "https://10.0.0.1/hook", "https://[::1]/"):
            with pytest.raises(TargetNotAllowed):
                await send(client, url)
    assert recorder.log == []


async def test_a_legacy_numeric_ipv4_host_is_an_invalid_url_and_never_connected() -> None:
    """`127.1` and `2130706433` name 127.0.0.1 to the system's resolver; the client
    refuses them as URLs, whatever the policy."""
    for policy in (TargetPolicy(resolve=resolver({})), TargetPolicy(allow_private_networks=True)):
        async with recorded_client(policy) as (client, recorder):
            for url in ("https://127.1/hook", "https://2130706433/hook"):
                with pytest.raises(aiohttp.InvalidURL) as refused:
                    await send(client, url)
                assert transport_error_code(refused.value) == "invalid_url"
        assert recorder.log == []


async def test_dns_rebinding_between_registration_and_delivery_is_refused() -> None:
    """The name passes at registration; at connect time it resolves to loopback."""
    answers = {"rebind.example": ["93.184.215.14"]}
    policy = TargetPolicy(resolve=resolver(answers))
    assert await policy.registration_refusal("https://rebind.example/hook") is None
    answers["rebind.example"] = ["127.0.0.1"]
    async with recorded_client(policy) as (client, recorder):
        with pytest.raises(TargetNotAllowed):
            await send(client, "https://rebind.example/hook")
    assert recorder.log == []


async def test_every_new_connection_resolves_and_checks_the_name_again() -> None:
    """No DNS cache: a name rebound to loopback after a first (public) connection is
    refused at the next one."""
    answers = {"shop.example": ["93.184.215.14"]}
    async with recorded_client(TargetPolicy(resolve=resolver(answers))) as (client, recorder):
        with pytest.raises(aiohttp.ClientConnectorError):
            await send(client, "https://shop.example/hook")
        answers["shop.example"] = ["127.0.0.1"]
        with pytest.raises(TargetNotAllowed):
            await send(client, "https://shop.example/hook")
    assert recorder.log == [("93.184.215.14", 443)]


async def test_a_name_that_does_not_resolve_is_a_connect_error() -> None:
    async with recorded_client(TargetPolicy(resolve=resolver({}))) as (client, recorder):
        with pytest.raises(aiohttp.ClientConnectorError) as failed:
            await send(client, "https://gone.example/hook")
    assert transport_error_code(failed.value) == "ConnectError"
    assert recorder.log == []


async def test_tls_is_checked_against_the_host_name_while_connecting_to_the_address() -> None:
    """The connection goes to the resolved address (a local TLS listener), SNI carries
    the name from the URL."""
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def record(_: Any, name: str | None, __: Any) -> int:
        names.append(name)
        return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE  # no certificate needed: stop here

    context.sni_callback = record
    peers: list[str] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[0])
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    resolve = resolver({"shop.example": ["127.0.0.1"]})
    policy = TargetPolicy(allow_private_networks=True, resolve=resolve)
    try:
        async with webhook_client(LIMITS, policy) as client:
            with pytest.raises(aiohttp.ClientConnectorError):
                await send(client, f"https://shop.example:{port}/cm/push")
    finally:
        server.close()
        await server.wait_closed()
    assert resolve.calls == ["shop.example"]
    assert names == ["shop.example"]


async def test_the_webhook_client_refuses_private_targets_and_plain_http() -> None:
    """The real client as the notifier builds it (strict policy): nothing is sent."""
    async with webhook_client(LIMITS) as client:
        assert client.follow_redirects is False
        for url in (
            "https://127.0.0.1:9/hook",
            "https://[::1]:9/hook",
            "https://localhost:9/hook",
            "http://93.184.215.14/hook",
        ):
            with pytest.raises(TargetNotAllowed):
                await send(client, url)


async def test_a_redirect_is_answered_not_followed() -> None:
    """A 3xx is the attempt's answer (a failed attempt): the client never goes where it
    points (here a second local listener that would count any request)."""
    hits: list[bytes] = []

    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(await reader.read(1024))
        writer.close()

    elsewhere = await asyncio.start_server(target, "127.0.0.1", 0)
    location = f"http://127.0.0.1:{elsewhere.sockets[0].getsockname()[1]}/internal"

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)  # the body, b"{}"
        writer.write(
            f"HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\n"
            "content-length: 0\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(redirect, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        async with webhook_client(LIMITS, TargetPolicy(allow_private_networks=True)) as client:
            assert await send(client, url) == 307
    finally:
        for listener in (server, elsewhere):
            listener.close()
            await listener.wait_closed()
    assert hits == []
