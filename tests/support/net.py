"""Network helpers for tests."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from devstack.procs import port_is_free

#: Where the block of `free_ports` is drawn from: registered ports below Linux's default
#: ephemeral range (the real range is read from /proc when it is there).
_BLOCK_LOW = 20_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports, for a process that binds them only
    after a slow start (`devstack run --http-port-base`).

    Not next to `free_port()`: that one is in the kernel's ephemeral range, where every
    outgoing connection (the services' own Kafka and PostgreSQL clients, while they start)
    takes its local port, so a port of the block could be taken before its service binds
    it ("address already in use"). Below that range only listeners take ports; a random
    base keeps two test sessions on one machine from choosing the same block.
    """
    high = _ephemeral_low() - count
    for _ in range(1000):
        base = random.randrange(_BLOCK_LOW, high)
        if all(port_is_free(base + i) for i in range(count)):
            return base
    raise AssertionError(f"no {count} consecutive free ports in {_BLOCK_LOW}..{high}")
