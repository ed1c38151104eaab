"""The subscription consumers' batch hooks: one `SubscriptionBatch` per batch, filled up front.

`SubscriptionBatchHooks.begin` reads (and locks, in key order) every subscription the
batch's messages are about (their Kafka keys, per the catalog), with their plans, in two
queries; the repository serves them from memory and keeps a bill run's writes (the
subscription row, its billed periods) until `finish` writes them in one statement per
table. A batch of 500 timer-fired RunBilling commands costs a handful of round trips
instead of about five per subscription. A message replayed on its own
(services/runtime/consumer.py) is a batch of one: the same path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contracts.envelope import Envelope
from services.runtime.consumer import aggregate_keys
from services.runtime.db import Connection
from services.subscription.repository import SubscriptionBatch


class SubscriptionBatchHooks:
    """The subscription consumers' `BatchHooks` (services.runtime.consumer)."""

    async def begin(
        self, conn: Connection, envelopes: Sequence[Envelope[Any]]
    ) -> SubscriptionBatch:
        batch = SubscriptionBatch()
        await batch.load(conn, aggregate_keys(envelopes, {"subscription_key"}))
        return batch

    async def finish(self, conn: Connection, state: SubscriptionBatch) -> None:
        await state.flush(conn)
