"""The invoice service: the single writer of invoice state.

Each message type is registered once, here: a message about one existing invoice (the
one its Kafka key names) as `on_invoice(<its domain function>)`, the others with a
handler of their own. The status commands are the transition table's rows.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import Gauge

from contracts import topics
from contracts.catalog import types_for_topic
from contracts.interest import rates
from services.invoice import handlers
from services.invoice.batch import InvoiceBatchHooks
from services.invoice.domain import commands
from services.invoice.domain.status import TRANSITIONS
from services.invoice.handlers import on_invoice
from services.invoice.repository import early_transaction_count
from services.runtime.app import Runtime, ServiceDefinition
from services.runtime.consumer import HandlerSpec, consumer_specs
from services.runtime.metrics import COUNT_CAP, sample_every

#: The status commands: the rows of the transition table merchants send as commands.
STATUS_COMMANDS = tuple(
    name for name in TRANSITIONS if name in types_for_topic(topics.INVOICE_COMMANDS)
)


EARLY_TRANSACTIONS = Gauge(
    "cm_invoice_early_transactions",
    "Payments parked until their invoice exists (early_transactions; counted up to"
    " 1,000,000), sampled",
)


async def sample_early_transactions(runtime: Runtime) -> int:
    async with runtime.pool.acquire() as conn:
        EARLY_TRANSACTIONS.set(await early_transaction_count(conn, COUNT_CAP))
    return 0


async def parked_payments(runtime: Runtime) -> None:
    """The parked-payments gauge, every `METRICS_SAMPLE_INTERVAL_S`."""
    interval = runtime.settings.metrics_sample_interval_s
    await sample_every(interval, "invoice-metrics", lambda: sample_early_transactions(runtime))


def definition() -> ServiceDefinition:
    # The statutory interest rates (the shipped table, and the operator's later version
    # CM_INTEREST_RATES names): a table that does not load stops the service here, not
    # every overdue invoice later (docs/interest.md).
    rates()
    from_merchants: dict[str, HandlerSpec] = {
        "CreateInvoice": HandlerSpec(handlers.create_invoice),
        "CreateCombinedInvoice": HandlerSpec(handlers.create_invoice),
        "CreateCreditNote": on_invoice(commands.create_credit_note),
        "AddOrUpdateDebtor": HandlerSpec(handlers.add_or_update_debtor),
        "CreatePaymentPlan": HandlerSpec(handlers.create_payment_plan),
        "TerminatePaymentPlan": HandlerSpec(handlers.terminate_payment_plan),
        "CreateCustomEvent": on_invoice(commands.create_custom_event),
        **{name: on_invoice(commands.change_status) for name in STATUS_COMMANDS},
        "UpsertScheme": HandlerSpec(handlers.upsert_scheme),
        "TriggerNextStep": on_invoice(commands.trigger_next_step),
        "UpdateMerchantSettings": HandlerSpec(handlers.update_merchant_settings),
    }
    # Platform-only (cm.invoice.internal): the scheduler's timers (a timer of an unknown
    # invoice is ignored), the notifier's outcomes (no answer owed) and the collection
    # service's results.
    internal: dict[str, HandlerSpec] = {
        "StepDue": on_invoice(commands.step_due, answers=False, unknown_is_ignored=True),
        "RecordMessageOutcome": on_invoice(commands.record_message_outcome, answers=False),
        "SetCollectionStatus": on_invoice(commands.set_collection_status),
        "RegisterCollectedAmount": on_invoice(commands.register_collected_amount),
    }
    transactions = {
        "TransactionStatusChanged": HandlerSpec(handlers.transaction_status_changed, answers=False)
    }
    return ServiceDefinition(
        name="invoice",
        migrations=Path(__file__).parent / "migrations",
        consumers=consumer_specs(
            {
                ("commands", topics.INVOICE_COMMANDS): from_merchants,
                ("internal", topics.INVOICE_INTERNAL): internal,
                ("transactions", topics.PAYMENT_TRANSACTIONS): transactions,
            },
            InvoiceBatchHooks,
        ),
        background_tasks=(parked_payments,),
    )
