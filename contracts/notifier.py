"""Commands of the notifier (`cm.notifier.commands`): step messages, templates, webhooks,
the merchant's own Kafka topics.

Events of the notifier (`cm.notifier.events`): WebhookDeliveryAttempted, one per attempt
to deliver a push to the merchant's webhook.

Kafka keys: `{website_key}:{invoice_number}` for SendMessage, RetryWebhookDelivery and
WebhookDeliveryAttempted (the invoice's key: one invoice's attempts stay in order),
`{website_key}:template:{template_key}` for UpsertTemplate, `{website_key}:webhook`
for RegisterWebhook (one webhook endpoint per merchant) and `{website_key}:kafka-push`
for EnableKafkaPush and DisableKafkaPush.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, Field, field_validator
from pydantic_core import PydanticCustomError

from contracts.envelope import Command, Event, register
from contracts.fields import Culture, Identifier, OneLine, StorableStr
from contracts.invoice import MAX_SENDER_NAME_LENGTH, Channel, InvoiceSnapshot, StepAction
from contracts.limits import (
    MAX_CHANNELS,
    MAX_INT,
    MAX_SCHEME_STEPS,
    MAX_TEMPLATE_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_URL_LENGTH,
)

#: A Standard Webhooks signing key decodes to this many bytes.
WEBHOOK_KEY_BYTES = range(24, 65)

#: The most partitions a merchant's own topic may have (EnableKafkaPush `partitions`).
MAX_MERCHANT_TOPIC_PARTITIONS = 64


class SendMessage(Command):
    """Send a scheme step's message to the debtor (invoice → notifier).

    The notifier tries `channels` in order, skipping unreachable ones, and answers with
    RecordMessageOutcome on `cm.invoice.internal`.
    """

    invoice_number: Identifier = Field(description="The invoice.")
    step_index: int = Field(
        ge=1, le=MAX_SCHEME_STEPS, description="The scheme step sending this message."
    )
    action: Literal[StepAction.PAYMENT_INVITATION, StepAction.REMINDER] = Field(
        description="PaymentInvitation or Reminder."
    )
    template_key: Identifier | None = Field(
        default=None, description="The template; the notifier's default for the action when null."
    )
    channels: list[Channel] = Field(
        min_length=1,
        max_length=MAX_CHANNELS,
        description="Channels in order: the first is primary, then backups.",
    )
    states_costs: bool = Field(
        default=False, description="The message announces the statutory costs (14-day letter)."
    )
    invoice: InvoiceSnapshot = Field(
        description="The invoice as of the step, so the notifier keeps no copy of it."
    )
    sender_name: OneLine | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SENDER_NAME_LENGTH,
        description="The merchant's sender name (UpdateMerchantSettings) when it set one: "
        "the From name of the e-mail, the letter's sender line, the SMS sender.",
    )


class UpsertTemplate(Command):
    """Create or replace a merchant's message template for one culture and channel.

    The body may contain tags such as `[InvoiceNumber]`, `[OpenAmount]`, `[PayLink]`.
    """

    template_key: Identifier = Field(description="The template's key, named by scheme steps.")
    culture: Culture = Field(description="The culture this text is for, e.g. `nl-NL`.")
    channel: Channel = Field(description="The channel this text is for.")
    subject: OneLine | None = Field(
        default=None,
        max_length=MAX_TEXT_LENGTH,
        description="Subject line (e-mail, letter): one line.",
    )
    body: StorableStr = Field(
        min_length=1, max_length=MAX_TEMPLATE_LENGTH, description="The message text."
    )


class RegisterWebhook(Command):
    """Set the merchant's webhook endpoint for invoice pushes (Standard Webhooks signing)."""

    url: str = Field(
        max_length=MAX_URL_LENGTH,
        pattern=r"^https?://\S+$",
        description="The endpoint that receives each push as an HTTP POST: an absolute "
        "http(s) URL with a host (and a port in 1..65535, if any).",
    )
    secret: str = Field(
        min_length=7,
        max_length=200,
        pattern=r"^whsec_[A-Za-z0-9+/]+={0,2}$",
        description="The signing secret: `whsec_` followed by the base64 of 24 to 64 key "
        "bytes (a Standard Webhooks key).",
    )
    enabled: bool = Field(default=True, description="False stops deliveries to the endpoint.")

    @field_validator("url")
    @classmethod
    def _absolute_http_url(cls, url: str) -> str:
        # Parsed as the notifier's HTTP client will parse it when it sends.
        import httpx  # noqa: PLC0415 - only this validator needs the HTTP client

        try:
            parsed = httpx.URL(url)
            port = parsed.port  # a port that does not parse raises here at the latest
        except Exception:  # InvalidURL, or whatever the IDNA codec raises on a host
            parsed, port = None, None
        if (
            parsed is None
            or parsed.scheme not in ("http", "https")
            or not parsed.host
            or (port is not None and not 1 <= port <= 65535)
        ):
            raise PydanticCustomError(
                "invalid_url", "not an absolute http(s) URL with a host and a valid port"
            )
        return url

    @field_validator("secret")
    @classmethod
    def _standard_webhooks_key(cls, secret: str) -> str:
        digits = secret.removeprefix("whsec_").rstrip("=")
        try:
            key = base64.b64decode(digits + "=" * (-len(digits) % 4), validate=True)
        except binascii.Error:
            key = b""
        if len(key) not in WEBHOOK_KEY_BYTES:
            raise PydanticCustomError(
                "invalid_webhook_secret",
                "not a Standard Webhooks key: `whsec_` and the base64 of 24 to 64 bytes",
            )
        return secret


