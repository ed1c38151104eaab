"""The parent's side of the load generator process."""

from __future__ import annotations

import asyncio
import multiprocessing
from typing import Any

from bench.loadgen import LoadSpec, main


class LoadGenerator:
    """Starts `bench.loadgen` in a spawned process and reads its reports."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe(duplex=False)
        self._child = child
        self._process = context.Process(
            target=main, args=(spec, child), daemon=True, name="bench-loadgen"
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
