"""`cm dlq`'s pure parts: times, filters, the table, and its refusals before any I/O."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from cmcli import dlq
from cmcli.__main__ import main

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def test_times_are_durations_ago_or_iso_times_in_utc_by_default() -> None:
    assert dlq.parse_time("2h", NOW) == NOW - timedelta(hours=2)
    assert dlq.parse_time("30m", NOW) == NOW - timedelta(minutes=30)
    assert dlq.parse_time("1.5d", NOW) == NOW - timedelta(days=1.5)
    assert dlq.parse_time("2026-11-30T06:00", NOW) == datetime(2026, 11, 30, 6, tzinfo=UTC)
    offset = dlq.parse_time("2026-11-30T07:00+01:00", NOW)
    assert offset == datetime(2026, 11, 30, 6, tzinfo=UTC)
    with pytest.raises(dlq.DlqError, match="not a time"):
        dlq.parse_time("yesterday", NOW)


def test_filters_become_one_parameterised_where_clause() -> None:
    assert dlq.Filters().where() == ("", [])
    assert not dlq.Filters().any()
    letter = uuid.uuid4()
    since = NOW - timedelta(hours=1)
    where, args = dlq.Filters(ids=[letter], codes=["handler_error"], since=since).where()
    assert where == (" WHERE id = ANY($1::uuid[]) AND codes && $2::text[] AND created_at >= $3")
    assert args == [[letter], ["handler_error"], since]


def test_ids_and_schema_names_are_checked() -> None:
    letter = uuid.uuid4()
    assert dlq.parse_ids([str(letter)]) == [letter]
    with pytest.raises(dlq.DlqError, match="not a dead letter id"):
        dlq.parse_ids(["12"])
    assert dlq.schemas_for([], []) == [
        "invoice",
        "scheduler",
        "notifier",
        "subscription",
        "collection",
    ]
    assert dlq.schemas_for(["invoice"], []) == ["invoice"]
    assert dlq.schemas_for(["invoice"], ["ledger_x"]) == ["ledger_x"]
    with pytest.raises(dlq.DlqError, match="not a schema name"):
        dlq.schemas_for([], ['x"; DROP TABLE inbox; --'])


def _row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": uuid.uuid4(),
        "schema": "invoice",
        "consumer": "invoice.commands",
        "topic": "cm.invoice.commands",
        "kafka_partition": 3,
        "kafka_offset": 42,
        "key": b"shop-1:INV-1",
        "value": b"{}",
        "value_length": 2,
        "value_truncated": False,
        "headers": [],
        "website_key": "shop-1",
        "message_id": uuid.uuid4(),
        "message_type": "CreateInvoice",
        "codes": ["handler_error"],
        "error": "handler_error",
        "created_at": NOW - timedelta(minutes=90),
        "replay_requested_at": None,
        "replays": 0,
        "replayed_at": None,
    }
    row.update(changes)
    return row


def test_the_table_shows_where_what_and_age_and_says_when_a_body_was_cut() -> None:
    whole, cut = _row(), _row(value_truncated=True, value_length=20_000, codes=["too_large"])
    summaries = [dlq.summary(whole, NOW), dlq.summary(cut, NOW)]
    assert summaries[0]["replayable"] and not summaries[1]["replayable"]
    assert summaries[0]["age_s"] == 5400.0
    lines = dlq.table(summaries).splitlines()
    assert lines[0].split() == [
        "ID",
        "SERVICE",
        "TOPIC",
        "PART@OFFSET",
        "CODES",
        "AGE",
        "REPLAYS",
        "NOTE",
    ]
    assert str(whole["id"]) in lines[1] and "3@42" in lines[1] and "1h" in lines[1]
    assert "not replayable" not in lines[1]
    assert "body cut (20000 bytes): not replayable" in lines[2]
    assert "shop-1:INV-1" not in "\n".join(lines), "no key or body in the table"


def test_replay_without_a_selection_is_refused_before_anything_is_read() -> None:
    with pytest.raises(dlq.DlqError, match="say which dead letters"):
        asyncio.run(dlq.replay("postgresql://nowhere", "nowhere:1", ["invoice"], dlq.Filters()))
    assert main(["dlq", "replay"]) == 2
    assert main(["dlq", "list", "--since", "soon"]) == 2
