"""One function per notifier message. Nothing here talks to SMTP or HTTP: a handler runs in
the consumer's batch transaction, so it records work (a delivery, a message job) that a
background task carries out after commit (webhooks.py, messages.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from contracts import topics
from contracts.catalog import key_for
from contracts.envelope import FieldError
from contracts.invoice import InvoiceEvent
from contracts.notifier import RegisterWebhook, RetryWebhookDelivery, SendMessage, UpsertTemplate
from contracts.push import MESSAGE_ID_HEADER, push_from_event
from contracts.topics import merchant_topic
from services.notifier.feeds import enabled_merchants
from services.notifier.repository import DeliveryRow, NotifierRepository
from services.notifier.templates import template_errors
from services.notifier.trust import WebhookTrust
from services.runtime.consumer import HandlerContext
from services.runtime.db import Connection
from services.runtime.logs import get_logger

log = get_logger(__name__)


async def invoice_event(ctx: HandlerContext, event: InvoiceEvent) -> None:
    """Every InvoiceEvent becomes one push on `cm.push.invoice` (the same on the merchant's
    own `cm.push.{website_key}.invoice` once it sent EnableKafkaPush, feeds.py) and, when
    the merchant has a webhook, one delivery to it."""
    invoice = event.invoice
    body = push_from_event(ctx.envelope).to_json()
    key = key_for(ctx.envelope)  # the push is keyed as its event: by invoice
    headers = (
        ("content-type", "application/json"),
        (MESSAGE_ID_HEADER, str(ctx.envelope.message_id)),
    )
    ctx.emit_raw(topics.PUSH_INVOICE, key, body, headers=headers)
    batch = ctx.batch_state(PushBatch)
    if ctx.website_key in batch.kafka_push:
        ctx.emit_raw(merchant_topic(ctx.website_key, "invoice"), key, body, headers=headers)
    row: DeliveryRow = (
        ctx.website_key,
        invoice.invoice_number,
        event.sequence,
        ctx.envelope.message_id,
        ctx.envelope.correlation,
        body,
        ctx.now,
    )
    batch.deliveries.append(row)  # written once for the batch (PushBatchHooks)


@dataclass
class PushBatch:
    deliveries: list[DeliveryRow] = field(default_factory=list)
    #: The batch's merchants whose pushes are copied to their own topic (feeds.py).
    kafka_push: set[str] = field(default_factory=set)


class PushBatchHooks:
    """Webhook deliveries of a batch of invoice events, inserted in one statement; the
    merchants with their own push topic, looked up in one."""

    async def begin(self, conn: Connection, envelopes: Sequence[Any]) -> PushBatch:
        merchants = {envelope.website_key for envelope in envelopes}
        return PushBatch(kafka_push=await enabled_merchants(conn, merchants))

    async def finish(self, conn: Connection, state: PushBatch) -> None:
        if state.deliveries:
            await NotifierRepository(conn).add_deliveries(state.deliveries)


async def register_webhook(ctx: HandlerContext, cmd: RegisterWebhook, trust: WebhookTrust) -> None:
    """Set (replace) the merchant's endpoint; open deliveries go to the new one. A target
    that is not a public https endpoint is refused (netguard.py; the name's addresses
    are looked up for at most WEBHOOK_DNS_TIMEOUT_S); the secret is stored encrypted."""
    policy, box = trust.require()
    refusal = await policy.registration_refusal(cmd.url)
    if refusal is not None:
        log.info("webhook target refused", website_key=ctx.website_key)  # never the URL
        ctx.reject([FieldError("payload.url", "webhook_target_not_allowed", refusal)])
        return
    await NotifierRepository(ctx.conn).upsert_webhook(
        ctx.website_key, cmd.url, box.seal(cmd.secret), cmd.enabled
    )
    ctx.accept(webhook=f"{ctx.website_key}:webhook")


async def upsert_template(ctx: HandlerContext, cmd: UpsertTemplate) -> None:
    errors = [
        *template_errors("payload.subject", cmd.subject),
        *template_errors("payload.body", cmd.body),
    ]
    if errors:
        ctx.reject(errors)
        return
    await NotifierRepository(ctx.conn).upsert_template(
        ctx.website_key, cmd.template_key, cmd.culture, cmd.channel, cmd.subject, cmd.body
    )
    ctx.accept(template_key=cmd.template_key)


async def send_message(ctx: HandlerContext, cmd: SendMessage) -> None:
    """Record the message job with the inbox row; messages.py sends it and answers."""
    await NotifierRepository(ctx.conn).add_message_job(
        ctx.envelope.message_id,
        ctx.website_key,
        cmd.invoice_number,
        cmd.step_index,
        json.loads(ctx.envelope.to_json()),
    )


async def retry_webhook_delivery(ctx: HandlerContext, cmd: RetryWebhookDelivery) -> None:
    """A retry timer fired: the delivery is due again, timed from this message."""
    try:
        delivery_id = int(cmd.delivery_id)
    except ValueError:
        log.warning("retry for an unknown delivery id", invoice_number=cmd.invoice_number)
        return
    due = await NotifierRepository(ctx.conn).make_due_again(
        ctx.website_key, delivery_id, cmd.attempt, ctx.now
    )
    if not due:  # delivered, given up, or a repeated timer: nothing to do
        log.info("stale webhook retry ignored", delivery_id=delivery_id, attempt=cmd.attempt)
