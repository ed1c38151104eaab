"""The notifier service: messages to debtors and pushes to merchants.

Consumers (handlers.py): `cm.invoice.events` → one push per InvoiceEvent on
`cm.push.invoice` plus a webhook delivery; `cm.notifier.commands` → templates, webhook
registration, message jobs and webhook retries, Kafka push on and off. Background tasks
do the talking to the outside world after commit: webhook deliveries (webhooks.py) and
messages to debtors (messages.py), so no SMTP or HTTP call ever runs inside a consumer's
transaction.
A merchant that sent EnableKafkaPush gets topics of its own (feeds.py): its pushes are
also written to `cm.push.{website_key}.invoice`, and consumers of `cm.command.results`,
`cm.subscription.events` and `cm.collection.events` copy its records to
`cm.push.{website_key}.results|subscription|collection`.
At start the webhook secrets are re-encrypted with the first `CM_SECRET_KEY` (trust.py);
a background task drops personal data of finished work after `NOTIFIER_RETENTION_DAYS`.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path

import httpx

from contracts import catalog, topics
from services.notifier import handlers
from services.notifier.feeds import MerchantFeeds, feed_consumers
from services.notifier.limits import NotifierLimits
from services.notifier.messages import MessageSender
from services.notifier.repository import NotifierRepository
from services.notifier.trust import WebhookTrust, reseal_secrets
from services.notifier.webhooks import WebhookDispatcher, webhook_client
from services.runtime.app import Runtime, ServiceDefinition
from services.runtime.consumer import ConsumerSpec, HandlerSpec
from services.runtime.logs import get_logger
from services.runtime.worker import StopFlag, run_worker

log = get_logger(__name__)

#: How often an idle worker looks for work (a busy one goes on at once, and one whose
#: send just ended looks at once: the invoice's next push may be due).
IDLE_POLL_S = 0.05
#: Rows of each table whose personal data one pruning round drops.
PRUNE_BATCH = 1000


async def secrets_at_rest(runtime: Runtime, trust: WebhookTrust) -> None:
    """Read CM_SECRET_KEY, then encrypt stored webhook secrets with its first key."""
    if not trust.configure(runtime.settings):
        return
    _, box = trust.require()
    stop = StopFlag()

    async def step() -> int:
        resealed, unreadable = await reseal_secrets(runtime.pool, box)
        if resealed:
            log.info("webhook secrets encrypted with the current key", count=resealed)
        if unreadable:
            log.warning(
                "webhook secrets no key of CM_SECRET_KEY decrypts (their deliveries fail"
                " with secret_unreadable)",
                count=unreadable,
            )
        stop.stopped = True
        return 0

    await run_worker("notifier-secrets", step, idle_s=1.0, stop=stop)


async def personal_data_retention(runtime: Runtime) -> None:
    """Drop bodies and invoice snapshots of finished work after the retention window."""
    settings = runtime.settings
    older_than = timedelta(days=settings.notifier_retention_days)

    async def step() -> int:
        async with runtime.pool.acquire() as conn:
            pruned = await NotifierRepository(conn).prune_personal_data(older_than, PRUNE_BATCH)
        if pruned:
            log.info("personal data of finished pushes and messages dropped", rows=pruned)
        return pruned

    await run_worker("notifier-retention", step, idle_s=settings.notifier_prune_interval_s)


async def webhook_deliveries(runtime: Runtime, trust: WebhookTrust) -> None:
    """Post due pushes to merchants' webhooks."""
    if not trust.configure(runtime.settings):
        return  # no key: the reason is logged once
    policy, box = trust.require()
    limits = NotifierLimits.of(runtime.settings)
    async with webhook_client(limits, policy) as client:
        dispatcher = WebhookDispatcher(runtime, client, limits, box)
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


def definition(trust: WebhookTrust | None = None) -> ServiceDefinition:
    """The notifier; `trust` (tests: a resolver of their own) is filled in from the
    settings when the service starts."""
    trust = trust or WebhookTrust()

    async def webhook_secrets(runtime: Runtime) -> None:
        await secrets_at_rest(runtime, trust)

    async def webhooks(runtime: Runtime) -> None:
        await webhook_deliveries(runtime, trust)

    feeds = MerchantFeeds()

    return ServiceDefinition(
        name="notifier",
        migrations=Path(__file__).parent / "migrations",
        consumers=[
            ConsumerSpec(
                name="commands",
                topic=topics.NOTIFIER_COMMANDS,
                handlers={
                    "UpsertTemplate": HandlerSpec(handlers.upsert_template),
                    "RegisterWebhook": HandlerSpec(
                        functools.partial(handlers.register_webhook, trust=trust)
                    ),
                    "EnableKafkaPush": HandlerSpec(feeds.enable_kafka_push),
                    "DisableKafkaPush": HandlerSpec(feeds.disable_kafka_push),
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
            # Copies of each merchant's results, subscription and case events to its
            # own topics (feeds.py).
            *feed_consumers(catalog.types_for_topic),
        ],
        background_tasks=(
            feeds.configure,
            webhook_secrets,
            webhooks,
            debtor_messages,
            personal_data_retention,
        ),
    )
