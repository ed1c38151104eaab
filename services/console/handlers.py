"""The console's consumers: each event becomes rows of its read models, nothing else (the
console answers no command and sends nothing for an event)."""

from __future__ import annotations

from contracts.collection import CaseEvent
from contracts.invoice import InvoiceEvent
from contracts.notifier import WebhookDeliveryAttempted
from contracts.results import CommandAccepted, CommandRejected
from contracts.subscription import SubscriptionEvent
from services.console import repository
from services.runtime.consumer import HandlerContext


async def invoice_event(ctx: HandlerContext, evt: InvoiceEvent) -> None:
    await repository.apply_invoice_event(
        ctx.conn, ctx.website_key, ctx.envelope.message_id, ctx.now, evt
    )


async def command_result(ctx: HandlerContext, result: CommandAccepted | CommandRejected) -> None:
    await repository.record_result(ctx.conn, ctx.website_key, result)


async def subscription_event(ctx: HandlerContext, evt: SubscriptionEvent) -> None:
    await repository.apply_subscription_event(
        ctx.conn, ctx.website_key, ctx.envelope.message_id, ctx.now, evt
    )


async def case_event(ctx: HandlerContext, evt: CaseEvent) -> None:
    await repository.apply_case_event(
        ctx.conn, ctx.website_key, ctx.envelope.message_id, ctx.now, evt
    )


async def webhook_delivery_attempted(ctx: HandlerContext, evt: WebhookDeliveryAttempted) -> None:
    await repository.record_webhook_attempt(ctx.conn, ctx.website_key, ctx.envelope.message_id, evt)
