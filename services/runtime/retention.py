"""Keeping the inbox and stored answers bounded.

Deduplication needs a message's id only as long as it can be delivered again: Kafka
redelivers within a consumer-group rebalance or a restart, not weeks later. Ids and
stored answers older than `INBOX_RETENTION_DAYS` are deleted by a background task, and
dead letters (the `dead_letters` table `cm dlq` reads) older than `DLQ_RETENTION_DAYS`.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from services.runtime.logs import get_logger
from services.runtime.worker import run_worker

log = get_logger(__name__)


async def prune(
    pool: asyncpg.Pool, older_than: timedelta, dead_letters_older_than: timedelta | None = None
) -> int:
    """Delete inbox rows and stored command answers older than `older_than` (and dead
    letters older than `dead_letters_older_than`, when given)."""
    async with pool.acquire() as conn, conn.transaction():
        inbox = await conn.execute(
            "DELETE FROM inbox WHERE received_at < now() - $1::interval", older_than
        )
        answers = await conn.execute(
            "DELETE FROM command_results WHERE created_at < now() - $1::interval", older_than
        )
        letters = "DELETE 0"
        if dead_letters_older_than is not None:
            letters = await conn.execute(
                "DELETE FROM dead_letters WHERE created_at < now() - $1::interval",
                dead_letters_older_than,
            )
    return sum(int(status.split()[-1]) for status in (inbox, answers, letters))


async def prune_forever(
    pool: asyncpg.Pool,
    older_than: timedelta,
    every: timedelta,
    dead_letters_older_than: timedelta | None = None,
) -> None:
    async def step() -> int:
        removed = await prune(pool, older_than, dead_letters_older_than)
        if removed:
            log.info("pruned old inbox rows and answers", removed=removed)
        return 0  # one round per interval, whatever it removed

    await run_worker("inbox-retention", step, idle_s=every.total_seconds())
