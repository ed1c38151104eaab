"""The registry of benchmarks and what each one gets to run with."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BenchContext:
    """The infrastructure and options a benchmark runs with."""

    bootstrap_servers: str
    database_url: str
    args: argparse.Namespace
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def prefix(self, label: str) -> str:
        """A topic prefix (and schema stem) unique to this run and `label`."""
        return f"b{self.run_id}{label}."


def logger(name: str) -> Callable[[str], None]:
    """Progress lines on stderr, `[name] message`."""

    def log(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    return log


def add_runs_argument(
    parser: argparse.ArgumentParser | Any, option: str, runs: tuple[str, ...]
) -> None:
    parser.add_argument(
        option,
        default=None,
        help=f"comma-separated subset of the runs (default all: {','.join(runs)})",
    )


def selected_runs(value: str | None, option: str, runs: tuple[str, ...]) -> set[str]:
    """The runs named by `option` (all of `runs` when not given); unknown ones exit."""
    chosen = set(value.split(",")) if value else set(runs)
    if unknown := chosen - set(runs):
        raise SystemExit(f"unknown {option} {sorted(unknown)}; known: {', '.join(runs)}")
    return chosen


BenchmarkFn = Callable[[BenchContext], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    run: BenchmarkFn
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(
    name: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Callable[[BenchmarkFn], BenchmarkFn]:
    """Register a benchmark: `async def run(ctx) -> dict` (its JSON results)."""

    def register(fn: BenchmarkFn) -> BenchmarkFn:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} registered twice")
        BENCHMARKS[name] = Benchmark(name, description, fn, add_arguments)
        return fn

    return register
