"""Commands of the notifier (`cm.notifier.commands`): step messages, templates, webhooks.

Kafka keys: `{website_key}:{invoice_number}` for SendMessage and RetryWebhookDelivery,
`{website_key}:template:{template_key}` for UpsertTemplate and `{website_key}:webhook`
for RegisterWebhook (one webhook endpoint per merchant).
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import Field

from contracts.envelope import Command, register
from contracts.fields import Culture, Identifier, Text
from contracts.invoice import Channel, InvoiceSnapshot, StepAction


class SendMessage(Command):
    """Send a scheme step's message to the debtor (invoice → notifier).

    The notifier tries `channels` in order, skipping unreachable ones, and answers with
    RecordMessageOutcome on `cm.invoice.commands`.
    """

    invoice_number: Identifier = Field(description="The invoice.")
    step_index: int = Field(ge=1, description="The scheme step sending this message.")
    action: Literal[StepAction.PAYMENT_INVITATION, StepAction.REMINDER] = Field(
        description="PaymentInvitation or Reminder."
    )
    template_key: Identifier | None = Field(
        default=None, description="The template; the notifier's default for the action when null."
    )
    channels: list[Channel] = Field(
        min_length=1, description="Channels in order: the first is primary, then backups."
    )
    states_costs: bool = Field(
        default=False, description="The message announces the statutory costs (14-day letter)."
    )
    invoice: InvoiceSnapshot = Field(
        description="The invoice as of the step, so the notifier keeps no copy of it."
    )


class UpsertTemplate(Command):
    """Create or replace a merchant's message template for one culture and channel.

    The body may contain tags such as `[InvoiceNumber]`, `[OpenAmount]`, `[PayLink]`.
    """

    template_key: Identifier = Field(description="The template's key, named by scheme steps.")
    culture: Culture = Field(description="The culture this text is for, e.g. `nl-NL`.")
    channel: Channel = Field(description="The channel this text is for.")
    subject: Text | None = Field(default=None, description="Subject line (e-mail, letter).")
    body: str = Field(min_length=1, max_length=100_000, description="The message text.")


class RegisterWebhook(Command):
    """Set the merchant's webhook endpoint for invoice pushes (Standard Webhooks signing)."""

    url: str = Field(
        max_length=2000,
        pattern=r"^https?://\S+$",
        description="The endpoint that receives each push as an HTTP POST.",
    )
    secret: str = Field(
        min_length=7,
        max_length=200,
        pattern=r"^whsec_[A-Za-z0-9+/=]+$",
        description="The signing secret: `whsec_` followed by base64 key bytes.",
    )
    enabled: bool = Field(default=True, description="False stops deliveries to the endpoint.")


class RetryWebhookDelivery(Command):
    """Try a failed webhook delivery again (a scheduler timer → notifier)."""

    invoice_number: Identifier = Field(description="The invoice the push is about.")
    delivery_id: str = Field(
        min_length=1, max_length=200, description="The notifier's id of the delivery."
    )
    push_message_id: uuid.UUID = Field(
        description="The InvoiceEvent's message_id: the push's `webhook-id`."
    )
    attempt: int = Field(ge=1, description="The number of this attempt (the first retry is 2).")


register(SendMessage, UpsertTemplate, RegisterWebhook, RetryWebhookDelivery)
