"""The console service: the runtime's consumers fill the read models; a Starlette app
serves the pages, the JSON API, `/healthz` and `/metrics` on the same port.

The Starlette app's lifespan starts the runtime part (pool, migrations, consumers, the
outbox relay that publishes the commands the console sends) and stops it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import uvicorn
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette

from contracts import topics
from services.console import handlers
from services.runtime.app import Service, ServiceDefinition, build_service
from services.runtime.consumer import HandlerSpec, consumer_specs
from services.runtime.settings import Settings

NAME = "console"


class ConsoleSettings(BaseSettings):
    """The console's own environment variables (the runtime's are in `Settings`)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    console_cookie_secure: bool = Field(
        True, description="Mark cookies Secure (false only for plain-http local runs)."
    )
    console_session_hours: float = Field(12.0, description="How long a sign-in lasts.")
    console_sign_in_window_s: float = Field(
        900.0, description="The window in which failed sign-ins are counted."
    )
    console_sign_in_max_failures_per_user: int = Field(
        5, description="Failed sign-ins of one username in the window before it is refused."
    )
    console_sign_in_max_failures_per_address: int = Field(
        20, description="Failed sign-ins from one client address in the window."
    )
    console_result_wait_s: float = Field(
        2.0, description="How long the API's action call waits for the command's answer."
    )


def definition() -> ServiceDefinition:
    invoice_events = {"InvoiceEvent": HandlerSpec(handlers.invoice_event, answers=False)}
    results = {
        "CommandAccepted": HandlerSpec(handlers.command_result, answers=False),
        "CommandRejected": HandlerSpec(handlers.command_result, answers=False),
    }
    subscription_events = {
        "SubscriptionEvent": HandlerSpec(handlers.subscription_event, answers=False)
    }
    case_events = {"CaseEvent": HandlerSpec(handlers.case_event, answers=False)}
    notifier_events = {
        "WebhookDeliveryAttempted": HandlerSpec(handlers.webhook_delivery_attempted, answers=False)
    }
    return ServiceDefinition(
        name=NAME,
        migrations=Path(__file__).parent / "migrations",
        consumers=consumer_specs(
            {
                ("invoice-events", topics.INVOICE_EVENTS): invoice_events,
                ("command-results", topics.COMMAND_RESULTS): results,
                ("subscription-events", topics.SUBSCRIPTION_EVENTS): subscription_events,
                ("collection-events", topics.COLLECTION_EVENTS): case_events,
                ("notifier-events", topics.NOTIFIER_EVENTS): notifier_events,
            }
        ),
    )


def build_console(
    settings: Settings | None = None,
    console_settings: ConsoleSettings | None = None,
    *,
    schema: str | None = None,
) -> tuple[Starlette, Service]:
    """The web app and the runtime service it starts in its lifespan (`schema`: another
    schema than `console`, for tests)."""
    from services.console.web import create_web  # noqa: PLC0415

    service = build_service(replace(definition(), schema=schema), settings or Settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with service.app:
            yield

    return create_web(service, console_settings or ConsoleSettings(), lifespan), service


def run() -> None:
    settings = Settings()
    web, _ = build_console(settings)
    config = uvicorn.Config(
        web,
        host=settings.http_host,
        port=settings.port_for(NAME),
        log_level=logging.WARNING,
        proxy_headers=False,
    )
    asyncio.run(uvicorn.Server(config).serve())
