"""Personal data in logs and answers: a scan for what the tests sent (issue 11).

The services must never log personal data, and a `CommandRejected` must never echo it.
This module records, while tests run,

- every log line of the in-process services: a handler on the root logger at DEBUG, put
  back each time a service calls `configure_logging` (which replaces the root handlers),
  rendering each record as the service writes it (its own formatter: console tracebacks
  and all) and in full as JSON. The service's own handler keeps its configured level, so
  the console output is as before. Lines of test infrastructure (the SMTP sink) are left
  out;
- the output of subprocess runners (anything a test holds with `lines: list[str]`);
- the topics each in-process service created (`ensure_topics`), to read at the end,

and then finds the personal data *by construction*: every string under a personal field
name (`email`, `first_name`, `mobile`, `iban`, a person's or company's `name`, ...) in
every message on those topics and in `examples/*.json`. No hand-kept list of values.
`scan` looks for each value in the log lines and in the errors of every CommandRejected,
and names what leaked (redacted), where and in which test. Dead letters are not scanned:
they are the platform's own record of a message (its `raw_value` is the message), read by
operators only.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer

from tests.support.kafka import partitions

ROOT = Path(__file__).resolve().parents[2]

# --- what personal data is ---------------------------------------------------------------

#: Field names (snake_case; camelCase and PascalCase keys are normalized first) whose
#: text is personal data wherever they appear.
PERSONAL_FIELDS = frozenset(
    {
        "first_name",
        "last_name",
        "given_name",
        "family_name",
        "full_name",
        "initials",
        "organization_name",
        "chamber_of_commerce",
        "street",
        "postal_code",
        "postal_state",
        "city",
        "address",  # as text; the structured block is walked field by field
        "birth_date",
        "date_of_birth",
    }
)
#: Parts of field names that make them personal (`email`, `recipient_email`,
#: `mobile_phone`, `iban`, `account_iban`, ...).
PERSONAL_PARTS = ("email", "e_mail", "phone", "mobile", "landline", "iban")
#: `name` is personal inside these blocks (a scheme's or a document's name is not).
NAMED_BLOCKS = frozenset(
    {"person", "company", "debtor", "billing_address", "recipient", "customer", "consumer"}
)
#: Shorter values are not looked for: they would match by chance (a house number).
MIN_LENGTH = 3

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _snake(key: str) -> str:
    return _CAMEL.sub("_", key).lower().replace("-", "_")


def is_personal(key: str, parent: str | None) -> bool:
    name = _snake(key)
    if name in PERSONAL_FIELDS or any(part in name for part in PERSONAL_PARTS):
        return True
    return name == "name" and parent is not None and _snake(parent) in NAMED_BLOCKS


def personal_values(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every personal text in parsed JSON, with its dotted path (iterative)."""
    stack: list[tuple[str, str | None, Any]] = [(path, None, data)]
    while stack:
        where, parent, node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                child = f"{where}.{key}" if where else str(key)
                if isinstance(value, str) and is_personal(str(key), parent):
                    if len(value.strip()) >= MIN_LENGTH:
                        yield child, value
                elif isinstance(value, dict | list):
                    stack.append((child, str(key), value))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                stack.append((f"{where}.{index}", parent, value))


# --- finding values in text ---------------------------------------------------------------


def redact(value: str) -> str:
    """A value as a report may show it: first and last character and the length."""
    return f"{value[0]}…{value[-1]} ({len(value)} chars)"


def _variants(value: str) -> set[str]:
    """How a value may be written in a log line or JSON: as is, JSON-escaped, repr'd."""
    return {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
    }


@dataclass
class Needles:
    """Personal values (value -> where it was first seen), compiled for a fast search."""

    origins: dict[str, str] = field(default_factory=dict)
    _pattern: re.Pattern[str] | None = None
    _by_variant: dict[str, str] = field(default_factory=dict)

    def add(self, value: str, origin: str) -> None:
        value = value.strip()
        if len(value) >= MIN_LENGTH and value not in self.origins:
            self.origins[value] = origin
            self._pattern = None

    def add_from(self, data: Any, origin: str) -> None:
        for path, value in personal_values(data):
            self.add(value, f"{origin}: {path}")

    def _compiled(self) -> re.Pattern[str]:
        if self._pattern is None:
            self._by_variant = {
                variant.casefold(): value for value in self.origins for variant in _variants(value)
            }
            # Longest first, so `jan@example.test` is reported rather than a shorter value.
            alternatives = sorted(self._by_variant, key=len, reverse=True)
            body = "|".join(re.escape(v) for v in alternatives) or r"(?!)"
            # Not inside a longer word: `Jan` is not found in `January` or `Jansen`.
            self._pattern = re.compile(rf"(?<![^\W_])(?:{body})(?![^\W_])", re.IGNORECASE)
        return self._pattern

    def find(self, text: str) -> list[str]:
        """The personal values in `text` (each once)."""
        if not self.origins:
            return []
        found: dict[str, None] = {}
        for match in self._compiled().finditer(text):
            found[self._by_variant[match.group(0).casefold()]] = None
        return list(found)


