"""The merchant feeds' pure parts (services/notifier/feeds.py): which website keys may have
topics of their own, the topic names, which records are copied, and the copying
consumers' wiring against the catalog."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts import catalog, topics
from contracts.envelope import Envelope, new_envelope
from contracts.results import CommandAccepted, CommandRejected, ResultError
from contracts.topics import MERCHANT_FEEDS, TopicNames, merchant_prefix
from services.notifier.app import definition
from services.notifier.feeds import _copies, feed_consumers, feed_topics, topic_safety_errors

NOW = datetime(2026, 11, 1, 9, tzinfo=UTC)


@pytest.mark.parametrize("website_key", ["shop-1", "SHOP_1", "a", "x" * 64])
def test_a_website_key_without_a_dot_may_have_topics(website_key: str) -> None:
    assert topic_safety_errors(website_key, TopicNames("")) == []


@pytest.mark.parametrize("website_key", ["a.b", ".", "shop.", ".shop", "a..b"])
def test_a_website_key_with_a_dot_is_refused_on_its_field(website_key: str) -> None:
    [error] = topic_safety_errors(website_key, TopicNames(""))
    assert (error.field, error.code) == ("website_key", "website_key_not_topic_safe")


def test_why_a_dot_is_refused_one_merchants_prefix_would_cover_anothers_topics() -> None:
    assert merchant_prefix("a") == "cm.push.a."
    assert all(
        name.startswith(merchant_prefix("a"))
        for name in feed_topics("a.b", TopicNames("")).values()
    )
    assert not any(
        name.startswith(merchant_prefix("a"))
        for name in feed_topics("a-b", TopicNames("")).values()
    )


def test_a_topic_name_kafka_would_refuse_for_its_length_is_refused() -> None:
    [error] = topic_safety_errors("x" * 64, TopicNames("p" * 180))
    assert error.code == "topic_name_too_long"


def test_the_merchants_topics_carry_the_environment_prefix() -> None:
    assert feed_topics("shop-1", TopicNames("dev.")) == {
        "invoice": "dev.cm.push.shop-1.invoice",
        "results": "dev.cm.push.shop-1.results",
        "subscription": "dev.cm.push.shop-1.subscription",
        "collection": "dev.cm.push.shop-1.collection",
    }


def _answer(command_type: str) -> Envelope[Any]:
    return new_envelope(
        CommandAccepted(command_type=command_type, command_id=uuid.uuid4()),
        website_key="shop-1",
        occurred_at=NOW,
    )


def test_copied_while_enabled_and_only_the_kafka_push_answers_after() -> None:
    invoice_answer = _answer("CreateInvoice")
    disable_answer = _answer("DisableKafkaPush")
    assert _copies(invoice_answer, True)
    assert not _copies(invoice_answer, False)
    assert not _copies(invoice_answer, None)
    assert _copies(disable_answer, False)
    assert not _copies(disable_answer, None)  # never enabled: no topics
    rejected = new_envelope(
        CommandRejected(command_type="EnableKafkaPush", command_id=uuid.uuid4(), errors=[]),
        website_key="shop-1",
        occurred_at=NOW,
    )
    assert _copies(rejected, False)


def test_answers_to_the_platforms_own_commands_are_not_the_merchants() -> None:
    timer = _answer("ScheduleTimer")  # the scheduler answering the invoice service
    assert not _copies(timer, True)
    refused = new_envelope(
        CommandRejected(
            command_type="StepDue",  # a merchant trying to pass for the platform
            command_id=uuid.uuid4(),
            errors=[ResultError(field="type", code="not_allowed_here", message="no")],
        ),
        website_key="shop-1",
        occurred_at=NOW,
    )
    assert _copies(refused, True)
    assert _copies(_answer("Unknown"), True)  # an unknown type the merchant sent


def test_one_copying_consumer_per_shared_topic_the_notifier_does_not_write() -> None:
    specs = {spec.topic: spec for spec in feed_consumers(catalog.types_for_topic)}
    assert set(specs) == set(MERCHANT_FEEDS.values()) - {topics.PUSH_INVOICE}
    for spec in specs.values():
        assert set(spec.handlers) == catalog.types_for_topic(spec.topic)
        assert not any(handler.answers for handler in spec.handlers.values())
        assert spec.batch_hooks is not None


def test_the_notifier_answers_the_kafka_push_commands() -> None:
    [commands] = [c for c in definition().consumers if c.topic == topics.NOTIFIER_COMMANDS]
    assert commands.handlers["EnableKafkaPush"].answers
    assert commands.handlers["DisableKafkaPush"].answers
    names = [c.name for c in definition().consumers]
    assert len(names) == len(set(names))  # one inbox and one group per consumer
