"""The notifier benchmark's load generator (a child process, like `bench.loadgen`).

It builds realistic `InvoiceEvent` envelopes (`InvoiceEvent.of` + an `InvoiceSnapshot`
with a person debtor, two lines and custom parameters; ~2.5 kB enveloped) for
`invoices` invoices spread over `websites` website keys, sequences 1..k per invoice,
and produces them on the invoice event topic (key `{website_key}:{invoice_number}`) in
rounds: sequence 1 of every invoice, then sequence 2 of every invoice, and so on, so the
events of one invoice are spread over the run as they are in real life. The produce wall
time of each event is kept by its `message_id`.

Two ways of seeing the notifier's output:

- `mode="pushes"`: reads every partition of `cm.push.invoice` and matches each push to
  its event by the `message-id` header (counting pushes without it, duplicates and ids
  it never sent, and checking a sample of bodies against the event);
- `mode="webhooks"`: serves a Standard Webhooks endpoint on `endpoint_port` (a bare
  HTTP/1.1 server on asyncio protocols, uvloop) that answers 2xx, matches each POST to its event by
  `webhook-id`, verifies every `verify_every`-th signature with the standardwebhooks
  library (a bad one is answered 400), and checks that the pushes of each invoice arrive
  in sequence order.

`rate=None` produces all events as fast as possible; `rate=R` sends R events/s.
Pipe protocol as in `bench.loadgen`: ("ready",) → ("produced", first_send, last_ack) →
("done", results) or ("error", text).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from multiprocessing.connection import Connection
from typing import Any, cast

import uvloop
from aiokafka.structs import ConsumerRecord
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from bench.invoice_loadgen import payload as create_invoice_payload
from bench.invoice_loadgen import website_key
from bench.loadcore import TopicReader, child_main, outputs, send_all, start_producer
from contracts.debtor import DebtorSnapshot
from contracts.envelope import new_envelope
from contracts.fields import KeyValueSnapshot
from contracts.invoice import (
    EventCategory,
    InvoiceEvent,
    InvoiceEventName,
    InvoiceLineSnapshot,
    InvoiceSnapshot,
    InvoiceStatus,
    InvoiceType,
)
from contracts.push import MESSAGE_ID_HEADER

D = Decimal
CREATED_AT = datetime(2026, 11, 1, 9, tzinfo=UTC)


@dataclass(frozen=True)
class NotifierLoadSpec:
    bootstrap: str
    events_topic: str
    n: int  # events
    websites: int
    events_per_invoice: int
    mode: str  # "pushes" | "webhooks"
    push_topic: str = ""  # pushes mode: read here
    endpoint_port: int = 0  # webhooks mode: serve here
    secrets: dict[str, str] = field(default_factory=dict)  # webhooks mode: per website
    verify_every: int = 10
    rate: float | None = None
    timeout_s: float = 300.0
    collector_fetch_max_wait_ms: int = 5
    label: str = "NB"  # invoice numbers are f"{label}-{index:07d}"


def invoice_count(spec: NotifierLoadSpec) -> int:
    return math.ceil(spec.n / spec.events_per_invoice)


@dataclass(frozen=True)
class Sent:
    """What the generator knows about one event it produced."""

    index: int  # order of production
    invoice: int
    sequence: int
    website_key: str


def _snapshot(spec: NotifierLoadSpec, invoice: int) -> InvoiceSnapshot:
    """The invoice as created: active, the payment invitation (step 0) next."""
    site = website_key(invoice % spec.websites)
    number = f"{spec.label}-{invoice:07d}"
    data = create_invoice_payload(invoice, invoice % 5_000)
    return InvoiceSnapshot(
        invoice_key=uuid.uuid5(uuid.NAMESPACE_OID, f"{site}:{number}").hex[:13].upper(),
        invoice_number=number,
        website_key=site,
        type=InvoiceType.REGULAR_INVOICE,
        status_code=InvoiceStatus.ACTIVE,
        is_test=False,
        culture="nl-NL",
        invoice_date=date(2026, 11, 1),
        due_date=date(2026, 11, 15),
        description=f"Order {number}",
        pay_link=f"https://pay.example.test/{number}",
        debtor_code=data["debtor"]["code"],
        debtor_guid=str(uuid.uuid5(uuid.NAMESPACE_OID, f"{site}:{data['debtor']['code']}")),
        debtor=DebtorSnapshot.model_validate(data["debtor"]),
        scheme_key="DefaultCM1",
        scheme_version=1,
        next_step_index=0,
        next_step_due_at=CREATED_AT,
        currency="EUR",
        amount_debit=D("121.00"),
        amount_credit=D(0),
        amount_admin_costs=D(0),
        amount_credit_notes=D(0),
        amount_paid=D(0),
        amount_admin_costs_paid=D(0),
        amount_pending_slow=D(0),
        open_amount=D("121.00"),
        open_amount_admin_costs=D(0),
        open_amount_incl_admin_costs=D("121.00"),
        is_paid=False,
        custom_parameters=[KeyValueSnapshot(**p) for p in data["custom_parameters"]],
        lines=[
            InvoiceLineSnapshot(
                sku=line["sku"],
                description=line["description"],
                quantity=D(line["quantity"]),
                unit_price=D(line["unit_price"]),
                vat_percentage=D(line["vat_percentage"]),
            )
            for line in data["lines"]
        ],
    )


def _after(created: InvoiceSnapshot, sequence: int) -> InvoiceSnapshot:
    """The invoice after its `sequence`-th event: created, invited (step 0), reminded
    (step 1), then paid; later events change nothing."""
    if sequence == 1:
        return created
    step = min(sequence - 2, 1)
    update: dict[str, Any] = {
        "previous_step_index": step,
        "previous_step_date_time": CREATED_AT + timedelta(days=7 * step),
        "next_step_index": step + 1,
        "next_step_due_at": CREATED_AT + timedelta(days=7 * (step + 1)),
    }
    if sequence >= 4:
        update |= {
            "next_step_index": None,
            "next_step_due_at": None,
            "amount_paid": D("121.00"),
            "open_amount": D("0.00"),
            "open_amount_incl_admin_costs": D("0.00"),
            "is_paid": True,
        }
    return created.model_copy(update=update)


def _event(created: InvoiceSnapshot, invoice: int, sequence: int) -> InvoiceEvent:
    """Event 1 creates the invoice, 2 and 3 are the invitation and reminder, 4 the
    payment; later ones are custom events."""
    name, parameters = {
        1: (InvoiceEventName.CHANGED_STATUS, {"StatusCode": "10"}),
        2: (InvoiceEventName.SENT_PAYMENT_INVITATION_MESSAGE, {"StepIndex": "0"}),
        3: (InvoiceEventName.SENT_REMINDER_MESSAGE, {"StepIndex": "1"}),
        4: (
            InvoiceEventName.CHANGED_TRANSACTION_STATUS,
            {"TransactionKey": f"T-{invoice}", "Status": "Success"},
        ),
    }.get(sequence, (InvoiceEventName.CUSTOM_EVENT, {"CustomEventMessage": f"note {sequence}"}))
    return InvoiceEvent.of(
        name,
        invoice=_after(created, sequence),
        sequence=sequence,
        parameters=parameters,
        category=EventCategory.FINANCIAL_CHANGE if sequence == 1 else None,
    )


def build_events(spec: NotifierLoadSpec) -> list[tuple[bytes, bytes, str, Sent]]:
    """(key, enveloped InvoiceEvent, message_id, what was sent), in production order."""
    created = [_snapshot(spec, invoice) for invoice in range(invoice_count(spec))]
    out: list[tuple[bytes, bytes, str, Sent]] = []
    for sequence in range(1, spec.events_per_invoice + 1):
        for invoice, snapshot in enumerate(created):
            if len(out) == spec.n:
                return out
            event = _event(snapshot, invoice, sequence)
            site = event.invoice.website_key
            envelope = new_envelope(
                event,
                website_key=site,
                occurred_at=CREATED_AT + timedelta(days=7 * (sequence - 1)),
            )
            key = f"{site}:{event.invoice.invoice_number}".encode()
            sent = Sent(len(out), invoice, sequence, site)
            out.append((key, envelope.to_json(), str(envelope.message_id), sent))
    return out


def main(spec: NotifierLoadSpec, conn: Connection) -> None:
    """Entry point of the child process."""
    child_main(lambda: _run(spec, conn), conn, loop_factory=uvloop.new_event_loop)


class _Sink:
    """What arrived, by message id (shared by both modes)."""

    def __init__(self, spec: NotifierLoadSpec) -> None:
        self.spec = spec
        self.sent: dict[str, Sent] = {}
        self.sent_at: dict[str, float] = {}
        self.arrived: dict[str, float] = {}
        self.latencies: list[float] = []
        self.duplicates = 0
        self.unknown_ids = 0
        self.changed = asyncio.Event()

    def arrive(self, message_id: str, now: float) -> Sent | None:
        sent = self.sent.get(message_id)
        if sent is None:
            self.unknown_ids += 1
            return None
        if message_id in self.arrived:
            self.duplicates += 1
            return None
        self.arrived[message_id] = now
        self.latencies.append(now - self.sent_at[message_id])
        if len(self.arrived) == len(self.sent):
            self.changed.set()
        return sent

    async def wait_all(self, deadline: float, stall_s: float = 20.0) -> bool:
        """Until everything arrived, the deadline, or `stall_s` without anything new (a
        failed delivery waits for a scheduler retry that never comes here)."""
        count, progress = -1, time.monotonic()
        while len(self.arrived) < self.spec.n and time.monotonic() < deadline:
            if len(self.arrived) != count:
                count, progress = len(self.arrived), time.monotonic()
            elif time.monotonic() - progress > stall_s:
                break
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(0.2, deadline - time.monotonic()))
        return len(self.arrived) >= self.spec.n


class _PushCollector(TopicReader):
    """Reads `cm.push.invoice` from the beginning of every partition."""

    def __init__(self, spec: NotifierLoadSpec, sink: _Sink) -> None:
        super().__init__(
            spec.bootstrap,
            spec.push_topic,
            fetch_max_wait_ms=spec.collector_fetch_max_wait_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            what="push topic",
        )
        self.spec = spec
        self.sink = sink
        self.missing_header = 0
        self.checked_bodies = 0
        self.bad_bodies = 0
        self.bad_keys = 0
        self.content_type_missing = 0

    def record(self, record: ConsumerRecord[Any, Any], now: float) -> None:
        self._record(record.key, record.value, dict(record.headers), now)

    def _record(
        self, key: bytes | None, value: bytes, headers: dict[str, bytes], now: float
    ) -> None:
        if headers.get("content-type") != b"application/json":
            self.content_type_missing += 1
        message_id = headers.get(MESSAGE_ID_HEADER)
        if message_id is None:
            self.missing_header += 1
            return
        sent = self.sink.arrive(message_id.decode(), now)
        if sent is None:
            return
        number = f"{self.spec.label}-{sent.invoice:07d}"
        if key != f"{sent.website_key}:{number}".encode():
            self.bad_keys += 1
        if sent.index % 100 == 0:  # a sample of bodies: the push of this very event
            self.checked_bodies += 1
            invoice = json.loads(value)["Invoice"]
            if (invoice["InvoiceNumber"], invoice["EventSequence"], invoice["WebsiteKey"]) != (
                number,
                sent.sequence,
                sent.website_key,
            ):
                self.bad_bodies += 1

    def results(self) -> dict[str, Any]:
        return {
            "pushes_without_message_id": self.missing_header,
            "pushes_without_content_type": self.content_type_missing,
            "pushes_with_wrong_key": self.bad_keys,
            "bodies_checked": self.checked_bodies,
            "bodies_not_matching": self.bad_bodies,
        }


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the endpoint: HTTP/1.1 requests with a
    `content-length` body (what the notifier sends), each answered at once with an empty
    body. A chunked request is answered 411 and the connection closed."""

    def __init__(self, endpoint: _Endpoint) -> None:
        self.endpoint = endpoint
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.endpoint.transports.add(self.transport)
        self.endpoint.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.endpoint.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        transport = self.transport
        assert transport is not None
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                transport.write(_ANSWERS[411])
                transport.close()
                return
            start = end + 4
            stop = start + int(headers.get("content-length", "0"))
            if len(self.buffer) < stop:
                return  # the rest of the body is on its way
            body = bytes(self.buffer[start:stop])
            del self.buffer[:stop]
            transport.write(_ANSWERS[self.endpoint.handle(body, headers)])
            if headers.get("connection", "").lower() == "close":
                transport.close()
                return


