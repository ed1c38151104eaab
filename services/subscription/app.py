"""The subscription service: subscriptions, rate plans and bill runs."""

from __future__ import annotations

from pathlib import Path

from contracts import topics
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import ConsumerSpec
from services.runtime.pending import ignore_internal, refuse_all


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="subscription",
        migrations=Path(__file__).parent / "migrations",
        consumers=[
            ConsumerSpec(
                name="commands",
                topic=topics.SUBSCRIPTION_COMMANDS,
                handlers={
                    **refuse_all(
                        "CreateSubscription",
                        "CreateCombinedSubscription",
                        "UpdateSubscription",
                        "StopSubscription",
                    ),
                    **ignore_internal("RunBilling"),
                },
            ),
            ConsumerSpec(
                name="invoice-events",
                topic=topics.INVOICE_EVENTS,
                handlers=ignore_internal("InvoiceEvent"),
            ),
            ConsumerSpec(
                name="transactions",
                topic=topics.PAYMENT_TRANSACTIONS,
                handlers=ignore_internal("TransactionStatusChanged"),
            ),
        ],
    )
