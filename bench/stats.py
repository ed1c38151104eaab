"""Percentiles and the figures every benchmark reports."""

from __future__ import annotations

from typing import Any

from bench.driver import Load


def summary(latencies: list[float]) -> dict[str, Any]:
    """p50/p99/max of latencies (seconds in, milliseconds out)."""
    if not latencies:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return round(ordered[index] * 1000, 1)

    return {"p50_ms": pct(50), "p99_ms": pct(99), "max_ms": round(ordered[-1] * 1000, 1)}


def per_s(n: int, seconds: float | None) -> float | None:
    """n / seconds rounded to 0.1 (None without a time span)."""
    return round(n / seconds, 1) if seconds else None


def backlog_figures(
    n: int, load: Load, *, first_handled: float | None, rate_key: str = "msgs_per_s"
) -> dict[str, Any]:
    """The figures of a pre-produced run: the rate over first message handled → last
    output seen (so without the startup, which is `startup_seconds`), and the rest."""
    first_send, done = load.first_send, load.done
    last = done["last_output"]
    seconds = (last - first_handled) if (first_handled is not None and last is not None) else None
    return {
        rate_key: per_s(n, seconds),
        "seconds": round(seconds, 3) if seconds else None,
        "seconds_from_first_produce": round(last - first_send, 3) if last else None,
        "produce_seconds": round(load.produce_seconds, 3),
        "startup_seconds": round(first_handled - load.started, 3) if first_handled else None,
        "latency_from_produce": summary(done["latencies"]),
    }
