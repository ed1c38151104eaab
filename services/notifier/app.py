"""The notifier service: messages to debtors and pushes to merchants.

Consumers (handlers.py): `cm.invoice.events` → one push per InvoiceEvent on
`cm.push.invoice` plus a webhook delivery; `cm.notifier.commands` → templates, webhook
registration, message jobs and webhook retries. Background tasks do the talking to the
outside world after commit: webhook deliveries (webhooks.py) and messages to debtors
(messages.py), so no SMTP or HTTP call ever runs inside a consumer's transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from contracts import topics
from services.notifier import handlers
from services.notifier.messages import MessageSender
from services.notifier.webhooks import WebhookDispatcher
from services.runtime.app import Runtime, ServiceDefinition
from services.runtime.consumer import ConsumerSpec, HandlerSpec
from services.runtime.logs import get_logger

log = get_logger(__name__)

#: How often an idle worker looks for work (a busy one goes on at once).
IDLE_POLL_S = 0.05
#: Concurrent webhook workers per process (each claims its own batch).
WEBHOOK_WORKERS = 2


async def _work_loop(name: str, step: Callable[[], Awaitable[int]]) -> None:
    while True:
        try:
            done = await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("notifier worker failed; retrying", worker=name)
            done = 0
            await asyncio.sleep(1.0)
        if done == 0:
            await asyncio.sleep(IDLE_POLL_S)


async def webhook_deliveries(runtime: Runtime) -> None:
    """Post due pushes to merchants' webhooks."""
    timeout = httpx.Timeout(runtime.settings.webhook_timeout_s)
    limits = httpx.Limits(
        max_connections=WebhookDispatcher.MAX_IN_FLIGHT,
        max_keepalive_connections=WebhookDispatcher.MAX_IN_FLIGHT,
    )
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, limits=limits) as client:
        dispatcher = WebhookDispatcher(runtime, client)
        await asyncio.gather(
            *(
                _work_loop(f"webhooks-{i}", dispatcher.dispatch_batch)
                for i in range(WEBHOOK_WORKERS)
            )
        )


async def debtor_messages(runtime: Runtime) -> None:
    """Send recorded message jobs by e-mail, SMS or letter."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        sender = MessageSender(runtime, client)
        await _work_loop("messages", sender.send_batch)


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
                    # Internal: from the invoice service and the scheduler (no answer owed).
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