@dataclass(frozen=True)
class Finding:
    value: str
    origin: str
    where: str
    test: str
    excerpt: str

    def __str__(self) -> str:
        return (
            f"{redact(self.value)} (sent as {self.origin}) in {self.where}\n"
            f"    test: {self.test}\n    text: {self.excerpt}"
        )


@dataclass(frozen=True)
class Text:
    """One piece of output to scan: a log line or the errors of an answer."""

    where: str
    test: str
    text: str


def _excerpt(text: str, values: list[str]) -> str:
    """`text` with every personal value in it redacted, at most 400 characters."""
    for value in values:
        for variant in _variants(value):
            text = re.sub(re.escape(variant), f"<{redact(value)}>", text, flags=re.IGNORECASE)
    return text if len(text) <= 400 else text[:400] + "…"


def scan(texts: Iterable[Text], needles: Needles) -> list[Finding]:
    findings: list[Finding] = []
    for text in texts:
        values = needles.find(text.text)
        excerpt = _excerpt(text.text, values) if values else ""
        findings.extend(
            Finding(value, needles.origins[value], text.where, text.test, excerpt)
            for value in values
        )
    return findings


def answer_texts(records: Iterable[tuple[str, bytes]], test_of: Callable[[str], str]) -> list[Text]:
    """What a CommandRejected says: its command type and errors. (A dead letter is the
    platform's own record of a message, personal data and all, and is not scanned.)"""
    found = []
    for topic, value in records:
        try:
            body = json.loads(value)
        except (ValueError, RecursionError):  # not JSON, or hostile (nested too deeply)
            continue
        if not isinstance(body, dict) or body.get("type") != "CommandRejected":
            continue
        payload = body.get("payload")
        if not isinstance(payload, dict):
            continue
        shown = {"command_type": payload.get("command_type"), "errors": payload.get("errors")}
        found.append(
            Text(
                f"a CommandRejected on {topic}",
                test_of(topic),
                json.dumps(shown, ensure_ascii=False),
            )
        )
    return found


# --- capturing log lines -----------------------------------------------------------------

#: Loggers of test infrastructure, not of the platform (aiosmtpd's SMTP sink logs the
#: mails it receives).
NOT_THE_PLATFORM = ("mail.log", "tests.")


def _serialize(data: Any, **kwargs: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=repr)


