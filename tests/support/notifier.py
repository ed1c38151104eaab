"""Stand-ins for the outside world the notifier talks to: an SMTP server (aiosmtpd) and
HTTP endpoints (webhooks, SMS, print), each in-process on a free port; and a client for
the notifier's commands."""

from __future__ import annotations

import base64
import email
import json
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from contracts import topics
from tests.support.kafka import envelope, poll_until, publish
from tests.support.net import free_port


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


# --- SMTP ----------------------------------------------------------------------------------


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: Message

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        payload = self.message.get_payload(decode=True)
        assert isinstance(payload, bytes)
        return payload.decode(self.message.get_content_charset() or "utf-8")


class _SmtpHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, env: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.sink.refused:
            return "550 5.1.1 Recipient address rejected: mailbox unavailable"
        env.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, env: Any) -> str:
        self.sink.mails.append(
            Mail(env.mail_from, list(env.rcpt_tos), email.message_from_bytes(env.content))
        )
        return "250 Message accepted for delivery"


class SmtpSink:
    """A real SMTP server on a free port that keeps what it receives; addresses in
    `refused` are answered 550 at RCPT (an invalid address)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self.refused: set[str] = set()
        self._controller = Controller(_SmtpHandler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def to(self, address: str) -> list[Mail]:
        return [m for m in self.mails if address in m.recipients]

    async def wait_for(self, address: str, count: int) -> list[Mail]:
        async def enough() -> list[Mail] | None:
            found = self.to(address)
            return found if len(found) >= count else None

        return await poll_until(enough, what=f"{count} mails to the test address")


# --- HTTP ----------------------------------------------------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


#: Decides the status code of a request: (the request so far, with status 0) → status.
Responder = Callable[[Request], int]


class HttpSink:
    """A threaded HTTP server on a free port recording every POST; `responder` picks
    each answer's status (200 by default)."""

    def __init__(self, responder: Responder | None = None) -> None:
        self.responder: Responder = responder or (lambda request: 200)
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                request = Request(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, 0
                )
                with sink._lock:
                    request.status = sink.responder(request)
                    sink.requests.append(request)
                self.send_response(request.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def accepted(self) -> list[Request]:
        return [r for r in self.requests if 200 <= r.status < 300]

    async def wait_accepted(self, count: int, *, timeout: float = 30.0) -> list[Request]:
        async def enough() -> list[Request] | None:
            found = self.accepted()
            return found if len(found) >= count else None

        return await poll_until(enough, timeout=timeout, what=f"{count} accepted requests")


# --- the notifier's commands ---------------------------------------------------------------


async def notifier_command(
    bootstrap: str,
    prefix: str,
    type_: str,
    payload: dict[str, Any],
    *,
    website_key: str,
    key: str,
    occurred_at: str = "2026-11-01T09:00:00+00:00",
) -> str:
    """Publish a command on the notifier's topic; returns its message id."""
    body = envelope(type_, payload, website_key=website_key, occurred_at=occurred_at)
    await publish(bootstrap, prefix + topics.NOTIFIER_COMMANDS, [(key, json.dumps(body).encode())])
    return str(body["message_id"])


def new_website() -> str:
    return f"shop-{uuid.uuid4().hex[:8]}"
