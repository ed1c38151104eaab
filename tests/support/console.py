"""The console in-process (web app on a free port, its runtime on the platform's topic
prefix, a schema of its own per test) next to the invoice service."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import uvicorn

from services.console.accounts import add_user
from services.console.app import ConsoleSettings, build_console
from services.runtime.app import Service
from tests.support.kafka import poll_until
from tests.support.net import free_port
from tests.support.platform import Platform, platform
from tests.support.services import make_settings

PASSWORD = "correct horse battery staple"


@dataclass
class ConsoleStack:
    cm: Platform
    service: Service
    url: str
    schema: str
    database_url: str

    @property
    def pool(self) -> asyncpg.Pool:
        return self.service.runtime.pool

    async def user(self, website_key: str, culture: str = "nl-NL") -> str:
        """A console account of `website_key`; returns its username (password PASSWORD)."""
        username = f"{website_key}-{uuid.uuid4().hex[:6]}@example.test"
        assert await add_user(
            self.database_url,
            username,
            website_key,
            PASSWORD,
            culture=culture,
            time_zone="Europe/Amsterdam",
            schema=self.schema,
        )
        return username

    @contextlib.asynccontextmanager
    async def signed_in(self, username: str) -> AsyncIterator[httpx.AsyncClient]:
        """An HTTP client with a session of `username` (and its CSRF token in
        `client.headers`, as the API wants it)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            await self._sign_in(client, username)
            yield client

    async def _sign_in(self, client: httpx.AsyncClient, username: str) -> None:
        page = await client.get("/login")
        token = page.cookies.get("cm_console_login") or client.cookies.get("cm_console_login")
        answer = await client.post(
            "/login",
            data={"username": username, "password": PASSWORD, "csrf_token": token, "next": "/"},
        )
        assert answer.status_code == 303, answer.text
        async with self.pool.acquire() as conn:
            csrf = await conn.fetchval(
                f'SELECT csrf_token FROM "{self.schema}".sessions WHERE username = $1'
                " ORDER BY created_at DESC LIMIT 1",
                username,
            )
        client.headers["x-csrf-token"] = csrf

    async def row(self, website_key: str, number: str) -> dict[str, Any] | None:
        async with self.pool.acquire() as conn:
            found = await conn.fetchrow(
                f'SELECT * FROM "{self.schema}".invoices'
                " WHERE website_key = $1 AND invoice_number = $2",
                website_key,
                number,
            )
        return dict(found) if found else None

    async def row_when(self, website_key: str, number: str, **expected: Any) -> dict[str, Any]:
        """The invoice's read-model row once its columns have the `expected` values."""

        async def check() -> dict[str, Any] | None:
            row = await self.row(website_key, number)
            if row and all(row[k] == v for k, v in expected.items()):
                return row
            return None

        return await poll_until(check, what=f"console row of {number} with {expected}")


@contextlib.asynccontextmanager
async def console_stack(
    kafka_bootstrap: str, database_url: str, *services: str
) -> AsyncIterator[ConsoleStack]:
    async with platform(kafka_bootstrap, database_url, "invoice", *services) as cm:
        schema = f"console_{cm.prefix.strip('.')}"
        web, service = build_console(
            make_settings(kafka_bootstrap, database_url, cm.prefix),
            ConsoleSettings(console_cookie_secure=False, console_result_wait_s=5.0),
            schema=schema,
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(web, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        # The test runner keeps its own Ctrl-C handling.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        task = asyncio.create_task(server.serve())

        async def started() -> bool:
            if task.done():
                task.result()  # raises what stopped it
            return server.started

        await poll_until(started, what="the console's web server")
        try:
            yield ConsoleStack(cm, service, f"http://127.0.0.1:{port}", schema, database_url)
        finally:
            server.should_exit = True
            await task
