"""The registry of benchmarks and what each one gets to run with."""

from __future__ import annotations

import argparse
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
