"""A consumer's prefilter: what it leaves out is never parsed; should it fail, every
record goes the normal way (a bug in a filter must not lose or stall records)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contracts.topics import TopicNames
from services.runtime.consumer import BatchConsumer, ConsumerSpec, RawRecord

RECORDS = [RawRecord("t", 0, offset, f"shop-{offset}".encode(), b"{}") for offset in range(4)]


def consumer(prefilter: Any) -> BatchConsumer:
    spec = ConsumerSpec(name="c", topic="t", handlers={}, prefilter=prefilter)
    return BatchConsumer(spec=spec, service="s", pool=object(), topics=TopicNames(), relay_shards=1)  # type: ignore[arg-type]


async def test_the_prefilter_chooses_the_records() -> None:
    async def even(pool: Any, records: Sequence[RawRecord]) -> list[RawRecord]:
        return [r for r in records if r.offset % 2 == 0]

    assert [r.offset for r in await consumer(even)._prefilter(RECORDS)] == [0, 2]


async def test_a_failing_prefilter_lets_every_record_through() -> None:
    async def broken(pool: Any, records: Sequence[RawRecord]) -> list[RawRecord]:
        raise ValueError("a bug")

    assert await consumer(broken)._prefilter(RECORDS) == RECORDS


async def test_without_a_prefilter_nothing_is_left_out() -> None:
    assert await consumer(None)._prefilter(RECORDS) == RECORDS
