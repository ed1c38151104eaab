"""The console's pages and JSON API (Starlette + Jinja2, htmx and Chart.js as static files).

Every handler that shows or changes data starts from the signed-in user's website key:
an invoice key of another merchant finds nothing and answers 404, like a key that does
not exist. Writes (forms and API) carry the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_percent
from prometheus_client import make_asgi_app
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from contracts.catalog import key_for, topic_for_type
from contracts.collection import CloseCase, MarkAsPrepared, ReviewCase
from contracts.envelope import Command, field_errors, new_envelope
from contracts.invoice import (
    CreateCreditNote,
    InvoiceStatus,
    PauseInvoice,
    RegisterDispute,
    ResolveDispute,
    TriggerNextStep,
    UnpauseInvoice,
    UpsertScheme,
    WriteOffInvoice,
)
from contracts.notifier import RegisterWebhook, UpsertTemplate
from contracts.subscription import StopSubscription, SubscriptionStatus
from services.console import auth, messages, reports, repository, schemes
from services.console.app import ConsoleSettings
from services.console.interest import ARTICLES, invoice_interest
from services.console.repository import InvoiceFilter, PageKey, User
from services.invoice.domain.status import TRANSITIONS
from services.runtime.app import Runtime, Service
from services.runtime.logs import get_logger
from services.runtime.outbox import OutboxMessage

log = get_logger(__name__)

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


# --- the merchant's culture (Babel) ---------------------------------------------------------


def _locale(culture: str) -> Locale:
    try:
        return Locale.parse(culture, sep="-")
    except (UnknownLocaleError, ValueError):
        return Locale.parse("en_GB")


def fmt_money(amount: Decimal | str | None, currency: str, culture: str) -> str:
    if amount is None:
        return ""
    return format_currency(Decimal(amount), currency, locale=_locale(culture))


def fmt_date(day: date | str | None, culture: str) -> str:
    if day is None:
        return ""
    if isinstance(day, str):
        day = date.fromisoformat(day)
    return format_date(day, "medium", locale=_locale(culture))


def fmt_datetime(moment: datetime | str | None, culture: str, time_zone: str) -> str:
    if moment is None:
        return ""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return format_datetime(moment, "medium", tzinfo=ZoneInfo(time_zone), locale=_locale(culture))


def fmt_percent(percent: Decimal, culture: str) -> str:
    """A yearly rate given in percent (`10.5`), in the culture (`10.5%`, `10,5%`)."""
    return format_percent(percent / 100, "#,##0.###%", locale=_locale(culture))


def status_name(code: int) -> str:
    try:
        name = InvoiceStatus(code).display_name
    except ValueError:
        return str(code)
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).capitalize()


def event_name(name: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).capitalize()


templates.env.globals["status_name"] = status_name
templates.env.globals["event_name"] = event_name
templates.env.globals["STATUSES"] = [(s.value, status_name(s.value)) for s in InvoiceStatus]
templates.env.globals["BUCKETS"] = reports.BUCKETS
templates.env.globals["INTEREST_ARTICLES"] = ARTICLES


# --- actions: the commands a page may send --------------------------------------------------


@dataclass(frozen=True)
class Action:
    name: str
    label: str
    command: type[Command]
    test_only: bool = False
    has_reason: bool = True

    @property
    def statuses(self) -> frozenset[int] | None:
        """The statuses the invoice service moves on from with this command (its own
        table, services/invoice/domain/status.py); None: not a status command."""
        moves = TRANSITIONS.get(self.command.TYPE)
        return frozenset(int(s) for s in moves) if moves is not None else None


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action("pause", "Pause", PauseInvoice),
        Action("unpause", "Unpause", UnpauseInvoice),
        Action("dispute", "Register a dispute", RegisterDispute),
        Action("resolve-dispute", "Resolve the dispute", ResolveDispute),
        Action("write-off", "Write off", WriteOffInvoice),
        Action(
            "trigger-next-step",
            "Trigger the next step",
            TriggerNextStep,
            test_only=True,
            has_reason=False,
        ),
    )
}


def actions_for(invoice: dict[str, Any]) -> list[Action]:
    """The actions the page offers (the service has the last word: a refused command
    comes back as CommandRejected)."""
    return [
        a
        for a in ACTIONS.values()
        if (a.statuses is None or invoice["status_code"] in a.statuses)
        and (not a.test_only or invoice["is_test"])
    ]


@dataclass(frozen=True)
class CaseAction:
    """A form on a case's page: its command, the form fields it reads, fixed values,
    and the case states it is offered in (the collection service decides)."""

    name: str
    label: str
    command: type[Command]
    states: frozenset[str]
    fields: tuple[str, ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()


CASE_ACTIONS: dict[str, CaseAction] = {
    a.name: a
    for a in (
        CaseAction("prepare", "Mark as prepared", MarkAsPrepared, frozenset({"preparing"})),
        CaseAction(
            "approve",
            "Approve and transfer",
            ReviewCase,
            frozenset({"reviewing"}),
            ("reason", "agency_code"),
            (("approve", True),),
        ),
        CaseAction(
            "reject",
            "Reject",
            ReviewCase,
            frozenset({"reviewing"}),
            ("reason",),
            (("approve", False),),
        ),
        CaseAction(
            "close",
            "Close the case",
            CloseCase,
            frozenset({"preparing", "reviewing", "processing", "failed"}),
            ("reason",),
        ),
    )
}

#: The other commands the console sends (forms of their own). With ACTIONS and CASE_ACTIONS
#: these are what contracts.catalog lets the console write (tests/unit/test_acl_plan.py).
SENT_COMMANDS: tuple[type[Command], ...] = (
    CreateCreditNote,
    UpsertScheme,
    UpsertTemplate,
    RegisterWebhook,
    StopSubscription,
)


def case_actions_for(case: dict[str, Any]) -> list[CaseAction]:
    return [a for a in CASE_ACTIONS.values() if case["state"] in a.states]


# --- reports ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """A report served three ways: `/reports/<name>` renders `template` with the loaded
    data as `context`, `/reports/<name>.csv` downloads `csv(data)` as `filename(data)`,
    `/api/reports/<name>` answers `json(data)`. The rules are reports.py's."""

    template: str
    context: str
    load: Callable[[Request, User], Awaitable[Any]]
    csv: Callable[[Any], str]
    json: Callable[[Any], dict[str, Any]]
    filename: Callable[[Any], str]


