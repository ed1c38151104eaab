"""Merchants read only their own records (issue 11), on the real broker and PostgreSQL: the
invoice, notifier, subscription and collection services in-process. A merchant that sent
EnableKafkaPush gets `cm.push.{website_key}.{invoice,results,subscription,collection}`
holding its own records only; a merchant that did not gets no topic at all."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from contracts import catalog, topics
from contracts.topics import MERCHANT_FEEDS, merchant_topic
from services.notifier.feeds import merchants_with_feeds
from services.runtime.consumer import RawRecord
from tests.support.collection import manual_case
from tests.support.invoices import InvoiceClient, invoice_payload
from tests.support.kafka import Record, TopicWatcher, envelope, poll_until, publish, topic_of
from tests.support.platform import Platform, platform
from tests.support.subscriptions import subscription


@pytest.fixture(scope="module")
async def cm(kafka_bootstrap: str, database_url: str) -> AsyncIterator[Platform]:
    async with platform(kafka_bootstrap, database_url, *catalog.SERVICES) as running:
        yield running


@pytest.fixture(scope="module")
async def shared(cm: Platform) -> AsyncIterator[TopicWatcher]:
    """The platform-only topics the notifier copies from."""
    watcher = TopicWatcher(
        cm.bootstrap,
        *(cm.prefix + source for source in MERCHANT_FEEDS.values()),
    )
    await watcher.start()
    yield watcher
    await watcher.stop()


class Merchant:
    """One merchant: sends commands as itself and reads only its own topics."""

    def __init__(self, cm: Platform) -> None:
        self.cm = cm
        self.website_key = f"shop-{uuid.uuid4().hex[:8]}"
        self.watcher: TopicWatcher | None = None

    @property
    def inv(self) -> InvoiceClient:
        return self.cm.invoices

    def topic(self, feed: str) -> str:
        return self.cm.prefix + merchant_topic(self.website_key, feed)

    async def command(
        self, type_: str, payload: dict[str, Any], key: str, *, website_key: str | None = None
    ) -> dict[str, Any]:
        mid = await self.inv.command(
            type_, payload, website_key=website_key or self.website_key, key=key
        )
        return await self.inv.answer(mid)

    async def enable(self, **payload: Any) -> dict[str, Any]:
        return await self.command("EnableKafkaPush", payload, f"{self.website_key}:kafka-push")

    async def disable(self) -> dict[str, Any]:
        return await self.command("DisableKafkaPush", {}, f"{self.website_key}:kafka-push")

    async def read_own_topics(self) -> None:
        """Start reading the merchant's four topics (they exist once it enabled)."""
        self.watcher = TopicWatcher(
            self.cm.bootstrap, *(self.topic(feed) for feed in MERCHANT_FEEDS)
        )
        await self.watcher.start()

    async def stop(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()

    def on(self, feed: str) -> list[Record]:
        assert self.watcher is not None
        return self.watcher.on(self.topic(feed))

    async def wait(self, feed: str, check: Any, what: str) -> list[Record]:
        async def found() -> list[Record] | None:
            records = [r for r in self.on(feed) if check(r)]
            return records or None

        return await poll_until(found, what=what)

    async def invoice(self, number: str, **overrides: Any) -> dict[str, Any]:
        payload = invoice_payload(number, **{"scheme_key": "DefaultNone", **overrides})
        return await self.command("CreateInvoice", payload, f"{self.website_key}:{number}")


@pytest.fixture
async def merchants(cm: Platform) -> AsyncIterator[list[Merchant]]:
    """Three merchants of their own for each test."""
    made = [Merchant(cm) for _ in range(3)]
    yield made
    for merchant in made:
        await merchant.stop()


@pytest.fixture
async def a_and_b_feed(merchants: list[Merchant]) -> None:
    """The first two merchants enabled their topics, and the test reads them; the third
    has none."""
    for merchant in merchants[:2]:
        assert_accepted(await merchant.enable())
        await merchant.read_own_topics()


async def broker_topics(cm: Platform) -> dict[str, int]:
    """Every topic on the broker with its partitions (a listing creates none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cm.bootstrap)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith(cm.prefix)]
        described = await admin.describe_topics(names) if names else []
        return {t["topic"]: len(t["partitions"]) for t in described}
    finally:
        await admin.close()


async def assert_no_topics_of(merchant: Merchant) -> None:
    """The merchant never enabled: it has no topics at all."""
    found = await broker_topics(merchant.cm)
    assert not [name for name in found if merchant.website_key in name]


def assert_accepted(answer: dict[str, Any]) -> dict[str, str]:
    assert answer["type"] == "CommandAccepted", answer
    keys: dict[str, str] = answer["payload"]["keys"]
    return keys


def codes(answer: dict[str, Any]) -> list[tuple[str, str]]:
    assert answer["type"] == "CommandRejected", answer
    return [(e["field"], e["code"]) for e in answer["payload"]["errors"]]


# --- enabling -------------------------------------------------------------------------------


async def test_enabling_creates_the_merchants_topics_and_names_them(
    cm: Platform, merchants: list[Merchant]
) -> None:
    a, b, _ = merchants
    keys = assert_accepted(await a.enable())
    assert keys == {
        "kafka_push": f"{a.website_key}:kafka-push",
        **{f"{feed}_topic": a.topic(feed) for feed in MERCHANT_FEEDS},
    }
    assert_accepted(await b.enable(partitions=2))

    found = await broker_topics(cm)
    for feed in MERCHANT_FEEDS:
        assert found[a.topic(feed)] == 8  # KAFKA_TOPIC_PARTITIONS
        assert found[b.topic(feed)] == 2


async def test_enabling_twice_is_harmless_and_partitions_never_shrink(
    cm: Platform, merchants: list[Merchant]
) -> None:
    a, _, _ = merchants
    first = assert_accepted(await a.enable(partitions=3))
    again = assert_accepted(await a.enable(partitions=3))
    unset = assert_accepted(await a.enable())
    assert first == again == unset

    assert codes(await a.enable(partitions=2)) == [
        ("payload.partitions", "partitions_cannot_shrink")
    ]
    # More partitions: added where the broker can add partitions; the embedded broker
    # cannot, which is a refusal of this command only.
    grow = await a.enable(partitions=4)
    found = await broker_topics(cm)
    if grow["type"] == "CommandAccepted":
        assert all(found[a.topic(feed)] == 4 for feed in MERCHANT_FEEDS)
    else:
        assert codes(grow) == [("payload.partitions", "partitions_not_changed")]
        assert all(found[a.topic(feed)] == 3 for feed in MERCHANT_FEEDS)
    # Partitions out of bounds never reach the handler.
    assert codes(await a.enable(partitions=0))[0][0] == "payload.partitions"
    assert codes(await a.enable(partitions=65))[0][0] == "payload.partitions"


async def test_a_website_key_with_a_dot_is_refused(cm: Platform, merchants: list[Merchant]) -> None:
    a, _, _ = merchants
    dotted = f"{a.website_key}.b"
    answer = await a.command("EnableKafkaPush", {}, f"{dotted}:kafka-push", website_key=dotted)

    assert codes(answer) == [("website_key", "website_key_not_topic_safe")]
    found = await broker_topics(cm)
    assert not [name for name in found if f"{dotted}." in name or a.website_key in name]


# --- what is copied -------------------------------------------------------------------------


async def test_each_merchant_topic_holds_only_its_own_invoice_pushes(
    cm: Platform, merchants: list[Merchant], shared: TopicWatcher, a_and_b_feed: None
) -> None:
    a, b, c = merchants
    for merchant in merchants:
        for number in ("F-1", "F-2"):
            assert_accepted(await merchant.invoice(number))

    pushes = cm.prefix + topics.PUSH_INVOICE

    async def all_pushed() -> list[Record] | None:
        found = [
            r
            for r in shared.on(pushes)
            if r.key is not None and r.key.split(":")[0] in {m.website_key for m in merchants}
        ]
        return found if len(found) >= 6 else None

    originals = await poll_until(all_pushed, what="six pushes on cm.push.invoice")
    for merchant in (a, b):
        own = [r for r in originals if r.key and r.key.startswith(f"{merchant.website_key}:")]

        async def both(merchant: Merchant = merchant) -> list[Record] | None:
            found = merchant.on("invoice")
            return found if len(found) >= 2 else None

        copies = await poll_until(both, what="two copies")
        assert sorted((r.key, r.value, sorted(r.headers.items())) for r in copies) == sorted(
            (r.key, r.value, sorted(r.headers.items())) for r in own
        )
        assert {json.loads(r.value)["Invoice"]["WebsiteKey"] for r in copies} == {
            merchant.website_key
        }
    await assert_no_topics_of(c)


async def test_the_results_feed_holds_the_merchants_own_answers_only(
    cm: Platform, merchants: list[Merchant], shared: TopicWatcher
) -> None:
    a, b, _ = merchants
    enabled = await a.enable()
    assert_accepted(enabled)
    assert_accepted(await b.enable())
    await a.read_own_topics()
    accepted = await a.invoice("R-1")
    rejected = await a.invoice("R-2", due_date="2026-10-01")  # before the invoice date
    assert rejected["type"] == "CommandRejected"
    other = await b.invoice("R-1")

    ids = {answer["message_id"] for answer in (enabled, accepted, rejected)}

    async def all_three() -> list[Record] | None:
        found = [r for r in a.on("results") if r.json()["message_id"] in ids]
        return found if len(found) == 3 else None

    await poll_until(all_three, what="the merchant's three answers on its results topic")
    records = a.on("results")
    assert {r.json()["website_key"] for r in records} == {a.website_key}
    assert {r.key for r in records} == {a.website_key}
    assert other["message_id"] not in {r.json()["message_id"] for r in records}
    copied = {r.json()["message_id"]: r.json() for r in records}
    for answer in (enabled, accepted, rejected):
        assert copied[answer["message_id"]] == answer  # the same envelope

    # A dunning scheme makes the invoice service set a timer, which the scheduler
    # answers under the merchant's website key: the platform's answer, not copied.
    assert_accepted(await a.invoice("R-3", scheme_key="DefaultCM1"))
    results = cm.prefix + topics.COMMAND_RESULTS

    async def timer_answered() -> list[Record]:
        return [
            r
            for r in shared.on(results)
            if r.json()["website_key"] == a.website_key
            and r.json()["payload"]["command_type"] == "ScheduleTimer"
        ]

    await poll_until(timer_answered, what="the scheduler's answer on cm.command.results")
    later = await a.invoice("R-4")  # the same key on cm.command.results: handled after
    await a.wait("results", lambda r: r.json()["message_id"] == later["message_id"], "R-4")
    assert "ScheduleTimer" not in {r.json()["payload"]["command_type"] for r in a.on("results")}


async def test_subscription_and_case_events_reach_only_their_merchant(
    cm: Platform, merchants: list[Merchant], shared: TopicWatcher, a_and_b_feed: None
) -> None:
    a, b, c = merchants
    for merchant in merchants:
        mid = await merchant.inv.command(
            "CreateSubscription",
            subscription("S-1"),
            website_key=merchant.website_key,
            key=f"{merchant.website_key}:S-1",
        )
        assert_accepted(await merchant.inv.answer(mid))
        body = envelope(
            "CreateCase",
            manual_case("C-1"),
            website_key=merchant.website_key,
            occurred_at="2026-02-01T09:00:00+00:00",
        )
        await publish(
            cm.bootstrap,
            cm.prefix + topic_of("CreateCase", topics.COLLECTION_COMMANDS),
            [(f"{merchant.website_key}:C-1", json.dumps(body).encode())],
        )
        assert_accepted(await merchant.inv.answer(str(body["message_id"])))

    for feed, source in (
        ("subscription", topics.SUBSCRIPTION_EVENTS),
        ("collection", topics.COLLECTION_EVENTS),
    ):
        for merchant in (a, b):

            async def all_copied(
                merchant: Merchant = merchant, feed: str = feed, source: str = source
            ) -> tuple[list[Record], list[Record]] | None:
                originals = [
                    r
                    for r in shared.on(cm.prefix + source)
                    if r.json()["website_key"] == merchant.website_key
                ]
                copies = merchant.on(feed)
                ids = {r.json()["message_id"] for r in originals}
                if not originals or ids != {r.json()["message_id"] for r in copies}:
                    return None
                return originals, copies

            originals, copies = await poll_until(all_copied, what=f"{feed} copies")
            copied = {r.json()["message_id"]: r for r in copies}
            for original in originals:
                copy = copied[original.json()["message_id"]]
                assert copy.key == original.key
                assert copy.json() == original.json()
            assert {r.json()["website_key"] for r in copies} == {merchant.website_key}
    await assert_no_topics_of(c)


async def test_disabled_copies_stop_and_the_topics_stay(
    cm: Platform, merchants: list[Merchant], shared: TopicWatcher
) -> None:
    a, _, _ = merchants
    assert_accepted(await a.enable())
    await a.read_own_topics()
    assert_accepted(await a.invoice("D-1"))
    await a.wait("invoice", lambda r: r.key == f"{a.website_key}:D-1", "the first push")

    off = await a.disable()
    assert assert_accepted(off) == {"kafka_push": f"{a.website_key}:kafka-push"}
    # The answer to DisableKafkaPush is the last record copied to the results topic.
    await a.wait("results", lambda r: r.json()["message_id"] == off["message_id"], "its answer")
    assert_accepted(await a.invoice("D-2"))

    async def pushed() -> list[Record]:
        return [
            r for r in shared.on(cm.prefix + topics.PUSH_INVOICE) if r.key == f"{a.website_key}:D-2"
        ]

    await poll_until(pushed, what="the push of D-2 on cm.push.invoice")

    assert_accepted(await a.enable())
    assert_accepted(await a.invoice("D-3"))
    await a.wait("invoice", lambda r: r.key == f"{a.website_key}:D-3", "the push after")
    keys = [r.key for r in a.on("invoice")]
    assert f"{a.website_key}:D-2" not in keys
    assert a.topic("invoice") in await broker_topics(cm)


async def test_records_of_merchants_without_topics_are_left_out_before_parsing(
    cm: Platform, merchants: list[Merchant]
) -> None:
    """The feed consumers' prefilter: by the Kafka key, one query per batch; a merchant
    without topics of its own costs no parse and no inbox row; a key that names no
    website goes the normal way."""
    with_topics, without, _ = merchants
    assert_accepted(await with_topics.enable())
    records = [
        RawRecord("t", 0, 0, with_topics.website_key.encode(), b"{}"),
        RawRecord("t", 0, 1, f"{without.website_key}:S-1".encode(), b"{}"),
        RawRecord("t", 0, 2, f"{with_topics.website_key}:C-1".encode(), b"{}"),
        RawRecord("t", 0, 3, None, b"{}"),
        RawRecord("t", 0, 4, b"\xff\xfe:x", b"{}"),
    ]
    kept = await merchants_with_feeds(cm.services["notifier"].runtime.pool, records)
    assert [r.offset for r in kept] == [0, 2, 3, 4]

    # On the running notifier: once its results-feed consumer has committed past the
    # answer to the merchant without topics, that answer left no inbox row.
    answer = await without.invoice("P-1")
    assert answer["type"] == "CommandAccepted"
    results = cm.prefix + topics.COMMAND_RESULTS
    ends = await end_offsets(cm.bootstrap, results)
    group = cm.prefix + "cm.notifier.results-feed"
    await poll_until(
        lambda: committed_past(cm.bootstrap, group, ends), what="the results feed consumed"
    )
    rows = await cm.services["notifier"].runtime.pool.fetch(
        "SELECT 1 FROM inbox WHERE consumer = 'notifier.results-feed' AND website_key = $1",
        without.website_key,
    )
    assert rows == []


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer.topics()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def committed_past(bootstrap: str, group: str, ends: dict[TopicPartition, int]) -> bool:
    """Whether `group` has committed at least `ends` on every partition (read with the
    group's id, never joining it)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        for tp, end in ends.items():
            if end and ((await consumer.committed(tp)) or 0) < end:
                return False
        return True
    finally:
        await consumer.stop()
