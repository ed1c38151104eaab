"""Set-based reads and writes around a batch of subscription commands.

`SubscriptionBatchHooks.begin` loads (and locks, in key order) every subscription the
batch's commands name, with their plans, in two queries; the repository serves them from
memory and keeps a bill run's writes (the subscription row, its billed periods) until
`finish` writes them in one statement per table. A batch of 500 timer-fired RunBilling
commands costs a handful of round trips instead of about five per subscription. When a
handler fails the batch is replayed message by message without the hooks, where every
query runs on its own (services/runtime/consumer.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.runtime.db import Connection
from services.subscription.repository import SubscriptionBatch, flush, load


class SubscriptionBatchHooks:
    """The subscription commands consumer's `BatchHooks` (services.runtime.consumer)."""

    async def begin(self, conn: Connection, envelopes: Sequence[Any]) -> SubscriptionBatch:
        keys = sorted(
            {
                (e.website_key, key)
                for e in envelopes
                if isinstance(key := getattr(e.payload, "subscription_key", None), str)
            }
        )
        return SubscriptionBatch(subs=await load(conn, keys))

    async def finish(self, conn: Connection, state: SubscriptionBatch) -> None:
        await flush(conn, state)
