"""What must have become of every record on a consumed topic, and what did.

For each record on a topic and each service consuming it, the record is read here as the
consumer reads it (size limit, `parse_envelope` with the consumer's types):

- it does not parse → exactly one dead letter from that service names its
  (topic, partition, offset), and, when its header names a command (readable
  `message_id` and `website_key`, a type the consumer answers or an unknown type on a
  command topic), one `CommandRejected` answers it, with the dead letter's error codes;
  a type the consumer does not take is refused as `not_allowed_here` when it is a
  catalog type (it belongs on another topic), as `unknown_type` otherwise;
- it parses → its (`website_key`, `message_id`) is in that consumer's inbox (handled,
  ignored or dead-lettered by its handler: at most one dead letter), and a command is
  answered exactly once (a `CommandRejected` with the dead letter's codes when its
  handler's failure dead-lettered it).

A consumer with a prefilter leaves out, before parsing, records it has no business
with: no dead letter, no inbox row. The notifier's copies to merchants' own topics leave
out every record whose Kafka key names a website (`{website_key}` or `{website_key}:…`)
without topics of its own. The caller gives those websites (`merchants_with_topics`);
they must not change while the records are read (the harness enables them before it
sends anything else). Records whose key names no website go the normal way. The
subscription service's invoice events leave out every record with a value that cannot
be a rejected invoice (services/subscription/app.py).

Answers are counted per command, (`website_key`, `command_id`): message ids are unique
per website. `answers` must be what the services wrote on the results topic (the caller
leaves out anything else there: the notifier consumes that topic, so the fuzz writes to
it too); each must parse as `CommandAccepted` or `CommandRejected`. Every dead letter
and every answer must belong to such a record; none may repeat.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from contracts import catalog
from contracts.envelope import Envelope, ParseError, parse_envelope, registered_types

SERVICES = catalog.SERVICES

#: A message as inboxes and answers know it: message ids are unique per website.
MessageRef = tuple[str, uuid.UUID]
ANSWER_TYPES = frozenset({"CommandAccepted", "CommandRejected"})


@dataclass(frozen=True)
class Consumer:
    """One `ConsumerSpec` of one service, as far as the oracle needs it."""

    service: str
    name: str
    topic: str  # base name
    answers: dict[str, bool]
    ignored: frozenset[str]
    #: Leaves out the records of websites without topics of their own (the feeds).
    prefiltered: bool = False
    #: Leaves out the records that cannot be a rejected invoice (the subscription's).
    rejected_only: bool = False

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
            prefilter = spec.prefilter
            if prefilter not in (None, _feeds_prefilter(), _rejected_prefilter()):
                raise AssertionError(
                    f"{service}.{spec.name}: the oracle knows only the feeds' and the"
                    " subscription's prefilters"
                )
            found.append(
                Consumer(
                    service,
                    spec.name,
                    spec.topic,
                    {name: handler.answers for name, handler in spec.handlers.items()},
                    frozenset(spec.ignored_types),
                    prefiltered=prefilter is _feeds_prefilter(),
                    rejected_only=prefilter is _rejected_prefilter(),
                )
            )
    return found


def _feeds_prefilter() -> object:
    return importlib.import_module("services.notifier.feeds").merchants_with_feeds


def _rejected_prefilter() -> object:
    return importlib.import_module("services.subscription.app").rejected_invoices_only


def _may_be_rejected(value: bytes | None) -> bool:
    """The subscription prefilter's test of a record's value."""
    check: Callable[[bytes | None], bool]
    check = importlib.import_module("services.subscription.app").may_be_rejected
    return check(value)


#: A website key, as the envelope allows it.
_WEBSITE_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def website_in_key(key: bytes | None) -> str | None:
    """The website a Kafka key names: `{website_key}` or `{website_key}:…`."""
    if key is None:
        return None
    head = key.decode("utf-8", "replace").split(":", 1)[0]
    return head if _WEBSITE_KEY.fullmatch(head) else None


def left_out(
    consumer: Consumer, key: bytes | None, merchants_with_topics: set[str], value: bytes | None
) -> bool:
    """Whether the consumer's prefilter leaves the record out, unread."""
    if consumer.rejected_only:
        return not _may_be_rejected(value)
    if not consumer.prefiltered:
        return False
    website = website_in_key(key)
    return website is not None and website not in merchants_with_topics


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
    #: The error codes of the dead letters of the records, each code once per letter.
    codes: Counter[str] = field(default_factory=Counter)
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
    inbox: dict[str, set[MessageRef]],
    merchants_with_topics: set[str],
    prefix: str,
    max_message_bytes: int,
    dlq_max_value_bytes: int,
    readings: dict[tuple[str, str, int, int], Reading] | None = None,
    answer_readings: dict[tuple[str, int, int], Reading] | None = None,
    describe: Callable[[Seen], str] = Seen.show,
) -> Verdict:
    """`readings` and `answer_readings` cache how each record and each answer reads,
    across repeated checks; `describe` names a record in a problem."""
    verdict = Verdict()
    readings = {} if readings is None else readings
    answer_readings = {} if answer_readings is None else answer_readings
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
    # Per command: (answer type, its error codes) of each answer.
    answered: dict[MessageRef, list[tuple[str, tuple[str, ...]]]] = defaultdict(list)
    for record in answers:
        spot = (record.topic, record.partition, record.offset)
        if spot not in answer_readings:
            try:
                parsed = parse_envelope(record.value or b"", set(ANSWER_TYPES))
                answer_readings[spot] = Reading(parsed, None)
            except ParseError as refused:
                answer_readings[spot] = Reading(None, refused)
        answer = answer_readings[spot].envelope
        if answer is None:
            refusal = answer_readings[spot].error
            verdict.problems.append(f"an answer does not parse ({refusal}): {record.show()}")
            continue
        said = tuple(sorted({e.code for e in getattr(answer.payload, "errors", ())}))
        answered[(answer.website_key, answer.payload.command_id)].append((answer.type, said))

    # Per command: the error codes its answer must have (None: any answer).
    expected_answers: dict[MessageRef, list[tuple[str, ...] | None]] = defaultdict(list)
    commands: dict[MessageRef, Seen] = {}  # a record of each command, to name in a problem
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
            verdict.codes.update(codes)
            if left_out(consumer, record.key, merchants_with_topics, record.value):
                verdict.outcomes[f"{consumer.inbox_name}: left out"] += 1
                verdict.fates[describe(record)].append(f"{consumer.inbox_name}: left out")
                envelope = reading.envelope
                handled = envelope is not None and (
                    (envelope.website_key, envelope.message_id)
                    in inbox.get(consumer.inbox_name, set())
                )
                if found or handled:
                    verdict.problems.append(
                        f"{consumer.inbox_name} should leave out a record of a merchant without"
                        f" topics of its own, {'dead-lettered' if found else 'handled'} it:"
                        f" {describe(record)}"
                    )
                continue
            verdict.fates[describe(record)].append(f"{consumer.inbox_name}: {','.join(codes)}")
            # What the answer of a dead-lettered command says: the dead letter's codes.
            owed = tuple(codes) if len(found) == 1 else None
            if reading.envelope is None:
                verdict.outcomes[f"{consumer.inbox_name}: dead letter"] += 1
                if len(found) != 1:
                    verdict.problems.append(
                        f"{consumer.service} should dead-letter once, did {len(found)}x: "
                        f"{describe(record)}"
                    )
                error = reading.error
                if error is not None and found:
                    verdict.problems.extend(
                        f"{consumer.service}: {problem}: {describe(record)}"
                        for problem in _type_problems(error, codes)
                    )
                if (
                    error is not None
                    and error.attributable
                    and consumer.answers_unparsed(error.type)
                ):
                    assert error.website_key is not None and error.message_id is not None
                    command = (error.website_key, error.message_id)
                    expected_answers[command].append(owed)
                    commands[command] = record
            else:
                envelope = reading.envelope
                verdict.outcomes[f"{consumer.inbox_name}: parsed"] += 1
                command = (envelope.website_key, envelope.message_id)
                if command not in inbox.get(consumer.inbox_name, set()):
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
                    expected_answers[command].append(owed if found else None)
                    commands[command] = record
            for letter in found:
                verdict.problems.extend(
                    f"{consumer.service}: {problem}: {describe(record)}"
                    for problem in _letter_problems(letter, record, dlq_max_value_bytes)
                )

    for where, found in letters.items():
        if where not in known:
            verdict.problems.append(f"a dead letter names no record read: {where} ({len(found)}x)")
    for command in set(expected_answers) | set(answered):
        got, wanted = answered.get(command, []), expected_answers.get(command, [])
        example = commands.get(command)
        named = f": {describe(example)}" if example is not None else ""
        if len(got) != len(wanted):
            verdict.problems.append(
                f"command {command}: {len(got)} answers, {len(wanted)} expected {got}{named}"
            )
            continue
        left = list(got)
        for owed_codes in wanted:
            if owed_codes is None:
                continue
            if ("CommandRejected", owed_codes) in left:
                left.remove(("CommandRejected", owed_codes))
            else:
                verdict.problems.append(
                    f"command {command}: answered {got}, a CommandRejected with the dead"
                    f" letter's codes {list(owed_codes)} expected{named}"
                )
    return verdict


def _type_problems(error: ParseError, codes: list[str]) -> list[str]:
    """A record refused for its type: the dead letter names the right reason."""
    if not any(e.field == "type" and e.code == "unknown_type" for e in error.errors):
        return []
    # Read the registry now, not at import: a test module may register types (the test
    # ledger does) after this one is imported, and the services see them too. A
    # registered type on a topic that does not carry it is `not_allowed_here`.
    if error.type in registered_types():
        if "not_allowed_here" not in codes or "unknown_type" in codes:
            return [f"{error.type} on the wrong topic refused with {codes}, not not_allowed_here"]
    elif "unknown_type" not in codes or "not_allowed_here" in codes:
        return [f"an unknown type refused with {codes}, not unknown_type"]
    return []


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
