"""What must have become of every record on a consumed topic, and what did.

For each record on a topic and each service consuming it, the record is read here as the
consumer reads it (size limit, `parse_envelope` with the consumer's types):

- it does not parse → exactly one dead letter from that service names its
  (topic, partition, offset), and, when its header names a command (readable
  `message_id` and `website_key`, a type the consumer answers or an unknown type on a
  command topic), one `CommandRejected` answers it;
- it parses → its `message_id` is in that consumer's inbox (handled, ignored or
  dead-lettered by its handler: at most one dead letter), and a command is answered
  exactly once.

Every dead letter and every answer must belong to such a record; none may repeat.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from contracts import catalog
from contracts.envelope import Envelope, ParseError, parse_envelope

SERVICES = catalog.SERVICES


@dataclass(frozen=True)
class Consumer:
    """One `ConsumerSpec` of one service, as far as the oracle needs it."""

    service: str
    name: str
    topic: str  # base name
    answers: dict[str, bool]
    ignored: frozenset[str]

    @property
    def inbox_name(self) -> str:
        return f"{self.service}.{self.name}"

    @property
    def allowed(self) -> set[str]:
        return set(self.answers) | set(self.ignored)

    def answers_unparsed(self, type_name: str | None) -> bool:
        """Whether a record of this type that does not parse gets a CommandRejected."""
        if type_name is None:
            return False
        if type_name in self.answers:
            return self.answers[type_name]
        return any(self.answers.values()) and type_name not in self.ignored


def consumers() -> list[Consumer]:
    found = []
    for service in SERVICES:
        definition = importlib.import_module(f"services.{service}.app").definition()
        for spec in definition.consumers:
            found.append(
                Consumer(
                    service,
                    spec.name,
                    spec.topic,
                    {name: handler.answers for name, handler in spec.handlers.items()},
                    frozenset(spec.ignored_types),
                )
            )
    return found


@dataclass(frozen=True)
class Seen:
    """A record as read back from a topic (raw key and value)."""

    topic: str  # as deployed (with the prefix)
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def json(self) -> Any:
        return json.loads(self.value or b"")

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return None

    def show(self, limit: int = 300) -> str:
        """A short, printable form of the record, to reproduce a failure."""
        value = self.value
        body = (
            "None" if value is None else repr(value[:limit]) + ("…" if len(value) > limit else "")
        )
        size = "" if value is None else f" ({len(value)} bytes)"
        return (
            f"{self.topic}[{self.partition}]@{self.offset} key={self.key!r:.80} value={body}{size}"
        )


@dataclass(frozen=True)
class Reading:
    """How a consumer reads a record: its envelope, or why it does not parse."""

    envelope: Envelope[Any] | None
    error: ParseError | None

    @property
    def parsed(self) -> bool:
        return self.envelope is not None


def read(
    consumer: Consumer, key: bytes | None, value: bytes | None, max_message_bytes: int
) -> Reading:
    """As the runtime reads a record: a body above the limit is not read; a body that
    parses under a Kafka key the platform never writes (not UTF-8, control characters)
    is refused too, attributed to its command."""
    body = value or b""
    if len(body) > max_message_bytes:
        return Reading(None, ParseError([]))
    try:
        envelope = parse_envelope(body, consumer.allowed)
    except ParseError as error:
        return Reading(None, error)
    except Exception:
        return Reading(None, ParseError([]))
    if not key_is_text(key):
        refused = ParseError(
            [], envelope.message_id, envelope.website_key, envelope.type, envelope.correlation
        )
        return Reading(None, refused)
    return Reading(envelope, None)


def key_is_text(key: bytes | None) -> bool:
    if key is None:
        return True
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return False
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


@dataclass
class Verdict:
    """The outcome of one check over everything read so far."""

    problems: list[str] = field(default_factory=list)
    #: Records that parsed but whose handler dead-lettered them: (consumer, record, codes).
    handler_failures: list[tuple[Consumer, Seen, list[str]]] = field(default_factory=list)
    #: How the records came out: "dead letter", "handled", per consumer.
    outcomes: Counter[str] = field(default_factory=Counter)
    #: Per record (by describe): what each consumer made of it, for a report.
    fates: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def ok(self) -> bool:
        return not self.problems


def check(
    *,
    records: Iterable[Seen],
    dead_letters: Iterable[Seen],
    answers: Iterable[Seen],
    inbox: dict[str, set[uuid.UUID]],
    prefix: str,
    max_message_bytes: int,
    dlq_max_value_bytes: int,
    readings: dict[tuple[str, str, int, int], Reading] | None = None,
    describe: Callable[[Seen], str] = Seen.show,
) -> Verdict:
    """`readings` caches how each record reads, across repeated checks; `describe`
    names a record in a problem."""
    verdict = Verdict()
    readings = {} if readings is None else readings
    by_topic: dict[str, list[Consumer]] = defaultdict(list)
    for consumer in consumers():
        by_topic[prefix + consumer.topic].append(consumer)

    letters: dict[tuple[str, str, int, int], list[dict[str, Any]]] = defaultdict(list)
    for record in dead_letters:
        body = record.json()
        letter = body["payload"]
        letters[(letter["service"], letter["topic"], letter["partition"], letter["offset"])].append(
            letter
        )
    answered: Counter[str] = Counter()
    for record in answers:
        answered[str(record.json()["payload"]["command_id"])] += 1

    expected_answers: Counter[str] = Counter()
    commands: dict[str, Seen] = {}  # command id → a record of it, to name in a problem
    known: set[tuple[str, str, int, int]] = set()
    for record in records:
        for consumer in by_topic.get(record.topic, ()):
            where = (consumer.service, record.topic, record.partition, record.offset)
            known.add(where)
            found = letters.get(where, [])
            reading = readings.get(where)
            if reading is None:
                reading = readings[where] = read(
                    consumer, record.key, record.value, max_message_bytes
                )
            codes = sorted({e["code"] for letter in found for e in letter["errors"]})
            verdict.fates[describe(record)].append(f"{consumer.inbox_name}: {','.join(codes)}")
            if reading.envelope is None:
                verdict.outcomes[f"{consumer.inbox_name}: dead letter"] += 1
                if len(found) != 1:
                    verdict.problems.append(
                        f"{consumer.service} should dead-letter once, did {len(found)}x: "
                        f"{describe(record)}"
                    )
                error = reading.error
                if (
                    error is not None
                    and error.attributable
                    and consumer.answers_unparsed(error.type)
                ):
                    expected_answers[str(error.message_id)] += 1
                    commands[str(error.message_id)] = record
            else:
                envelope = reading.envelope
                verdict.outcomes[f"{consumer.inbox_name}: parsed"] += 1
                if envelope.message_id not in inbox.get(consumer.inbox_name, set()):
                    verdict.problems.append(
                        f"{consumer.inbox_name} has not handled {envelope.type} "
                        f"{envelope.message_id} (dead letters: {[d['error'][:200] for d in found]}"
                        f"): {describe(record)}"
                    )
                if len(found) > 1:
                    verdict.problems.append(
                        f"{consumer.service} dead-lettered {len(found)}x: {describe(record)}"
                    )
                if found:
                    verdict.handler_failures.append((consumer, record, codes))
                if consumer.answers.get(envelope.type):
                    expected_answers[str(envelope.message_id)] += 1
                    commands[str(envelope.message_id)] = record
            for letter in found:
                verdict.problems.extend(
                    f"{consumer.service}: {problem}: {describe(record)}"
                    for problem in _letter_problems(letter, record, dlq_max_value_bytes)
                )

    for where, found in letters.items():
        if where not in known:
            verdict.problems.append(f"a dead letter names no record read: {where} ({len(found)}x)")
    for command_id in set(expected_answers) | set(answered):
        if answered[command_id] != expected_answers[command_id]:
            record = commands.get(command_id)
            verdict.problems.append(
                f"command {command_id}: {answered[command_id]} answers, "
                f"{expected_answers[command_id]} expected"
                + (f": {describe(record)}" if record is not None else "")
            )
    return verdict


def _letter_problems(letter: dict[str, Any], record: Seen, limit: int) -> list[str]:
    value = record.value or b""
    problems = []
    if letter.get("raw_length") != len(value):
        problems.append(f"raw_length {letter.get('raw_length')} != {len(value)}")
    if letter.get("raw_sha256") != hashlib.sha256(value).hexdigest():
        problems.append("raw_sha256 is not the body's")
    if letter.get("raw_truncated") != (len(value) > limit):
        problems.append(f"raw_truncated is {letter.get('raw_truncated')}")
    if len(letter.get("raw_value", "").encode("utf-8", "surrogatepass")) > 3 * limit:
        problems.append("raw_value is not bounded")
    key = letter.get("key")
    if key is not None and (len(key) > 256 or "\x00" in key):
        problems.append(f"the dead letter's key is not cleaned: {key[:40]!r}")
    return problems
