"""Every service starts as its own process, migrates, consumes its topics and reports health."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts import catalog, topics
from tests.support.kafka import envelope, poll_until, publish, read_all
from tests.support.net import free_port
from tests.support.services import SERVICE_ENV

ROOT = Path(__file__).resolve().parents[2]

#: A command each service owns, sent with an empty payload: it cannot parse.
OWN_COMMAND = {
    "invoice": (topics.INVOICE_COMMANDS, "CreateInvoice"),
    "scheduler": (topics.SCHEDULER_COMMANDS, "ScheduleTimer"),
    "notifier": (topics.NOTIFIER_COMMANDS, "RegisterWebhook"),
    "subscription": (topics.SUBSCRIPTION_COMMANDS, "CreateSubscription"),
    "collection": (topics.COLLECTION_COMMANDS, "CreateCase"),
}


@pytest.fixture
def platform(kafka_bootstrap: str, database_url: str) -> Iterator[tuple[str, dict[str, int]]]:
    prefix = f"s{uuid.uuid4().hex[:8]}."
    ports = {name: free_port() for name in catalog.SERVICES}
    procs = []
    for name in catalog.SERVICES:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "DATABASE_URL": database_url,
            "CM_TOPIC_PREFIX": prefix,
            "HTTP_PORT": str(ports[name]),
            "KAFKA_SESSION_TIMEOUT_MS": "2000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "LOG_LEVEL": "WARNING",
            **SERVICE_ENV,  # the notifier's CM_SECRET_KEY
        }
        procs.append(
            subprocess.Popen([sys.executable, "-m", f"services.{name}"], cwd=ROOT, env=env)
        )
    try:
        yield prefix, ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is a clean stop.
                assert proc.wait(15) in (0, -15), "a service did not stop cleanly on SIGTERM"
            except subprocess.TimeoutExpired:
                proc.kill()
                raise


async def test_all_five_services_start_migrate_consume_and_report_health(
    platform: tuple[str, dict[str, int]], kafka_bootstrap: str, database_url: str
) -> None:
    prefix, ports = platform

    async def all_healthy() -> bool:
        async with httpx.AsyncClient() as client:
            for port in ports.values():
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code != 200:
                        return False
                except httpx.TransportError:
                    return False
        return True

    await poll_until(all_healthy, timeout=60, interval=0.2, what="five healthy services")

    bodies = {name: envelope(type_, {}) for name, (_, type_) in OWN_COMMAND.items()}
    for name, (topic, _) in OWN_COMMAND.items():
        await publish(
            kafka_bootstrap, prefix + topic, [("shop-1", json.dumps(bodies[name]).encode())]
        )
    # An unparseable invoice event reaches the three services that read invoice events
    # (it names status 90, or the subscription service's prefilter would leave it out
    # unread as no rejected invoice: services/subscription/app.py).
    await publish(
        kafka_bootstrap, prefix + topics.INVOICE_EVENTS, [("shop-1:x", b'{"status_code": 90}')]
    )

    async def letters() -> list[dict[str, str]] | None:
        found = [r.json()["payload"] for r in await read_all(kafka_bootstrap, prefix + topics.DLQ)]
        return found if len(found) >= 8 else None

    dead = await poll_until(letters, timeout=30, what="dead letters from every service")
    by_service: dict[str, set[str]] = {}
    for letter in dead:
        by_service.setdefault(letter["service"], set()).add(letter["topic"])
    assert by_service == {
        "invoice": {prefix + topics.INVOICE_COMMANDS},
        "scheduler": {prefix + topics.SCHEDULER_COMMANDS},
        "notifier": {prefix + topics.NOTIFIER_COMMANDS, prefix + topics.INVOICE_EVENTS},
        "subscription": {prefix + topics.SUBSCRIPTION_COMMANDS, prefix + topics.INVOICE_EVENTS},
        "collection": {prefix + topics.COLLECTION_COMMANDS, prefix + topics.INVOICE_EVENTS},
    }

    async def answers() -> list[dict[str, object]] | None:
        found = [r.json() for r in await read_all(kafka_bootstrap, prefix + topics.COMMAND_RESULTS)]
        return found if len(found) >= 5 else None

    rejected = await poll_until(answers, timeout=30, what="a rejection per command")
    assert {a["payload"]["command_id"] for a in rejected} == {
        b["message_id"] for b in bodies.values()
    }  # type: ignore[index]
    assert {a["type"] for a in rejected} == {"CommandRejected"}

    conn = await asyncpg.connect(database_url)
    try:
        for name in catalog.SERVICES:
            versions = await conn.fetch(f'SELECT version FROM "{name}".schema_migrations')
            assert "runtime:001_outbox_inbox" in {v["version"] for v in versions}
    finally:
        await conn.close()

    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{ports['invoice']}/metrics")).text
    assert 'cm_messages_handled_total{consumer="commands",outcome="dead_letter"' in metrics


async def test_every_service_process_samples_its_lag_and_backlog(
    platform: tuple[str, dict[str, int]],
) -> None:
    """The gauges a platform team alerts on come from each running process, for the
    consumer groups it runs, from its first sample on (taken at start)."""
    prefix, ports = platform

    def samples(text: str) -> dict[str, list[dict[str, str]]]:
        found: dict[str, list[dict[str, str]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found.setdefault(sample.name, []).append(sample.labels)
        return found

    async def sampled(name: str) -> dict[str, list[dict[str, str]]] | None:
        async with httpx.AsyncClient() as client:
            try:
                text = (await client.get(f"http://127.0.0.1:{ports[name]}/metrics")).text
            except httpx.TransportError:
                return None
        found = samples(text)
        lag_groups = {labels["group"] for labels in found.get("cm_consumer_lag", [])}
        ready = "cm_metrics_last_sample_timestamp_seconds" in found and any(
            group.startswith(f"{prefix}cm.{name}.") for group in lag_groups
        )
        return found if ready else None

    for name in catalog.SERVICES:
        found = await poll_until(
            lambda name=name: sampled(name), timeout=60, interval=0.2, what=f"{name}'s sample"
        )
        assert {"service": name} in found["cm_outbox_pending_rows"]
        assert {"service": name} in found["cm_outbox_parked_rows"]
        groups = {labels["group"] for labels in found["cm_consumer_lag"]}
        assert all(group.startswith(f"{prefix}cm.{name}.") for group in groups), groups
        if name == "scheduler":
            assert "cm_scheduler_timers_due" in found
        if name == "invoice":
            assert "cm_invoice_early_transactions" in found
