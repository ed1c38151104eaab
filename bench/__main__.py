"""`python -m bench [--only NAME] [--list] [options]`: run benchmarks, print JSON results
and write each to bench/results/<name>-<timestamp>.json."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import pkgutil
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench.benchmarks
from bench.cost import collect, line
from bench.infra import infrastructure
from bench.registry import BENCHMARKS, BenchContext

RESULTS = Path(__file__).resolve().parent / "results"


def _load_benchmarks() -> None:
    for module in pkgutil.iter_modules(bench.benchmarks.__path__):
        importlib.import_module(f"bench.benchmarks.{module.name}")


def _host() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def _given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> frozenset[str]:
    """The options (their `dest`) given on the command line, even when given their default
    value: an option two benchmarks share (`--n`) may default differently in each. Only
    options with a value as default are tracked (not those defaulting to None or a list)."""
    unset = object()
    defaults = vars(parser.parse_args([]))
    tracked = {k: unset for k, v in defaults.items() if v is not None and not isinstance(v, list)}
    parsed = parser.parse_args(argv, namespace=argparse.Namespace(**tracked))
    return frozenset(k for k in tracked if getattr(parsed, k) is not unset)


def main(argv: list[str] | None = None) -> int:
    _load_benchmarks()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this benchmark (repeatable); see --list",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    for item in BENCHMARKS.values():
        if item.add_arguments is not None:
            item.add_arguments(parser.add_argument_group(item.name))
    args = parser.parse_args(argv)
    args.given_options = _given_options(parser, argv)
    if args.list:
        for item in BENCHMARKS.values():
            print(f"{item.name}: {item.description}")
        return 0
    names = args.only or list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")

    documents = []
    with infrastructure() as infra:
        for name in names:
            started = datetime.now(UTC)
            ctx = BenchContext(infra.bootstrap_servers, infra.database_url, args)
            print(f"running {name} (run id {ctx.run_id})", file=sys.stderr, flush=True)
            results = asyncio.run(BENCHMARKS[name].run(ctx))
            document = {
                "benchmark": name,
                "started_at": started.isoformat(timespec="seconds"),
                "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
                "host": _host(),
                "infrastructure": infra.description,
                "results": results,
            }
            args.results_dir.mkdir(parents=True, exist_ok=True)
            path = args.results_dir / f"{name}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
            path.write_text(json.dumps(document, indent=2) + "\n")
            print(f"wrote {path}", file=sys.stderr, flush=True)
            documents.append(document)
    # The cost of every path, together at the end (bench/cost.py).
    for document in documents:
        for where, cost in collect(document["results"]):
            print(f"cost {document['benchmark']} {where}: {line(cost)}", file=sys.stderr)
    print(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
