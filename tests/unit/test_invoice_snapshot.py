"""The hot-path snapshot equals the fully validated one."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.invoice import InvoiceStatus
from services.invoice.domain import Invoice, book_credit, book_payment
from services.invoice.snapshot import debtor_snapshot, invoice_snapshot, invoice_snapshot_validated

money = st.decimals(min_value=0, max_value=10_000, places=2)


def make(currency: str, debit: Decimal) -> Invoice:
    return Invoice(
        website_key="shop-1",
        invoice_number="INV-1",
        invoice_key="K",
        status=InvoiceStatus.ACTIVE,
        invoice_date=date(2026, 11, 1),
        due_date=date(2026, 11, 15),
        currency=currency,
        amount_debit=debit,
        scheme_key="DefaultNone",
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
        lines=[
            {
                "sku": "A",
                "description": "x",
                "quantity": "2",
                "unit_price": "5.5",
                "vat_percentage": "21",
            }
        ],
        custom_parameters=[{"key": "k", "value": "v"}],
    )


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["EUR", "JPY", "KWD"]), money, money, money)
def test_fast_snapshot_serializes_like_the_validated_one(
    currency: str, debit: Decimal, paid: Decimal, refunded: Decimal
) -> None:
    invoice = make(currency, debit)
    book_payment(invoice, paid)
    book_credit(invoice, min(refunded, paid))
    debtor = debtor_snapshot(
        {"code": "D-1", "email": "a@example.test", "company": {"name": "Acme"}}, {"email": True}
    )
    fast = invoice_snapshot(invoice, debtor, "guid")
    slow = invoice_snapshot_validated(invoice, debtor, "guid")
    assert fast.model_dump_json() == slow.model_dump_json()
