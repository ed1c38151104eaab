"""The bill run's watcher: a child process (like the load generators) that reads the
invoice event topic from the beginning and notes when the creation event of each
period invoice arrives.

An invoice is the period invoice `SUB-00000042-1` of subscription 42 (its Kafka key is
`{website_key}:{invoice_number}`); its creation event is the `ChangedStatus` InvoiceEvent
(StatusCode 10 when the invoice is active, another code when it was rejected). Other
events (a dunning step's, with a scheme that has steps) are counted by name. A creation
event seen twice for one invoice (a relay re-publishing after a failure) counts as a
duplicate, not as a second invoice.

Pipe protocol (child → parent): ("ready",) once it reads; ("progress", created, last
arrival wall time) about every second; ("done", results) when every invoice was seen or
at the deadline; ("error", traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from aiokafka.structs import ConsumerRecord

from bench.billrun_data import index_of
from bench.loadcore import TopicReader, child_main
from bench.procs import status_mb

_EVENT_NAME = re.compile(rb'"event":\s*"(\w+)"')
_ACTIVE = {"key": "StatusCode", "value": "10"}


@dataclass(frozen=True)
class WatchSpec:
    bootstrap: str
    topic: str
    n: int
    timeout_s: float


def main(spec: WatchSpec, conn: Connection) -> None:
    """Entry point of the child process."""
    child_main(lambda: _run(spec, conn), conn)


class InvoiceEvents(TopicReader):
    def __init__(self, spec: WatchSpec) -> None:
        super().__init__(
            spec.bootstrap,
            spec.topic,
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            poll_ms=200,
            what="invoice event topic",
        )
        self.n = spec.n
        self.created = bytearray(spec.n)
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.duplicates = 0
        self.not_active = 0  # creation events of a rejected invoice
        self.foreign = 0  # events of invoices that are no period invoice of this run
        self.other_events: Counter[str] = Counter()
        self.records = 0

    def record(self, record: ConsumerRecord[Any, Any], now: float) -> None:
        self.records += 1
        value: bytes = record.value or b""
        name = _EVENT_NAME.search(value)
        if name is None or name.group(1) != b"ChangedStatus":
            self.other_events[name.group(1).decode() if name else "?"] += 1
            return
        number = (record.key or b"").decode().partition(":")[2]
        i = index_of(number)
        if i is None or not number.endswith("-1") or not 0 <= i < self.n:
            self.foreign += 1
            return
        event = json.loads(value)["payload"]
        if event.get("sequence") != 1:  # a later status change, not the creation
            self.other_events["ChangedStatus (later)"] += 1
            return
        if self.created[i]:
            self.duplicates += 1
            return
        self.created[i] = 1
        self.count += 1
        if _ACTIVE not in event.get("event_parameters", []):
            self.not_active += 1
        if self.first is None:
            self.first = now
        self.last = now

    def report(self, complete: bool) -> dict[str, Any]:
        return {
            "complete": complete,
            "invoices_created_seen": self.count,
            "duplicates": self.duplicates,
            "not_active": self.not_active,
            "foreign": self.foreign,
            "other_events": dict(self.other_events),
            "records_read": self.records,
            "first_created": self.first,
            "last_created": self.last,
            "peak_rss_mb": peak_rss_mb(),
        }


def peak_rss_mb() -> float | None:
    """This process's peak resident set (VmHWM), MB."""
    return status_mb("self", "VmHWM")


async def _run(spec: WatchSpec, conn: Connection) -> None:
    reader = InvoiceEvents(spec)
    await reader.start()
    try:
        conn.send(("ready",))
        deadline = time.monotonic() + spec.timeout_s
        reported = time.monotonic()
        while reader.count < spec.n and time.monotonic() < deadline:
            reader.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.changed.wait(), 1.0)
            if time.monotonic() - reported >= 1.0:
                conn.send(("progress", reader.count, reader.last))
                reported = time.monotonic()
        conn.send(("done", reader.report(reader.count >= spec.n)))
    finally:
        await reader.stop()