class LogCapture(logging.Handler):
    """Keeps every log record as a JSON line, with the test that was running."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(logging.DEBUG)
        self.recorder = recorder
        #: The formatter of the service's own handler: a line is scanned as the service
        #: writes it (console tracebacks and all) as well as in full as JSON.
        self.service_formatter: logging.Formatter | None = None
        shared: list[Any] = [
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
        ]
        self.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=shared,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,  # exception texts are output too
                    structlog.processors.JSONRenderer(serializer=_serialize),
                ],
            )
        )

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(NOT_THE_PLATFORM):
            return
        lines = []
        for formatter in (self.service_formatter, self.formatter):
            if formatter is None:
                continue
            try:
                lines.append(formatter.format(record))
            except Exception as exc:  # a line that cannot be rendered is reported, not lost
                lines.append(f"<unrenderable log record {record.name}: {type(exc).__name__}>")
        self.recorder.lines.append(
            Text(f"a log line of {record.name}", self.recorder.test, "\n".join(lines))
        )


# --- the recorder --------------------------------------------------------------------------


@dataclass
class Recorder:
    """What the services of a test run logged and which topics they used."""

    test: str = "(no test)"
    lines: list[Text] = field(default_factory=list)
    #: bootstrap servers -> topic -> the test that created it
    topics: dict[str, dict[str, str]] = field(default_factory=dict)
    #: How many times a service configured its logging (one per service started).
    services: int = 0
    _undo: list[Callable[[], None]] = field(default_factory=list)
    _handler: LogCapture | None = None
    _level: int | None = None

    def install(self) -> None:
        """Wrap `configure_logging` and `ensure_topics` where the services call them."""
        import services.runtime.app as app  # noqa: PLC0415
        import services.runtime.logs as logs  # noqa: PLC0415

        self._handler = LogCapture(self)
        original_configure = logs.configure_logging
        original_ensure = app.ensure_topics

        def configure_logging(service: str, *, fmt: str = "console", level: str = "INFO") -> None:
            original_configure(service, fmt=fmt, level=level)
            self.services += 1
            self.attach()

        async def ensure_topics(settings: Any, topics: Any) -> None:
            created = self.topics.setdefault(settings.kafka_bootstrap_servers, {})
            for name in topics.all():
                created.setdefault(name, self.test)
            await original_ensure(settings, topics)

        self._patch(app, "ensure_topics", original_ensure, ensure_topics)
        # Every module that imported it by name (`from services.runtime.logs import ...`).
        for module in [logs, *list(sys.modules.values())]:
            if getattr(module, "configure_logging", None) is original_configure:
                self._patch(module, "configure_logging", original_configure, configure_logging)
        self.attach()

    def _patch(self, module: Any, name: str, original: Any, replacement: Any) -> None:
        setattr(module, name, replacement)
        self._undo.append(lambda: setattr(module, name, original))

    def attach(self) -> None:
        """Capture at DEBUG; the handlers already there keep the root's configured level."""
        root = logging.getLogger()
        if self._handler is None or self._handler in root.handlers:
            return
        self._level = root.level
        for handler in root.handlers:
            if handler.level < root.level:
                handler.setLevel(root.level)
            if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
                self._handler.service_formatter = handler.formatter
        root.addHandler(self._handler)
        root.setLevel(logging.DEBUG)
        # The test's own Kafka clients log each record they send at DEBUG; they are not a
        # service. Every service holds aiokafka at WARNING at least (configure_logging),
        # so hold it there too when no service in this process has done it yet.
        kafka_logger = logging.getLogger("aiokafka")
        if kafka_logger.level == logging.NOTSET:
            kafka_logger.setLevel(logging.WARNING)
            self._undo.append(lambda: kafka_logger.setLevel(logging.NOTSET))

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()
        root = logging.getLogger()
        if self._handler in root.handlers:
            root.removeHandler(self._handler)
            if self._level is not None:
                root.setLevel(self._level)

    def add_output(self, where: str, lines: Iterable[str]) -> None:
        """Lines of a subprocess (a `make run`), scanned like log lines."""
        self.lines.extend(Text(where, self.test, line) for line in lines)

    def test_of(self, topic: str) -> str:
        for created in self.topics.values():
            if topic in created:
                return created[topic]
        return "(unknown test)"

    async def findings(self, examples: Path = ROOT / "examples") -> tuple[list[Finding], str]:
        """Every personal value found in the output, and a summary of what was scanned."""
        needles = Needles()
        answers: list[tuple[str, bytes]] = []
        for bootstrap, created in self.topics.items():
            # Commands first: a value is named by the command that sent it.
            ordered = sorted(created, key=lambda name: (not name.endswith(".commands"), name))
            rank = {name: index for index, name in enumerate(ordered)}
            records = sorted(await read_topics(bootstrap, ordered), key=lambda r: rank[r[0]])
            for topic, value in records:
                try:
                    body = json.loads(value)
                except (ValueError, RecursionError):  # not JSON, or hostile (nested too deeply)
                    continue
                needles.add_from(body, topic)
                answers.append((topic, value))
        for path in sorted(examples.glob("*.json")):
            needles.add_from(json.loads(path.read_text()), f"examples/{path.name}")
        texts = answer_texts(answers, self.test_of)
        summary = (
            f"{len(needles.origins)} personal values (from {len(answers)} messages on "
            f"{sum(len(c) for c in self.topics.values())} topics and the examples) looked for "
            f"in {len(self.lines)} log lines and {len(texts)} CommandRejected"
        )
        return scan([*self.lines, *texts], needles), summary


async def read_topics(bootstrap: str, topics: list[str]) -> list[tuple[str, bytes]]:
    """Every record of `topics`, from the beginning to the end, with one consumer."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
        # A record above the default 1 MiB would never come (the broker sends none).
        max_partition_fetch_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = await partitions(consumer, topics)
        if not tps:
            return []
        ends = await consumer.end_offsets(tps)
        tps = [tp for tp in tps if ends[tp] > 0]  # most partitions of a test stay empty
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        remaining = set(tps)
        found: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + 60
        empty = 0
        # As in tests.support.kafka.read_all: Tansu's end offset may lie before the last
        # record of a batch, so read on until fetches come back empty.
        while time.monotonic() < deadline:
            batch = await consumer.getmany(*tps, timeout_ms=100)
            empty = 0 if batch else empty + 1
            for tp, messages in batch.items():
                for message in messages:
                    found.append((tp.topic, message.value or b""))
                    if message.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
            if empty >= 3 and not remaining:
                break
        if remaining:
            raise AssertionError(f"not read to their end in 60 s: {sorted(map(str, remaining))}")
        return found
    finally:
        await consumer.stop()


def report(findings: list[Finding], summary: str) -> str:
    shown = findings[:20]
    more = f"\n... and {len(findings) - len(shown)} more" if len(findings) > len(shown) else ""
    return (
        f"personal data the tests sent appears {len(findings)} times in the services' log "
        f"lines or answers ({summary}):\n" + "\n".join(str(f) for f in shown) + more
    )
