"""A service under test, run in the benchmark's own process on a schema and topic prefix
of its own, with a probe noting when its first message reached a handler."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from cryptography.fernet import Fernet

from bench.cost import CostMeter
from bench.infra import Count, drop_run
from bench.registry import BenchContext
from services.runtime.app import Service, ServiceDefinition, build_service
from services.runtime.consumer import HandlerContext, HandlerSpec
from services.runtime.settings import Settings


class Probe:
    """When the first message reached a handler (the start of the processing window)."""

    first_handled: float | None = None

    @classmethod
    def reset(cls) -> None:
        cls.first_handled = None

    @classmethod
    def mark(cls) -> None:
        if cls.first_handled is None:
            cls.first_handled = time.time()


def probed(service_definition: ServiceDefinition, message_type: str) -> ServiceDefinition:
    """The definition with `message_type`'s handler wrapped to `Probe.mark()` first."""
    consumers = []
    for spec in service_definition.consumers:
        original = spec.handlers.get(message_type)
        if original is None:
            consumers.append(spec)
            continue
        inner = original.handle

        async def handle(ctx: HandlerContext, message: Any, inner: Any = inner) -> Any:
            Probe.mark()
            return await inner(ctx, message)

        handlers = {**spec.handlers, message_type: HandlerSpec(handle, original.answers)}
        consumers.append(replace(spec, handlers=handlers))
    return replace(service_definition, consumers=consumers)


class InProcessService:
    """`build_service(definition, settings)` on schema `bench_<prefix>` and `prefix`.

    `probe`: the message type whose handler is wrapped to mark `Probe`; None when the
    definition's handler marks it itself (the bench service)."""

    def __init__(
        self,
        ctx: BenchContext,
        prefix: str,
        service_definition: ServiceDefinition,
        *,
        max_records: int,
        probe: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.prefix = prefix
        self.schema = schema_of(prefix)
        self.definition = service_definition
        self.max_records = max_records
        self.probe = probe
        self._service: Service | None = None
        #: CPU and peak RSS of the bench process from the service's start (after its
        #: startup) to its stop: the service's cost (bench/cost.py).
        self.meter = CostMeter()

    async def start(self) -> None:
        Probe.reset()
        settings = Settings(
            kafka_bootstrap_servers=self.ctx.bootstrap_servers,
            database_url=self.ctx.database_url,
            cm_topic_prefix=self.prefix,
            kafka_session_timeout_ms=2000,
            kafka_heartbeat_interval_ms=500,
            kafka_max_records=self.max_records,
            log_level="WARNING",
            # The notifier's: a key for this run's webhook secrets, and the benchmark's
            # endpoint on loopback allowed (docs/notifier.md, "Webhook targets").
            cm_secret_key=Fernet.generate_key().decode(),
            webhook_allow_private_networks=True,
        )
        service_definition = self.definition
        if self.probe is not None:
            service_definition = probed(service_definition, self.probe)
        self._service = build_service(replace(service_definition, schema=self.schema), settings)
        await self._service.app.__aenter__()
        self.meter = CostMeter()
        self.meter.add(self.cost_name)

    @property
    def cost_name(self) -> str:
        """The service's name in the cost figures (it runs in the bench process)."""
        return f"{self.definition.name} (in-process)"

    def cost(self, messages: int) -> dict[str, Any]:
        """CPU per message and peak RSS of the last start → stop (bench/cost.py)."""
        return self.meter.figures(messages)

    @property
    def first_handled(self) -> float | None:
        return Probe.first_handled

    @property
    def service(self) -> Service:
        assert self._service is not None
        return self._service

    async def stop(self) -> None:
        if self._service is not None:
            await self.meter.stop()
            await self._service.app.__aexit__(None, None, None)
            self._service = None

    async def cleanup(self, counts: Mapping[str, Count]) -> dict[str, Any]:
        """Count what the run left in the database, then drop the schema and the topics."""
        return await drop_run(self.ctx, self.schema, counts, prefix=self.prefix)


def schema_of(prefix: str) -> str:
    """The PostgreSQL schema of a run's topic prefix."""
    return "bench_" + prefix.strip(".")
