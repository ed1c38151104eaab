"""The parent's side of the load generator process."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from bench.loadgen import main


class LoadGenerator:
    """Starts a load generator in a spawned process and reads its reports.

    `target(spec, conn)` is the child's entry point: `bench.loadgen.main` (the bench
    service's load) unless given; it must be importable (spawn pickles it by name) and
    speak the same pipe protocol ("ready", "produced", "done" or "error").
    """

    def __init__(self, spec: Any, target: Callable[[Any, Connection], None] = main) -> None:
        self.spec = spec
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe(duplex=False)
        self._child = child
        self._process = context.Process(
            target=target, args=(spec, child), daemon=True, name="bench-loadgen"
        )

    async def start(self) -> None:
        self._process.start()
        self._child.close()
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

    def stop(self) -> None:
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)
        self._conn.close()
