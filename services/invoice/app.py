"""The invoice service: the single writer of invoice state."""

from __future__ import annotations

from pathlib import Path

from contracts import topics
from services.invoice import handlers
from services.invoice.batch import InvoiceBatchHooks
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import ConsumerSpec, HandlerSpec

STATUS_COMMANDS = (
    "PauseInvoice",
    "UnpauseInvoice",
    "RegisterDispute",
    "ResolveDispute",
    "WriteOffInvoice",
    "CancelInvoice",
    "SetEmergency",
)


def definition() -> ServiceDefinition:
    commands: dict[str, HandlerSpec] = {
        "CreateInvoice": HandlerSpec(handlers.create_invoice),
        "CreateCombinedInvoice": HandlerSpec(handlers.create_invoice),
        "CreateCreditNote": HandlerSpec(handlers.create_credit_note),
        "AddOrUpdateDebtor": HandlerSpec(handlers.add_or_update_debtor),
        "CreatePaymentPlan": HandlerSpec(handlers.create_payment_plan),
        "TerminatePaymentPlan": HandlerSpec(handlers.terminate_payment_plan),
        "CreateCustomEvent": HandlerSpec(handlers.create_custom_event),
        **{name: HandlerSpec(handlers.change_status) for name in STATUS_COMMANDS},
        "UpsertScheme": HandlerSpec(handlers.upsert_scheme),
        "TriggerNextStep": HandlerSpec(handlers.trigger_next_step),
    }
    # Platform-only (cm.invoice.internal): the scheduler's timers, the notifier's
    # outcomes (no answer owed) and the collection service's results.
    internal: dict[str, HandlerSpec] = {
        "StepDue": HandlerSpec(handlers.step_due, answers=False),
        "RecordMessageOutcome": HandlerSpec(handlers.record_message_outcome, answers=False),
        "SetCollectionStatus": HandlerSpec(handlers.set_collection_status),
        "RegisterCollectedAmount": HandlerSpec(handlers.register_collected_amount),
    }
    return ServiceDefinition(
        name="invoice",
        migrations=Path(__file__).parent / "migrations",
        consumers=[
            ConsumerSpec(
                name="commands",
                topic=topics.INVOICE_COMMANDS,
                handlers=commands,
                batch_hooks=InvoiceBatchHooks(),
            ),
            ConsumerSpec(
                name="internal",
                topic=topics.INVOICE_INTERNAL,
                handlers=internal,
                batch_hooks=InvoiceBatchHooks(),
            ),
            ConsumerSpec(
                name="transactions",
                topic=topics.PAYMENT_TRANSACTIONS,
                handlers={
                    "TransactionStatusChanged": HandlerSpec(
                        handlers.transaction_status_changed, answers=False
                    )
                },
                batch_hooks=InvoiceBatchHooks(),
            ),
        ],
    )
