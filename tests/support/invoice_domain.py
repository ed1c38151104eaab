"""Builders for the invoice service's pure domain (services/invoice/domain.py), for unit tests."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from contracts.invoice import InvoiceStatus
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
