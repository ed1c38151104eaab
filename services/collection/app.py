"""The collection service: debt collection cases and agencies."""

from __future__ import annotations

from pathlib import Path

from contracts import topics
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import ConsumerSpec
from services.runtime.pending import ignore_internal, refuse_all


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="collection",
        migrations=Path(__file__).parent / "migrations",
        consumers=[
            ConsumerSpec(
                name="commands",
                topic=topics.COLLECTION_COMMANDS,
                handlers=refuse_all(
                    "UpsertDebtCollectorConfiguration",
                    "CreateCase",
                    "AttachDocument",
                    "MarkAsPrepared",
                    "ReviewCase",
                    "AgencyAccepted",
                    "AgencyRefused",
                    "AgencyProcessed",
                    "AddCollectedAmount",
                    "CloseCase",
                ),
            ),
            ConsumerSpec(
                name="invoice-events",
                topic=topics.INVOICE_EVENTS,
                handlers=ignore_internal("InvoiceEvent"),
            ),
        ],
    )
