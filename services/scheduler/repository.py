"""SQL for the scheduler's schema: timers and the manual clock.

Firing is one statement: claim the next due timers in due order (`FOR UPDATE SKIP
LOCKED`, so replicas firing at the same time never take the same timer), delete them and
return them with their message ready to publish (`occurred_at` replaced by `due_at`).
The caller enqueues the messages in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.runtime.db import Connection

#: Due order, then id: a stable order for timers due at the same instant.
FIRE = """
WITH due AS (
    SELECT website_key, timer_id FROM timers
    WHERE due_at <= $1
    ORDER BY due_at, timer_id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM timers t USING due
WHERE t.website_key = due.website_key AND t.timer_id = due.timer_id
RETURNING t.website_key, t.timer_id, t.due_at, t.topic, t.key,
    jsonb_set(t.message, '{occurred_at}', to_jsonb(
        to_char(t.due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN extract(microseconds FROM t.due_at)::bigint % 1000000 = 0 THEN ''
           ELSE to_char(t.due_at AT TIME ZONE 'UTC', '.US') END
        || '+00:00'
    ))::text AS body,
    t.message ->> 'correlation_id' AS correlation_id,
    t.message ->> 'message_id' AS message_id
"""


@dataclass(frozen=True)
class DueTimer:
    """A claimed (deleted) timer with the body to publish."""

    website_key: str
    timer_id: str
    due_at: datetime
    topic: str
    key: str
    body: str
    correlation_id: str | None
    message_id: str | None


class TimerRepository:
    """Timers of every merchant; each command touches only its own merchant's timers."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def clock(self, *, lock: bool = False) -> datetime:
        """The manual clock. `lock` takes a share lock for the rest of the transaction,
        so a Tick (which updates the row) waits for this transaction and vice versa."""
        sql = "SELECT now FROM clock" + (" FOR SHARE" if lock else "")
        now: datetime = await self.conn.fetchval(sql)
        return now

    async def advance_clock(self, as_of: datetime) -> datetime:
        """Move the manual clock to `as_of` unless it is already later; the new time."""
        now: datetime = await self.conn.fetchval(
            "UPDATE clock SET now = greatest(now, $1) RETURNING now", as_of
        )
        return now

    async def upsert(
        self,
        website_key: str,
        timer_id: str,
        due_at: datetime,
        topic: str,
        key: str,
        message_json: str,
    ) -> None:
        await self.conn.execute(
            "INSERT INTO timers (website_key, timer_id, due_at, topic, key, message)"
            " VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)"
            " ON CONFLICT (website_key, timer_id) DO UPDATE SET due_at = EXCLUDED.due_at,"
            " topic = EXCLUDED.topic, key = EXCLUDED.key, message = EXCLUDED.message,"
            " created_at = now()",
            website_key,
            timer_id,
            due_at,
            topic,
            key,
            message_json,
        )

    async def delete(self, website_key: str, timer_id: str) -> bool:
        """Forget a timer; False when there was none."""
        status: str = await self.conn.execute(
            "DELETE FROM timers WHERE website_key = $1 AND timer_id = $2", website_key, timer_id
        )
        return status != "DELETE 0"

    async def claim_due(self, now: datetime, limit: int) -> list[DueTimer]:
        """Delete and return up to `limit` timers due at or before `now`, in due order."""
        rows = await self.conn.fetch(FIRE, now, limit)
        timers = [DueTimer(**dict(row)) for row in rows]
        timers.sort(key=lambda t: (t.due_at, t.timer_id))  # RETURNING has no order
        return timers
