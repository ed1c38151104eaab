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

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

from aiokafka.structs import ConsumerRecord

from bench.loadcore import SeqCollector, SeqLoadSpec, child_main, run_seq_load

FIRST_NAMES = ("Jan", "Anna", "Pieter", "Sanne", "Daan", "Emma", "Lucas", "Julia")
LAST_NAMES = ("Jansen", "de Vries", "Bakker", "Visser", "Smit", "Meijer", "de Boer", "Mulder")
CITIES = ("Utrecht", "Amsterdam", "Rotterdam", "Den Haag", "Eindhoven", "Groningen")


@dataclass(frozen=True)
class InvoiceLoadSpec(SeqLoadSpec):
    merchants: int
    debtors: int
    timeout_s: float = field(default=300.0, kw_only=True)


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
    1 x 20.00, 21 % VAT = 121.00), three custom parameters; dated today, due in 14 days
    (fixed dates would make every invoice of a later run overdue at creation, and the
    run's cost drift with the calendar: interest, a first step due at once)."""
    today = datetime.now(UTC).date()
    code = f"D-{debtor_index:06d}"
    first = FIRST_NAMES[debtor_index % len(FIRST_NAMES)]
    last = LAST_NAMES[(debtor_index // len(FIRST_NAMES)) % len(LAST_NAMES)]
    number = invoice_number(seq)
    return {
        "invoice_number": number,
        "invoice_date": today.isoformat(),
        "due_date": (today + timedelta(days=14)).isoformat(),
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
    child_main(lambda: _run(spec, conn), conn)


class _Collector(SeqCollector):
    """ChangedStatus events, matched to their command by the invoice number in the key."""

    def __init__(self, spec: InvoiceLoadSpec) -> None:
        super().__init__(
            spec.bootstrap,
            spec.out_topic,
            fetch_max_wait_ms=spec.collector_fetch_max_wait_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        self.sent: dict[int, float] = {}  # seq -> wall time just before the send
        self.not_active = 0  # ChangedStatus events with another StatusCode (Rejected)
        self.other_events = 0

    def record(self, record: ConsumerRecord[Any, Any], now: float) -> None:
        number = (record.key or b"").decode().partition(":")[2]
        seq = seq_of(number)
        event = json.loads(record.value)["payload"]
        if seq is None or event.get("event") != "ChangedStatus":
            self.other_events += 1
            return
        if {"key": "StatusCode", "value": "10"} not in event.get("event_parameters", []):
            self.not_active += 1
        self.arrive(seq, now, self.sent.get(seq))


async def _run(spec: InvoiceLoadSpec, conn: Connection) -> None:
    collector = _Collector(spec)

    def message(seq: int) -> tuple[bytes, bytes]:
        key, body = command_body(seq, spec)
        collector.sent[seq] = time.time()
        return key, body

    await run_seq_load(
        conn,
        spec,
        collector,
        message,
        warm_up=spec.merchants,  # one invoice per merchant
        what="invoices",
        counters=lambda: {
            "not_active": collector.not_active,
            "other_events": collector.other_events,
        },
    )
