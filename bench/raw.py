"""The same I/O as the bench service, with no platform code: the baseline.

An aiokafka consumer (getmany, up to `max_records`) → one asyncpg transaction per batch
(inbox rows with ON CONFLICT DO NOTHING, the state rows, the outbox rows) → an aiokafka
producer publishing the output messages right after commit (send + gather) → delete the
outbox rows → commit the offsets. Same tables (the runtime's DDL and the bench
service's), same envelopes, same partitions and fetch settings as the platform run.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.service import MIGRATIONS, WEBSITE_KEY, BenchRecord, BenchRecorded
from contracts.envelope import Envelope, new_envelope
from services.runtime.worker import cancel

#: The runtime's table definitions (read as plain SQL, so the tables are identical).
RUNTIME_DDL = (
    Path(__file__).resolve().parent.parent / "services/runtime/migrations/001_outbox_inbox.sql"
)


def ddl() -> list[str]:
    """The runtime's tables, then the bench service's."""
    return [RUNTIME_DDL.read_text()] + [p.read_text() for p in sorted(MIGRATIONS.glob("*.sql"))]


INBOX = (
    "INSERT INTO inbox (consumer, message_id) SELECT $1, unnest($2::uuid[])"
    " ON CONFLICT DO NOTHING RETURNING message_id"
)
STATE = (
    "INSERT INTO bench_state (account, seq, amount, message_id)"
    " SELECT * FROM unnest($1::text[], $2::bigint[], $3::numeric[], $4::uuid[])"
)
OUTBOX = (
    "INSERT INTO outbox (shard, topic, key, value, headers)"
    " SELECT s, t, k, v, h::jsonb FROM unnest($1::smallint[], $2::text[], $3::text[],"
    " $4::bytea[], $5::text[]) WITH ORDINALITY AS u(s, t, k, v, h, n) ORDER BY n RETURNING id"
)
HEADERS = [("content-type", b"application/json")]
HEADERS_JSON = json.dumps([["content-type", "application/json"]])
SHARDS = 8


@dataclass(kw_only=True, eq=False)
class RawPipeline:
    bootstrap: str
    dsn: str
    schema: str
    in_topic: str
    out_topic: str
    max_records: int = 500
    fetch_max_wait_ms: int = 20
    first_consumed: float | None = field(default=None, init=False)
    batches: int = field(default=0, init=False)
    _pool: asyncpg.Pool | None = field(default=None, init=False)
    _consumer: AIOKafkaConsumer | None = field(default=None, init=False)
    _producer: AIOKafkaProducer | None = field(default=None, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        statements = ddl()
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=2,
            max_size=4,
            server_settings={"search_path": f"{self.schema},public"},
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(f'CREATE SCHEMA "{self.schema}"')
            await conn.execute(f'SET LOCAL search_path TO "{self.schema}"')
            for sql in statements:
                await conn.execute(sql)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=False,
            linger_ms=2,
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            self.in_topic,
            bootstrap_servers=self.bootstrap,
            group_id=f"{self.schema}.raw",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="raw-pipeline")

    async def stop(self) -> None:
        await cancel(self._task)
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        if self._pool is not None:
            await self._pool.close()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(
                timeout_ms=self.fetch_max_wait_ms, max_records=self.max_records
            )
            records = [record for records in batch.values() for record in records]
            if records:
                if self.first_consumed is None:
                    self.first_consumed = time.time()
                await self._handle(records)

    async def _handle(self, records: list[Any]) -> None:
        assert self._pool is not None and self._producer is not None
        assert self._consumer is not None
        commands = [Envelope[BenchRecord].model_validate_json(r.value) for r in records]
        async with self._pool.acquire() as conn, conn.transaction():
            fresh = {
                row[0]
                for row in await conn.fetch(INBOX, "bench.raw", [c.message_id for c in commands])
            }
            todo = []
            for command in commands:
                if command.message_id in fresh:
                    fresh.discard(command.message_id)  # a repeat inside the batch: skipped
                    todo.append(command)
            if todo:
                await conn.execute(
                    STATE,
                    [c.payload.account for c in todo],
                    [c.payload.seq for c in todo],
                    [c.payload.amount for c in todo],
                    [c.message_id for c in todo],
                )
            outputs = [
                (
                    c.payload.account,
                    new_envelope(
                        BenchRecorded(
                            account=c.payload.account,
                            seq=c.payload.seq,
                            amount=c.payload.amount,
                            sent_at=c.payload.sent_at,
                        ),
                        website_key=WEBSITE_KEY,
                        occurred_at=c.occurred_at,
                        caused_by=c,
                    ).to_json(),
                )
                for c in todo
            ]
            ids: list[int] = []
            if outputs:
                rows = await conn.fetch(
                    OUTBOX,
                    [zlib.crc32(k.encode()) % SHARDS for k, _ in outputs],
                    [self.out_topic] * len(outputs),
                    [k for k, _ in outputs],
                    [v for _, v in outputs],
                    [HEADERS_JSON] * len(outputs),
                )
                ids = [row[0] for row in rows]
        futures = [
            await self._producer.send(self.out_topic, value=v, key=k.encode(), headers=HEADERS)
            for k, v in outputs
        ]
        await asyncio.gather(*futures)
        if ids:
            await self._pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", ids)
        await self._consumer.commit()
        self.batches += 1
