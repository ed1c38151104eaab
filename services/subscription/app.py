"""The subscription service: subscriptions, rate plans and bill runs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from contracts import topics
from contracts.invoice import InvoiceStatus
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import HandlerSpec, RawRecord, consumer_specs
from services.subscription import handlers
from services.subscription.batch import SubscriptionBatchHooks

#: An InvoiceEvent whose invoice has the rejected status, as the invoice service writes it
#: (`"status_code":90`, whitespace allowed). It may match elsewhere in a body (a false
#: keep: parsed and ignored as before); an event it does not match cannot be one
#: `handlers.invoice_event` acts on.
_REJECTED = re.compile(rb'"status_code"\s*:\s*%d(?![0-9.eE])' % InvoiceStatus.REJECTED)


async def rejected_invoices_only(
    pool: asyncpg.Pool, records: Sequence[RawRecord]
) -> Sequence[RawRecord]:
    """The invoice events that may be rejected invoices (and any record whose bytes are
    not plain: it goes the normal way, to be dead-lettered if need be). The service reads
    every InvoiceEvent to find the rare rejected period invoice; parsing them all cost
    ~0.9 ms each and a batch's parsed snapshots much of its memory (issue 14)."""
    return [r for r in records if r.unreadable is not None or may_be_rejected(r.value)]


def may_be_rejected(value: bytes | None) -> bool:
    """Whether an invoice event's value may be a rejected invoice's (or has no value)."""
    return value is None or _REJECTED.search(value) is not None


def definition() -> ServiceDefinition:
    commands = {
        "CreateSubscription": HandlerSpec(handlers.create_subscription),
        "StopSubscription": HandlerSpec(handlers.stop_subscription),
        "UpdateSubscription": HandlerSpec(handlers.update_subscription),
        "CreateCombinedSubscription": HandlerSpec(handlers.create_combined_subscription),
    }
    internal = {
        # From the bill-run timer or an operator: answered either way.
        "RunBilling": HandlerSpec(handlers.run_billing),
        # An operator's merchant-wide bill run, page by page.
        "RunMerchantBilling": HandlerSpec(handlers.run_merchant_billing),
    }
    # Rejected period invoices become InvoiceRejected; the rest is ignored.
    invoice_events = {"InvoiceEvent": HandlerSpec(handlers.invoice_event, answers=False)}
    # Initial transactions of combined subscriptions, by transaction key.
    transactions = {
        "TransactionStatusChanged": HandlerSpec(handlers.transaction_status_changed, answers=False)
    }
    # Every consumer works on a batch's subscriptions at once (batch.py).
    consumers = consumer_specs(
        {
            ("commands", topics.SUBSCRIPTION_COMMANDS): commands,
            ("internal", topics.SUBSCRIPTION_INTERNAL): internal,
            ("invoice-events", topics.INVOICE_EVENTS): invoice_events,
            ("transactions", topics.PAYMENT_TRANSACTIONS): transactions,
        },
        SubscriptionBatchHooks,
    )
    for spec in consumers:
        if spec.name == "invoice-events":
            spec.prefilter = rejected_invoices_only
    return ServiceDefinition(
        name="subscription",
        migrations=Path(__file__).parent / "migrations",
        consumers=consumers,
    )
