"""What a service costs per message: its own CPU time over a measured window, divided by
the messages of the run, and its peak resident memory (RSS) during the window.

`CostMeter` measures named processes: a platform service in a process of its own
(`bench.procs.ServiceProcess`, by its pid) or a service run in the bench process
(`bench.inprocess.InProcessService`: the bench process's pid; the load generators run in
child processes of their own, so what the bench process spends in the window is the
service's, plus the harness's few waits). CPU is user + system time of the process (all
its threads: the event loop, asyncpg and aiokafka are in-process) from `start` to `stop`;
RSS is sampled every `interval` seconds (psutil `memory_info().rss`), the peak kept: VmHWM
would also cover what earlier benchmarks of the same `python -m bench` made the bench
process grow to.

`figures(messages)` gives, per process, `cpu_seconds`, `cpu_us_per_msg`, `peak_rss_mb`
and `rss_under_150_mb` (the issue's per-service memory target, `RSS_TARGET_MB`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import psutil

#: Each service stays under this resident memory under load (issue 14).
RSS_TARGET_MB = 150.0


class CostMeter:
    """CPU time and peak RSS of named processes over a window (see the module docstring)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._processes: dict[str, psutil.Process] = {}
        self._cpu_start: dict[str, float] = {}
        self._cpu: dict[str, float] = {}
        self._peak: dict[str, int] = {}
        self._sampler: asyncio.Task[None] | None = None
        self.window_s: float | None = None
        self._started_at = 0.0

    def add(self, name: str, pid: int | None = None) -> None:
        """Measure process `pid` (None: this process) as `name`, from now on."""
        process = psutil.Process(pid if pid is not None else os.getpid())
        self._processes[name] = process
        self._cpu_start[name] = _cpu(process) or 0.0
        self._peak[name] = _rss(process) or 0
        if self._sampler is None:
            self._started_at = time.monotonic()
            self._sampler = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self._sample_once()
            await asyncio.sleep(self.interval)

    def _sample_once(self) -> None:
        for name, process in self._processes.items():
            rss = _rss(process)
            if rss is not None and rss > self._peak[name]:
                self._peak[name] = rss

    async def stop(self) -> None:
        """End the window: CPU read now, the sampler stopped (idempotent)."""
        if self._sampler is None:
            return
        self._sample_once()
        for name, process in self._processes.items():
            if name not in self._cpu:
                now = _cpu(process)
                self._cpu[name] = (now if now is not None else 0.0) - self._cpu_start[name]
        self.window_s = time.monotonic() - self._started_at
        self._sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sampler
        self._sampler = None

    def stop_one(self, name: str) -> None:
        """End the window of one process (read its CPU before it exits)."""
        self._sample_once()
        now = _cpu(self._processes[name])
        if now is not None:
            self._cpu[name] = now - self._cpu_start[name]

    def figures(self, messages: int) -> dict[str, Any]:
        """Per process: CPU seconds and µs per message (of `messages`), peak RSS and the
        150 MB check."""
        out: dict[str, Any] = {}
        for name in self._processes:
            cpu = self._cpu.get(name)
            peak = round(self._peak[name] / 2**20, 1)
            out[name] = {
                "cpu_seconds": round(cpu, 3) if cpu is not None else None,
                "cpu_us_per_msg": round(cpu / messages * 1e6, 1)
                if cpu is not None and messages
                else None,
                "peak_rss_mb": peak,
                "rss_under_150_mb": peak < RSS_TARGET_MB,
            }
        return {
            "messages": messages,
            "window_s": round(self.window_s, 3) if self.window_s is not None else None,
            "rss_target_mb": RSS_TARGET_MB,
            "processes": out,
        }


def _cpu(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return float(times.user + times.system)


def _rss(process: psutil.Process) -> int | None:
    try:
        return int(process.memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def line(cost: dict[str, Any]) -> str:
    """A one-line summary for the progress log: `name 123.4 µs/msg, 98.7 MB` per process."""
    parts = [
        f"{name} {p['cpu_us_per_msg']} µs/msg CPU, peak RSS {p['peak_rss_mb']} MB"
        f" ({'<' if p['rss_under_150_mb'] else '≥'} 150)"
        for name, p in cost["processes"].items()
    ]
    return "; ".join(parts)


def collect(results: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every `cost` block in a benchmark's results, with where it is (`throughput.pushes`)."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(results, dict):
        for key, value in results.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "cost" and isinstance(value, dict) and "processes" in value:
                found.append((path, value))
            else:
                found.extend(collect(value, where))
    return found
