"""The subscription service: subscriptions, rate plans and bill runs."""

from __future__ import annotations

from pathlib import Path

from contracts import topics
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import ConsumerSpec, HandlerSpec
from services.subscription import handlers
from services.subscription.batch import SubscriptionBatchHooks


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
                    "UpdateSubscription": HandlerSpec(handlers.update_subscription),
                    "CreateCombinedSubscription": HandlerSpec(
                        handlers.create_combined_subscription
                    ),
                },
                batch_hooks=SubscriptionBatchHooks(),
            ),
            ConsumerSpec(
                name="internal",
                topic=topics.SUBSCRIPTION_INTERNAL,
                handlers={
                    # From the bill-run timer or an operator: answered either way.
                    "RunBilling": HandlerSpec(handlers.run_billing),
                    # An operator's merchant-wide bill run, page by page.
                    "RunMerchantBilling": HandlerSpec(handlers.run_merchant_billing),
                },
                batch_hooks=SubscriptionBatchHooks(),
            ),
            ConsumerSpec(
                name="invoice-events",
                topic=topics.INVOICE_EVENTS,
                # Rejected period invoices become InvoiceRejected; the rest is ignored.
                handlers={"InvoiceEvent": HandlerSpec(handlers.invoice_event, answers=False)},
                batch_hooks=SubscriptionBatchHooks(),
            ),
            ConsumerSpec(
                name="transactions",
                topic=topics.PAYMENT_TRANSACTIONS,
                # Initial transactions of combined subscriptions, by transaction key.
                handlers={
                    "TransactionStatusChanged": HandlerSpec(
                        handlers.transaction_status_changed, answers=False
                    )
                },
                batch_hooks=SubscriptionBatchHooks(),
            ),
        ],
    )
