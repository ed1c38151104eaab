"""The broker and PostgreSQL a bench run uses: given by the environment, or started here;
and `drop_run`, which cleans up what one run left in them.

`KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` are used as they are when set. Otherwise the
embedded Tansu broker and a *durable* PostgreSQL (`fast=False`: fsync and synchronous
commit on) are started in a temporary directory and stopped (and deleted) at the end.
Started processes are recorded in `.devstack/bench/`, so a killed run's leftovers are
stopped by the next run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench import kafka
from bench.registry import BenchContext
from devstack.broker import start_broker
from devstack.postgres import start_postgres
from devstack.state import StateFile, devstack_dir, reap_dir


@dataclass
class Infra:
    bootstrap_servers: str
    database_url: str
    description: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def infrastructure() -> Iterator[Infra]:
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database = os.environ.get("DATABASE_URL")
    description: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        state: StateFile | None = None
        if not (kafka and database):
            directory = devstack_dir() / "bench"
            directory.mkdir(parents=True, exist_ok=True)
            for entry in reap_dir(directory):
                print(
                    f"stopped a leftover of a killed bench run: {entry.name} (pid {entry.pid})",
                    file=sys.stderr,
                )
            state = StateFile(directory / f"bench-{os.getpid()}.json")
            state.claim()
            stack.callback(state.stop_all)  # normally empty: each stops its own below
        if kafka:
            description["kafka"] = {"kind": "external", "bootstrap_servers": kafka}
        else:
            assert state is not None
            log = devstack_dir() / "bench" / f"broker-{os.getpid()}.log"
            state.add_cleanup(log)
            broker = start_broker(log_path=log)
            state.record("broker", broker.pid, signal.SIGKILL, 1.0)

            def stop_broker() -> None:
                broker.stop()
                state.forget(broker.pid)
                log.unlink(missing_ok=True)

            stack.callback(stop_broker)
            kafka = broker.bootstrap_servers
            description["kafka"] = {
                "kind": "embedded tansu (memory storage)",
                "startup_s": round(broker.startup_s, 3),
            }
        if database:
            description["postgres"] = {"kind": "external"}
        else:
            assert state is not None
            base = Path(tempfile.mkdtemp(prefix="cm-bench-pg-"))
            state.add_cleanup(base)
            server = start_postgres(
                base / "pgdata", fast=False, delete_on_stop=True, log_path=base / "postgres.log"
            )
            state.record("postgres", server.pid, signal.SIGINT, 10.0)

            def stop_postgres() -> None:
                server.stop()
                state.forget(server.pid)
                shutil.rmtree(base, ignore_errors=True)

            stack.callback(stop_postgres)
            database = server.dsn
            description["postgres"] = {
                "kind": "embedded postgres 18, durable (fsync on)",
                "startup_s": round(server.startup_s, 3),
            }
        yield Infra(kafka, database, description)


#: A count taken before a run's schema is dropped: SQL (`{schema}` is the quoted schema,
#: the first column of the first row is the value) or `await count(conn, schema)`.
Count = str | Callable[[asyncpg.Connection, str], Awaitable[Any]]


async def drop_run(
    ctx: BenchContext, schema: str, counts: Mapping[str, Count], *, prefix: str | None = None
) -> dict[str, Any]:
    """Take `counts` in `schema`, drop it and, given the run's topic `prefix`, delete the
    run's topics (frees the embedded broker's memory)."""
    conn = await asyncpg.connect(ctx.database_url)
    try:
        quoted = f'"{schema}"'
        values = {
            name: await conn.fetchval(count.format(schema=quoted))
            if isinstance(count, str)
            else await count(conn, quoted)
            for name, count in counts.items()
        }
        await conn.execute(f"DROP SCHEMA IF EXISTS {quoted} CASCADE")
    finally:
        await conn.close()
    if prefix is not None:
        await kafka.delete_topics_with_prefix(ctx.bootstrap_servers, prefix)
    return values


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
