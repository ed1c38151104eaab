"""Small process helpers shared by the broker, Postgres and the supervisor."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(None, use_errno=True)


def pdeathsig_enabled() -> bool:
    """Children die with their parent unless `DEVSTACK_NO_PDEATHSIG=1` (used by tests that
    prove the state-file reaper on its own)."""
    return _libc is not None and os.environ.get("DEVSTACK_NO_PDEATHSIG", "") not in ("1", "true")


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive `sig` when this process dies (Linux).

    It runs after subprocess's `user=` switch (a credential change clears the setting, so
    it must come after). Returns None where unsupported or disabled.
    """
    if not pdeathsig_enabled():
        return None
    libc = _libc
    parent = os.getpid()

    def _preexec() -> None:
        assert libc is not None
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: do it by hand
            os.kill(os.getpid(), sig)

    return _preexec


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def tcp_connects(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def process_listens_on(pid: int, port: int) -> bool:
    """True when process `pid` itself holds a listening TCP socket on `port`."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def kill_tree(pid: int, first_signal: int, timeout: float) -> None:
    """Send `first_signal` to `pid`, wait up to `timeout`, then SIGKILL it and whatever
    children it still has. Does nothing if the process is gone."""
    try:
        proc = psutil.Process(pid)
        children = proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(first_signal)
    _, alive = psutil.wait_procs([proc], timeout=timeout)
    for p in [*alive, *children]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs([*alive, *children], timeout=5)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()
