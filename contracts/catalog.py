"""Which message travels on which topic, with which Kafka key, from whom to whom.

The table is the one source of topics, keys, producers and consumers: docs/contracts.md's
topic table, the AsyncAPI document (docs/asyncapi.json) and the Kafka ACL plan are
generated from it (`make docs`). Consumers use `types_for_topic` to decide which envelope
types they accept on a topic (anything else is a parse error, `unknown_type`); producers
use `key_for` (or `key_for_payload`) for the Kafka key of what they send, and `timer_for`
to have the scheduler send it later.

Actors are the five services, the merchant console (`console`, services/console: it reads
event topics into its read models and sends merchants' commands on their behalf; it
answers no command) and the outside world: `merchants` (the merchant's own systems),
`payment-engine`, `agency-adapters` and `operators` (people, tooling and tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contracts import collection, invoice, notifier, payments, results, scheduler, subscription
from contracts import topics as t
from contracts.envelope import Command, Envelope, Message

# --- actors ------------------------------------------------------------------------------

INVOICE = "invoice"
SCHEDULER = "scheduler"
NOTIFIER = "notifier"
SUBSCRIPTION = "subscription"
COLLECTION = "collection"
#: The services that answer commands (each writes CommandAccepted / CommandRejected).
SERVICES: tuple[str, ...] = (INVOICE, SCHEDULER, NOTIFIER, SUBSCRIPTION, COLLECTION)
CONSOLE = "console"
#: Every process on the service runtime (services/runtime): the services and the console.
#: Each has a Kafka user of its own, consumer groups `cm.{name}.…` and dead-letters what
#: it cannot parse.
RUNTIME_SERVICES: tuple[str, ...] = (*SERVICES, CONSOLE)

MERCHANTS = "merchants"
PAYMENT_ENGINE = "payment-engine"
AGENCY_ADAPTERS = "agency-adapters"
OPERATORS = "operators"
EXTERNAL_ACTORS: tuple[str, ...] = (MERCHANTS, PAYMENT_ENGINE, AGENCY_ADAPTERS, OPERATORS)

#: A key template that means "the key of the original message" (dead letters).
ORIGINAL_KEY = "{original key}"


@dataclass(frozen=True)
class TopicSpec:
    """One topic: what it carries, how it is keyed, who writes and reads it.

    `key` is the topic's key template, overridden per message type in `keys`; templates
    name `{website_key}` (the envelope's) and `{payload.<field>}`. `producers` maps each
    writer to the message types it writes. `enveloped` is False only for the push.
    `platform_only` topics carry what no outside party may send or see.
    """

    name: str
    description: str
    key: str
    messages: tuple[type[Message], ...]
    producers: Mapping[str, tuple[type[Message], ...]]
    consumers: tuple[str, ...]
    keys: Mapping[str, str] = field(default_factory=dict)
    enveloped: bool = True
    #: Only the platform (its services and operators) writes and reads this topic; no
    #: merchant, payment engine or agency principal gets any access to it.
    platform_only: bool = False

    def key_template(self, type_name: str) -> str:
        return self.keys.get(type_name, self.key)


_INVOICE_KEY = "{website_key}:{payload.invoice_number}"

_MERCHANT_INVOICE_COMMANDS: tuple[type[Message], ...] = (
    invoice.CreateInvoice,
    invoice.CreateCombinedInvoice,
    invoice.CreateCreditNote,
    invoice.AddOrUpdateDebtor,
    invoice.CreatePaymentPlan,
    invoice.TerminatePaymentPlan,
    invoice.PauseInvoice,
    invoice.UnpauseInvoice,
    invoice.RegisterDispute,
    invoice.ResolveDispute,
    invoice.WriteOffInvoice,
    invoice.CancelInvoice,
    invoice.SetEmergency,
    invoice.TriggerNextStep,
    invoice.CreateCustomEvent,
    invoice.UpsertScheme,
    invoice.UpdateMerchantSettings,
)
_TIMER_COMMANDS: tuple[type[Message], ...] = (scheduler.ScheduleTimer, scheduler.CancelTimer)
_MERCHANT_COLLECTION_COMMANDS: tuple[type[Message], ...] = (
    collection.UpsertDebtCollectorConfiguration,
    collection.CreateCase,
    collection.AttachDocument,
    collection.MarkAsPrepared,
    collection.ReviewCase,
    collection.AddCollectedAmount,
    collection.CloseCase,
)
_AGENCY_ANSWERS: tuple[type[Message], ...] = (
    collection.AgencyAccepted,
    collection.AgencyRefused,
    collection.AgencyProcessed,
    collection.AddCollectedAmount,
)
_SUBSCRIPTION_REQUESTS: tuple[type[Message], ...] = (
    subscription.CreateSubscription,
    subscription.CreateCombinedSubscription,
    subscription.UpdateSubscription,
    subscription.StopSubscription,
)
_RESULTS: tuple[type[Message], ...] = (results.CommandAccepted, results.CommandRejected)
_MERCHANT_NOTIFIER_COMMANDS: tuple[type[Message], ...] = (
    notifier.UpsertTemplate,
    notifier.RegisterWebhook,
    notifier.EnableKafkaPush,
    notifier.DisableKafkaPush,
)

#: What the console sends for the signed-in merchant (services/console/web.py).
_CONSOLE_INVOICE_COMMANDS: tuple[type[Message], ...] = (
    invoice.PauseInvoice,
    invoice.UnpauseInvoice,
    invoice.RegisterDispute,
    invoice.ResolveDispute,
    invoice.WriteOffInvoice,
    invoice.TriggerNextStep,
    invoice.CreateCreditNote,
    invoice.UpsertScheme,
)
_CONSOLE_NOTIFIER_COMMANDS: tuple[type[Message], ...] = (
    notifier.UpsertTemplate,
    notifier.RegisterWebhook,
)
_CONSOLE_COLLECTION_COMMANDS: tuple[type[Message], ...] = (
    collection.MarkAsPrepared,
    collection.ReviewCase,
    collection.CloseCase,
)

_INTERNAL_INVOICE_COMMANDS: tuple[type[Message], ...] = (
    invoice.StepDue,
    invoice.RecordMessageOutcome,
    invoice.SetCollectionStatus,
    invoice.RegisterCollectedAmount,
)
_BILL_RUNS: tuple[type[Message], ...] = (subscription.RunBilling, subscription.RunMerchantBilling)

TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec(
            name=t.INVOICE_COMMANDS,
            description="Commands to the invoice service from merchants (and from the "
            "subscription service on their behalf).",
            key=_INVOICE_KEY,
            keys={
                "CreateCreditNote": "{website_key}:{payload.original_invoice_number}",
                "AddOrUpdateDebtor": "{website_key}:debtor:{payload.debtor.code}",
                "CreatePaymentPlan": "{website_key}:plan:{payload.dossier_number}",
                "TerminatePaymentPlan": "{website_key}:plan:{payload.dossier_number}",
                "UpsertScheme": "{website_key}:scheme:{payload.scheme_key}",
                "UpdateMerchantSettings": "{website_key}:merchant",
            },
            messages=_MERCHANT_INVOICE_COMMANDS,
            producers={
                MERCHANTS: _MERCHANT_INVOICE_COMMANDS,
                CONSOLE: _CONSOLE_INVOICE_COMMANDS,
                SUBSCRIPTION: (
                    invoice.CreateInvoice,
                    invoice.CreateCombinedInvoice,
                    invoice.CreateCreditNote,
                    invoice.AddOrUpdateDebtor,
                ),
            },
            consumers=(INVOICE,),
        ),
        TopicSpec(
            name=t.INVOICE_INTERNAL,
            description="Commands to the invoice service that only the platform sends: "
            "due dunning steps, message outcomes and collection results.",
            key=_INVOICE_KEY,
            messages=_INTERNAL_INVOICE_COMMANDS,
            producers={
                SCHEDULER: (invoice.StepDue,),
                NOTIFIER: (invoice.RecordMessageOutcome,),
                COLLECTION: (invoice.SetCollectionStatus, invoice.RegisterCollectedAmount),
            },
            consumers=(INVOICE,),
            platform_only=True,
        ),
        TopicSpec(
            name=t.PAYMENT_TRANSACTIONS,
            description="Transaction status changes reported by the payment engine.",
            key=_INVOICE_KEY,
            messages=(payments.TransactionStatusChanged,),
            producers={PAYMENT_ENGINE: (payments.TransactionStatusChanged,)},
            consumers=(INVOICE, SUBSCRIPTION),
        ),
        TopicSpec(
            name=t.PAYMENT_REQUESTS,
            description="What the platform asks of the payment engine: collect an invoice "
            "with a stored mandate (a subscription's invoice, a recollection).",
            key=_INVOICE_KEY,
            messages=(payments.CollectPayment,),
            producers={
                SUBSCRIPTION: (payments.CollectPayment,),
                INVOICE: (payments.CollectPayment,),
            },
            consumers=(PAYMENT_ENGINE,),
        ),
        TopicSpec(
            name=t.INVOICE_EVENTS,
            description="Every change of every invoice, with the invoice's snapshot after it.",
            key="{website_key}:{payload.invoice.invoice_number}",
            messages=(invoice.InvoiceEvent,),
            producers={INVOICE: (invoice.InvoiceEvent,)},
            consumers=(NOTIFIER, SUBSCRIPTION, COLLECTION, CONSOLE, OPERATORS),
            platform_only=True,
        ),
        TopicSpec(
            name=t.SCHEDULER_COMMANDS,
            description="Durable timers: schedule, cancel, and manual clock ticks.",
            key="{payload.timer_id}",
            keys={"Tick": scheduler.CLOCK_KEY},
            messages=(*_TIMER_COMMANDS, scheduler.Tick),
            producers={
                INVOICE: _TIMER_COMMANDS,
                NOTIFIER: _TIMER_COMMANDS,
                SUBSCRIPTION: _TIMER_COMMANDS,
                OPERATORS: (scheduler.Tick,),
            },
            consumers=(SCHEDULER,),
            platform_only=True,
        ),
        TopicSpec(
            name=t.SCHEDULER_EVENTS,
            description="Timers that fired (one TimersFired per firing batch and merchant) "
            "and completed manual clock ticks.",
            key="{website_key}",
            keys={"TickCompleted": scheduler.CLOCK_KEY},
            messages=(scheduler.TimersFired, scheduler.TickCompleted),
            producers={SCHEDULER: (scheduler.TimersFired, scheduler.TickCompleted)},
            consumers=(OPERATORS,),
            platform_only=True,
        ),
        TopicSpec(
            name=t.NOTIFIER_COMMANDS,
            description="Merchants' message templates, webhook endpoints and own Kafka "
            "topics (`cm.push.{website_key}.{feed}`).",
            key=_INVOICE_KEY,
            keys={
                "UpsertTemplate": "{website_key}:template:{payload.template_key}",
                "RegisterWebhook": "{website_key}:webhook",
                "EnableKafkaPush": "{website_key}:kafka-push",
                "DisableKafkaPush": "{website_key}:kafka-push",
            },
            messages=_MERCHANT_NOTIFIER_COMMANDS,
            producers={
                MERCHANTS: _MERCHANT_NOTIFIER_COMMANDS,
                CONSOLE: _CONSOLE_NOTIFIER_COMMANDS,
            },
            consumers=(NOTIFIER,),
        ),
        TopicSpec(
            name=t.NOTIFIER_INTERNAL,
            description="Step messages to send and webhook retries: only the platform sends them.",
            key=_INVOICE_KEY,
            messages=(notifier.SendMessage, notifier.RetryWebhookDelivery),
            producers={
                INVOICE: (notifier.SendMessage,),
                SCHEDULER: (notifier.RetryWebhookDelivery,),
            },
            consumers=(NOTIFIER,),
            platform_only=True,
        ),
        TopicSpec(
            name=t.NOTIFIER_EVENTS,
            description="What the notifier did: each attempt to deliver a push to a "
            "merchant's webhook and its outcome (no URL, secret, body or personal data).",
            key="{website_key}:{payload.invoice_number}",
            messages=(notifier.WebhookDeliveryAttempted,),
            producers={NOTIFIER: (notifier.WebhookDeliveryAttempted,)},
            consumers=(CONSOLE, OPERATORS),
            platform_only=True,
        ),
        TopicSpec(
            name=t.PUSH_INVOICE,
            description="Every merchant's invoice push (Buckaroo format), bare, not "
            "enveloped; header `message-id` is the InvoiceEvent's message_id. Platform-only: "
            "a merchant reads its own pushes on `cm.push.{website_key}.invoice`.",
            key=_INVOICE_KEY,
            messages=(),
            producers={NOTIFIER: ()},
            consumers=(OPERATORS,),
            enveloped=False,
            platform_only=True,
        ),
        TopicSpec(
            name=t.SUBSCRIPTION_COMMANDS,
            description="Merchants' commands to the subscription service.",
            key="{website_key}:{payload.subscription_key}",
            messages=_SUBSCRIPTION_REQUESTS,
            producers={
                MERCHANTS: _SUBSCRIPTION_REQUESTS,
                INVOICE: (subscription.StopSubscription,),
                CONSOLE: (subscription.StopSubscription,),
            },
            consumers=(SUBSCRIPTION,),
        ),
        TopicSpec(
            name=t.SUBSCRIPTION_INTERNAL,
            description="Bill runs: one subscription's (from its timer) or a merchant's "
            "(from an operator), sent by the platform only.",
            key="{website_key}:{payload.subscription_key}",
            keys={"RunMerchantBilling": "{website_key}:bill-run"},
            messages=_BILL_RUNS,
            producers={
                SCHEDULER: (subscription.RunBilling,),
                OPERATORS: _BILL_RUNS,
                SUBSCRIPTION: _BILL_RUNS,
            },
            consumers=(SUBSCRIPTION,),
            platform_only=True,
        ),
        TopicSpec(
            name=t.SUBSCRIPTION_EVENTS,
            description="Every change of every subscription. Platform-only: a merchant "
            "reads its own on `cm.push.{website_key}.subscription`.",
            key="{website_key}:{payload.subscription.subscription_key}",
            messages=(subscription.SubscriptionEvent,),
            producers={SUBSCRIPTION: (subscription.SubscriptionEvent,)},
            consumers=(NOTIFIER, CONSOLE, OPERATORS),
            platform_only=True,
        ),
        TopicSpec(
            name=t.COLLECTION_COMMANDS,
            description="Merchants' debt collection commands: configurations and cases.",
            key="{website_key}:{payload.case_key}",
            keys={
                "UpsertDebtCollectorConfiguration": (
                    "{website_key}:collector:{payload.configuration_key}"
                ),
            },
            messages=_MERCHANT_COLLECTION_COMMANDS,
            producers={
                MERCHANTS: _MERCHANT_COLLECTION_COMMANDS,
                CONSOLE: _CONSOLE_COLLECTION_COMMANDS,
            },
            consumers=(COLLECTION,),
        ),
        TopicSpec(
            name=t.AGENCY_ANSWERS,
            description="What the collection agencies' adapters answer about the cases "
            "handed to them.",
            key="{website_key}:{payload.case_key}",
            messages=_AGENCY_ANSWERS,
            producers={AGENCY_ADAPTERS: _AGENCY_ANSWERS},
            consumers=(COLLECTION,),
        ),
        TopicSpec(
            name=t.COLLECTION_EVENTS,
            description="Every change of every collection case. Platform-only: a merchant "
            "reads its own on `cm.push.{website_key}.collection`.",
            key="{website_key}:{payload.case.case_key}",
            messages=(collection.CaseEvent,),
            producers={COLLECTION: (collection.CaseEvent,)},
            consumers=(NOTIFIER, CONSOLE, OPERATORS),
            platform_only=True,
        ),
        TopicSpec(
            name=t.AGENCY_REQUESTS,
            description="Cases handed to (and recalled from) a collection agency's adapter.",
            key="{payload.agency_code}:{payload.case_key}",
            messages=(collection.TransferCase, collection.RecallCase),
            producers={COLLECTION: (collection.TransferCase, collection.RecallCase)},
            consumers=(AGENCY_ADAPTERS,),
        ),
        TopicSpec(
            name=t.COMMAND_RESULTS,
            description="Exactly one result per command from outside; `command_id` is the "
            "command's message_id. Platform-only: a merchant reads its own results on "
            "`cm.push.{website_key}.results`.",
            key="{website_key}",
            messages=_RESULTS,
            producers={service: _RESULTS for service in SERVICES},
            consumers=(NOTIFIER, CONSOLE, OPERATORS),
            platform_only=True,
        ),
        TopicSpec(
            name=t.DLQ,
            description="Messages a service could not parse or handle.",
            key=ORIGINAL_KEY,
            messages=(results.DeadLetter,),
            producers={service: (results.DeadLetter,) for service in RUNTIME_SERVICES},
            consumers=(OPERATORS,),
            platform_only=True,
        ),
    )
}

#: Each merchant's own feed topics (`cm.push.{website_key}.{feed}`): the notifier copies
#: the merchant's records of the shared topic there; only that merchant reads them.
MERCHANT_FEED_TOPICS: dict[str, str] = dict(t.MERCHANT_FEEDS)

#: Actors that are the platform itself: they may write and read platform-only topics.
PLATFORM_ACTORS: tuple[str, ...] = (*RUNTIME_SERVICES, OPERATORS)


def _check_platform_only() -> None:
    for spec in TOPICS.values():
        if not spec.platform_only:
            continue
        outsiders = (set(spec.producers) | set(spec.consumers)) - set(PLATFORM_ACTORS)
        if outsiders:
            raise ValueError(f"{spec.name} is platform-only but names {sorted(outsiders)}")


_check_platform_only()


def topic_spec(topic_base_name: str) -> TopicSpec:
    """The spec of a topic by base name (without CM_TOPIC_PREFIX). Raises KeyError."""
    return TOPICS[topic_base_name]


def types_for_topic(topic_base_name: str) -> set[str]:
    """The envelope `type`s a topic carries (empty for the bare push). Raises KeyError."""
    return {cls.TYPE for cls in TOPICS[topic_base_name].messages}


def timer_types(topic_base_name: str) -> set[str]:
    """The envelope `type`s a timer may publish to a topic (empty: none): the commands the
    catalog lets the scheduler write there. Never an answer, an event or a dead letter."""
    spec = TOPICS.get(topic_base_name)
    produced = spec.producers.get(SCHEDULER, ()) if spec else ()
    return {cls.TYPE for cls in produced if issubclass(cls, Command)}


def topic_for_type(type_name: str) -> str:
    """The base name of the topic a message type travels on. Raises KeyError."""
    return _TOPIC_OF_TYPE[type_name]


def _topic_of_type() -> dict[str, str]:
    """Each type's topic; a type on two topics (AddCollectedAmount, from merchants and
    from agencies) is sent by default on the first one in the catalog."""
    found: dict[str, str] = {}
    for spec in TOPICS.values():
        for cls in spec.messages:
            found.setdefault(cls.TYPE, spec.name)
    return found


_TOPIC_OF_TYPE: dict[str, str] = _topic_of_type()


def topics_of_type(type_name: str) -> list[str]:
    """Every topic a message type may travel on (base names)."""
    return [name for name, spec in TOPICS.items() if type_name in types_for_topic(name)]


def platform_only_types() -> frozenset[str]:
    """The types only the platform sends: every topic they travel on is platform-only."""
    return frozenset(
        type_name
        for type_name in _TOPIC_OF_TYPE
        if all(TOPICS[name].platform_only for name in topics_of_type(type_name))
    )


def key_for(envelope: Envelope[Any]) -> str | None:
    """The Kafka key of an envelope, per its topic's key template.

    Dead letters keep the original message's key (None when it had none).
    """
    return key_for_payload(envelope.payload, envelope.website_key)


def key_for_payload(payload: Message, website_key: str) -> str | None:
    """The Kafka key of `payload` sent for `website_key`: what `key_for` gives the envelope
    it will travel in (for a handler that names the key before `ctx.emit` builds it)."""
    template = TOPICS[topic_for_type(payload.TYPE)].key_template(payload.TYPE)
    if template == ORIGINAL_KEY:
        original: str | None = getattr(payload, "key", None)
        return original
    return template.format(website_key=website_key, payload=payload)


def timer_for(timer_id: str, due_at: datetime, envelope: Envelope[Any]) -> scheduler.ScheduleTimer:
    """A ScheduleTimer that publishes `envelope` at `due_at` on its own topic with its own
    Kafka key.

    Built from a typed envelope: not validated again (the scheduler validates what it
    receives), so a due time beyond the parseable years is refused there, never raised in
    the service that schedules it.
    """
    return scheduler.ScheduleTimer.model_construct(
        timer_id=timer_id,
        due_at=due_at,
        topic=topic_for_type(envelope.type),
        key=key_for(envelope) or "",
        message=envelope.model_dump(mode="json"),
    )
