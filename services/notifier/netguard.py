"""Webhook targets on the public internet only: no requests to the platform's own network
(SSRF).

A merchant names the URL; the notifier connects to it from inside the platform. Unless
`WEBHOOK_ALLOW_PRIVATE_NETWORKS` is true (local runs and tests), a target must be `https`
and every address its host has must be public (`address_allowed`): not loopback, private,
link-local, CGNAT, multicast, reserved, unspecified, documentation or benchmark space, nor
an IPv6 form of one (IPv4-mapped, NAT64, 6to4, Teredo, IPv4-compatible).

Two checks, at two moments:

- **Registration** (`TargetPolicy.registration_refusal`): the scheme, a literal IP, and the
  name's addresses when it resolves within `WEBHOOK_DNS_TIMEOUT_S` (the event loop's
  `getaddrinfo`, so the consumer waits at most that long). A name that does not resolve
  (yet) is accepted: the delivery check decides.
- **Delivery** (`guarded_transport`): the HTTP client's network backend resolves the
  name itself, refuses the connection when any address is not allowed, and connects to
  the checked address, never to the name (so a DNS answer that changes between the check
  and the connect, "DNS rebinding", cannot reach a private address). TLS still verifies
  the certificate against the URL's host name (SNI). A refused target fails that delivery
  with `target_not_allowed`; redirects are never followed (a 3xx is a failed attempt).
"""

from __future__ import annotations

import asyncio
import ipaddress
import select
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: (host, port) → the addresses a connection may go to, as text.
Resolver = Callable[[str, int], Awaitable[list[str]]]

#: Special-purpose ranges `is_global` lets through (or that older Pythons mark global):
#: shared CGNAT space, IETF protocol assignments, documentation, benchmarking, 6to4 relay
#: anycast, multicast, "this network", the future-use block and broadcast.
_REFUSED_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",
        "100.64.0.0/10",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
#: The IPv6 ones: IPv4-compatible (deprecated), discard-only, local-use NAT64, IETF
#: protocol assignments (Teredo among them), documentation, unique-local, link-local,
#: site-local, multicast.
_REFUSED_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/96",
        "100::/64",
        "64:ff9b:1::/48",
        "2001::/23",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def address_allowed(address: IPAddress) -> bool:
    """Whether a webhook may connect to `address`: a public unicast address. An IPv6
    address carrying an IPv4 one (mapped, NAT64, 6to4) is judged by the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address_allowed(address.ipv4_mapped)
        if address in _NAT64:
            return address_allowed(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
        if address.sixtofour is not None:
            return address_allowed(address.sixtofour)
        if address.teredo is not None or any(address in net for net in _REFUSED_V6):
            return False
    elif any(address in net for net in _REFUSED_V4):
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def literal_address(host: str) -> IPAddress | None:
    """`host` as an IP address when it is one written the standard way, else None. (A
    name such as `127.1` or `2130706433` is resolved like any other name, and what it
    resolves to is checked.)"""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def system_resolve(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, through the event loop (a thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class TargetNotAllowed(Exception):
    """The webhook target is not a public https endpoint. The message never names it."""

    code = "target_not_allowed"


_HTTPS_REQUIRED = "the webhook URL must use https"
_NOT_PUBLIC = (
    "the webhook's host is, or resolves to, an address that is not public (loopback, "
    "private, link-local, shared, multicast, reserved or unspecified)"
)


@dataclass(frozen=True)
class TargetPolicy:
    """Which webhook targets are allowed; `allow_private_networks` turns every check off."""

    allow_private_networks: bool = False
    dns_timeout_s: float = 1.0
    resolve: Resolver = field(default=system_resolve, compare=False)

    def check_scheme(self, url: httpx.URL) -> None:
        if not self.allow_private_networks and url.scheme != "https":
            raise TargetNotAllowed(_HTTPS_REQUIRED)

    async def registration_refusal(self, url: str) -> str | None:
        """Why `url` cannot be registered (a message without the URL), or None. A name
        that does not resolve within the DNS timeout is accepted (see the module
        docstring)."""
        if self.allow_private_networks:
            return None
        try:
            parsed = httpx.URL(url)
            self.check_scheme(parsed)
            await self.addresses(parsed.host, parsed.port or 443, timeout_s=self.dns_timeout_s)
        except TargetNotAllowed as refused:
            return str(refused)
        except (OSError, TimeoutError, httpx.InvalidURL, UnicodeError, ValueError):
            return None  # unresolvable for now: checked again at every delivery
        return None

    async def addresses(self, host: str, port: int, *, timeout_s: float | None) -> list[str]:
        """The addresses to connect to for `host`, all of them allowed, or
        `TargetNotAllowed`; resolver errors (OSError, TimeoutError) propagate."""
        literal = literal_address(host)
        if literal is not None:
            found = [str(literal)]
        else:
            async with asyncio.timeout(timeout_s):
                found = await self.resolve(host, port)
        if not self.allow_private_networks:
            for text in found:
                address = literal_address(text.split("%", 1)[0])
                if address is None or not address_allowed(address):
                    raise TargetNotAllowed(_NOT_PUBLIC)
        return found


class _Stream(httpcore.AsyncNetworkStream):
    """The inner backend's stream, answering httpcore's `is_readable` probe from the
    socket it keeps. The pool asks it of every idle connection at every request and
    every response's end; through anyio each answer builds the stream's table of
    attributes anew, a few times the cost of the probe (a zero-timeout poll) itself."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable" and self._socket is not None:
            return _readable(self._socket)
        return self._inner.get_extra_info(info)


def _readable(sock: socket.socket) -> bool:
    """Whether a read would not block (data, or the peer closed): httpcore's test."""
    fd = sock.fileno()
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves the host itself, refuses the connection
    unless every address is allowed, and connects to the checked addresses in turn."""

    def __init__(
        self, policy: TargetPolicy, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self.policy.addresses(host, port, timeout_s=timeout)
        except TimeoutError as error:
            raise httpcore.ConnectTimeout("name resolution timed out") from error
        except OSError as error:  # socket.gaierror: the name does not resolve
            raise httpcore.ConnectError("name resolution failed") from error
        if not addresses:
            raise httpcore.ConnectError("the name has no addresses")
        failure: Exception | None = None
        for address in addresses:
            try:
                return _Stream(
                    await self.inner.connect_tcp(
                        address, port, timeout, local_address, socket_options
                    )
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise TargetNotAllowed("webhooks do not use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport on a `GuardedBackend`, refusing http when https is required.

    httpx 0.28 takes no network backend (encode/httpx PR 3749 would add one): the
    connection pool is replaced by one built the same way with the guarded backend.
    tests/unit/test_notifier_netguard.py fails if that stops taking effect."""

    def __init__(
        self,
        policy: TargetPolicy,
        *,
        limits: httpx.Limits,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        super().__init__(limits=limits, verify=verify, trust_env=False)
        self.policy = policy
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.policy.check_scheme(request.url)
        return await super().handle_async_request(request)


def guarded_transport(
    policy: TargetPolicy, limits: httpx.Limits, *, verify: ssl.SSLContext | bool = True
) -> GuardedTransport:
    """The transport of the webhook client (see the module docstring)."""
    return GuardedTransport(policy, limits=limits, verify=verify)
