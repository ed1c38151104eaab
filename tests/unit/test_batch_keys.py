"""The batch hooks find the invoices and subscriptions a batch is about from the catalog's
key templates: every message that names one in its payload is keyed by it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from contracts.envelope import Envelope, new_envelope, payload_class
from contracts.invoice import CreateCreditNote, PauseInvoice
from contracts.subscription import RunBilling, RunMerchantBilling
from services.invoice.app import definition as invoice_service
from services.invoice.batch import INVOICE_KEY_FIELDS
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import aggregate_keys, key_field
from services.subscription.app import definition as subscription_service

AT = datetime(2026, 11, 1, 9, tzinfo=UTC)


def handled_types(definition: ServiceDefinition) -> set[str]:
    return {name for spec in definition.consumers for name in spec.handlers}


@pytest.mark.parametrize("type_name", sorted(handled_types(invoice_service())))
def test_an_invoice_message_naming_an_invoice_is_keyed_by_it(type_name: str) -> None:
    fields = set(payload_class(type_name).model_fields)  # type: ignore[union-attr]
    if fields & INVOICE_KEY_FIELDS:
        assert key_field(type_name) in INVOICE_KEY_FIELDS
    else:
        assert key_field(type_name) not in INVOICE_KEY_FIELDS


@pytest.mark.parametrize("type_name", sorted(handled_types(subscription_service())))
def test_a_subscription_message_naming_a_subscription_is_keyed_by_it(type_name: str) -> None:
    fields = set(payload_class(type_name).model_fields)  # type: ignore[union-attr]
    assert (key_field(type_name) == "subscription_key") == ("subscription_key" in fields)


def test_the_keys_of_a_batch_are_sorted_distinct_and_per_website() -> None:
    envelopes: list[Envelope[Any]] = [
        new_envelope(PauseInvoice(invoice_number="I-2"), website_key="b", occurred_at=AT),
        new_envelope(
            CreateCreditNote(
                original_invoice_number="I-1", credit_note_number="C-1", amount=Decimal("1")
            ),
            website_key="a",
            occurred_at=AT,
        ),
        new_envelope(PauseInvoice(invoice_number="I-2"), website_key="b", occurred_at=AT),
        new_envelope(PauseInvoice(invoice_number="I-2"), website_key="a", occurred_at=AT),
    ]
    assert aggregate_keys(envelopes, INVOICE_KEY_FIELDS) == [
        ("a", "I-1"),
        ("a", "I-2"),
        ("b", "I-2"),
    ]
    runs: list[Envelope[Any]] = [
        new_envelope(RunBilling(subscription_key="S-1"), website_key="a", occurred_at=AT),
        new_envelope(RunMerchantBilling(), website_key="a", occurred_at=AT),
    ]
    assert aggregate_keys(runs, {"subscription_key"}) == [("a", "S-1")]