_ANSWERS = {
    status: f"HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n".encode()
    for status, reason in ((200, "OK"), (400, "Bad Request"), (411, "Length Required"))
}


class _Endpoint:
    """The merchant's webhook endpoint: a bare HTTP/1.1 server on asyncio's protocols
    (uvloop), so that its own CPU per request (a few tens of µs) leaves the shared cores
    to the notifier it measures (uvicorn with h11 took ~0.5 ms per request)."""

    def __init__(self, spec: NotifierLoadSpec, sink: _Sink) -> None:
        self.spec = spec
        self.sink = sink
        self.webhooks = {site: Webhook(secret) for site, secret in spec.secrets.items()}
        self.requests = 0
        self.verified = 0
        self.verify_failed = 0
        self.out_of_order = 0
        self.connections = 0
        self.transports: set[asyncio.Transport] = set()
        self.last_sequence: dict[int, int] = {}
        self.first_received: float | None = None
        self.last_received: float | None = None
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), "127.0.0.1", self.spec.endpoint_port, backlog=4096
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for transport in list(self.transports):
                transport.close()
            await asyncio.wait_for(self.server.wait_closed(), 10)

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        now = time.time()
        self.requests += 1
        message_id = headers.get("webhook-id", "")
        sent = self.sink.sent.get(message_id)
        if sent is None:
            self.sink.unknown_ids += 1
            return 400
        if sent.index % self.spec.verify_every == 0:
            try:
                self.webhooks[sent.website_key].verify(body, headers)
                self.verified += 1
            except WebhookVerificationError:
                self.verify_failed += 1
                return 400
        if message_id not in self.sink.arrived:
            if self.last_sequence.get(sent.invoice, 0) != sent.sequence - 1:
                self.out_of_order += 1
            self.last_sequence[sent.invoice] = sent.sequence
        if self.sink.arrive(message_id, now) is not None:
            self.first_received = self.first_received or now
            self.last_received = now
        return 200

    def results(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "signatures_verified": self.verified,
            "signatures_failed": self.verify_failed,
            "out_of_order": self.out_of_order,
            "tcp_connections_seen": self.connections,
            "first_received": self.first_received,
            "last_received": self.last_received,
        }


