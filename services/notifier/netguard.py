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
- **Delivery** (`guarded_connector`, the webhook client's aiohttp connection pool): its
  resolver (`GuardedResolver`) resolves the name at every new connection and refuses it
  when any address is not allowed; the connector connects to the checked addresses,
  never to the name (so a DNS answer that changes between the check and the connect,
  "DNS rebinding", cannot reach a private address), and each address is checked once
  more as its socket is opened (`guarded_socket_factory`: this is where a literal IP in
  the URL is refused). TLS still verifies the certificate against the URL's host name
  (SNI). A refused target fails that delivery with `target_not_allowed`; the scheme is
  checked before each request (`check_scheme`), and redirects are never followed (a 3xx
  is a failed attempt).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import httpx
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

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

    def check_scheme(self, url: httpx.URL | URL) -> None:
        if not self.allow_private_networks and url.scheme != "https":
            raise TargetNotAllowed(_HTTPS_REQUIRED)

    def check_address(self, text: str) -> None:
        """`TargetNotAllowed` unless a connection may go to the address `text` (an IPv6
        zone, `%eth0`, is ignored)."""
        if self.allow_private_networks:
            return
        address = literal_address(text.split("%", 1)[0])
        if address is None or not address_allowed(address):
            raise TargetNotAllowed(_NOT_PUBLIC)

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
        for text in found:
            self.check_address(text)
        return found


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver hook: the policy's resolution, every address checked (one that
    is not allowed refuses the whole name: `TargetNotAllowed`). The connector connects
    to the addresses returned here, never to the name."""

    def __init__(self, policy: TargetPolicy) -> None:
        self.policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        # No timeout of its own: the delivery's deadline covers the lookup too.
        addresses = await self.policy.addresses(host, port, timeout_s=None)
        if not addresses:
            raise OSError("the name has no addresses")  # aiohttp: a connection error
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None


#: Opens the socket of one connection attempt (aiohappyeyeballs' `socket_factory`).
SocketOpener = Callable[[AddrInfoType], socket.socket]


def _open_socket(addr_info: AddrInfoType) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    return socket.socket(family=family, type=type_, proto=proto)


def guarded_socket_factory(
    policy: TargetPolicy, open_socket: SocketOpener = _open_socket
) -> SocketOpener:
    """The last check, on the address each connection attempt is about to connect to
    (a literal IP in the URL never reaches the resolver): `TargetNotAllowed` before a
    socket exists, so nothing is sent."""

    def create(addr_info: AddrInfoType) -> socket.socket:
        policy.check_address(str(addr_info[4][0]))
        return open_socket(addr_info)

    return create


def guarded_connector(
    policy: TargetPolicy,
    *,
    limit: int,
    keepalive_s: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
    open_socket: SocketOpener = _open_socket,
) -> aiohttp.TCPConnector:
    """The webhook client's connection pool (aiohttp): names resolved and checked by
    `GuardedResolver` at every new connection (no DNS cache), every address checked again
    as its socket is opened (`guarded_socket_factory`), addresses tried in turn (no
    happy-eyeballs race, whose attempts would swallow a refusal), TLS verified against the
    URL's host name (SNI) with httpx's trust store (certifi), at most `limit` connections,
    idle ones kept `keepalive_s`. `open_socket` is for tests (record instead of connect)."""
    return aiohttp.TCPConnector(
        limit=limit,
        limit_per_host=0,
        keepalive_timeout=keepalive_s,
        use_dns_cache=False,
        resolver=GuardedResolver(policy),
        socket_factory=guarded_socket_factory(policy, open_socket),
        happy_eyeballs_delay=None,
        interleave=None,
        ssl=ssl_context if ssl_context is not None else httpx.create_ssl_context(trust_env=False),
    )
