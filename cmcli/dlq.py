"""`cm dlq list|replay`: the dead letters the services keep, and replaying them.

Every service writes a dead letter twice, in the same transaction: as a `DeadLetter` on
`cm.dlq` (for whoever watches the topic) and as a row of its own `dead_letters` table
(migrations/004_dead_letters.sql in services/runtime), which keeps what a replay needs:
the record's key and headers as they came and the first `DLQ_MAX_VALUE_BYTES` of its body.
This module reads those tables (one schema per service, `$DATABASE_URL`) and publishes
replays with the original topic, key, headers and body, plus the `cm-replay-of` header.

A replay is recorded in the row before it is published (`replay_requested_at`), and
counted once the broker acknowledged it (`replays`, `replayed_at`): a dead letter already
replayed is skipped unless `--again` is given. The consumer lets a replay past the inbox
only when the inbox row is the one that dead letter wrote and the row says the replay was
asked for, so a message is handled once however often it is replayed
(services/runtime/consumer.py, `_reopen`). A body that was cut is never replayed.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from cmcli.environment import setting
from contracts.catalog import SERVICES
from services.runtime.consumer import REPLAY_HEADER

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

_SCHEMA = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

_COLUMNS = (
    "id, consumer, topic, kafka_partition, kafka_offset, key, value, value_length,"
    " value_truncated, headers, website_key, message_id, message_type, codes, error,"
    " created_at, replay_requested_at, replays, replayed_at"
)


class DlqError(Exception):
    """A request `cm dlq` cannot carry out (printed as `cm: ...`, exit 2)."""


def database_url() -> str:
    """$DATABASE_URL, else the one the running `python -m devstack run|up` recorded."""
    return setting("DATABASE_URL") or DEFAULT_DATABASE_URL


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """`2h`, `30m`, `7d`, `45s` (that long ago) or an ISO 8601 time (UTC if no offset)."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DlqError(f"not a time: {text!r} (use e.g. 2h, 30m, 7d or 2026-11-30T08:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Filters:
    """Which dead letters: by id, error code, time range (all given ones must hold)."""

    ids: Sequence[uuid.UUID] = ()
    codes: Sequence[str] = ()
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None

    def any(self) -> bool:
        return bool(self.ids or self.codes or self.since or self.until)

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if self.ids:
            args.append(list(self.ids))
            clauses.append(f"id = ANY(${len(args)}::uuid[])")
        if self.codes:
            args.append(list(self.codes))
            clauses.append(f"codes && ${len(args)}::text[]")
        if self.since is not None:
            args.append(self.since)
            clauses.append(f"created_at >= ${len(args)}")
        if self.until is not None:
            args.append(self.until)
            clauses.append(f"created_at < ${len(args)}")
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def parse_ids(texts: Sequence[str]) -> list[uuid.UUID]:
    ids = []
    for text in texts:
        try:
            ids.append(uuid.UUID(text))
        except ValueError:
            raise DlqError(
                f"not a dead letter id: {text!r} (ids are UUIDs, see cm dlq list)"
            ) from None
    return ids


def schemas_for(services: Sequence[str], schemas: Sequence[str]) -> list[str]:
    """The schemas to look in: `--schema` as given, else those of `--service`, else all."""
    chosen = list(schemas) or list(services) or list(SERVICES)
    for name in chosen:
        if not _SCHEMA.match(name):
            raise DlqError(f"not a schema name: {name!r}")
    return chosen


async def _connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "cm-dlq"})
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return conn


async def _tables(conn: asyncpg.Connection, schemas: Sequence[str]) -> list[str]:
    """The schemas among `schemas` that have a dead-letter table (a service that never
    started, or ran before it existed, has none)."""
    found = []
    for schema in schemas:
        if await conn.fetchval("SELECT to_regclass($1)", f'"{schema}".dead_letters'):
            found.append(schema)
    return found