# --- security headers ---------------------------------------------------------------------

_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
        b" object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
                if not scope["path"].startswith("/static/"):
                    message["headers"].append((b"cache-control", b"no-store"))
            await send(message)

        await self.app(scope, receive, with_headers)  # type: ignore[arg-type]


# --- the app --------------------------------------------------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]


class Console:
    """The routes, bound to the running service and the console's settings."""

    def __init__(self, service: Service, settings: ConsoleSettings) -> None:
        self.service = service
        self.settings = settings

    @property
    def runtime(self) -> Runtime:
        return self.service.runtime

    # --- sessions ---

    async def _session(self, request: Request) -> tuple[User, str] | None:
        token = request.cookies.get(auth.SESSION_COOKIE)
        if not token:
            return None
        async with self.runtime.pool.acquire() as conn:
            return await repository.session_user(conn, auth.token_digest(token), datetime.now(UTC))

    def page(self, handler: Callable[[Request, User, str], Awaitable[Response]]) -> Endpoint:
        """A page for signed-in users; others are sent to the sign-in page. POSTs must
        carry the session's CSRF token."""

        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            found = await self._session(request)
            if found is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                login = f"/login?{urlencode({'next': target})}"
                if request.headers.get("hx-request"):
                    # A part of a page asking (htmx): send the whole page to sign in.
                    return Response(status_code=200, headers={"hx-redirect": login})
                return RedirectResponse(login, status_code=303)
            user, csrf = found
            if request.method == "POST":
                form = await request.form()
                given = form.get("csrf_token") or request.headers.get("x-csrf-token")
                if not auth.same_token(csrf, given if isinstance(given, str) else None):
                    return PlainTextResponse("CSRF token missing or wrong", status_code=403)
            return await handler(request, user, csrf)

        return endpoint

    def api(self, handler: Callable[[Request, User], Awaitable[Response]]) -> Endpoint:
        """A JSON endpoint for signed-in users (401 otherwise); writes need the
        `X-CSRF-Token` header."""

        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            found = await self._session(request)
            if found is None:
                return JSONResponse({"error": "not signed in"}, status_code=401)
            user, csrf = found
            if request.method != "GET" and not auth.same_token(
                csrf, request.headers.get("x-csrf-token")
            ):
                return JSONResponse({"error": "CSRF token missing or wrong"}, status_code=403)
            return await handler(request, user)

        return endpoint

    def render(
        self,
        request: Request,
        name: str,
        user: User | None,
        csrf: str | None,
        status_code: int = 200,
        **context: Any,
    ) -> Response:
        culture = user.culture if user else "en-GB"
        zone = user.time_zone if user else "UTC"
        context |= {
            "user": user,
            "csrf": csrf,
            "money": lambda a, c: fmt_money(a, c, culture),
            "day": lambda d: fmt_date(d, culture),
            "percent": lambda p: fmt_percent(p, culture),
            "moment": lambda m: fmt_datetime(m, culture, zone),
            "lang": culture.split("-")[0],
        }
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    # --- sign in and out ---

    def _cookie_args(self) -> dict[str, Any]:
        return {"httponly": True, "secure": self.settings.console_cookie_secure, "samesite": "lax"}

    async def login_form(self, request: Request) -> Response:
        return self._login_page(request, error=None)

    def _login_page(self, request: Request, error: str | None, status_code: int = 200) -> Response:
        token = auth.new_token()
        response = self.render(
            request,
            "login.html",
            None,
            token,
            status_code=status_code,
            error=error,
            next=_safe_next(request.query_params.get("next")),
        )
        response.set_cookie(
            auth.LOGIN_CSRF_COOKIE, token, max_age=3600, path="/login", **self._cookie_args()
        )
        return response

    async def login(self, request: Request) -> Response:
        form = await request.form()
        given = form.get("csrf_token")
        if not auth.same_token(
            request.cookies.get(auth.LOGIN_CSRF_COOKIE), given if isinstance(given, str) else None
        ):
            return self._login_page(request, "The form expired: please sign in again.", 403)
        username = str(form.get("username") or "").strip()[:200]
        password = str(form.get("password") or "")[:1000]
        settings = self.settings
        now = datetime.now(UTC)
        since = now - timedelta(seconds=settings.console_sign_in_window_s)
        user_key = f"user:{username}"
        address_key = f"ip:{request.client.host if request.client else '-'}"
        async with self.runtime.pool.acquire() as conn:
            failures = await repository.recent_failures(conn, [user_key, address_key], since)
            found = await repository.user_with_hash(conn, username)
        if (
            failures.get(user_key, 0) >= settings.console_sign_in_max_failures_per_user
            or failures.get(address_key, 0) >= settings.console_sign_in_max_failures_per_address
        ):
            log.warning("console sign-in throttled")
            minutes = max(1, round(settings.console_sign_in_window_s / 60))
            return self._login_page(
                request,
                f"Too many failed sign-ins: try again in {minutes} minutes.",
                429,
            )
        stored_hash = found[1] if found else None
        # argon2 takes tens of milliseconds: off the event loop.
        ok = await asyncio.to_thread(auth.verify_password, stored_hash, password)
        if not ok or found is None:
            async with self.runtime.pool.acquire() as conn:
                await repository.record_failure(conn, [user_key, address_key], since)
            log.info("console sign-in refused")
            return self._login_page(request, "Wrong username or password.", 401)
        user = found[0]
        token, csrf = auth.new_token(), auth.new_token()
        async with self.runtime.pool.acquire() as conn:
            await repository.clear_failures(conn, user_key)
            if auth.needs_rehash(stored_hash or ""):
                new_hash = await asyncio.to_thread(auth.hash_password, password)
                await repository.set_password(conn, user.username, new_hash)
            await repository.prune_sessions(conn, datetime.now(UTC))
            await repository.open_session(
                conn,
                auth.token_digest(token),
                user.username,
                csrf,
                datetime.now(UTC) + timedelta(hours=self.settings.console_session_hours),
            )
        log.info("console sign-in", website_key=user.website_key)
        response = RedirectResponse(_safe_next(str(form.get("next") or "")), status_code=303)
        response.set_cookie(
            auth.SESSION_COOKIE,
            token,
            max_age=int(self.settings.console_session_hours * 3600),
            path="/",
            **self._cookie_args(),
        )
        response.delete_cookie(auth.LOGIN_CSRF_COOKIE, path="/login")
        return response

    async def logout(self, request: Request, user: User, csrf: str) -> Response:
        token = request.cookies.get(auth.SESSION_COOKIE, "")
        async with self.runtime.pool.acquire() as conn:
            await repository.close_session(conn, auth.token_digest(token))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/")
        return response

    # --- invoices ---

    async def invoice_list(self, request: Request, user: User, csrf: str) -> Response:
        filters, errors = _filters(request)
        after = PageKey.parse(request.query_params.get("after"))
        async with self.runtime.pool.acquire() as conn:
            rows, following = await repository.invoice_page(conn, user.website_key, filters, after)
            choices = await repository.filter_choices(conn, user.website_key)
        query = {k: v for k, v in request.query_params.items() if k != "after" and v}
        next_url = (
            f"/invoices?{urlencode({**query, 'after': following.token()})}" if following else None
        )
        return self.render(
            request,
            "invoices.html",
            user,
            csrf,
            invoices=rows,
            filters=filters,
            errors=errors,
            schemes=choices["schemes"],
            next_url=next_url,
            first_url=f"/invoices?{urlencode(query)}" if after else None,
        )

    async def _invoice(
        self, user: User, invoice_key: str, as_of: date | None = None
    ) -> dict[str, Any] | None:
        """The invoice row with its timeline, commands and statutory interest (up to
        `as_of`, default today in the merchant's time zone: services/console/interest.py)."""
        async with self.runtime.pool.acquire() as conn:
            row = await repository.invoice(conn, user.website_key, invoice_key)
            if row is None:
                return None
            row["timeline"] = await repository.timeline(conn, user.website_key, invoice_key)
            row["commands"] = await repository.commands_of(conn, user.website_key, invoice_key)
            points = await repository.money_points(conn, user.website_key, invoice_key)
        row["interest"] = invoice_interest(
            row["snapshot"],
            row["last_sequence"],
            row["last_event_at"],
            points,
            as_of if as_of is not None else datetime.now(UTC),
        )
        return row

    async def invoice_detail(self, request: Request, user: User, csrf: str) -> Response:
        row = await self._invoice(user, request.path_params["invoice_key"])
        if row is None:
            return self._not_found(request, user, csrf)
        return self.render(
            request,
            "invoice.html",
            user,
            csrf,
            invoice=row,
            actions=actions_for(row),
            form_errors=[],
            form={},
            deliveries=await self._invoice_deliveries(user, row),
        )

    async def invoice_live(self, request: Request, user: User, csrf: str) -> Response:
        row = await self._invoice(user, request.path_params["invoice_key"])
        if row is None:
            return self._not_found(request, user, csrf)
        return self.render(request, "_invoice_live.html", user, csrf, invoice=row)

    async def _invoice_deliveries(self, user: User, row: dict[str, Any]) -> list[dict[str, Any]]:
        async with self.runtime.pool.acquire() as conn:
            return await repository.invoice_webhook_attempts(
                conn, user.website_key, row["invoice_number"]
            )

    async def invoice_deliveries(self, request: Request, user: User, csrf: str) -> Response:
        """The invoice page's webhook deliveries part (htmx polls it)."""
        async with self.runtime.pool.acquire() as conn:
            row = await repository.invoice(
                conn, user.website_key, request.path_params["invoice_key"]
            )
        if row is None:
            return self._not_found(request, user, csrf)
        deliveries = await self._invoice_deliveries(user, row)
        return self.render(
            request, "_invoice_deliveries.html", user, csrf, invoice=row, deliveries=deliveries
        )

    def _not_found(self, request: Request, user: User, csrf: str) -> Response:
        return self.render(request, "not_found.html", user, csrf, status_code=404)

    async def invoice_action(self, request: Request, user: User, csrf: str) -> Response:
        invoice_key = request.path_params["invoice_key"]
        action = ACTIONS.get(request.path_params["action"])
        async with self.runtime.pool.acquire() as conn:
            row = await repository.invoice(conn, user.website_key, invoice_key)
        if row is None or action is None:
            return self._not_found(request, user, csrf)
        form = await request.form()
        reason = str(form.get("reason") or "").strip() or None
        values: dict[str, Any] = {"invoice_number": row["invoice_number"]}
        if action.has_reason and reason:
            values["reason"] = reason
        await self._send_or_show(request, user, csrf, row, action.command, values)
        return RedirectResponse(f"/invoices/{invoice_key}#commands", status_code=303)

    async def credit_note(self, request: Request, user: User, csrf: str) -> Response:
        invoice_key = request.path_params["invoice_key"]
        async with self.runtime.pool.acquire() as conn:
            row = await repository.invoice(conn, user.website_key, invoice_key)
        if row is None:
            return self._not_found(request, user, csrf)
        form = await request.form()
        values = {
            "original_invoice_number": row["invoice_number"],
            "credit_note_number": str(form.get("credit_note_number") or "").strip(),
            "amount": str(form.get("amount") or "").strip(),
            "description": str(form.get("description") or "").strip() or None,
        }
        errors = await self._send_or_show(request, user, csrf, row, CreateCreditNote, values)
        if errors:
            full = await self._invoice(user, invoice_key)
            assert full is not None
            return self.render(
                request,
                "invoice.html",
                user,
                csrf,
                status_code=422,
                invoice=full,
                actions=actions_for(full),
                form_errors=errors,
                form=values,
                deliveries=await self._invoice_deliveries(user, full),
            )
        return RedirectResponse(f"/invoices/{invoice_key}#commands", status_code=303)

    async def _send_or_show(
        self,
        request: Request,
        user: User,
        csrf: str,
        row: dict[str, Any],
        command: type[Command],
        values: dict[str, Any],
    ) -> list[dict[str, str]]:
        """Validate and publish the command; the field errors when it does not validate
        (the same messages the service would answer with; nothing is sent)."""
        try:
            payload = command.model_validate(values)
        except ValidationError as exc:
            return [
                {"field": e.field.removeprefix("payload."), "message": e.message}
                for e in field_errors(exc, "payload")
            ]
        await self.send(user, payload, invoice_key=row["invoice_key"])
        return []

    async def send(
        self,
        user: User,
        payload: Command,
        *,
        invoice_key: str | None = None,
        scheme_key: str | None = None,
        subject: str | None = None,
        keep: dict[str, str] | None = None,
    ) -> uuid.UUID:
        """Publish a merchant command for the user's merchant through the outbox (the row
        that remembers it and the message commit together)."""
        envelope = new_envelope(
            payload, website_key=user.website_key, occurred_at=datetime.now(UTC)
        )
        runtime = self.runtime
        async with runtime.unit_of_work() as uow:
            await repository.record_sent(
                uow.conn,
                user.website_key,
                envelope.message_id,
                payload.TYPE,
                user.username,
                # What the console remembers of the payload: `keep` replaces fields it
                # must not store (a webhook's signing secret).
                {**payload.model_dump(mode="json"), **(keep or {})},
                invoice_key=invoice_key,
                scheme_key=scheme_key,
                subject=subject,
            )
            uow.outbox.append(
                OutboxMessage(
                    topic=runtime.topics(topic_for_type(payload.TYPE)),
                    key=key_for(envelope),
                    value=envelope.to_json(),
                    headers=(("content-type", "application/json"),),
                )
            )
        log.info("console command sent", type=payload.TYPE, website_key=user.website_key)
        return envelope.message_id

    # --- schemes ---

    async def scheme_list(self, request: Request, user: User, csrf: str) -> Response:
        async with self.runtime.pool.acquire() as conn:
            in_use = await repository.schemes_in_use(conn, user.website_key)
            sent = await repository.scheme_versions_sent(conn, user.website_key)
        return self.render(
            request, "schemes.html", user, csrf, in_use=in_use, sent=sent, steps=schemes.steps_of
        )

    async def scheme_sent_live(self, request: Request, user: User, csrf: str) -> Response:
        async with self.runtime.pool.acquire() as conn:
            sent = await repository.scheme_versions_sent(conn, user.website_key)
        return self.render(
            request, "_schemes_sent.html", user, csrf, sent=sent, steps=schemes.steps_of
        )

    async def scheme_form(self, request: Request, user: User, csrf: str) -> Response:
        start: dict[str, Any] = {}
        key = request.query_params.get("from")
        if key:
            async with self.runtime.pool.acquire() as conn:
                sent = await repository.scheme_versions_sent(conn, user.website_key, key)
            accepted = [v for v in sent if v["accepted"]] or sent
            if accepted:
                start = accepted[0]["payload"]
        return self._scheme_form(request, user, csrf, schemes.form_of(start), [], 200)

    def _scheme_form(
        self,
        request: Request,
        user: User,
        csrf: str,
        form: schemes.SchemeForm,
        errors: list[dict[str, str]],
        status_code: int,
    ) -> Response:
        return self.render(
            request,
            "scheme_form.html",
            user,
            csrf,
            status_code=status_code,
            form=form,
            errors=errors,
            error_fields={e["field"] for e in errors},
            actions=schemes.STEP_ACTIONS,
            channels=schemes.CHANNELS,
        )

    async def scheme_save(self, request: Request, user: User, csrf: str) -> Response:
        form = schemes.read_form(await request.form())
        payload, errors = schemes.validate(form)
        if payload is None:
            return self._scheme_form(request, user, csrf, form, errors, 422)
        await self.send(user, payload, scheme_key=payload.scheme_key)
        return RedirectResponse("/schemes#sent", status_code=303)

    # --- message templates ---

    async def template_list(self, request: Request, user: User, csrf: str) -> Response:
        async with self.runtime.pool.acquire() as conn:
            sent = await repository.sent_about(conn, user.website_key, "UpsertTemplate")
        return self.render(request, "message_templates.html", user, csrf, sent=sent)

    async def template_form(self, request: Request, user: User, csrf: str) -> Response:
        form = messages.TemplateForm(culture=user.culture)
        command = request.query_params.get("from")
        if command:
            async with self.runtime.pool.acquire() as conn:
                sent = await repository.sent_about(conn, user.website_key, "UpsertTemplate")
            found = [c for c in sent if str(c["command_id"]) == command]
            if found:
                form = messages.form_of(found[0]["payload"])
        return await self._template_page(request, user, csrf, form, [], 200)

    async def _template_page(
        self,
        request: Request,
        user: User,
        csrf: str,
        form: messages.TemplateForm,
        errors: list[dict[str, str]],
        status_code: int,
        fragment: bool = False,
    ) -> Response:
        async with self.runtime.pool.acquire() as conn:
            snapshot = await repository.latest_snapshot(conn, user.website_key)
        shown = (
            messages.preview(form, snapshot, user.website_key) if form.body and not errors else None
        )
        return self.render(
            request,
            "_template_preview.html" if fragment else "message_template_form.html",
            user,
            csrf,
            status_code=status_code,
            form=form,
            errors=errors,
            preview=shown,
            has_sample=snapshot is not None,
            channels=messages.CHANNELS,
        )

    async def template_preview(self, request: Request, user: User, csrf: str) -> Response:
        form = messages.read_form(await request.form())
        _, errors = messages.validate(form)
        return await self._template_page(request, user, csrf, form, errors, 200, fragment=True)

    async def template_save(self, request: Request, user: User, csrf: str) -> Response:
        data = await request.form()
        form = messages.read_form(data)
        payload, errors = messages.validate(form)
        if payload is None or data.get("action") == "preview":
            return await self._template_page(
                request, user, csrf, form, errors, 422 if errors else 200
            )
        await self.send(
            user,
            payload,
            subject=f"template:{payload.template_key}:{payload.culture}:{payload.channel}",
        )
        return RedirectResponse("/templates#sent", status_code=303)

    # --- webhooks ---

    async def webhooks(self, request: Request, user: User, csrf: str) -> Response:
        return await self._webhook_page(request, user, csrf, {}, [], 200)

    async def _webhook_page(
        self,
        request: Request,
        user: User,
        csrf: str,
        form: dict[str, str],
        errors: list[dict[str, str]],
        status_code: int,
    ) -> Response:
        async with self.runtime.pool.acquire() as conn:
            sent = await repository.sent_about(conn, user.website_key, "RegisterWebhook")
        return self.render(
            request,
            "webhooks.html",
            user,
            csrf,
            status_code=status_code,
            sent=sent,
            form=form,
            errors=errors,
        )

    async def webhook_deliveries(self, request: Request, user: User, csrf: str) -> Response:
        """The webhook's delivery log: deliveries waiting for a retry (and when), then the
        recent attempts (`?failed=1`: failed and given up ones only)."""
        failures_only = request.query_params.get("failed") == "1"
        async with self.runtime.pool.acquire() as conn:
            retries = await repository.webhook_retries_due(conn, user.website_key)
            attempts = await repository.webhook_attempts(
                conn, user.website_key, failures_only=failures_only
            )
            counts = await repository.webhook_outcome_counts(conn, user.website_key)
        return self.render(
            request,
            "webhook_deliveries.html",
            user,
            csrf,
            retries=retries,
            attempts=attempts,
            counts=counts,
            failures_only=failures_only,
        )

    async def webhook_register(self, request: Request, user: User, csrf: str) -> Response:
        data = await request.form()
        form = {
            "url": str(data.get("url") or "").strip(),
            "secret": str(data.get("secret") or "").strip(),
            "enabled": "on" if data.get("enabled") == "on" else "",
        }
        try:
            payload = RegisterWebhook.model_validate(
                {"url": form["url"], "secret": form["secret"], "enabled": bool(form["enabled"])}
            )
        except ValidationError as exc:
            errors = [
                {"field": e.field.removeprefix("payload."), "code": e.code, "message": e.message}
                for e in field_errors(exc, "payload")
            ]
            # The secret is never sent back to the browser.
            return await self._webhook_page(
                request, user, csrf, {**form, "secret": ""}, errors, 422
            )
        await self.send(user, payload, subject="webhook", keep={"secret": "(not kept)"})
        return RedirectResponse("/webhooks#sent", status_code=303)

    # --- subscriptions and collection cases ---

    async def _listed(
        self, request: Request, user: User, listed: repository.Listed, param: str
    ) -> dict[str, Any]:
        """A page of a list (`rows`), filtered by the query parameter `param` and by a key
        prefix (`key`), with the URL of the next page (`next_url`)."""
        value = request.query_params.get(param) or None
        after = request.query_params.get("after") or None
        key = request.query_params.get("key", "").strip()[:200] or None
        async with self.runtime.pool.acquire() as conn:
            rows = await repository.listed_page(
                conn, listed, user.website_key, value, after, prefix=key
            )
        more = len(rows) > repository.PAGE_SIZE
        rows = rows[: repository.PAGE_SIZE]
        query = {
            param: value or "",
            "key": key or "",
            "after": rows[-1][listed.key] if more else "",
        }
        return {
            "rows": rows,
            param: value,
            "key": key,
            "next_url": f"{request.url.path}?{urlencode(query)}" if more else None,
        }

    async def _one(
        self, user: User, listed: repository.Listed, subject: str, key: str
    ) -> dict[str, Any] | None:
        """One row with its events and the commands the console sent about it."""
        async with self.runtime.pool.acquire() as conn:
            row = await repository.listed_one(conn, listed, user.website_key, key)
            if row is not None:
                row["commands"] = await repository.commands_about(
                    conn, user.website_key, f"{subject}:{key}"
                )
        return row

    async def subscription_list(self, request: Request, user: User, csrf: str) -> Response:
        return self.render(
            request,
            "subscriptions.html",
            user,
            csrf,
            **await self._listed(request, user, repository.SUBSCRIPTIONS, "status"),
            statuses=[s.value for s in SubscriptionStatus],
        )

    async def subscription_detail(self, request: Request, user: User, csrf: str) -> Response:
        row = await self._one(
            user, repository.SUBSCRIPTIONS, "subscription", request.path_params["key"]
        )
        if row is None:
            return self._not_found(request, user, csrf)
        return self.render(request, "subscription.html", user, csrf, sub=row)

    async def subscription_stop(self, request: Request, user: User, csrf: str) -> Response:
        key = request.path_params["key"]
        async with self.runtime.pool.acquire() as conn:
            row = await repository.listed_row(conn, repository.SUBSCRIPTIONS, user.website_key, key)
        if row is None:
            return self._not_found(request, user, csrf)
        form = await request.form()
        values: dict[str, Any] = {"subscription_key": key}
        for name in ("end_date", "reason"):
            value = str(form.get(name) or "").strip()
            if value:
                values[name] = value
        try:
            payload = StopSubscription.model_validate(values)
        except ValidationError as exc:
            return PlainTextResponse(
                "; ".join(f"{e.field}: {e.message}" for e in field_errors(exc, "payload")),
                status_code=422,
            )
        await self.send(user, payload, subject=f"subscription:{key}")
        return RedirectResponse(f"/subscriptions/{key}#commands", status_code=303)

    async def case_list(self, request: Request, user: User, csrf: str) -> Response:
        return self.render(
            request,
            "cases.html",
            user,
            csrf,
            **await self._listed(request, user, repository.CASES, "state"),
            states=reports.CASE_STATES,
        )

    async def case_detail(self, request: Request, user: User, csrf: str) -> Response:
        row = await self._one(user, repository.CASES, "case", request.path_params["key"])
        if row is None:
            return self._not_found(request, user, csrf)
        return self.render(
            request,
            "case.html",
            user,
            csrf,
            case=row,
            actions=case_actions_for(row),
            form_errors=[],
        )

    async def case_action(self, request: Request, user: User, csrf: str) -> Response:
        key = request.path_params["key"]
        action = CASE_ACTIONS.get(request.path_params["action"])
        async with self.runtime.pool.acquire() as conn:
            row = await repository.listed_row(conn, repository.CASES, user.website_key, key)
        if row is None or action is None:
            return self._not_found(request, user, csrf)
        form = await request.form()
        values: dict[str, Any] = {"case_key": key, **dict(action.fixed)}
        for name in action.fields:
            value = str(form.get(name) or "").strip()
            if value:
                values[name] = value
        try:
            payload = action.command.model_validate(values)
        except ValidationError as exc:
            async with self.runtime.pool.acquire() as conn:
                row["commands"] = await repository.commands_about(
                    conn, user.website_key, f"case:{key}"
                )
            return self.render(
                request,
                "case.html",
                user,
                csrf,
                status_code=422,
                case=row,
                actions=case_actions_for(row),
                form_errors=[
                    {"field": e.field.removeprefix("payload."), "message": e.message}
                    for e in field_errors(exc, "payload")
                ],
            )
        await self.send(user, payload, subject=f"case:{key}")
        return RedirectResponse(f"/cases/{key}#commands", status_code=303)

    # --- reports: a page, a CSV and a JSON answer each (REPORTS) ---

    async def _dso(self, request: Request, user: User) -> dict[str, list[reports.DsoMonth]]:
        until = _as_of(request, user, "until")
        try:
            count = min(max(int(request.query_params.get("months", "12")), 1), 36)
        except ValueError:
            count = 12
        months = reports.months_until(until, count)
        receivables: dict[date, dict[str, Decimal]] = {}
        sales: dict[date, dict[str, Decimal]] = {}
        async with self.runtime.pool.acquire() as conn:
            for month in months:
                receivables[month] = dict(
                    await repository.receivables_at(
                        conn, user.website_key, reports.month_end(month)
                    )
                )
                sales[month] = dict(
                    await repository.sales_between(
                        conn, user.website_key, month, reports.next_month(month)
                    )
                )
        return reports.dso_series(months, receivables, sales)

    async def _collection(self, request: Request, user: User) -> list[reports.CollectionResults]:
        async with self.runtime.pool.acquire() as conn:
            return reports.collection_results(await repository.case_sums(conn, user.website_key))

    async def _aging(self, request: Request, user: User) -> reports.AgingReport:
        as_of = _as_of(request, user)
        async with self.runtime.pool.acquire() as conn:
            sums = await repository.aging_sums(conn, user.website_key, as_of)
        return reports.aging_from_sums(as_of, sums)

    async def _funnel(self, request: Request, user: User) -> list[reports.Funnel]:
        async with self.runtime.pool.acquire() as conn:
            return reports.funnel(await repository.funnel_counts(conn, user.website_key))

    async def _costs(self, request: Request, user: User) -> list[reports.Costs]:
        async with self.runtime.pool.acquire() as conn:
            return reports.costs(await repository.cost_sums(conn, user.website_key))

    def _reports(self) -> dict[str, Report]:
        return {
            "aging": Report(
                "aging.html",
                "report",
                self._aging,
                reports.aging_csv,
                reports.aging_json,
                lambda report: f"aging-{report.as_of}.csv",
            ),
            "funnel": Report(
                "funnel.html",
                "funnels",
                self._funnel,
                reports.funnel_csv,
                reports.funnel_json,
                lambda _: "step-funnel.csv",
            ),
            "dso": Report(
                "dso.html",
                "series",
                self._dso,
                reports.dso_csv,
                reports.dso_json,
                lambda _: "dso.csv",
            ),
            "costs": Report(
                "costs.html",
                "rows",
                self._costs,
                reports.costs_csv,
                reports.costs_json,
                lambda _: "costs.csv",
            ),
            "collection": Report(
                "collection.html",
                "results",
                self._collection,
                reports.collection_csv,
                reports.collection_json,
                lambda _: "collection.csv",
            ),
        }

    def _report_routes(self) -> list[Route]:
        routes = []
        for name, report in self._reports().items():

            async def page(
                request: Request, user: User, csrf: str, report: Report = report
            ) -> Response:
                data = await report.load(request, user)
                return self.render(request, report.template, user, csrf, **{report.context: data})

            async def as_csv(
                request: Request, user: User, csrf: str, report: Report = report
            ) -> Response:
                data = await report.load(request, user)
                return _csv(report.csv(data), report.filename(data))

            async def as_json(request: Request, user: User, report: Report = report) -> Response:
                return JSONResponse(report.json(await report.load(request, user)))

            routes += [
                Route(f"/reports/{name}", self.page(page)),
                Route(f"/reports/{name}.csv", self.page(as_csv)),
                Route(f"/api/reports/{name}", self.api(as_json)),
            ]
        return routes

    # --- the JSON API ---

    async def api_invoices(self, request: Request, user: User) -> Response:
        filters, errors = _filters(request)
        if errors:
            return JSONResponse({"errors": errors}, status_code=400)
        after = PageKey.parse(request.query_params.get("after"))
        async with self.runtime.pool.acquire() as conn:
            rows, following = await repository.invoice_page(conn, user.website_key, filters, after)
        return JSONResponse(
            {
                "invoices": [_json(r) for r in rows],
                "next": following.token() if following else None,
            }
        )

    async def api_invoice(self, request: Request, user: User) -> Response:
        raw = request.query_params.get("as_of")
        try:
            as_of = date.fromisoformat(raw) if raw else None
        except ValueError:
            return JSONResponse(
                {"errors": [{"field": "as_of", "message": "a day as YYYY-MM-DD"}]},
                status_code=400,
            )
        row = await self._invoice(user, request.path_params["invoice_key"], as_of)
        if row is None:
            return JSONResponse({"error": "no such invoice"}, status_code=404)
        interest = row.pop("interest").as_json()
        return JSONResponse({**_json(row), "interest": interest})

    async def api_action(self, request: Request, user: User) -> Response:
        invoice_key = request.path_params["invoice_key"]
        action = ACTIONS.get(request.path_params["action"])
        async with self.runtime.pool.acquire() as conn:
            row = await repository.invoice(conn, user.website_key, invoice_key)
        if row is None or action is None:
            return JSONResponse({"error": "no such invoice or action"}, status_code=404)
        try:
            body = await request.json() if await request.body() else {}
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        values: dict[str, Any] = {"invoice_number": row["invoice_number"]}
        if action.has_reason and isinstance(body, dict) and body.get("reason"):
            values["reason"] = body["reason"]
        try:
            payload = action.command.model_validate(values)
        except ValidationError as exc:
            errors = field_errors(exc, "payload")
            return JSONResponse(
                {
                    "errors": [
                        {"field": e.field, "code": e.code, "message": e.message} for e in errors
                    ]
                },
                status_code=422,
            )
        command_id = await self.send(user, payload, invoice_key=invoice_key)
        answer = await self._wait_for_answer(user, command_id)
        return JSONResponse(
            {"command_id": str(command_id), **_answer_json(answer)},
            status_code=200 if answer else 202,
        )

    async def _wait_for_answer(self, user: User, command_id: uuid.UUID) -> dict[str, Any] | None:
        deadline = time.monotonic() + self.settings.console_result_wait_s
        while True:
            async with self.runtime.pool.acquire() as conn:
                answer = await repository.command(conn, user.website_key, command_id)
            if answer is not None or time.monotonic() >= deadline:
                return answer
            await asyncio.sleep(0.1)

    async def api_command(self, request: Request, user: User) -> Response:
        try:
            command_id = uuid.UUID(request.path_params["command_id"])
        except ValueError:
            return JSONResponse({"error": "not a command id"}, status_code=404)
        async with self.runtime.pool.acquire() as conn:
            answer = await repository.command(conn, user.website_key, command_id)
        return JSONResponse({"command_id": str(command_id), **_answer_json(answer)})

    # --- health ---

    async def healthz(self, request: Request) -> Response:
        state = self.service.state
        ok = (
            state["runtime"] is not None
            and all(sub.running for sub in self.service.broker.subscribers)
            and await self.service.broker.ping(timeout=2.0)
        )
        return JSONResponse({"status": "ok" if ok else "starting"}, status_code=200 if ok else 503)

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/invoices", status_code=303)

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", self.home),
            Route("/healthz", self.healthz),
            Mount("/metrics", make_asgi_app()),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.page(self.logout), methods=["POST"]),
            Route("/invoices", self.page(self.invoice_list)),
            Route("/invoices/{invoice_key}", self.page(self.invoice_detail)),
            Route("/invoices/{invoice_key}/live", self.page(self.invoice_live)),
            Route("/invoices/{invoice_key}/deliveries", self.page(self.invoice_deliveries)),
            Route(
                "/invoices/{invoice_key}/actions/{action}",
                self.page(self.invoice_action),
                methods=["POST"],
            ),
            Route(
                "/invoices/{invoice_key}/credit-note",
                self.page(self.credit_note),
                methods=["POST"],
            ),
            Route("/webhooks", self.page(self.webhooks), methods=["GET"]),
            Route("/webhooks", self.page(self.webhook_register), methods=["POST"]),
            Route("/webhooks/deliveries", self.page(self.webhook_deliveries)),
            Route("/templates", self.page(self.template_list), methods=["GET"]),
            Route("/templates", self.page(self.template_save), methods=["POST"]),
            Route("/templates/new", self.page(self.template_form)),
            Route("/templates/preview", self.page(self.template_preview), methods=["POST"]),
            Route("/schemes", self.page(self.scheme_list), methods=["GET"]),
            Route("/schemes", self.page(self.scheme_save), methods=["POST"]),
            Route("/schemes/sent", self.page(self.scheme_sent_live)),
            Route("/schemes/new", self.page(self.scheme_form)),
            Route("/subscriptions", self.page(self.subscription_list)),
            Route("/subscriptions/{key}", self.page(self.subscription_detail)),
            Route("/subscriptions/{key}/stop", self.page(self.subscription_stop), methods=["POST"]),
            Route("/cases", self.page(self.case_list)),
            Route("/cases/{key}", self.page(self.case_detail)),
            Route("/cases/{key}/actions/{action}", self.page(self.case_action), methods=["POST"]),
            *self._report_routes(),
            Route("/api/invoices", self.api(self.api_invoices)),
            Route("/api/invoices/{invoice_key}", self.api(self.api_invoice)),
            Route(
                "/api/invoices/{invoice_key}/actions/{action}",
                self.api(self.api_action),
                methods=["POST"],
            ),
            Route("/api/commands/{command_id}", self.api(self.api_command)),
        ]


