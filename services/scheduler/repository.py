"""SQL for the scheduler's schema: timers and the manual clock.

Firing is two statements in one transaction: claim the next due timers in due order
(`FOR UPDATE SKIP LOCKED`, so replicas firing at the same time never take the same
timer; only their keys and due times come back), then delete them and insert their
messages (`occurred_at` replaced by `due_at`) and a TimersFired per merchant straight
into the outbox, with the shards the caller computed from the keys (the runtime's hash, so a key
keeps one shard whoever enqueues it). The bodies never travel to Python and back. A
timer scheduled when it is due already goes through the same SQL (`FIRE_NOW`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from contracts.scheduler import MAX_TIMERS_PER_EVENT
from services.runtime.db import Connection
from services.runtime.outbox import shard_of

#: `due_at` as `occurred_at` text, UTC, like Python's isoformat (microseconds when any).
_ISO = """(to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
    || CASE WHEN extract(microseconds FROM {col})::bigint % 1000000 = 0 THEN ''
       ELSE to_char({col} AT TIME ZONE 'UTC', '.US') END
    || '+00:00')"""


def _enqueue(fired: str, fired_at: str, causation_id: str, names: str) -> str:
    """The rest of a WITH that has the fired timers in `fired` (the timer's columns,
    `due_iso`, `shard`, `event_shard` and their order `n`): insert into the outbox each
    timer's message, with `occurred_at` = `due_at`, in `n` order, then one TimersFired per
    merchant and `MAX_TIMERS_PER_EVENT` timers (`fired_at` text, causation id or NULL),
    both built here: the bodies never leave the database. The message was validated as an
    envelope when it was scheduled. `names` is the `$` of a text[]: prefix, events topic,
    headers JSON. The one place a TimersFired is written."""
    names_at = f"({names}::text[])"
    return f""", chunked AS (
    SELECT t.*,
        (row_number() OVER (PARTITION BY t.website_key ORDER BY t.n) - 1)
            / {MAX_TIMERS_PER_EVENT} AS chunk
    FROM {fired} t
), events AS (
    SELECT min(n) AS n, min(event_shard) AS shard, website_key, jsonb_build_object(
        'message_id', gen_random_uuid(),
        'type', 'TimersFired',
        'website_key', website_key,
        'occurred_at', {fired_at}::text,
        'correlation_id', NULL,
        'causation_id', {causation_id}::uuid,
        'payload', jsonb_build_object(
            'fired_at', {fired_at}::text,
            'timers', jsonb_agg(jsonb_build_object(
                'timer_id', timer_id,
                'due_at', due_iso,
                'topic', topic,
                'message_id', message ->> 'message_id',
                'correlation_id', coalesce(message ->> 'correlation_id', message ->> 'message_id')
            ) ORDER BY n)
        )
    )::text AS value
    FROM chunked
    GROUP BY website_key, chunk
)
INSERT INTO outbox (shard, topic, key, value, headers)
SELECT o.shard, o.topic, o.key, convert_to(o.value, 'UTF8'), {names_at}[3]::jsonb
FROM (
    SELECT 0 AS part, n, shard, {names_at}[1] || topic AS topic, key,
        jsonb_set(message, '{{occurred_at}}', to_jsonb(due_iso))::text AS value
    FROM {fired}
    UNION ALL
    SELECT 1, n, shard, {names_at}[2], website_key, value FROM events
) o
ORDER BY o.part, o.n"""


#: The timers due by $1 in due order (then id: a stable order for equal due times), at
#: most $2, locked (`FOR UPDATE SKIP LOCKED`: replicas never claim the same timer). The
#: caller computes their outbox shards (the runtime's hash of the key) and fires them
#: with FIRE in the same transaction.
CLAIM = """
SELECT website_key, timer_id, key, due_at FROM timers
WHERE due_at <= $1
ORDER BY due_at, timer_id
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

#: Delete the claimed timers ($1 website keys, $2 timer ids, $3 message shards, $4 their
#: TimersFired's shards, in due order) and enqueue their messages ($5 names as in `_enqueue`, $6 =
#: fired_at text, $7 = causation id).
FIRE = f"""
WITH due AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::smallint[], $4::smallint[])
        WITH ORDINALITY AS d (website_key, timer_id, shard, event_shard, n)
), fired AS (
    DELETE FROM timers t USING due
    WHERE t.website_key = due.website_key AND t.timer_id = due.timer_id
    RETURNING t.website_key, t.timer_id, t.topic, t.key, t.message, due.shard,
        due.event_shard, due.n, {_ISO.format(col="t.due_at")} AS due_iso
)
{_enqueue("fired", "$6", "$7", "$5")}
"""

#: A timer scheduled when it is due already: it replaces any earlier timer of its id and
#: fires at once, never stored ($1-$6 as `Timer.row()`; $7 message shard, $8 event
#: shard, $9 names, $10 = fired_at text, $11 = causation id).
FIRE_NOW = f"""
WITH earlier AS (DELETE FROM timers WHERE website_key = $1 AND timer_id = $2),
fired AS (
    SELECT $1::text AS website_key, $2::text AS timer_id, $4::text AS topic,
        $5::text AS key, $6::text::jsonb AS message, $7::smallint AS shard,
        $8::smallint AS event_shard, 1 AS n, {_ISO.format(col="$3::timestamptz")} AS due_iso
)
{_enqueue("fired", "$10", "$11", "$9")}
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
class Outbox:
    """Where fired messages go: the deployed topic names' prefix, the events topic, the
    shard count and the rows' headers (what `services.runtime.outbox.enqueue` writes)."""

    prefix: str
    events_topic: str
    shards: int
    headers_json: str

    def names(self) -> list[str]:
        return [self.prefix, self.events_topic, self.headers_json]


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
        self, timer: Timer, outbox: Outbox, fired_at: str, causation_id: uuid.UUID | None
    ) -> None:
        """Fire a timer that is due already, replacing any earlier one of its id: its
        message and a TimersFired of it go into the outbox."""
        await self.conn.execute(
            FIRE_NOW,
            *timer.row(),
            shard_of(timer.key, outbox.shards),
            shard_of(timer.website_key, outbox.shards),
            outbox.names(),
            fired_at,
            causation_id,
        )

    async def fire_due(
        self,
        now: datetime,
        limit: int,
        outbox: Outbox,
        fired_at: str,
        causation_id: uuid.UUID | None,
    ) -> list[datetime]:
        """Delete up to `limit` timers due at or before `now` and enqueue their messages
        (in due order) and TimersFired events; the due times of the timers fired."""
        rows = await self.conn.fetch(CLAIM, now, limit)
        if not rows:
            return []
        shards = outbox.shards
        merchant_shards: dict[str, int] = {}
        websites = [row[0] for row in rows]
        for website_key in websites:
            if website_key not in merchant_shards:
                merchant_shards[website_key] = shard_of(website_key, shards)
        await self.conn.execute(
            FIRE,
            websites,
            [row[1] for row in rows],
            [shard_of(row[2], shards) for row in rows],
            [merchant_shards[w] for w in websites],
            outbox.names(),
            fired_at,
            causation_id,
        )
        return [row[3] for row in rows]