async def fetch(dsn: str, schemas: Sequence[str], filters: Filters) -> list[dict[str, Any]]:
    """The dead letters of `schemas` matching `filters`, oldest first."""
    conn = await _connect(dsn)
    try:
        rows: list[dict[str, Any]] = []
        where, args = filters.where()
        limit = "" if filters.limit is None else f" LIMIT {max(0, int(filters.limit))}"
        for schema in await _tables(conn, schemas):
            found = await conn.fetch(
                f'SELECT {_COLUMNS} FROM "{schema}".dead_letters{where}'
                f" ORDER BY created_at DESC, id DESC{limit}",
                *args,
            )
            rows.extend({"schema": schema, **dict(row)} for row in found)
    finally:
        await conn.close()
    rows.sort(key=lambda row: (row["created_at"], str(row["id"])))
    if filters.limit is not None:
        rows = rows[-filters.limit :] if filters.limit > 0 else []
    return rows


def summary(row: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """A dead letter as `cm dlq list --json` prints it (no body: it may hold personal data)."""
    now = now or datetime.now(UTC)
    return {
        "id": str(row["id"]),
        "service": str(row["consumer"]).split(".", 1)[0],
        "consumer": row["consumer"],
        "schema": row["schema"],
        "topic": row["topic"],
        "partition": row["kafka_partition"],
        "offset": row["kafka_offset"],
        "codes": list(row["codes"]),
        "message_type": row["message_type"],
        "website_key": row["website_key"],
        "message_id": None if row["message_id"] is None else str(row["message_id"]),
        "created_at": row["created_at"].isoformat(),
        "age_s": round((now - row["created_at"]).total_seconds(), 1),
        "value_length": row["value_length"],
        "value_truncated": row["value_truncated"],
        "replayable": not row["value_truncated"],
        "replay_requested_at": _iso(row["replay_requested_at"]),
        "replays": row["replays"],
        "replayed_at": _iso(row["replayed_at"]),
    }


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(0, seconds))}s"


def table(summaries: Sequence[dict[str, Any]]) -> str:
    """A readable table of `summary()` rows."""
    header = ("ID", "SERVICE", "TOPIC", "PART@OFFSET", "CODES", "AGE", "REPLAYS", "NOTE")
    lines = [header]
    for s in summaries:
        note = []
        if s["value_truncated"]:
            note.append(f"body cut ({s['value_length']} bytes): not replayable")
        if s["replay_requested_at"] and not s["replays"]:
            note.append("replay asked, not confirmed")
        lines.append(
            (
                s["id"],
                s["service"],
                s["topic"],
                f"{s['partition']}@{s['offset']}",
                ",".join(s["codes"]),
                age(s["age_s"]),
                str(s["replays"]),
                "; ".join(note),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False))
        + "  "
        + line[-1]
        for line in lines
    )


async def list_command(dsn: str, schemas: Sequence[str], filters: Filters, *, as_json: bool) -> int:
    summaries = [summary(row) for row in await fetch(dsn, schemas, filters)]
    if as_json:
        for s in summaries:
            print(json.dumps(s, ensure_ascii=False))
    elif summaries:
        print(table(summaries))
    else:
        print("no dead letters", file=sys.stderr)
    return 0


@dataclass
class ReplayReport:
    """What became of each chosen dead letter (ids as text)."""

    replayed: dict[str, str]
    refused: dict[str, str]
    skipped: dict[str, str]
    failed: dict[str, str]
    missing: list[str]

    @property
    def ok(self) -> bool:
        return not (self.refused or self.failed or self.missing)