def create_web(
    service: Service,
    settings: ConsoleSettings,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
) -> Starlette:
    console = Console(service, settings)
    return Starlette(
        routes=console.routes(),
        middleware=[Middleware(SecurityHeaders)],
        lifespan=lifespan,
    )


# --- request parsing and JSON -----------------------------------------------------------------


def _csv(text: str, filename: str) -> Response:
    return PlainTextResponse(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


def _safe_next(target: str | None) -> str:
    """Only a path of this site (no scheme, no host, no `//`): no open redirect."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/invoices"


def _int_param(request: Request, name: str, errors: list[dict[str, str]]) -> int | None:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 9:
        errors.append({"field": name, "message": "a whole number"})
        return None
    return int(raw)


def _filters(request: Request) -> tuple[InvoiceFilter, list[dict[str, str]]]:
    errors: list[dict[str, str]] = []
    q = request.query_params

    def text(name: str) -> str | None:
        value = q.get(name, "").strip()[:200]
        return value or None

    return (
        InvoiceFilter(
            status=_int_param(request, "status", errors),
            scheme=text("scheme"),
            step=_int_param(request, "step", errors),
            debtor=text("debtor"),
            number=text("number"),
        ),
        errors,
    )


def _as_of(request: Request, user: User, name: str = "as_of") -> date:
    raw = request.query_params.get(name, "")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        return datetime.now(ZoneInfo(user.time_zone)).date()


def _json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _answer_json(answer: dict[str, Any] | None) -> dict[str, Any]:
    if answer is None:
        return {"status": "pending"}
    return {
        "status": "accepted" if answer["accepted"] else "rejected",
        "command_type": answer["command_type"],
        "errors": answer["errors"],
        "keys": answer["keys"],
    }
