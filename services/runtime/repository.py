"""What every repository of one merchant's rows over a batch's state shares.

A service whose consumers keep a batch's rows in memory (`BatchHooks`,
services/runtime/consumer.py) reads and writes them through a repository of one
merchant: reads of what the batch holds cost nothing, writes wait for its `flush`.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from services.runtime.db import Connection

#: A row's key in a batch: (website_key, the merchant's own key of the row).
Key = tuple[str, str]


class FlushingBatch(Protocol):
    async def flush(self, conn: Connection) -> None: ...


BatchT = TypeVar("BatchT", bound=FlushingBatch)


class MerchantRepository(Generic[BatchT]):
    """One merchant's rows through the batch's state `batch`."""

    def __init__(self, conn: Connection, website_key: str, batch: BatchT) -> None:
        self.conn = conn
        self.website_key = website_key
        self.batch = batch

    def _key(self, name: str) -> Key:
        return (self.website_key, name)

    async def flush(self) -> None:
        """Write what the batch kept, before a query that must see it."""
        await self.batch.flush(self.conn)
