"""SQL for the scheduler's schema: timers and the manual clock.

Firing is one statement: claim the next due timers in due order (`FOR UPDATE SKIP
LOCKED`, so replicas firing at the same time never take the same timer), delete them and
return them with their message ready to publish (`occurred_at` replaced by `due_at`) and
their TimerFired event; a timer scheduled when it is due already goes through the same
SQL (`FIRE_NOW`). The caller enqueues the messages in the same transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from services.runtime.db import Connection

#: `due_at` as `occurred_at` text, UTC, like Python's isoformat (microseconds when any).
_ISO = """(to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
    || CASE WHEN extract(microseconds FROM {col})::bigint % 1000000 = 0 THEN ''
       ELSE to_char({col} AT TIME ZONE 'UTC', '.US') END
    || '+00:00')"""


def _fired(fired_at: str, causation_id: str) -> str:
    """What a fired timer returns, from its row `t` and `due.due_iso`: the row's columns,
    its message with `occurred_at` = `due_at`, and its TimerFired envelope (`fired_at`
    text, causation id or NULL), both built in the database. The message was validated
    as an envelope when it was scheduled. The one place a TimerFired is written."""
    return f"""t.website_key, t.timer_id, t.due_at, t.topic, t.key,
    jsonb_set(t.message, '{{occurred_at}}', to_jsonb(due.due_iso))::text AS body,
    jsonb_build_object(
        'message_id', gen_random_uuid(),
        'type', 'TimerFired',
        'website_key', t.website_key,
        'occurred_at', due.due_iso,
        'correlation_id', coalesce(t.message ->> 'correlation_id', t.message ->> 'message_id'),
        'causation_id', {causation_id}::uuid,
        'payload', jsonb_build_object(
            'timer_id', t.timer_id, 'due_at', due.due_iso, 'fired_at', {fired_at}::text,
            'topic', t.topic
        )
    )::text AS event"""


#: Claim the timers due by $1 in due order (then id: a stable order for equal due times),
#: at most $2, delete them and return them fired ($3 = fired_at text, $4 = causation id).
FIRE = f"""
WITH due AS (
    SELECT website_key, timer_id, {_ISO.format(col="due_at")} AS due_iso FROM timers
    WHERE due_at <= $1
    ORDER BY due_at, timer_id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM timers t USING due
WHERE t.website_key = due.website_key AND t.timer_id = due.timer_id
RETURNING {_fired("$3", "$4")}
"""

#: A timer scheduled when it is due already: it replaces any earlier timer of its id and
#: fires at once, never stored ($1-$6 as `Timer.row()`; $7 = fired_at text, $8 =
#: causation id).
FIRE_NOW = f"""
WITH earlier AS (DELETE FROM timers WHERE website_key = $1 AND timer_id = $2)
SELECT {_fired("$7", "$8")}
FROM (VALUES ($1::text, $2::text, $3::timestamptz, $4::text, $5::text, $6::text::jsonb))
    AS t (website_key, timer_id, due_at, topic, key, message),
    LATERAL (SELECT {_ISO.format(col="t.due_at")} AS due_iso) due
"""


@dataclass(frozen=True)
class Timer:
    """A timer as a ScheduleTimer gives it: at `due_at`, publish `message_json` to `topic`
    with `key`."""

    website_key: str
    timer_id: str
    due_at: datetime
    topic: str
    key: str
    message_json: str

    def row(self) -> tuple[str, str, datetime, str, str, str]:
        """The query arguments $1-$6, in the table's column order."""
        return (
            self.website_key,
            self.timer_id,
            self.due_at,
            self.topic,
            self.key,
            self.message_json,
        )


@dataclass(frozen=True)
class DueTimer:
    """A claimed (deleted) timer with the body to publish."""

    website_key: str
    timer_id: str
    due_at: datetime
    topic: str
    key: str
    body: str  # the message to publish
    event: str  # its TimerFired envelope


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

    async def due(self, now: datetime, cap: int) -> tuple[int, datetime | None]:
        """How many timers are due at `now` (counted up to `cap`) and the earliest due
        time of any timer (both read off the (due_at, timer_id) index)."""
        row = await self.conn.fetchrow(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM timers WHERE due_at <= $1"
            " LIMIT $2) AS d) AS n, (SELECT min(due_at) FROM timers) AS earliest",
            now,
            cap,
        )
        assert row is not None
        return row["n"], row["earliest"]

    async def upsert(self, timer: Timer) -> None:
        await self.conn.execute(
            "INSERT INTO timers (website_key, timer_id, due_at, topic, key, message)"
            " VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)"
            " ON CONFLICT (website_key, timer_id) DO UPDATE SET due_at = EXCLUDED.due_at,"
            " topic = EXCLUDED.topic, key = EXCLUDED.key, message = EXCLUDED.message,"
            " created_at = now()",
            *timer.row(),
        )

    async def delete(self, website_key: str, timer_id: str) -> bool:
        """Forget a timer; False when there was none."""
        status: str = await self.conn.execute(
            "DELETE FROM timers WHERE website_key = $1 AND timer_id = $2", website_key, timer_id
        )
        return status != "DELETE 0"

    async def fire_now(
        self, timer: Timer, fired_at: str, causation_id: uuid.UUID | None
    ) -> DueTimer:
        """Fire a timer that is due already, replacing any earlier one of its id."""
        row = await self.conn.fetchrow(FIRE_NOW, *timer.row(), fired_at, causation_id)
        assert row is not None
        return DueTimer(*row)

    async def claim_due(
        self, now: datetime, limit: int, fired_at: str, causation_id: uuid.UUID | None
    ) -> list[DueTimer]:
        """Delete and return up to `limit` timers due at or before `now`, in due order."""
        rows = await self.conn.fetch(FIRE, now, limit, fired_at, causation_id)
        timers = [DueTimer(*row) for row in rows]
        timers.sort(key=lambda t: (t.due_at, t.timer_id))  # RETURNING has no order
        return timers
