"""The subscription service: subscriptions, rate plans and bill runs."""

from __future__ import annotations

from pathlib import Path

from contracts import topics
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import ConsumerSpec, HandlerSpec
from services.runtime.pending import ignore_internal, refuse_all
from services.subscription import handlers


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="subscription",
        migrations=Path(__file__).parent / "migrations",
        consumers=[
            ConsumerSpec(
                name="commands",
                topic=topics.SUBSCRIPTION_COMMANDS,
                handlers={
                    "CreateSubscription": HandlerSpec(handlers.create_subscription),
                    "StopSubscription": HandlerSpec(handlers.stop_subscription),
                    # From the bill-run timer or an operator: answered either way.
                    "RunBilling": HandlerSpec(handlers.run_billing),
                    "UpdateSubscription": HandlerSpec(handlers.update_subscription),
                    **refuse_all("CreateCombinedSubscription"),
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
