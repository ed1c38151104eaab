"""Every topic name of the platform, in one place, with the optional environment prefix."""

from __future__ import annotations

from dataclasses import dataclass

INVOICE_COMMANDS = "cm.invoice.commands"
INVOICE_INTERNAL = "cm.invoice.internal"
PAYMENT_TRANSACTIONS = "cm.payments.transactions"
PAYMENT_REQUESTS = "cm.payments.requests"
INVOICE_EVENTS = "cm.invoice.events"
SCHEDULER_COMMANDS = "cm.scheduler.commands"
SCHEDULER_EVENTS = "cm.scheduler.events"
NOTIFIER_COMMANDS = "cm.notifier.commands"
NOTIFIER_INTERNAL = "cm.notifier.internal"
NOTIFIER_EVENTS = "cm.notifier.events"
PUSH_INVOICE = "cm.push.invoice"
SUBSCRIPTION_COMMANDS = "cm.subscription.commands"
SUBSCRIPTION_INTERNAL = "cm.subscription.internal"
SUBSCRIPTION_EVENTS = "cm.subscription.events"
COLLECTION_COMMANDS = "cm.collection.commands"
COLLECTION_EVENTS = "cm.collection.events"
AGENCY_REQUESTS = "cm.agency.requests"
AGENCY_ANSWERS = "cm.agency.answers"
COMMAND_RESULTS = "cm.command.results"
DLQ = "cm.dlq"

ALL_TOPICS: tuple[str, ...] = (
    INVOICE_COMMANDS,
    INVOICE_INTERNAL,
    PAYMENT_TRANSACTIONS,
    PAYMENT_REQUESTS,
    INVOICE_EVENTS,
    SCHEDULER_COMMANDS,
    SCHEDULER_EVENTS,
    NOTIFIER_COMMANDS,
    NOTIFIER_INTERNAL,
    NOTIFIER_EVENTS,
    PUSH_INVOICE,
    SUBSCRIPTION_COMMANDS,
    SUBSCRIPTION_INTERNAL,
    SUBSCRIPTION_EVENTS,
    COLLECTION_COMMANDS,
    COLLECTION_EVENTS,
    AGENCY_REQUESTS,
    AGENCY_ANSWERS,
    COMMAND_RESULTS,
    DLQ,
)

#: Each merchant's own feeds: `cm.push.{website_key}.{feed}`, created by the notifier
#: when the merchant sends EnableKafkaPush, each carrying that merchant's records of
#: the shared (platform-only) topic named here. A merchant principal may read these
#: topics and nothing else that carries other merchants' data.
MERCHANT_TOPIC_PREFIX = "cm.push."
MERCHANT_FEEDS: dict[str, str] = {
    "invoice": PUSH_INVOICE,
    "results": COMMAND_RESULTS,
    "subscription": SUBSCRIPTION_EVENTS,
    "collection": COLLECTION_EVENTS,
}


def merchant_prefix(website_key: str) -> str:
    """The base-name prefix of one merchant's own topics (`cm.push.{website_key}.`)."""
    return f"{MERCHANT_TOPIC_PREFIX}{website_key}."


def merchant_topic(website_key: str, feed: str) -> str:
    """The base name of one merchant's feed topic, e.g. `cm.push.shop-1.invoice`."""
    if feed not in MERCHANT_FEEDS:
        raise KeyError(feed)
    return f"{merchant_prefix(website_key)}{feed}"


@dataclass(frozen=True)
class TopicNames:
    """Topic names as deployed: the base name with `CM_TOPIC_PREFIX` in front."""

    prefix: str = ""

    def __call__(self, base: str) -> str:
        return f"{self.prefix}{base}"

    def base(self, deployed: str) -> str:
        """The base name of a deployed topic name."""
        if self.prefix and deployed.startswith(self.prefix):
            return deployed[len(self.prefix) :]
        return deployed

    def all(self) -> list[str]:
        return [self(name) for name in ALL_TOPICS]
