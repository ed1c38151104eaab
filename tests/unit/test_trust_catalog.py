"""The catalog's trust rules: which topics outsiders may touch, which types only the
platform sends, and the topic table in docs/contracts.md being the catalog's."""

from __future__ import annotations

from pathlib import Path

from contracts import catalog, topic_table

ROOT = Path(__file__).resolve().parents[2]
OUTSIDERS = set(catalog.EXTERNAL_ACTORS) - {catalog.OPERATORS}


def test_the_types_the_platform_alone_sends_are_on_platform_only_topics() -> None:
    internal = catalog.platform_only_types()
    for name in (
        "StepDue",
        "RecordMessageOutcome",
        "SetCollectionStatus",
        "RegisterCollectedAmount",
        "SendMessage",
        "RetryWebhookDelivery",
        "ScheduleTimer",
        "CancelTimer",
        "Tick",
        "RunBilling",
        "RunMerchantBilling",
        "InvoiceEvent",
    ):
        assert name in internal, name
    merchant_types = {
        cls.TYPE for spec in catalog.TOPICS.values() for cls in spec.producers.get("merchants", ())
    }
    assert not merchant_types & internal


def test_no_outsider_writes_or_reads_a_platform_only_topic() -> None:
    for spec in catalog.TOPICS.values():
        actors = set(spec.producers) | set(spec.consumers)
        if spec.platform_only:
            assert not actors & OUTSIDERS, spec.name
        else:
            assert actors & OUTSIDERS, f"{spec.name} has no outside party: make it platform-only"


def test_merchants_read_no_shared_topic_only_their_own_feeds() -> None:
    assert not [s.name for s in catalog.TOPICS.values() if catalog.MERCHANTS in s.consumers]
    for feed, shared in catalog.MERCHANT_FEED_TOPICS.items():
        assert catalog.TOPICS[shared].platform_only, feed


def test_agencies_and_merchants_write_separate_topics() -> None:
    for spec in catalog.TOPICS.values():
        writers = set(spec.producers) & OUTSIDERS
        assert len(writers) <= 1, f"{spec.name}: {writers} share a topic"


def test_the_topic_table_in_the_docs_is_the_catalog() -> None:
    text = (ROOT / "docs" / "contracts.md").read_text()
    assert topic_table.rewrite(text) == text, "run `make docs`"
