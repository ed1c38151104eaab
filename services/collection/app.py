"""The collection service: debt collection cases and agencies."""

from __future__ import annotations

from pathlib import Path

from contracts import topics
from services.collection import handlers
from services.runtime.app import ServiceDefinition
from services.runtime.consumer import HandlerSpec, consumer_specs


def definition() -> ServiceDefinition:
    commands = {
        "UpsertDebtCollectorConfiguration": HandlerSpec(handlers.upsert_configuration),
        "CreateCase": HandlerSpec(handlers.create_case),
        "AttachDocument": HandlerSpec(handlers.attach_document),
        "MarkAsPrepared": HandlerSpec(handlers.mark_prepared),
        "ReviewCase": HandlerSpec(handlers.review_case),
        "AddCollectedAmount": HandlerSpec(handlers.add_collected_amount),
        "CloseCase": HandlerSpec(handlers.close_case),
    }
    # From the agency adapters: answered like the merchants' commands.
    agency_answers = {
        "AgencyAccepted": HandlerSpec(handlers.agency_accepted),
        "AgencyRefused": HandlerSpec(handlers.agency_refused),
        "AgencyProcessed": HandlerSpec(handlers.agency_processed),
        "AddCollectedAmount": HandlerSpec(handlers.add_collected_amount),
    }
    # Status 70 opens a case; a settled invoice recalls and closes it.
    invoice_events = {"InvoiceEvent": HandlerSpec(handlers.invoice_event, answers=False)}
    return ServiceDefinition(
        name="collection",
        migrations=Path(__file__).parent / "migrations",
        consumers=consumer_specs(
            {
                ("commands", topics.COLLECTION_COMMANDS): commands,
                ("agency-answers", topics.AGENCY_ANSWERS): agency_answers,
                ("invoice-events", topics.INVOICE_EVENTS): invoice_events,
            }
        ),
    )