class RetryWebhookDelivery(Command):
    """Try a failed webhook delivery again (a scheduler timer → notifier)."""

    invoice_number: Identifier = Field(description="The invoice the push is about.")
    delivery_id: OneLine = Field(
        min_length=1, max_length=200, description="The notifier's id of the delivery."
    )
    push_message_id: uuid.UUID = Field(
        description="The InvoiceEvent's message_id: the push's `webhook-id`."
    )
    attempt: int = Field(
        ge=1, le=MAX_INT, description="The number of this attempt (the first retry is 2)."
    )


class EnableKafkaPush(Command):
    """Give the merchant its own Kafka topics and copy its records there from now on.

    The notifier creates `cm.push.{website_key}.{feed}` for each feed (`invoice`,
    `results`, `subscription`, `collection`) and from then on copies there every
    record of this merchant that lands on `cm.push.invoice`, `cm.command.results`,
    `cm.subscription.events` and `cm.collection.events` (those shared topics are
    platform-only). Records from before the command are not copied. Sending it again
    is harmless: existing topics are kept. A website key with a `.` is refused
    (`website_key_not_topic_safe`): the merchant's topic prefix would cover another
    merchant's topics.
    """

    partitions: int | None = Field(
        default=None,
        ge=1,
        le=MAX_MERCHANT_TOPIC_PARTITIONS,
        description="Partitions of each new topic; the platform's `KAFKA_TOPIC_PARTITIONS` "
        "when null. Existing topics with fewer partitions grow to this many, when the "
        "broker can add partitions; a topic never shrinks (a smaller number is refused "
        "with `partitions_cannot_shrink`). Adding partitions moves keys to other "
        "partitions: records of one key written before and after are no longer in one "
        "partition.",
    )


class DisableKafkaPush(Command):
    """Stop copying the merchant's records to its own topics; the topics and what they
    hold are kept, and EnableKafkaPush starts copying again (no catch-up)."""


class DeliveryOutcome(StrEnum):
    """What one attempt to deliver a push to the merchant's webhook came to."""

    #: The endpoint answered 2xx: the push is delivered.
    DELIVERED = "delivered"
    #: It failed (no 2xx answer, or no answer); another attempt is due at `next_retry_at`.
    FAILED = "failed"
    #: It failed and it was the last attempt: the push is given up (WebhookDeliveryFailed).
    GIVEN_UP = "given_up"


class WebhookDeliveryAttempted(Event):
    """One attempt to deliver a push to the merchant's webhook, and what came of it
    (notifier → `cm.notifier.events`).

    Written in the transaction that records the attempt, so there is exactly one per
    recorded attempt. It carries no URL, no secret, no body and no personal data: the
    push it is about is named by `push_message_id` (the push's `webhook-id`).
    """

    invoice_number: Identifier = Field(description="The invoice the push is about.")
    delivery_id: OneLine = Field(
        min_length=1, max_length=200, description="The notifier's id of the delivery."
    )
    push_message_id: uuid.UUID = Field(
        description="The InvoiceEvent's message_id: the push's `webhook-id`."
    )
    attempt: int = Field(ge=1, le=MAX_INT, description="The number of this attempt (first: 1).")
    outcome: DeliveryOutcome = Field(description="delivered, failed (retried) or given_up.")
    status_code: int | None = Field(
        default=None,
        ge=100,
        le=999,
        description="The endpoint's HTTP status; null when no answer came.",
    )
    error: OneLine | None = Field(
        default=None,
        max_length=200,
        description="Why it failed: `http_{status}`, or an error code such as `timeout`, "
        "`ConnectError`, `target_not_allowed`, `invalid_url`; null when delivered.",
    )
    duration_ms: int | None = Field(
        default=None,
        ge=0,
        le=MAX_INT,
        description="Milliseconds from the start of the POST to its end (answer or error).",
    )
    attempted_at: AwareDatetime = Field(description="When the attempt was recorded (wall clock).")
    next_retry_at: AwareDatetime | None = Field(
        default=None,
        description="When the next attempt is due (business time: the scheduler's clock); "
        "null when delivered or given up.",
    )


register(
    SendMessage,
    UpsertTemplate,
    RegisterWebhook,
    RetryWebhookDelivery,
    EnableKafkaPush,
    DisableKafkaPush,
    WebhookDeliveryAttempted,
)
