"""The asyncpg pool (jsonb codec, service schema on the search path) and migrations.

Migrations are plain SQL files applied in name order, once, recorded in a version table
in the service's own schema. The runtime's own tables (outbox, inbox, command results)
come first, under the `runtime:` prefix, in every service schema.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"

#: A connection as handlers get it: plain or borrowed from the pool.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release (one round trip per use): the runtime keeps
    no session state (transaction-scoped locks, SET LOCAL only); an open transaction is
    still rolled back by the pool before this runs."""


async def create_pool(
    dsn: str, schema: str, *, min_size: int = 2, max_size: int = 10
) -> asyncpg.Pool:
    """A pool whose connections see `schema` first on their search path."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        server_settings={"search_path": f"{schema},public", "application_name": f"cm-{schema}"},
    )
    assert pool is not None
    return pool


def schema_lock_id(schema: str) -> int:
    """A stable 32-bit advisory lock namespace for a schema."""
    return zlib.crc32(schema.encode()) & 0x7FFFFFFF


def _migration_files(directory: Path, prefix: str) -> list[tuple[str, str]]:
    return [(f"{prefix}{path.stem}", path.read_text()) for path in sorted(directory.glob("*.sql"))]


async def migrate(pool: asyncpg.Pool, schema: str, service_migrations: Path | None) -> list[str]:
    """Apply pending migrations in one transaction per file; returns what was applied.

    An advisory lock makes replicas that start together apply each migration once.
    """
    # A few small files read once at start: blocking reads are fine here.
    files = _migration_files(RUNTIME_MIGRATIONS, "runtime:")
    if service_migrations is not None and service_migrations.exists():  # noqa: ASYNC240
        files += _migration_files(service_migrations, "")
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1, 0)", schema_lock_id(schema))
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                row["version"]
                for row in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')
            }
            for version, sql in files:
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
                    await conn.execute(sql)
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)', version
                    )
                applied.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1, 0)", schema_lock_id(schema))
    return applied
