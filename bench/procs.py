"""Platform services run as OS processes of their own, and what is measured of processes
from outside: memory (/proc), CPU time, Prometheus counters.

`ServiceProcess` runs `services.runtime.app.run(definition)` for one service in a child
process (`python -c`, like `python -m services.<name>`), on a schema and topic prefix of
its own, and waits for `/healthz`. It is stopped by its pid (SIGTERM, then SIGKILL), and
gets SIGTERM if the bench process dies first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import psutil

from bench.infra import free_port
from bench.registry import BenchContext
from devstack.procs import die_with_parent
from devstack.state import devstack_dir

ROOT = Path(__file__).resolve().parents[1]

#: A Prometheus sample: (metric name, sorted label pairs).
SampleKey = tuple[str, tuple[tuple[str, str], ...]]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class ServiceProcess:
    """One platform service in a process of its own."""

    def __init__(
        self,
        ctx: BenchContext,
        name: str,
        module: str,
        *,
        prefix: str,
        schema: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.module = module
        self.schema = schema
        self.port = free_port()
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": ctx.bootstrap_servers,
            "DATABASE_URL": ctx.database_url,
            "CM_TOPIC_PREFIX": prefix,
            "CM_CLOCK": "system",
            "HTTP_PORT": str(self.port),
            "HTTP_HOST": "127.0.0.1",
            "KAFKA_SESSION_TIMEOUT_MS": "2000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.healthy_after: float | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> None:
        code = (
            "from dataclasses import replace; from services.runtime.app import run;"
            f" from {self.module} import definition;"
            f" run(replace(definition(), schema={self.schema!r}))"
        )
        # Popen returns at once (the child runs on its own): nothing blocks the loop.
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=self.env,
            preexec_fn=die_with_parent(signal.SIGTERM),  # noqa: PLW1509
        )

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        started = time.monotonic()
        deadline = started + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"the {self.name} service exited with {self.proc.returncode}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    answer = await client.get(f"http://127.0.0.1:{self.port}/healthz")
                    if answer.status_code == 200:
                        self.healthy_after = time.monotonic() - started
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the {self.name} service did not become healthy in {timeout} s")

    async def metrics(self, client: httpx.AsyncClient, names: set[str]) -> dict[SampleKey, float]:
        """The service's Prometheus samples whose metric name is in `names`."""
        answer = await client.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10.0)
        return parse_metrics(answer.text, names)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


#: The counter every service counts its handled messages in, by `type`.
HANDLED = "cm_messages_handled_total"


async def first_handled(
    processes: Sequence[ServiceProcess], message_type: str, interval: float = 0.02
) -> float:
    """The time (`time.time()`) a process first counts a handled `message_type`, its
    /metrics polled every `interval` s (a process not serving yet is asked again)."""
    async with httpx.AsyncClient() as client:
        while True:
            for process in processes:
                with contextlib.suppress(httpx.HTTPError):
                    samples = await process.metrics(client, {HANDLED})
                    if total(samples, HANDLED, type=message_type) > 0:
                        return time.time()
            await asyncio.sleep(interval)


def parse_metrics(text: str, names: set[str]) -> dict[SampleKey, float]:
    samples: dict[SampleKey, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None or match.group(1) not in names:
            continue
        labels = tuple(sorted(_LABEL.findall(match.group(2) or "")))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def total(samples: Mapping[SampleKey, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def status_mb(pid: int | str, field: str) -> float | None:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM; pid `self` for this process)
    in MB; None when gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of the process (not of its children); None when gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return float(times.user + times.system)


def tree(pid: int) -> list[psutil.Process]:
    """The process and its live descendants."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process tree's live processes (PostgreSQL: postmaster + backends)."""
    seconds = 0.0
    for process in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = process.cpu_times()
            seconds += times.user + times.system
    return seconds


def tree_pss_mb(pid: int) -> float | None:
    """Proportional set size of a process tree, MB: shared memory (PostgreSQL's shared
    buffers) is counted once across the processes sharing it, not once per backend."""
    processes = tree(pid)
    if not processes:
        return None
    pss = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            pss += process.memory_full_info().pss
    return round(pss / 2**20, 1)


def embedded_pids() -> dict[str, int]:
    """The pids of the embedded broker and PostgreSQL this bench run started (from its
    devstack state file); empty when running against external infrastructure."""
    path = devstack_dir() / "bench" / f"bench-{os.getpid()}.json"
    try:
        content = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(p["name"]): int(p["pid"]) for p in content.get("processes", [])}


class InfraCpu:
    """CPU of the embedded broker and PostgreSQL (postmaster + live backends) over a
    window, per message: what a run costs the shared infrastructure, which `cost` (the
    services' own processes) leaves out. Empty on external infrastructure. A backend that
    exits inside the window takes its CPU along: stop before the service closes its pool.
    """

    def __init__(self) -> None:
        pids = embedded_pids()
        broker = [p for p in psutil.Process().children() if "tansu" in p.name()]
        if broker and "broker" not in pids:
            pids["broker"] = broker[0].pid
        self._pids = {name: pid for name, pid in pids.items() if name in ("broker", "postgres")}
        self._start = self._read()
        self._seconds: dict[str, float] | None = None

    def _read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self._pids.items():
            seconds = tree_cpu_seconds(pid) if name == "postgres" else cpu_seconds(pid)
            if seconds is not None:
                out[name] = seconds
        return out

    def stop(self) -> None:
        """End the window (idempotent)."""
        if self._seconds is None:
            end = self._read()
            self._seconds = {n: end[n] - self._start[n] for n in end if n in self._start}

    def figures(self, messages: int) -> dict[str, dict[str, float]]:
        """Per process: `cpu_seconds` and `cpu_us_per_msg` over the window."""
        self.stop()
        assert self._seconds is not None
        return {
            name: {
                "cpu_seconds": round(seconds, 3),
                "cpu_us_per_msg": round(seconds / messages * 1e6, 1) if messages else 0.0,
            }
            for name, seconds in self._seconds.items()
        }
