"""Every service consumes exactly the topics the catalog says, and every type on them."""

from __future__ import annotations

import importlib

import pytest

from contracts import catalog
from contracts.envelope import payload_class
from services.runtime.app import ServiceDefinition


def definition_of(service: str) -> ServiceDefinition:
    module = importlib.import_module(f"services.{service}.app")
    result: ServiceDefinition = module.definition()
    return result


@pytest.mark.parametrize("service", catalog.SERVICES)
def test_service_consumes_the_topics_the_catalog_names(service: str) -> None:
    consumed = {spec.topic for spec in definition_of(service).consumers}
    expected = {name for name, spec in catalog.TOPICS.items() if service in spec.consumers}
    assert consumed == expected


@pytest.mark.parametrize("service", catalog.SERVICES)
def test_service_handles_every_type_on_its_topics(service: str) -> None:
    for spec in definition_of(service).consumers:
        handled = set(spec.handlers) | set(spec.ignored_types)
        assert handled == catalog.types_for_topic(spec.topic), spec.topic
        assert all(payload_class(name) is not None for name in handled)
