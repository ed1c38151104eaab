"""The collection service: debt collection cases and agencies."""

from __future__ import annotations

from pathlib import Path

from contracts import topics
from services.collection import handlers
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import ConsumerSpec, HandlerSpec


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="collection",
        migrations=Path(__file__).parent / "migrations",
        consumers=[
            ConsumerSpec(
                name="commands",
                topic=topics.COLLECTION_COMMANDS,
                handlers={
                    "UpsertDebtCollectorConfiguration": HandlerSpec(handlers.upsert_configuration),
                    "CreateCase": HandlerSpec(handlers.create_case),
                    "AttachDocument": HandlerSpec(handlers.attach_document),
                    "MarkAsPrepared": HandlerSpec(handlers.mark_prepared),
                    "ReviewCase": HandlerSpec(handlers.review_case),
                    "AddCollectedAmount": HandlerSpec(handlers.add_collected_amount),
                    "CloseCase": HandlerSpec(handlers.close_case),
                },
            ),
            ConsumerSpec(
                name="agency-answers",
                topic=topics.AGENCY_ANSWERS,
                # From the agency adapters: answered like the merchants' commands.
                handlers={
                    "AgencyAccepted": HandlerSpec(handlers.agency_accepted),
                    "AgencyRefused": HandlerSpec(handlers.agency_refused),
                    "AgencyProcessed": HandlerSpec(handlers.agency_processed),
                    "AddCollectedAmount": HandlerSpec(handlers.add_collected_amount),
                },
            ),
            ConsumerSpec(
                name="invoice-events",
                topic=topics.INVOICE_EVENTS,
                # Status 70 opens a case; a settled invoice recalls and closes it.
                handlers={"InvoiceEvent": HandlerSpec(handlers.invoice_event, answers=False)},
            ),
        ],
    )
