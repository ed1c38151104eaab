"""The subscription service: subscriptions, rate plans and bill runs."""

from __future__ import annotations

from pathlib import Path

from contracts import topics
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import HandlerSpec, consumer_specs
from services.subscription import handlers
from services.subscription.batch import SubscriptionBatchHooks


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
    return ServiceDefinition(
        name="subscription",
        migrations=Path(__file__).parent / "migrations",
        # Every consumer works on a batch's subscriptions at once (batch.py).
        consumers=consumer_specs(
            {
                ("commands", topics.SUBSCRIPTION_COMMANDS): commands,
                ("internal", topics.SUBSCRIPTION_INTERNAL): internal,
                ("invoice-events", topics.INVOICE_EVENTS): invoice_events,
                ("transactions", topics.PAYMENT_TRANSACTIONS): transactions,
            },
            SubscriptionBatchHooks,
        ),
    )
