"""The notifier service: messages to debtors and pushes to merchants."""

from __future__ import annotations

from pathlib import Path

from contracts import topics
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import ConsumerSpec
from services.runtime.pending import ignore_internal, refuse_all


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="notifier",
        migrations=Path(__file__).parent / "migrations",
        consumers=[
            ConsumerSpec(
                name="commands",
                topic=topics.NOTIFIER_COMMANDS,
                handlers={
                    **refuse_all("UpsertTemplate", "RegisterWebhook"),
                    **ignore_internal("SendMessage", "RetryWebhookDelivery"),
                },
            ),
            ConsumerSpec(
                name="invoice-events",
                topic=topics.INVOICE_EVENTS,
                handlers=ignore_internal("InvoiceEvent"),
            ),
        ],
    )
