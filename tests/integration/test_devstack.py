"""The test infrastructure and the dev runner really work, and leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from devstack.state import REPO_ROOT, Entry, StateFile, create_time, is_same_process
from tests.support.net import free_ports

# --- the session fixtures ------------------------------------------------------------------


async def test_broker_roundtrip(kafka_bootstrap: str) -> None:
    topic = f"devstack-test-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b'{"hello": 1}', key=b"k1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert (record.key, record.value, record.offset) == (b"k1", b'{"hello": 1}', meta.offset)


async def test_postgres_select_one(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("select 1") == 1
        assert int(await conn.fetchval("show max_connections")) >= 100
    finally:
        await conn.close()


# --- the runner as a subprocess ------------------------------------------------------------


def _env(base: Path, **extra: str) -> dict[str, str]:
    """The runner's environment; `base` is `reachable_tmp_path` (its PostgreSQL lives there)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    env |= {"DEVSTACK_DIR": str(base / "devstack"), "NO_COLOR": "1", **extra}
    return env


class Runner:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devstack", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.state_path = Path(env["DEVSTACK_DIR"]) / "state.json"

    def wait_for(self, needle: str, timeout: float = 60) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if needle in line:
                return
        raise AssertionError(f"{needle!r} not seen; output:\n{''.join(self.lines)}")

    def recorded(self) -> list[Entry]:
        raw = json.loads(self.state_path.read_text())
        return [Entry(**p) for p in raw["processes"]]

    def finish(self, timeout: float = 30) -> int:
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines.append(out)
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def runners() -> Iterator[list[Runner]]:
    started: list[Runner] = []
    yield started
    for runner in started:  # a failed test must not leave a runner behind
        if runner.proc.poll() is None:
            runner.proc.send_signal(signal.SIGINT)
            try:
                runner.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                runner.kill()
        if runner.state_path.exists():
            StateFile(runner.state_path).reap()


def _alive(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if is_same_process(e.pid, e.create_time)]


def test_up_then_sigint_leaves_nothing(reachable_tmp_path: Path, runners: list[Runner]) -> None:
    runner = Runner(["up", "--kafka-port", "0", "--pg-port", "0"], _env(reachable_tmp_path))
    runners.append(runner)
    runner.wait_for("export DATABASE_URL=")
    entries = runner.recorded()
    assert {e.name for e in entries} == {"broker", "postgres"}
    assert len(_alive(entries)) == 2
    runner.proc.send_signal(signal.SIGINT)
    assert runner.finish() == 0, runner.output
    assert not _alive(entries)
    assert not runner.state_path.exists()
    pg_children = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(reachable_tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert not pg_children


def test_leftovers_of_a_killed_runner_are_stopped_by_the_next_start(
    reachable_tmp_path: Path, runners: list[Runner]
) -> None:
    # Without the parent-death signal, a SIGKILLed runner really leaves its children.
    env = _env(reachable_tmp_path, DEVSTACK_NO_PDEATHSIG="1")
    first = Runner(["up", "--kafka-port", "0", "--pg-port", "0"], env)
    runners.append(first)
    first.wait_for("export DATABASE_URL=")
    leftovers = first.recorded()
    first.kill()
    assert len(_alive(leftovers)) == 2, "the children should outlive a SIGKILLed runner"

    second = Runner(["up", "--kafka-port", "0", "--pg-port", "0"], env)
    runners.append(second)
    second.wait_for("export DATABASE_URL=")
    assert "stopped a leftover of a crashed earlier run: postgres" in second.output
    assert not _alive(leftovers)
    current = second.recorded()
    second.proc.send_signal(signal.SIGTERM)
    assert second.finish() == 0, second.output
    assert not _alive(current)


def test_children_die_with_a_killed_runner(reachable_tmp_path: Path, runners: list[Runner]) -> None:
    runner = Runner(["up", "--kafka-port", "0", "--pg-port", "0"], _env(reachable_tmp_path))
    runners.append(runner)
    runner.wait_for("export DATABASE_URL=")
    entries = runner.recorded()
    runner.kill()
    deadline = time.monotonic() + 15
    while _alive(entries) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(entries)


def _run_args(*extra: str) -> list[str]:
    return [
        "run",
        "--kafka-port",
        "0",
        "--pg-port",
        "0",
        "--service-cmd",
        "{python} -m devstack.standin {name}",
        "--http-port-base",
        str(free_ports(5)),
        *extra,
    ]


def test_run_supervises_services_and_stops_all(
    reachable_tmp_path: Path, runners: list[Runner]
) -> None:
    runner = Runner(
        _run_args("--health-timeout", "30"), _env(reachable_tmp_path, CM_CLOCK="manual")
    )
    runners.append(runner)
    runner.wait_for("services healthy")
    assert "[collection]" in runner.output
    assert "CM_CLOCK=manual" in runner.output
    assert "LOG_FORMAT=console" in runner.output
    entries = runner.recorded()
    assert {e.name for e in entries} == {
        "broker",
        "postgres",
        "invoice",
        "scheduler",
        "notifier",
        "subscription",
        "collection",
    }
    runner.proc.send_signal(signal.SIGINT)
    assert runner.finish() == 0, runner.output
    assert not _alive(entries)
    assert not runner.state_path.exists()


def test_run_fails_loudly_when_a_service_dies(
    reachable_tmp_path: Path, runners: list[Runner]
) -> None:
    env = _env(reachable_tmp_path, STANDIN_EXIT_AFTER="1.5")
    runner = Runner(_run_args("--services", "invoice,notifier"), env)
    runners.append(runner)
    runner.wait_for("services healthy")
    entries = runner.recorded()
    assert runner.finish() == 1, runner.output
    assert "FAILED: service" in runner.output
    assert not _alive(entries)


# --- the state file itself -----------------------------------------------------------------


def test_a_reused_pid_is_never_killed(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = create_time(bystander.pid)
        assert started is not None
        # A dead owner, and an entry whose pid now belongs to another process.
        gone = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        path = tmp_path / "state.json"
        path.write_text(
            json.dumps(
                {
                    "owner_pid": int(gone.stdout),
                    "owner_create_time": 1.0,
                    "info": {},
                    "processes": [
                        {
                            "name": "broker",
                            "pid": bystander.pid,
                            "create_time": started - 100.0,
                            "stop_signal": 9,
                            "stop_timeout": 1.0,
                        }
                    ],
                }
            )
        )
        assert StateFile(path).reap() == []
        assert bystander.poll() is None
        assert not path.exists()
    finally:
        bystander.kill()
        bystander.wait()
