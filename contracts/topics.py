"""Every topic name of the platform, in one place, with the optional environment prefix."""

from __future__ import annotations

from dataclasses import dataclass

INVOICE_COMMANDS = "cm.invoice.commands"
PAYMENT_TRANSACTIONS = "cm.payments.transactions"
PAYMENT_REQUESTS = "cm.payments.requests"
INVOICE_EVENTS = "cm.invoice.events"
SCHEDULER_COMMANDS = "cm.scheduler.commands"
SCHEDULER_EVENTS = "cm.scheduler.events"
NOTIFIER_COMMANDS = "cm.notifier.commands"
PUSH_INVOICE = "cm.push.invoice"
SUBSCRIPTION_COMMANDS = "cm.subscription.commands"
SUBSCRIPTION_EVENTS = "cm.subscription.events"
COLLECTION_COMMANDS = "cm.collection.commands"
COLLECTION_EVENTS = "cm.collection.events"
AGENCY_REQUESTS = "cm.agency.requests"
COMMAND_RESULTS = "cm.command.results"
DLQ = "cm.dlq"

ALL_TOPICS: tuple[str, ...] = (
    INVOICE_COMMANDS,
    PAYMENT_TRANSACTIONS,
    PAYMENT_REQUESTS,
    INVOICE_EVENTS,
    SCHEDULER_COMMANDS,
    SCHEDULER_EVENTS,
    NOTIFIER_COMMANDS,
    PUSH_INVOICE,
    SUBSCRIPTION_COMMANDS,
    SUBSCRIPTION_EVENTS,
    COLLECTION_COMMANDS,
    COLLECTION_EVENTS,
    AGENCY_REQUESTS,
    COMMAND_RESULTS,
    DLQ,
)


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
