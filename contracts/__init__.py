"""The wire of the credit-management platform: envelope, topics and every message.

Everything another system publishes to the platform, or consumes from it, is defined
here as pydantic v2 models. Services import these models; nothing else defines a
message shape.
"""

# Importing the message modules registers every payload type with the envelope parser.
from contracts import (
    catalog,
    collection,
    invoice,
    notifier,
    payments,
    push,
    results,
    scheduler,
    subscription,
)

__all__ = [
    "catalog",
    "collection",
    "invoice",
    "notifier",
    "payments",
    "push",
    "results",
    "scheduler",
    "subscription",
]
