"""The Kafka ACL plan (contracts/acl.py, deploy/kafka/acl-plan.*): generated from the
catalog, committed as generated, and it keeps every trust boundary the catalog draws."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from contracts import acl, catalog
from contracts.topics import ALL_TOPICS, MERCHANT_FEEDS, merchant_topic
from services.runtime.app import build_service
from services.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PLAN_DIR = ROOT / acl.DEFAULT_DIR

EXTERNAL_USERS = (acl.USERS[catalog.PAYMENT_ENGINE], acl.USERS[catalog.AGENCY_ADAPTERS])
#: Website keys that look like parts of platform topic names, or like each other.
WEBSITE_KEYS = ("shop-1", "shop-10", "shop", "invoice", "results", "dlq", "cm", "a_b", "A-B", "x")
OPERATIONS = ("Read", "Write", "Describe", "Create", "Alter", "Delete")
PLATFORM_ONLY = sorted(name for name, spec in catalog.TOPICS.items() if spec.platform_only)


def principal(actor: str) -> acl.Principal:
    (found,) = [p for p in acl.principals() if p.actor == actor]
    return found


def external_principals() -> list[acl.Principal]:
    """Everyone outside the platform: partners and a merchant per tricky website key."""
    partners = [p for p in acl.principals() if p.user in EXTERNAL_USERS]
    return partners + [acl.merchant_principal(key) for key in WEBSITE_KEYS]


def actor_principal(actor: str) -> acl.Principal:
    if actor == catalog.MERCHANTS:
        return acl.merchant_principal("shop-1")
    return principal(actor)


# --- the committed plan ------------------------------------------------------------------


def test_the_committed_plan_is_what_the_catalog_generates() -> None:
    # `make docs` regenerates both; a catalog change without it fails here.
    assert (PLAN_DIR / acl.PLAN_JSON).read_text() == acl.render_json()
    assert (PLAN_DIR / acl.PLAN_SHELL).read_text() == acl.render_shell()


def test_the_plan_is_deterministic_json_naming_every_topic() -> None:
    assert acl.render_json() == acl.render_json()
    plan = json.loads(acl.render_json())
    assert [t["name"] for t in plan["topics"]] == sorted(ALL_TOPICS)
    assert {p["principal"] for p in plan["principals"]} == {
        f"User:{user}" for user in acl.USERS.values()
    }
    assert plan["merchant_template"]["principal"] == "User:merchant-{website_key}"


def test_every_platform_user_has_its_own_password_variable() -> None:
    variables = [p.password_env for p in acl.principals()]
    assert len(set(variables)) == len(variables)
    assert all(v.startswith("KAFKA_PASSWORD_") for v in variables)
    assert {p.user for p in acl.principals() if p.required} == {
        f"cm-{service}" for service in catalog.RUNTIME_SERVICES
    }


# --- trust boundaries --------------------------------------------------------------------


@pytest.mark.parametrize("topic", PLATFORM_ONLY)
def test_no_external_principal_reaches_a_platform_only_topic(topic: str) -> None:
    for outsider in external_principals():
        for operation in OPERATIONS:
            assert not outsider.may(operation, "topic", topic), (outsider.user, operation)


def test_external_principals_get_only_literal_catalog_topics_or_their_own_prefix() -> None:
    for outsider in external_principals():
        for grant in outsider.grants:
            if grant.pattern == "prefixed":
                assert grant.operation == "Read", grant
                assert grant.name.startswith(("cm.push.", "cm.payment-engine.", "cm.agency-"))
            else:
                assert grant.resource == "topic" and grant.name in catalog.TOPICS, grant


def test_no_external_principal_may_join_a_platform_consumer_group() -> None:
    groups = [f"cm.{service}.commands" for service in catalog.RUNTIME_SERVICES]
    groups += ["cm.console.invoice-events", "cm.operator.x"]
    for outsider in external_principals():
        for group in groups:
            assert not outsider.may("Read", "group", group), (outsider.user, group)


def test_the_merchant_template_reads_its_own_prefix_only() -> None:
    template = acl.merchant_template()
    reads = {(g.resource, g.pattern, g.name) for g in template.grants if g.operation == "Read"}
    assert reads == {
        ("topic", "prefixed", "cm.push.{website_key}."),
        ("group", "prefixed", "cm.push.{website_key}."),
    }
    shop = acl.merchant_principal("shop-1")
    for feed in MERCHANT_FEEDS:
        assert shop.may("Read", "topic", merchant_topic("shop-1", feed))
        for other in ("shop-10", "shop", "shop-1-b", "Shop-1"):
            assert not shop.may("Read", "topic", merchant_topic(other, feed)), other
            assert not shop.may("Describe", "topic", merchant_topic(other, feed)), other
    assert shop.may("Read", "group", "cm.push.shop-1.my-reader")
    assert not shop.may("Read", "group", "cm.push.shop-10.my-reader")
    for name in catalog.TOPICS:
        assert not shop.may("Read", "topic", name), name


def test_a_merchant_writes_exactly_the_external_topics_merchants_produce() -> None:
    expected = {
        name
        for name, spec in catalog.TOPICS.items()
        if catalog.MERCHANTS in spec.producers and not spec.platform_only
    }
    shop = acl.merchant_principal("shop-1")
    assert {g.name for g in shop.grants if g.operation == "Write"} == expected
    assert all(g.pattern == "literal" for g in shop.grants if g.operation == "Write")
    assert not any(g.operation in ("Create", "Alter", "Delete") for g in shop.grants)


@pytest.mark.parametrize("website_key", ["a.b", "", "x" * 65, "a b", "{website_key}", "ä"])
def test_a_website_key_unfit_for_topic_names_gets_no_principal(
    website_key: str,
) -> None:
    with pytest.raises(ValueError):
        acl.merchant_principal(website_key)


def test_merchants_never_read_a_shared_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = catalog.TOPICS[catalog.t.INVOICE_EVENTS]
    leaky = type(spec)(**{**spec.__dict__, "consumers": (*spec.consumers, catalog.MERCHANTS)})
    monkeypatch.setitem(catalog.TOPICS, spec.name, leaky)
    with pytest.raises(ValueError, match="merchants read only"):
        acl.merchant_template()


# --- every right the catalog names, and none it does not ---------------------------------


def test_every_catalog_producer_may_write_and_every_consumer_may_read() -> None:
    for name, spec in catalog.TOPICS.items():
        for actor in spec.producers:
            assert actor_principal(actor).may("Write", "topic", name), (actor, name)
        for actor in spec.consumers:
            reader = actor_principal(actor)
            assert reader.may("Read", "topic", name), (actor, name)
            assert any(g.resource == "group" and g.operation == "Read" for g in reader.grants)


def test_no_principal_writes_or_reads_a_catalog_topic_the_catalog_does_not_give_it() -> None:
    for p in [*acl.principals(), acl.merchant_principal("shop-1")]:
        for name, spec in catalog.TOPICS.items():
            if p.may("Write", "topic", name):
                assert p.actor in spec.producers, (p.user, name)
            if p.may("Read", "topic", name):
                assert p.actor in spec.consumers, (p.user, name)


def test_only_the_notifier_creates_topics_and_only_merchant_topics() -> None:
    for p in acl.principals():
        creates = [g for g in p.grants if g.operation in ("Create", "Alter", "Delete")]
        if p.actor == acl.MERCHANT_FEED_WRITER:
            assert {(g.pattern, g.name) for g in creates} == {("prefixed", "cm.push.")}
        else:
            assert creates == [], p.user
    notifier = principal(catalog.NOTIFIER)
    for feed in MERCHANT_FEEDS:
        topic = merchant_topic("shop-1", feed)
        for operation in ("Create", "Write", "Alter", "Describe"):
            assert notifier.may(operation, "topic", topic), (operation, topic)


def test_the_merchant_feed_writer_reads_or_writes_every_feed_source() -> None:
    writer = principal(acl.MERCHANT_FEED_WRITER)
    for source in MERCHANT_FEEDS.values():
        assert writer.may("Read", "topic", source) or writer.may("Write", "topic", source), source


@pytest.mark.parametrize("service", catalog.RUNTIME_SERVICES)
def test_each_service_sees_every_topic_so_it_creates_none(service: str) -> None:
    # ensure_topics (services/runtime/app.py) creates what it cannot see.
    for name in ALL_TOPICS:
        assert principal(service).may("Describe", "topic", name), name


@pytest.mark.parametrize("service", catalog.RUNTIME_SERVICES)
def test_each_service_may_use_the_consumer_groups_it_really_joins(service: str) -> None:
    definition = importlib.import_module(f"services.{service}.app").definition()
    built = build_service(definition, Settings())
    subscribers = list(built.broker.subscribers)
    assert subscribers
    for subscriber in subscribers:
        group = subscriber.group_id
        assert group is not None
        assert principal(service).may("Read", "group", group), group
        for topic in subscriber.topics:
            name = getattr(topic, "name", topic)
            assert principal(service).may("Read", "topic", name), name


def test_the_console_writes_only_the_commands_it_sends_and_dead_letters() -> None:
    from services.console import web  # noqa: PLC0415

    console = principal(catalog.CONSOLE)
    writes = {g.name for g in console.grants if g.operation == "Write"}
    assert writes == {
        catalog.t.INVOICE_COMMANDS,
        catalog.t.NOTIFIER_COMMANDS,
        catalog.t.SUBSCRIPTION_COMMANDS,
        catalog.t.COLLECTION_COMMANDS,
        catalog.t.DLQ,  # the runtime dead-letters what its consumers cannot parse
    }
    assert all(g.pattern == "literal" for g in console.grants if g.resource == "topic")
    sent = {
        *(a.command for a in web.ACTIONS.values()),
        *(a.command for a in web.CASE_ACTIONS.values()),
        *web.SENT_COMMANDS,
    }
    for command in sent:
        topic = catalog.topic_for_type(command.TYPE)
        assert command in catalog.TOPICS[topic].producers[catalog.CONSOLE], command.TYPE
        assert console.may("Write", "topic", topic), topic
    # It reads no command topic and no platform-internal one.
    reads = {g.name for g in console.grants if g.resource == "topic" and g.operation == "Read"}
    assert reads == {
        catalog.t.INVOICE_EVENTS,
        catalog.t.SUBSCRIPTION_EVENTS,
        catalog.t.COLLECTION_EVENTS,
        catalog.t.NOTIFIER_EVENTS,
        catalog.t.COMMAND_RESULTS,
    }


def test_the_agency_sim_fits_the_agency_adapters_principal() -> None:
    from services.collection.agency_sim import GROUP  # noqa: PLC0415

    adapter = principal(catalog.AGENCY_ADAPTERS)
    assert adapter.may("Read", "group", GROUP)
    assert adapter.may("Read", "topic", catalog.t.AGENCY_REQUESTS)
    assert adapter.may("Write", "topic", catalog.t.AGENCY_ANSWERS)
