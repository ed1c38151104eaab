"""A service (or the test ledger) as a real OS process, for tests that SIGKILL it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Self

import httpx

from tests.support.kafka import poll_until
from tests.support.net import free_ports

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """`python -m <module>` with `env` (plus HTTP_PORT), healthy when /healthz answers;
    each start's output goes to a log file of its own in `logs`, shown when it dies."""

    def __init__(self, module: str, env: dict[str, str], logs: Path) -> None:
        self.module = module
        self.env = env
        self.logs = logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self, **extra_env: str) -> None:
        port = free_ports(1)  # below the ephemeral range: no client connection takes it
        self.starts += 1
        log = self.logs / f"{self.module.rsplit('.', 1)[-1]}-{self.starts}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env={**self.env, **extra_env, "HTTP_PORT": str(port)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        async def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"{self.module} exited with {self.proc.returncode}:\n{tail}")
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await poll_until(healthy, timeout=60, interval=0.1, what=f"{self.module} healthy")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
