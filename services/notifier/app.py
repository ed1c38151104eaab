"""The notifier service: messages to debtors and pushes to merchants.

Consumers (handlers.py): `cm.invoice.events` → one push per InvoiceEvent on
`cm.push.invoice` plus a webhook delivery; `cm.notifier.commands` → templates, webhook
registration, message jobs and webhook retries. Background tasks do the talking to the
outside world after commit: webhook deliveries (webhooks.py) and messages to debtors
(messages.py), so no SMTP or HTTP call ever runs inside a consumer's transaction.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from contracts import topics
from services.notifier import handlers
from services.notifier.limits import NotifierLimits
from services.notifier.messages import MessageSender
from services.notifier.webhooks import WebhookDispatcher, webhook_client
from services.runtime.app import Runtime, ServiceDefinition
from services.runtime.consumer import ConsumerSpec, HandlerSpec
from services.runtime.worker import run_worker

#: How often an idle worker looks for work (a busy one goes on at once, and one whose
#: send just ended looks at once: the invoice's next push may be due).
IDLE_POLL_S = 0.05


async def webhook_deliveries(runtime: Runtime) -> None:
    """Post due pushes to merchants' webhooks."""
    limits = NotifierLimits.of(runtime.settings)
    async with webhook_client(limits) as client:
        dispatcher = WebhookDispatcher(runtime, client, limits)
        try:
            await run_worker(
                "notifier-webhooks", dispatcher.step, idle_s=IDLE_POLL_S, wake=dispatcher.wake
            )
        finally:
            await dispatcher.close()


async def debtor_messages(runtime: Runtime) -> None:
    """Send recorded message jobs by e-mail, SMS or letter."""
    limits = NotifierLimits.of(runtime.settings)
    connections = limits.message_max_in_flight
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(limits.message_send_timeout_s),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    ) as client:
        sender = MessageSender(runtime, client, limits)
        try:
            await run_worker("notifier-messages", sender.step, idle_s=IDLE_POLL_S, wake=sender.wake)
        finally:
            await sender.close()


def definition() -> ServiceDefinition:
    return ServiceDefinition(
        name="notifier",
        migrations=Path(__file__).parent / "migrations",
        consumers=[
            ConsumerSpec(
                name="commands",
                topic=topics.NOTIFIER_COMMANDS,
                handlers={
                    "UpsertTemplate": HandlerSpec(handlers.upsert_template),
                    "RegisterWebhook": HandlerSpec(handlers.register_webhook),
                },
            ),
            ConsumerSpec(
                name="internal",
                topic=topics.NOTIFIER_INTERNAL,
                handlers={
                    # From the invoice service and the scheduler (no answer owed).
                    "SendMessage": HandlerSpec(handlers.send_message, answers=False),
                    "RetryWebhookDelivery": HandlerSpec(
                        handlers.retry_webhook_delivery, answers=False
                    ),
                },
            ),
            ConsumerSpec(
                name="invoice-events",
                topic=topics.INVOICE_EVENTS,
                handlers={"InvoiceEvent": HandlerSpec(handlers.invoice_event, answers=False)},
                batch_hooks=handlers.PushBatchHooks(),
            ),
        ],
        background_tasks=(webhook_deliveries, debtor_messages),
    )
