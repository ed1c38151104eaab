"""Invoices for tests that need no service: the invoice domain's `Invoice`
(services/invoice/domain) and an `InvoiceSnapshot` (contracts/invoice.py) as JSON."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from contracts.invoice import InvoiceSnapshot, InvoiceStatus
from services.invoice import domain


def make_invoice(status: InvoiceStatus = InvoiceStatus.ACTIVE, **overrides: Any) -> domain.Invoice:
    """Invoice INV-1 (key KEY-1) of shop: 100.00 EUR, dated 2024-01-01, due 2024-01-15, on
    DefaultCM1; `overrides` replace or add fields."""
    fields: dict[str, Any] = {
        "website_key": "shop",
        "invoice_number": "INV-1",
        "invoice_key": "KEY-1",
        "status": status,
        "invoice_date": date(2024, 1, 1),
        "due_date": date(2024, 1, 15),
        "currency": "EUR",
        "amount_debit": Decimal("100.00"),
        "scheme_key": "DefaultCM1",
        "created_at": datetime(2024, 1, 1, tzinfo=UTC),
    }
    fields.update(overrides)
    return domain.Invoice(**fields)


def invoice_snapshot(
    number: str = "INV-1", *, website_key: str = "shop-1", amount: str = "121.00", **overrides: Any
) -> dict[str, Any]:
    """The snapshot of an active EUR invoice on DefaultCM1 (dated 2026-11-01, due
    2026-11-15) that owes `amount` and has paid nothing, as JSON; `overrides` replace or
    add fields."""
    return {
        "invoice_key": f"K{number}",
        "invoice_number": number,
        "website_key": website_key,
        "type": "RegularInvoice",
        "status_code": 10,
        "is_test": False,
        "culture": "nl-NL",
        "invoice_date": "2026-11-01",
        "due_date": "2026-11-15",
        "debtor_code": "D-1",
        "scheme_key": "DefaultCM1",
        "scheme_version": 1,
        "currency": "EUR",
        **{name: "0.00" for name in InvoiceSnapshot.AMOUNT_FIELDS},
        "amount_debit": amount,
        "open_amount": amount,
        "open_amount_incl_admin_costs": amount,
        "is_paid": False,
        **overrides,
    }
