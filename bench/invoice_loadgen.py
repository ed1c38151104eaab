"""The invoice_create load generator (a child process, like `bench.loadgen`).

It produces enveloped `CreateInvoice` commands on the invoice command topic (key
`{website_key}:{invoice_number}`) and reads `InvoiceEvent`s from the invoice event topic
until it has seen the `ChangedStatus` event of every invoice it created. Each command's
sequence number is in its invoice number (`INV-00000042`; warm-up ones are `WARM-7`), so
an event is matched to its command by its Kafka key; the produce wall time of each
command is kept here, in the process that also reads the events.

Modes and pipe protocol as in `bench.loadgen`: `rate=None` pre-produces all commands;
`rate=R` warms up (one invoice per merchant, waited for) and then sends R commands/s.
("ready",) → ("produced", first_send, last_ack) → ("done", results) or ("error", text).
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

FIRST_NAMES = ("Jan", "Anna", "Pieter", "Sanne", "Daan", "Emma", "Lucas", "Julia")
LAST_NAMES = ("Jansen", "de Vries", "Bakker", "Visser", "Smit", "Meijer", "de Boer", "Mulder")
CITIES = ("Utrecht", "Amsterdam", "Rotterdam", "Den Haag", "Eindhoven", "Groningen")


@dataclass(frozen=True)
class InvoiceLoadSpec:
    bootstrap: str
    in_topic: str
    out_topic: str
    n: int
    merchants: int
    debtors: int
    rate: float | None = None
    timeout_s: float = 300.0
    collector_fetch_max_wait_ms: int = 5


def website_key(index: int) -> str:
    return f"bench-shop-{index:03d}"


def invoice_number(seq: int) -> str:
    return f"INV-{seq:08d}" if seq >= 0 else f"WARM{seq}"


def seq_of(number: str) -> int | None:
    if number.startswith("INV-"):
        return int(number[4:])
    if number.startswith("WARM-"):
        return int(number[4:])
    return None


def payload(seq: int, debtor_index: int) -> dict[str, Any]:
    """A realistic CreateInvoice: a person debtor with contacts, two lines (2 x 40.00 +
    1 x 20.00, 21 % VAT = 121.00), three custom parameters."""
    code = f"D-{debtor_index:06d}"
    first = FIRST_NAMES[debtor_index % len(FIRST_NAMES)]
    last = LAST_NAMES[(debtor_index // len(FIRST_NAMES)) % len(LAST_NAMES)]
    number = invoice_number(seq)
    return {
        "invoice_number": number,
        "invoice_date": "2026-11-01",
        "due_date": "2026-11-15",
        "currency": "EUR",
        "amount_debit": "121.00",
        "amount_vat": "21.00",
        "description": f"Order {number}",
        "culture": "nl-NL",
        "pay_link": f"https://pay.example.test/{number}",
        "lines": [
            {
                "sku": "SKU-1001",
                "description": "Wireless mouse",
                "quantity": "2",
                "unit_price": "40.00",
                "vat_percentage": "21",
            },
            {
                "sku": "SHIP",
                "description": "Shipping",
                "quantity": "1",
                "unit_price": "20.00",
                "vat_percentage": "21",
            },
        ],
        "debtor": {
            "code": code,
            "person": {"first_name": first, "last_name": last, "culture": "nl-NL"},
            "email": f"{code.lower()}@example.test",
            "phone": {"mobile": f"+3161{debtor_index:07d}"},
            "address": {
                "street": "Dorpsstraat",
                "house_number": str(1 + debtor_index % 200),
                "postal_code": "1234 AB",
                "city": CITIES[debtor_index % len(CITIES)],
                "country": "NL",
            },
        },
        "custom_parameters": [
            {"key": "OrderId", "value": f"ORD-{seq}"},
            {"key": "Channel", "value": "webshop"},
            {"key": "CustomerSegment", "value": "B2C"},
        ],
    }


def command_body(seq: int, spec: InvoiceLoadSpec) -> tuple[bytes, bytes]:
    """(Kafka key, enveloped CreateInvoice) for command `seq` (negative: warm-up)."""
    merchant = website_key(seq % spec.merchants)
    # Debtor codes are per merchant: (merchant, debtor) pairs repeat every
    # lcm(merchants, debtors) commands, so most invoices meet a debtor already stored.
    body = {
        "message_id": str(uuid.uuid4()),
        "type": "CreateInvoice",
        "website_key": merchant,
        "occurred_at": datetime.now(UTC).isoformat(),
        "payload": payload(seq, seq % spec.debtors),
    }
    return f"{merchant}:{invoice_number(seq)}".encode(), json.dumps(body).encode()


def main(spec: InvoiceLoadSpec, conn: Connection) -> None:
    """Entry point of the child process."""
    try:
        asyncio.run(_run(spec, conn))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    finally:
        conn.close()


class _Collector:
    def __init__(self, spec: InvoiceLoadSpec) -> None:
        self.spec = spec
        self.sent: dict[int, float] = {}  # seq -> wall time just before the send
        self.arrived: dict[int, float] = {}  # seq -> wall time its event was read
        self.latencies: list[float] = []
        self.duplicates = 0
        self.not_active = 0  # ChangedStatus events with another StatusCode (Rejected)
        self.other_events = 0
        self.changed = asyncio.Event()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=spec.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=spec.collector_fetch_max_wait_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )

    async def start(self) -> None:
        await self.consumer.start()
        partitions = self.consumer.partitions_for_topic(self.spec.out_topic)
        if not partitions:
            await self.consumer._client.force_metadata_update()
            partitions = self.consumer.partitions_for_topic(self.spec.out_topic) or set()
        if not partitions:
            raise RuntimeError(f"output topic {self.spec.out_topic} has no partitions")
        tps = [TopicPartition(self.spec.out_topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)

    async def run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=10_000)
            if not batch:
                continue
            now = time.time()
            for records in batch.values():
                for record in records:
                    self._record(record.key, record.value, now)
            self.changed.set()

    def _record(self, key: bytes | None, value: bytes, now: float) -> None:
        number = (key or b"").decode().partition(":")[2]
        seq = seq_of(number)
        event = json.loads(value)["payload"]
        if seq is None or event.get("event") != "ChangedStatus":
            self.other_events += 1
            return
        if {"key": "StatusCode", "value": "10"} not in event.get("event_parameters", []):
            self.not_active += 1
        if seq in self.arrived:
            self.duplicates += 1
            return
        self.arrived[seq] = now
        if seq >= 0 and seq in self.sent:
            self.latencies.append(now - self.sent[seq])

    async def wait_for(self, seqs: range, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if all(s in self.arrived for s in seqs):
                return True
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        return all(s in self.arrived for s in seqs)


async def _run(spec: InvoiceLoadSpec, conn: Connection) -> None:
    collector = _Collector(spec)
    await collector.start()
    reader = asyncio.create_task(collector.run())
    producer = AIOKafkaProducer(
        bootstrap_servers=spec.bootstrap,
        enable_idempotence=False,
        linger_ms=2,
        max_batch_size=256 * 1024,
    )
    await producer.start()

    async def send(seq: int) -> asyncio.Future[Any]:
        key, body = command_body(seq, spec)
        collector.sent[seq] = time.time()
        future: asyncio.Future[Any] = await producer.send(spec.in_topic, value=body, key=key)
        return future

    try:
        conn.send(("ready",))
        if spec.rate is not None:  # warm up: one invoice per merchant, waited for
            warm = [await send(-1 - i) for i in range(spec.merchants)]
            await asyncio.gather(*warm)
            warmed = await collector.wait_for(
                range(-spec.merchants, 0), time.monotonic() + spec.timeout_s
            )
            if not warmed:
                raise RuntimeError("the warm-up invoices did not come out within the timeout")
        futures = []
        first_send = time.time()
        if spec.rate is None:
            for seq in range(spec.n):
                futures.append(await send(seq))
        else:
            started = time.monotonic()
            seq = 0
            while seq < spec.n:
                due = min(spec.n, int((time.monotonic() - started) * spec.rate) + 1)
                while seq < due:
                    futures.append(await send(seq))
                    seq += 1
                await asyncio.sleep(0.001)
        await asyncio.gather(*futures)
        last_ack = time.time()
        conn.send(("produced", first_send, last_ack))
        complete = await collector.wait_for(range(spec.n), time.monotonic() + spec.timeout_s)
        measured = [t for s, t in collector.arrived.items() if s >= 0]
        conn.send(
            (
                "done",
                {
                    "complete": complete,
                    "seen": len(measured),
                    "duplicates": collector.duplicates,
                    "not_active": collector.not_active,
                    "other_events": collector.other_events,
                    "first_output": min(measured, default=None),
                    "last_output": max(measured, default=None),
                    "latencies": collector.latencies,
                    "first_send": first_send,
                    "last_ack": last_ack,
                },
            )
        )
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await producer.stop()
        await collector.consumer.stop()
