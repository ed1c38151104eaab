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
from typing import Any, Self

from aiosmtpd.controller import Controller

from contracts import topics
from tests.support.kafka import at_least, envelope, publish, topic_of
from tests.support.net import free_port


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


# --- SMTP ----------------------------------------------------------------------------------


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    message: Message
    raw: bytes = b""

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
            Mail(
                env.mail_from,
                list(env.rcpt_tos),
                email.message_from_bytes(env.content),
                env.content,
            )
        )
        return "250 Message accepted for delivery"


class _Sink:
    """A server on loopback: `with Sink() as sink:` starts it and stops it after."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SmtpSink(_Sink):
    """A real SMTP server on a free port that keeps what it receives; addresses in
    `refused` are answered 550 at RCPT (an invalid address). It offers SMTPUTF8 unless
    `smtputf8` is set to False (from the next connection on)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self.refused: set[str] = set()
        self._controller = Controller(
            _SmtpHandler(self), hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=True
        )

    @property
    def smtputf8(self) -> bool:
        return bool(self._controller.SMTP_kwargs["enable_SMTPUTF8"])

    @smtputf8.setter
    def smtputf8(self, offered: bool) -> None:
        self._controller.SMTP_kwargs["enable_SMTPUTF8"] = offered

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def to(self, address: str) -> list[Mail]:
        return [m for m in self.mails if address in m.recipients]

    async def wait_for(self, address: str, count: int) -> list[Mail]:
        return await at_least(
            count, lambda: self.to(address), what=f"{count} mails to the test address"
        )


# --- HTTP ----------------------------------------------------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """How an endpoint answers: a status, after holding the request `hold_s` seconds (a
    slow endpoint; a stopped sink lets go at once), with `body_bytes` bytes of body (a
    huge answer: written until the client stops reading)."""

    status: int = 200
    hold_s: float = 0.0
    body_bytes: int = 0


#: Decides the answer to a request: (the request so far, with status 0) → status or Reply.
Responder = Callable[[Request], "int | Reply"]

_CHUNK = b"\0" * 65_536


class HttpSink(_Sink):
    """A threaded HTTP server on a free port recording every POST; `responder` picks
    each answer (200 by default). `started` records requests as they arrive, `requests`
    once answered; `max_in_progress` is the most requests it held at once; `body_sent`
    is the body bytes written per answer."""

    def __init__(self, responder: Responder | None = None) -> None:
        self.responder: Responder = responder or (lambda request: 200)
        self.requests: list[Request] = []
        self.started: list[Request] = []
        self.body_sent: list[int] = []
        self.in_progress = 0
        self.max_in_progress = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                request = Request(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, 0
                )
                with sink._lock:
                    answer = sink.responder(request)
                    reply = answer if isinstance(answer, Reply) else Reply(answer)
                    request.status = reply.status
                    sink.started.append(request)
                    sink.in_progress += 1
                    sink.max_in_progress = max(sink.max_in_progress, sink.in_progress)
                try:
                    if reply.hold_s:
                        sink._stopping.wait(reply.hold_s)
                    sent = self._answer(reply)
                finally:
                    with sink._lock:
                        sink.in_progress -= 1
                        sink.requests.append(request)
                        if reply.body_bytes:
                            sink.body_sent.append(sent)

            def _answer(self, reply: Reply) -> int:
                sent = 0
                try:
                    self.send_response(reply.status)
                    self.send_header("content-length", str(reply.body_bytes))
                    self.end_headers()
                    while sent < reply.body_bytes:
                        self.wfile.write(_CHUNK[: reply.body_bytes - sent])
                        sent += min(len(_CHUNK), reply.body_bytes - sent)
                except OSError:  # the client hung up (stopped reading, or timed out)
                    self.close_connection = True
                return sent

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
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def accepted(self) -> list[Request]:
        return [r for r in self.requests if 200 <= r.status < 300]

    async def wait_accepted(self, count: int, *, timeout: float = 30.0) -> list[Request]:
        return await at_least(
            count, self.accepted, timeout=timeout, what=f"{count} accepted requests"
        )


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
    topic = topic_of(type_, topics.NOTIFIER_COMMANDS)
    await publish(bootstrap, prefix + topic, [(key, json.dumps(body).encode())])
    return str(body["message_id"])


def new_website() -> str:
    return f"shop-{uuid.uuid4().hex[:8]}"
