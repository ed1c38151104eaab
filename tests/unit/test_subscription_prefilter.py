"""The subscription service's invoice-events prefilter (services/subscription/app.py):
every rejected invoice's event is kept, however its JSON is spaced; the events the
service has nothing to do with are dropped before they are parsed."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from contracts.invoice import InvoiceSnapshot, InvoiceStatus
from services.runtime.consumer import RawRecord
from services.subscription.app import rejected_invoices_only
from tests.support.invoice_domain import invoice_snapshot


def _record(value: bytes | None, offset: int = 0, unreadable: str | None = None) -> RawRecord:
    return RawRecord("p.cm.invoice.events", 0, offset, b"shop-1:INV-1", value, unreadable)


def _event(snapshot: dict[str, Any], **dumps: Any) -> bytes:
    body = {
        "message_id": str(uuid.uuid4()),
        "type": "InvoiceEvent",
        "website_key": "shop-1",
        "occurred_at": "2026-11-01T00:00:00+00:00",
        "payload": {"event": "ChangedStatus", "invoice": snapshot, "event_parameters": []},
    }
    return json.dumps(body, **dumps).encode()


def _kept(*records: RawRecord) -> list[int]:
    return [r.offset for r in asyncio.run(rejected_invoices_only(None, records))]  # type: ignore[arg-type]


def test_rejected_invoices_are_kept_in_any_spacing() -> None:
    rejected = invoice_snapshot(status_code=int(InvoiceStatus.REJECTED), subscription_key="S-1")
    compact = _event(rejected, separators=(",", ":"))
    spaced = _event(rejected)  # json.dumps' default ", " and ": "
    indented = _event(rejected, indent=2)
    assert _kept(_record(compact, 1), _record(spaced, 2), _record(indented, 3)) == [1, 2, 3]


def test_the_contracts_serialization_of_a_rejected_invoice_is_kept() -> None:
    snapshot = InvoiceSnapshot.model_validate(
        invoice_snapshot(status_code=int(InvoiceStatus.REJECTED), subscription_key="S-1")
    )
    as_written = json.loads(snapshot.model_dump_json())
    assert _kept(_record(_event(as_written, separators=(",", ":")))) == [0]


def test_other_invoice_events_are_dropped() -> None:
    records = [
        _record(_event(invoice_snapshot(status_code=code)), offset)
        for offset, code in enumerate(s.value for s in InvoiceStatus if s != InvoiceStatus.REJECTED)
    ]
    assert _kept(*records) == []


def test_records_that_are_not_plain_json_go_the_normal_way() -> None:
    assert _kept(_record(None, 1), _record(b"\xff", 2, unreadable="not utf-8")) == [1, 2]
