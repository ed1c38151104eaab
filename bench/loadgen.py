"""The load generator, run in its own process so it does not share a CPU budget (or an
event loop) with the system under test.

It assigns itself every partition of the output topic, produces BenchRecord commands
(each stamped with its produce wall time), and reads the output events until it has seen
one per command, noting when each arrived. Modes:

- `rate=None`: produce all commands as fast as possible (pre-produced backlog);
- `rate=R`: first a warm-up (one command per key, waited for), then R commands/s.

It talks to the parent over a `multiprocessing` pipe:
("ready",) → ("produced", first_send, last_ack) → ("done", results) or ("error", text).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from aiokafka.structs import ConsumerRecord

from bench.loadcore import SeqCollector, SeqLoadSpec, child_main, run_seq_load
from bench.service import command_body


@dataclass(frozen=True)
class LoadSpec(SeqLoadSpec):
    keys: int


def main(spec: LoadSpec, conn: Connection) -> None:
    """Entry point of the child process."""
    child_main(lambda: _run(spec, conn), conn)


class _Collector(SeqCollector):
    """BenchRecorded events: the sequence number and produce time are in the payload."""

    def record(self, record: ConsumerRecord[Any, Any], now: float) -> None:
        payload = json.loads(record.value)["payload"]
        self.arrive(payload["seq"], now, payload["sent_at"])


def _message(spec: LoadSpec, seq: int) -> tuple[bytes, bytes]:
    key, body = command_body(seq, spec.keys)
    return key.encode(), body


async def _run(spec: LoadSpec, conn: Connection) -> None:
    collector = _Collector(
        spec.bootstrap, spec.out_topic, fetch_max_wait_ms=spec.collector_fetch_max_wait_ms
    )
    message = functools.partial(_message, spec)
    await run_seq_load(conn, spec, collector, message, warm_up=spec.keys, what="commands")