async def _run(spec: NotifierLoadSpec, conn: Connection) -> None:
    built = time.perf_counter()
    events = build_events(spec)
    build_seconds = time.perf_counter() - built
    sink = _Sink(spec)
    for _, _, message_id, sent in events:
        sink.sent[message_id] = sent
    collector = _PushCollector(spec, sink) if spec.mode == "pushes" else None
    endpoint = _Endpoint(spec, sink) if spec.mode == "webhooks" else None
    if collector is not None:
        await collector.start()
    if endpoint is not None:
        await endpoint.start()
    producer = await start_producer(spec.bootstrap)

    async def send(i: int) -> asyncio.Future[Any]:
        key, body, message_id, _ = events[i]
        sink.sent_at[message_id] = time.time()
        future: asyncio.Future[Any] = await producer.send(spec.events_topic, value=body, key=key)
        return future

    try:
        conn.send(("ready",))
        first_send, last_ack = await send_all(send, len(events), spec.rate, per_message=True)
        conn.send(("produced", first_send, last_ack))
        complete = await sink.wait_all(time.monotonic() + spec.timeout_s)
        await asyncio.sleep(0.5)  # anything arriving twice shortly after the last one
        report = outputs(
            complete,
            sink.arrived.values(),
            sink.duplicates,
            sink.latencies,
            first_send,
            last_ack,
            unknown_ids=sink.unknown_ids,
        )
        conn.send(
            (
                "done",
                {
                    **report,
                    "build_seconds": build_seconds,
                    "event_bytes_avg": round(sum(len(e[1]) for e in events) / len(events)),
                    **(collector.results() if collector else {}),
                    **(endpoint.results() if endpoint else {}),
                },
            )
        )
    finally:
        if collector is not None:
            await collector.stop()
        await producer.stop()
        if endpoint is not None:
            await endpoint.stop()
