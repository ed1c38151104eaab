"""The parent's side of the load generator process."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from bench.loadgen import main


class ChildProcess:
    """A spawned child process, `target(spec, conn)`, that reports on a one-way pipe.
    `target` must be importable (spawn pickles it by name)."""

    def __init__(self, target: Callable[[Any, Connection], None], spec: Any, name: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, self._child = context.Pipe(duplex=False)
        self.process = context.Process(
            target=target, args=(spec, self._child), daemon=True, name=name
        )

    def launch(self) -> None:
        self.process.start()
        self._child.close()  # the child's end: only the child writes to it

    def stop(self) -> None:
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self._conn.close()


class LoadGenerator(ChildProcess):
    """Starts a load generator in a spawned process and reads its reports.

    `target(spec, conn)` is the child's entry point: `bench.loadgen.main` (the bench
    service's load) unless given; it must speak the same pipe protocol ("ready",
    "produced", "done" or "error").
    """

    def __init__(self, spec: Any, target: Callable[[Any, Connection], None] = main) -> None:
        super().__init__(target, spec, "bench-loadgen")
        self.spec = spec

    async def start(self) -> None:
        self.launch()
        await self.expect("ready", 60.0)

    async def expect(self, kind: str, timeout: float) -> tuple[Any, ...]:
        def receive() -> tuple[Any, ...]:
            if not self._conn.poll(timeout):
                raise TimeoutError(f"the load generator sent no {kind!r} within {timeout} s")
            message: tuple[Any, ...] = self._conn.recv()
            return message

        message = await asyncio.to_thread(receive)
        if message[0] == "error":
            raise RuntimeError(f"the load generator failed:\n{message[1]}")
        if message[0] != kind:
            raise RuntimeError(f"expected {kind!r} from the load generator, got {message[0]!r}")
        return message


class SystemUnderTest(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class Load:
    """What a load generator reported: wall times and its "done" results."""

    first_send: float
    last_ack: float
    done: dict[str, Any]
    started: float = 0.0  # pre-produced runs: when the system under test was started

    @property
    def produce_seconds(self) -> float:
        """First message sent → last one acknowledged."""
        return self.last_ack - self.first_send

    def send_rate(self, n: int) -> float:
        """The rate the `n` messages were sent at, per second."""
        return round(n / self.produce_seconds, 1)


async def run_load(
    spec: Any, target: Callable[[Any, Connection], None] = main, produced_timeout: float = 300.0
) -> Load:
    """Run a generator against a system that is already running, until it is done."""
    generator = LoadGenerator(spec, target)
    try:
        await generator.start()
        _, first_send, last_ack = await generator.expect("produced", produced_timeout)
        _, done = await generator.expect("done", spec.timeout_s + 30)
    finally:
        generator.stop()
    return Load(first_send, last_ack, done)


async def run_backlog(
    spec: Any,
    system: SystemUnderTest,
    log: Callable[[str], None],
    label: str,
    *,
    target: Callable[[Any, Connection], None] = main,
    produced_timeout: float = 300.0,
    what: str = "commands",
) -> Load:
    """Pre-produce the generator's `spec.n` messages, then start `system` (stopped when
    the generator is done): the system drains a backlog."""
    generator = LoadGenerator(spec, target)
    try:
        await generator.start()
        _, first_send, last_ack = await generator.expect("produced", produced_timeout)
        log(f"{label}: {spec.n} {what} pre-produced in {last_ack - first_send:.2f} s; starting")
        started = time.time()
        await system.start()
        try:
            _, done = await generator.expect("done", spec.timeout_s + 30)
        finally:
            await system.stop()
    finally:
        generator.stop()
    return Load(first_send, last_ack, done, started)
