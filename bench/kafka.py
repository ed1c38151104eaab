"""Small Kafka admin helpers for benchmarks."""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

#: Partitions per topic: the runtime's default kafka_topic_partitions.
PARTITIONS = 8


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
            )
    finally:
        await admin.close()


async def delete_topics_with_prefix(bootstrap: str, prefix: str) -> None:
    """Delete a run's topics (frees the embedded broker's memory)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            with contextlib.suppress(Exception):
                await admin.delete_topics(names)
    finally:
        await admin.close()
