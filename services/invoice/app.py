"""The invoice service: the single writer of invoice state."""

from __future__ import annotations

from pathlib import Path

from contracts import topics
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import ConsumerSpec
from services.runtime.pending import ignore_internal, refuse_all

EXTERNAL_COMMANDS = (
    "CreateInvoice",
    "CreateCombinedInvoice",
    "CreateCreditNote",
    "AddOrUpdateDebtor",
    "CreatePaymentPlan",
    "TerminatePaymentPlan",
    "PauseInvoice",
    "UnpauseInvoice",
    "RegisterDispute",
    "ResolveDispute",
    "WriteOffInvoice",
    "CancelInvoice",
    "SetEmergency",
    "TriggerNextStep",
    "CreateCustomEvent",
    "UpsertScheme",
    "SetCollectionStatus",
    "RegisterCollectedAmount",
)
INTERNAL_MESSAGES = ("StepDue", "RecordMessageOutcome")


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="invoice",
        migrations=Path(__file__).parent / "migrations",
        consumers=[
            ConsumerSpec(
                name="commands",
                topic=topics.INVOICE_COMMANDS,
                handlers={**refuse_all(*EXTERNAL_COMMANDS), **ignore_internal(*INTERNAL_MESSAGES)},
            ),
            ConsumerSpec(
                name="transactions",
                topic=topics.PAYMENT_TRANSACTIONS,
                handlers=ignore_internal("TransactionStatusChanged"),
            ),
        ],
    )