async def replay(
    dsn: str,
    bootstrap: str,
    schemas: Sequence[str],
    filters: Filters,
    *,
    again: bool = False,
    dry_run: bool = False,
    kafka_options: dict[str, Any] | None = None,
) -> ReplayReport:
    """Publish the chosen dead letters again, each to its original topic with its
    original key, headers and body, and record it (see the module docstring)."""
    if not filters.any():
        raise DlqError("say which dead letters: ids, --code, --since or --until")
    report = ReplayReport({}, {}, {}, {}, [])
    rows = await fetch(dsn, schemas, filters)
    found = {str(row["id"]) for row in rows}
    report.missing = [str(i) for i in filters.ids if str(i) not in found]
    chosen: dict[str, list[uuid.UUID]] = {}
    for row in rows:
        letter = str(row["id"])
        if row["value_truncated"]:
            report.refused[letter] = (
                f"the body was cut to {len(row['value'])} of {row['value_length']} bytes"
                " (DLQ_MAX_VALUE_BYTES) when it was dead-lettered; it cannot be replayed"
                " from the dead letter: the sender must send it again"
            )
        elif row["replay_requested_at"] is not None and not again:
            report.skipped[letter] = (
                f"already replayed ({row['replays']} time(s), asked at"
                f" {row['replay_requested_at'].isoformat()}); --again replays it anyway"
            )
        else:
            chosen.setdefault(row["schema"], []).append(row["id"])
    if dry_run or not chosen:
        for ids in chosen.values():
            report.replayed.update((str(i), "would be replayed (dry run)") for i in ids)
        return report

    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,  # the embedded broker cannot hand out producer ids
        acks="all",
        **(kafka_options or {}),
    )
    await producer.start()  # before anything is marked: no broker, nothing recorded
    try:
        conn = await _connect(dsn)
    except BaseException:
        await producer.stop()
        raise
    try:
        for schema, ids in chosen.items():
            # Recorded before it is published: the consumer checks it when the replay
            # arrives. A concurrent `cm dlq replay` claims a letter only once.
            claimed = await conn.fetch(
                f'UPDATE "{schema}".dead_letters SET replay_requested_at = now()'
                " WHERE id = ANY($1::uuid[]) AND NOT value_truncated"
                " AND (replay_requested_at IS NULL OR $2)"
                " RETURNING id, topic, key, value, headers",
                ids,
                again,
            )
            for lost in set(ids) - {row["id"] for row in claimed}:
                report.skipped[str(lost)] = "replayed by someone else meanwhile"
            order = {letter_id: n for n, letter_id in enumerate(ids)}
            for claim in sorted(claimed, key=lambda r: order[r["id"]]):
                letter = str(claim["id"])
                headers = [(str(k), base64.b64decode(v)) for k, v in claim["headers"]]
                headers.append((REPLAY_HEADER, letter.encode()))
                try:
                    meta = await producer.send_and_wait(
                        claim["topic"], bytes(claim["value"]), key=claim["key"], headers=headers
                    )
                except Exception as exc:
                    report.failed[letter] = f"{type(exc).__name__}: {exc}"
                    continue
                await conn.execute(
                    f'UPDATE "{schema}".dead_letters'
                    " SET replays = replays + 1, replayed_at = now() WHERE id = $1",
                    claim["id"],
                )
                report.replayed[letter] = f"{meta.topic}[{meta.partition}]@{meta.offset}"
    finally:
        await producer.stop()
        await conn.close()
    return report


def print_report(report: ReplayReport) -> None:
    for letter, where in report.replayed.items():
        print(f"{letter}\treplayed -> {where}")
    for letter, why in report.skipped.items():
        print(f"{letter}\tskipped: {why}", file=sys.stderr)
    for letter, why in report.refused.items():
        print(f"{letter}\trefused: {why}", file=sys.stderr)
    for letter, why in report.failed.items():
        print(f"{letter}\tfailed: {why}", file=sys.stderr)
    for letter in report.missing:
        print(f"{letter}\tnot found (cm dlq list; --service or --schema?)", file=sys.stderr)
    if not (report.replayed or report.skipped or report.refused or report.failed):
        print("no dead letters matched", file=sys.stderr)
