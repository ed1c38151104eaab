"""The registry of benchmarks and what each one gets to run with."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping
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


@dataclass(frozen=True)
class Options:
    """A benchmark's options: `numbers` (option → its default and help; its type is the
    default's) and `runs_option`, which picks some of `runs` (comma-separated; default
    all)."""

    numbers: Mapping[str, tuple[int | float, str]]
    runs_option: str
    runs: tuple[str, ...]

    def add_to(self, parser: argparse.ArgumentParser | Any) -> None:
        for option, (default, text) in self.numbers.items():
            parser.add_argument(option, type=type(default), default=default, help=text)
        parser.add_argument(
            self.runs_option,
            default=None,
            help=f"comma-separated subset of the runs (default all: {','.join(self.runs)})",
        )

    async def perform(
        self, args: argparse.Namespace, runs: Mapping[str, Callable[[], Awaitable[Any]]]
    ) -> dict[str, Any]:
        """Do the runs `runs_option` picked (all when not given), in the order of `runs`;
        their results by name. An unknown run exits before any runs."""
        value = getattr(args, self.runs_option.removeprefix("--").replace("-", "_"))
        chosen = set(value.split(",")) if value else set(self.runs)
        if unknown := chosen - set(self.runs):
            known = ", ".join(self.runs)
            raise SystemExit(f"unknown {self.runs_option} {sorted(unknown)}; known: {known}")
        return {name: await runs[name]() for name in self.runs if name in chosen}


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
