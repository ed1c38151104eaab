"""The invoice service: the single writer of invoice state."""

from __future__ import annotations

from pathlib import Path

from contracts import topics
from services.invoice import handlers
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import ConsumerSpec, HandlerSpec
from services.runtime.pending import ignore_internal, refuse_all

STATUS_COMMANDS = (
    "PauseInvoice",
    "UnpauseInvoice",
    "RegisterDispute",
    "ResolveDispute",
    "WriteOffInvoice",
    "CancelInvoice",
    "SetEmergency",
)
#: The dunning engine's messages (scheme steps) come with the dunning-engine issue.
DUNNING_COMMANDS = ("TriggerNextStep", "UpsertScheme")
DUNNING_INTERNAL = ("StepDue", "RecordMessageOutcome")


def definition() -> ServiceDefinition:
    commands: dict[str, HandlerSpec] = {
        "CreateInvoice": HandlerSpec(handlers.create_invoice),
        "CreateCombinedInvoice": HandlerSpec(handlers.create_invoice),
        "CreateCreditNote": HandlerSpec(handlers.create_credit_note),
        "AddOrUpdateDebtor": HandlerSpec(handlers.add_or_update_debtor),
        "CreatePaymentPlan": HandlerSpec(handlers.create_payment_plan),
        "TerminatePaymentPlan": HandlerSpec(handlers.terminate_payment_plan),
        "CreateCustomEvent": HandlerSpec(handlers.create_custom_event),
        "SetCollectionStatus": HandlerSpec(handlers.set_collection_status),
        "RegisterCollectedAmount": HandlerSpec(handlers.register_collected_amount),
        **{name: HandlerSpec(handlers.change_status) for name in STATUS_COMMANDS},
        **refuse_all(*DUNNING_COMMANDS),
        **ignore_internal(*DUNNING_INTERNAL),
    }
    return ServiceDefinition(
        name="invoice",
        migrations=Path(__file__).parent / "migrations",
        consumers=[
            ConsumerSpec(name="commands", topic=topics.INVOICE_COMMANDS, handlers=commands),
            ConsumerSpec(
                name="transactions",
                topic=topics.PAYMENT_TRANSACTIONS,
                handlers={
                    "TransactionStatusChanged": HandlerSpec(
                        handlers.transaction_status_changed, answers=False
                    )
                },
            ),
        ],
    )
