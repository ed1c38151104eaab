"""Hostile records for every consumed topic, drawn with hypothesis.

A record is first a `Blueprint`: a JSON tree (an envelope whose payload comes from the
message's JSON schema, `model_json_schema()`), possibly mutated, or raw bytes; and a
choice of Kafka key. `Blueprint.materialise` turns it into the bytes that are sent, with
a fresh `message_id` wherever the tree holds `FRESH_ID` (hypothesis repeats values on
purpose; message ids must not repeat, or a record would be a duplicate of another).

Big things (200 KB strings, 100,000 brackets, bodies above the size limit) are drawn as
a choice and built here, so hypothesis' own buffer stays small.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from contracts import catalog
from contracts.envelope import Message, registered_types


class _FreshId:
    """Stands for a new uuid4 in a tree; replaced when the record is materialised."""

    def __repr__(self) -> str:
        return "FRESH_ID"


FRESH_ID = _FreshId()


class _FreshName:
    """Stands for a new identifier (an invoice number, say) in a tree, so that records
    made from one good message create an aggregate each instead of repeating one."""

    def __repr__(self) -> str:
        return "FRESH_NAME"


FRESH_NAME = _FreshName()

#: Placeholder of the webhook URL: schema-generated RegisterWebhook commands point at a
#: local sink the test runs, never at an address a hypothesis string could name.
WEBHOOK_URL = "http://webhook.placeholder.invalid/"

#: Merchants the fuzz uses (good records use their own, so they never meet).
FUZZ_WEBSITES = ("fuzz-a", "fuzz-b", "..")
HOSTILE_WEBSITES = (
    "shop 1",
    "../..",
    "a" * 1000,
    "",
    "shop\x00",
    "shöp",
    "shop:1",
    "\ud800",
)

#: The strings a mutation puts into a tree (besides the generated ones).
HUGE_CHARS = 200_000
_HOSTILE_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "a\udfffb",
    "\u202e\u2066",
    "😀" * 3,
    "-1",
    "1e400",
    "NaN",
    "Infinity",
    "12,50",
    "0x10",
    "2026-13-45",
    "0000-01-01",
    "0001-01-01",
    "1899-12-31",
    "3000-01-01",
    "9999-12-31",
    "2026-11-01T09:00:00",
    "9999-12-31T23:59:59+00:00",
    "0001-01-01T00:00:00+00:00",
    "2026-11-01T09:00:00+99:00",
    "http://127.0.0.1:9/\r\nX-Injected: 1",
    "whsec_!!!",
    "müller@example.de",
    "a@b\r\nBcc: x@y",
    "../../etc/passwd",
    "cm.dlq",
    "cm.push.invoice",
    "<script>alert(1)</script>",
    "'; DROP TABLE inbox; --",
)
_HOSTILE_TIMES: tuple[Any, ...] = (
    "yesterday",
    1700000000,
    "",
    "2026-11-01T09:00:00",
    "2026-11-01",
    "9999-12-31T23:59:59+00:00",
    "0001-01-01T00:00:00+00:00",
    "1899-12-31T23:59:59+00:00",
    "3000-01-01T00:00:00+00:00",
    "2026-11-01T09:00:00+99:00",
    "2026-11-01T09:00:00-23:59",
)
_HOSTILE_NUMBERS: tuple[Any, ...] = (
    0,
    -1,
    1,
    2**31,
    2**63,
    -(2**63) - 1,
    10**30,
    -(10**30),
    1.5,
    -0.0,
    1e300,
    123456789.123456789,
)
#: Number literals json.dumps cannot write; put into the body after serialisation.
_NUMBER_LITERALS: tuple[bytes, ...] = (
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"1E-400",
    b"-0",
    b"1" + b"0" * 5000,  # more digits than Python's int parser takes
    b"0." + b"0" * 400 + b"1",
    b"1" + b"0" * 300 + b".5",
)
#: Byte sequences that are not UTF-8 (the last is an encoded surrogate, which Python's
#: JSON reader takes with `surrogatepass`).
_BAD_UTF8: tuple[bytes, ...] = (b"\xff", b"\xc3\x28", b"\xfe\xff\x00", b"\xe2\x82", b"\xed\xa0\x80")


@dataclass(frozen=True)
class KeyChoice:
    """How the Kafka key of a record is made."""

    kind: str  # matching | none | empty | nul | bad_utf8 | huge | unicode

    def build(self, website_key: str) -> bytes | None:
        if self.kind == "none":
            return None
        if self.kind == "empty":
            return b""
        if self.kind == "nul":
            return f"{website_key}\x00:INV\x00".encode("utf-8", "surrogatepass")
        if self.kind == "bad_utf8":
            return b"\xff\xfe" + website_key.encode("utf-8", "replace") + b":\xc3\x28"
        if self.kind == "huge":
            return b"k" * 20_000
        if self.kind == "unicode":
            return "ключ:\u202e:😀".encode()
        return f"{website_key}:fuzz".encode("utf-8", "surrogatepass")


#: Mostly a key as a producer would write it: a hostile key refuses a record whatever its
#: body, so it would hide what the body does.
KEYS = st.sampled_from(
    [KeyChoice("matching")] * 6
    + [KeyChoice(k) for k in ("none", "empty", "nul", "bad_utf8", "huge", "unicode")]
)
MATCHING_KEY = KeyChoice("matching")


@dataclass(frozen=True)
class Blueprint:
    """What to send: a JSON tree (with byte patches after serialising) or raw bytes."""

    kind: str
    key: KeyChoice = MATCHING_KEY
    tree: Any = None
    raw: bytes | None = None
    #: Raw bytes (None: a tombstone) built when materialised, for sizes known only then.
    build_raw: Callable[[int], bytes | None] | None = None
    #: (marker, bytes): after serialising, the JSON string `"marker"` becomes the bytes.
    patches: tuple[tuple[str, bytes], ...] = ()
    #: Serialise with `ensure_ascii` (lone surrogates as `\\ud800` escapes) or as UTF-8
    #: (with `surrogatepass`, so a lone surrogate becomes bytes that are not UTF-8).
    ascii: bool = True
    encoding: str = "utf-8"
    bom: bool = False

    def materialise(
        self, *, max_message_bytes: int, webhook_url: str
    ) -> tuple[bytes | None, bytes | None]:
        """(key, value) as they go on the wire."""
        # Raw bytes are keyed as a fuzz merchant's: a consumer that leaves out the records
        # of merchants without topics of their own (the notifier's copies) reads them.
        website = FUZZ_WEBSITES[0]
        if isinstance(self.tree, dict) and isinstance(self.tree.get("website_key"), str):
            website = self.tree["website_key"]
        key = self.key.build(website)
        if self.build_raw is not None:
            return key, self.build_raw(max_message_bytes)
        if self.raw is not None:
            return key, self.raw
        body = serialise(
            self.tree,
            patches=self.patches,
            ascii=self.ascii,
            encoding=self.encoding,
            bom=self.bom,
            webhook_url=webhook_url,
        )
        # Above the limit a body is refused unread: a little above is as good as far
        # above, and stays below what the producer and the broker take.
        return key, body[: max_message_bytes + 4096]


def serialise(
    tree: Any,
    *,
    patches: tuple[tuple[str, bytes], ...] = (),
    ascii: bool = True,
    encoding: str = "utf-8",
    bom: bool = False,
    webhook_url: str = WEBHOOK_URL,
) -> bytes:
    def fresh(value: Any) -> Any:
        if isinstance(value, _FreshId):
            return str(uuid.uuid4())
        if isinstance(value, _FreshName):
            return f"E-{uuid.uuid4().hex[:12]}"
        raise TypeError(f"not JSON: {type(value).__name__}")

    text = json.dumps(tree, ensure_ascii=ascii, default=fresh)
    text = text.replace(WEBHOOK_URL, webhook_url)
    if encoding == "utf-8":
        body = text.encode("utf-8", "surrogatepass")
    else:
        body = text.encode(encoding, "surrogatepass")
    for marker, raw in patches:
        # (A later mutation may have replaced the marker: then there is nothing to patch.)
        quoted = json.dumps(marker, ensure_ascii=ascii).encode(encoding, "surrogatepass")
        body = body.replace(quoted, raw)
    if bom:
        body = b"\xef\xbb\xbf" + body
    return body


# --- JSON schema → strategy ----------------------------------------------------------------

#: Strings from hypothesis stay short: size limits are tested by edges and mutations.
_MAX_TEXT = 24
_MAX_ITEMS = 2
#: A list drawn at its maximum length repeats one drawn item up to this many times.
_MAX_REPEAT = 1000

#: Values a merchant would really send, for fields whose pattern alone would almost
#: never produce a known one (so that generated commands get past the business rules).
_HINTS: dict[str, tuple[Any, ...]] = {
    "currency": ("EUR", "USD", "JPY", "BHD"),
    "country": ("NL", "DE", "BE"),
    "culture": ("nl-NL", "en-US", "de-DE"),
    "scheme_key": ("DefaultCM1", "DefaultNone", "FZ"),
    "service": ("ideal", "paypal"),
    "email": ("jan@example.test", "a@b"),
    "secret": ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",),
}
_EDGE_DATES = ("1900-01-01", "2999-12-31", "1899-12-31", "3000-01-01", "2026-02-29", "2024-02-29")
_EDGE_TIMES = (
    "1900-01-01T00:00:00+00:00",
    "2999-12-31T23:59:59.999999+00:00",
    "1899-12-31T23:59:59+00:00",
    "3000-01-01T00:00:00+00:00",
    "1900-01-01T00:00:00+14:00",
    "2999-12-31T23:59:59-12:00",
)


def from_schema(
    schema: dict[str, Any], root: dict[str, Any], depth: int = 0, name: str = ""
) -> st.SearchStrategy[Any]:
    """Values of a pydantic JSON schema (the subset pydantic writes: $ref/$defs, anyOf,
    enum, const, type with formats, patterns, lengths and bounds, objects, arrays),
    with the edges of each (longest strings, bounds, first and last dates, fullest lists)
    and, for some field names, realistic values."""
    if depth > 12:
        return st.none()
    if name in _HINTS and "enum" not in schema:
        return st.one_of(st.sampled_from(_HINTS[name]), _from_schema(schema, root, depth, name))
    return _from_schema(schema, root, depth, name)


def _from_schema(
    schema: dict[str, Any], root: dict[str, Any], depth: int, name: str
) -> st.SearchStrategy[Any]:
    if "$ref" in schema:
        ref = schema["$ref"].rsplit("/", 1)[-1]
        return from_schema(root["$defs"][ref], root, depth + 1, name)
    if "anyOf" in schema or "oneOf" in schema:
        options = schema.get("anyOf") or schema["oneOf"]
        kinds = {option.get("type") for option in options}
        plain = all("pattern" not in o and "format" not in o for o in options)
        if kinds == {"number", "string"} and plain:  # a Decimal: a number or its text
            return _decimals(next(o for o in options if o.get("type") == "number"))
        return st.one_of([from_schema(option, root, depth + 1, name) for option in options])
    if "allOf" in schema:
        return from_schema(schema["allOf"][0], root, depth + 1, name)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, root, depth, name) for k in kind])
    if kind == "string":
        return _strings(schema)
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        candidates = (low, high, 0, 1, -1, 2**31 - 1, 2**31)
        edges = [v for v in candidates if v is not None and _within(v, low, high)]
        return st.one_of(st.sampled_from(edges), st.integers(min_value=low, max_value=high))
    if kind == "number":
        return _decimals(schema)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = from_schema(schema.get("items", {}), root, depth + 1, name)
        low = schema.get("minItems", 0)
        high = schema.get("maxItems")
        drawn = st.lists(items, min_size=low, max_size=low + _MAX_ITEMS)
        if high is None or high > _MAX_REPEAT:
            return drawn
        return st.one_of(drawn, items.map(lambda item: [item] * high))
    if kind == "object" or "properties" in schema:
        return _objects(schema, root, depth)
    return _json_values()


def _within(value: Any, low: Any, high: Any) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _decimals(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A decimal as a JSON number or string: within the bounds with 0 to 4 places, at the
    bounds, or one step past them."""
    low, high = schema.get("minimum"), schema.get("maximum")
    edges: list[Any] = [0, 1, "0.0001", "-0.0001", "123.45"]
    for bound in (low, high):
        if bound is not None:
            edges += [
                int(bound),
                f"{int(bound)}.0000",
                f"{Decimal(int(bound)) + Decimal('0.0001')}",
            ]
    inside = st.decimals(
        min_value=None if low is None else Decimal(int(low)),
        max_value=None if high is None else Decimal(int(high)),
        places=4,
        allow_nan=False,
        allow_infinity=False,
    ).map(lambda d: format(d, "f"))
    return st.one_of(
        st.sampled_from(edges),
        inside,
        st.integers(
            min_value=None if low is None else int(low),
            max_value=None if high is None else int(high),
        ),
        st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False),
    )


#: Text a person might type: no control characters, no surrogates.
_TYPED = st.characters(blacklist_categories=("Cc", "Cs"))


def _strings(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    fmt = schema.get("format")
    if fmt == "date":
        return st.one_of(
            st.sampled_from(_EDGE_DATES),
            st.dates(*_recent_dates()).map(lambda d: d.isoformat()),
            st.dates().map(lambda d: d.isoformat()),
        )
    if fmt == "date-time":
        return st.one_of(
            st.sampled_from(_EDGE_TIMES),
            st.datetimes(*_recent_datetimes(), timezones=st.just(UTC)).map(lambda d: d.isoformat()),
            st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
        )
    if fmt == "uuid":
        return st.uuids().map(str)
    low = schema.get("minLength", 0)
    high = schema.get("maxLength")
    pattern = schema.get("pattern")
    if pattern == r"^https?://\S+$":
        return st.just(WEBHOOK_URL)  # never a generated address: see WEBHOOK_URL
    if pattern is not None:
        return st.from_regex(pattern, fullmatch=True).filter(
            lambda s: low <= len(s) <= (high if high is not None else 10**6)
        )
    top = max(low, min(high if high is not None else _MAX_TEXT, _MAX_TEXT))
    options = [st.text(_TYPED, min_size=low, max_size=top), st.text(min_size=low, max_size=top)]
    if high is not None and high <= 100_000:
        # The longest allowed, and one longer, in a character of two UTF-8 bytes.
        options.append(st.sampled_from([high, high + 1]).map(lambda n: "é" * n))
    return st.one_of(options)


def _recent_dates() -> tuple[date, date]:
    return date(2020, 1, 1), date(2030, 12, 31)


def _recent_datetimes() -> tuple[datetime, datetime]:
    return datetime(2020, 1, 1), datetime(2030, 12, 31)


def _objects(schema: dict[str, Any], root: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", ()))
    if not properties:
        extra = schema.get("additionalProperties", True)
        if extra is False:  # a message without fields (DisableKafkaPush)
            return st.just({})
        values = (
            _json_values()
            if extra in (True, None) or extra == {}
            else from_schema(extra, root, depth + 1)
        )
        return st.dictionaries(st.text(max_size=8), values, max_size=3)
    return st.fixed_dictionaries(
        {
            name: from_schema(sub, root, depth + 1, name)
            for name, sub in properties.items()
            if name in required
        },
        optional={
            name: from_schema(sub, root, depth + 1, name)
            for name, sub in properties.items()
            if name not in required
        },
    )


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
        ),
        max_leaves=6,
    )


# --- envelopes -----------------------------------------------------------------------------

_SCHEMAS: dict[str, dict[str, Any]] = {}


def schema_of(cls: type[Message]) -> dict[str, Any]:
    found = _SCHEMAS.get(cls.TYPE)
    if found is None:
        found = _SCHEMAS[cls.TYPE] = cls.model_json_schema()
    return found


def payloads(cls: type[Message]) -> st.SearchStrategy[Any]:
    schema = schema_of(cls)
    strategy = from_schema(schema, schema)
    if cls.TYPE == "ScheduleTimer":
        # A real topic, mostly one a timer may publish to, so that a timer can validate
        # (and fire, when it is due); else one it may not (refused, not_allowed_here).
        timer_topics = [t for t in CONSUMED_TOPICS if catalog.timer_types(t)]
        topic = st.one_of(st.sampled_from(timer_topics), st.sampled_from(CONSUMED_TOPICS))
        strategy = st.tuples(strategy, topic).map(lambda pair: {**pair[0], "topic": pair[1]})
    return strategy


def envelopes(
    topic: str,
    *,
    types: st.SearchStrategy[str] | None = None,
    websites: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """A valid-looking envelope of a type the topic carries, its payload from the schema."""
    classes = sorted(catalog.topic_spec(topic).messages, key=lambda c: c.TYPE)
    type_names = types if types is not None else st.sampled_from([cls.TYPE for cls in classes])

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        type_name = draw(type_names)
        cls = registered_types()[type_name]
        payload = draw(payloads(cls))
        if isinstance(payload, dict) and draw(st.booleans()):
            # About the invoice, case or subscription the fixed records create, so that
            # commands reach the state they change instead of an unknown reference.
            payload = {**payload, **_references(payload)}
        body: dict[str, Any] = {
            "message_id": FRESH_ID,
            "type": type_name,
            "website_key": draw(
                websites
                if websites is not None
                else st.sampled_from([FUZZ_WEBSITES[0], *FUZZ_WEBSITES])
            ),
            "occurred_at": draw(
                st.datetimes(*_recent_datetimes(), timezones=st.just(UTC)).map(
                    lambda d: d.isoformat()
                )
            ),
            "payload": payload,
        }
        if draw(st.booleans()):
            body["correlation_id"] = FRESH_ID
        if type_name == "ScheduleTimer" and draw(st.booleans()):
            # A timer whose message is itself a fuzz envelope of the same merchant, due
            # before the manual clock's start (so it fires at once) or long after.
            inner_topic = body["payload"]["topic"]
            inner = draw(envelopes(inner_topic, websites=st.just(body["website_key"])))
            inner.pop("occurred_at")
            body["payload"]["message"] = inner
            body["payload"]["due_at"] = draw(
                st.sampled_from(["1969-12-31T00:00:00+00:00", "2990-01-01T00:00:00+00:00"])
            )
        return body

    return build()


#: The references of the aggregates the fixed records create (merchant FUZZ_WEBSITES[0]).
FUZZ_REFERENCE = "F-1"


def _references(payload: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name in ("invoice_number", "original_invoice_number", "case_key", "subscription_key"):
        if name in payload:
            found[name] = FUZZ_REFERENCE
    if "included_invoice_numbers" in payload:
        found["included_invoice_numbers"] = [FUZZ_REFERENCE]
    return found


# --- mutations -----------------------------------------------------------------------------

Path = tuple[Any, ...]


def _paths(tree: Any, path: Path = ()) -> list[Path]:
    found = [path]
    if isinstance(tree, dict):
        for key, value in tree.items():
            found.extend(_paths(value, (*path, key)))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found.extend(_paths(value, (*path, index)))
    return found


def _get(tree: Any, path: Path) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _set(tree: Any, path: Path, value: Any) -> None:
    _get(tree, path[:-1])[path[-1]] = value


def _nested(depth: int, kind: str) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


@dataclass
class _Mutable:
    tree: Any
    patches: list[tuple[str, bytes]] = field(default_factory=list)
    ascii: bool = True
    names: list[str] = field(default_factory=list)


def _mutation(draw: st.DrawFn, state: _Mutable) -> None:
    tree = state.tree
    paths = [p for p in _paths(tree) if p]
    dict_paths = [p for p in _paths(tree) if isinstance(_get(tree, p), dict)]
    op = draw(
        st.sampled_from(
            [
                "drop",
                "extra",
                "retype",
                "hostile_string",
                "huge_string",
                "empty",
                "nul",
                "surrogate",
                "deep",
                "long_list",
                "bad_utf8",
                "number_literal",
                "wrong_type",
                "website_key",
                "message_id",
                "occurred_at",
            ]
        )
    )
    state.names.append(op)
    if op == "drop":
        droppable = [p for p in paths if isinstance(_get(tree, p[:-1]), dict)]
        if droppable:
            target = draw(st.sampled_from(droppable))
            del _get(tree, target[:-1])[target[-1]]
    elif op == "extra":
        target = draw(st.sampled_from(dict_paths))
        name = draw(
            st.sampled_from(
                ["unexpected", "invoce_date", "", "\x00", "a" * 300, "payload", "__proto__"]
            )
        )
        _get(tree, target)[name] = draw(st.sampled_from([1, "x", None, [], {"a": 1}]))
    elif op == "retype":
        target = draw(st.sampled_from(paths))
        _set(
            tree,
            target,
            draw(
                st.one_of(
                    st.sampled_from(_HOSTILE_NUMBERS),
                    st.sampled_from([None, True, False, [], {}, [1, "a"], {"a": None}]),
                    st.sampled_from(_HOSTILE_STRINGS),
                )
            ),
        )
    elif op == "hostile_string":
        _set(tree, draw(st.sampled_from(paths)), draw(st.sampled_from(_HOSTILE_STRINGS)))
    elif op == "huge_string":
        fill = draw(st.sampled_from(["x", "€", "\x00", "😀"]))
        _set(tree, draw(st.sampled_from(paths)), fill * (HUGE_CHARS // len(fill.encode())))
    elif op == "empty":
        target = draw(st.sampled_from(paths))
        current = _get(tree, target)
        _set(tree, target, type(current)() if isinstance(current, (str, list, dict)) else "")
    elif op == "nul":
        target = draw(st.sampled_from(paths))
        current = _get(tree, target)
        _set(tree, target, f"{current}\x00" if isinstance(current, str) else "\x00")
    elif op == "surrogate":
        target = draw(st.sampled_from(paths))
        _set(tree, target, draw(st.sampled_from(["\ud800", "x\udc00y", "\udbff"])))
        state.ascii = draw(st.booleans())  # escaped, or as bytes that are not UTF-8
    elif op == "deep":
        target = draw(st.sampled_from(paths))
        _set(
            tree,
            target,
            _nested(draw(st.sampled_from([50, 200])), draw(st.sampled_from(["list", "dict"]))),
        )
    elif op == "long_list":
        lists = [p for p in paths if isinstance(_get(tree, p), list)]
        target = draw(st.sampled_from(lists or paths))
        current = _get(tree, target)
        item = current[0] if isinstance(current, list) and current else "x"
        _set(
            tree,
            target,
            [copy.deepcopy(item) for _ in range(draw(st.sampled_from([101, 1001, 5000])))],
        )
    elif op == "bad_utf8":
        marker = f"\ue000bad{len(state.patches)}\ue000"
        _set(tree, draw(st.sampled_from(paths)), marker)
        raw = draw(st.sampled_from(_BAD_UTF8))
        state.patches.append((marker, b'"a' + raw + b'b"'))
        state.ascii = False
    elif op == "number_literal":
        marker = f"\ue000num{len(state.patches)}\ue000"
        _set(tree, draw(st.sampled_from(paths)), marker)
        state.patches.append((marker, draw(st.sampled_from(_NUMBER_LITERALS))))
        state.ascii = False
    elif op == "wrong_type" and isinstance(tree, dict):
        tree["type"] = draw(
            st.one_of(
                st.sampled_from(sorted(registered_types())),
                st.sampled_from(
                    ["", "createinvoice", "X" * 1000, "__class__", "Envelope", "Message"]
                ),
            )
        )
    elif op == "website_key" and isinstance(tree, dict):
        tree["website_key"] = draw(st.sampled_from([*HOSTILE_WEBSITES, 7, None, ["fuzz-a"]]))
    elif op == "message_id" and isinstance(tree, dict):
        tree["message_id"] = draw(st.sampled_from(["not-a-uuid", 123, None, "", "0" * 1000]))
    elif op == "occurred_at" and isinstance(tree, dict):
        tree["occurred_at"] = draw(st.sampled_from(_HOSTILE_TIMES))


# --- records -------------------------------------------------------------------------------

#: Base names of the topics some platform service consumes.
CONSUMED_TOPICS: tuple[str, ...] = tuple(
    sorted(
        {
            name
            for name, spec in catalog.TOPICS.items()
            if set(spec.consumers) & set(catalog.SERVICES)
        }
    )
)


def schema_records(topic: str) -> st.SearchStrategy[Blueprint]:
    return st.builds(lambda tree, key: Blueprint("schema", key, tree=tree), envelopes(topic), KEYS)


def mutated_records(topic: str) -> st.SearchStrategy[Blueprint]:
    @st.composite
    def build(draw: st.DrawFn) -> Blueprint:
        state = _Mutable(draw(envelopes(topic)))
        for _ in range(draw(st.integers(1, 3))):
            _mutation(draw, state)
        encoding = "utf-8"
        bom = False
        if state.ascii and not state.patches and draw(st.integers(0, 9)) == 0:
            encoding = draw(st.sampled_from(["utf-16", "utf-32-le"]))  # JSON's other encodings
        elif draw(st.integers(0, 9)) == 0:
            bom = True
        return Blueprint(
            "mutated:" + "+".join(state.names),
            draw(KEYS),
            tree=state.tree,
            patches=tuple(state.patches),
            ascii=state.ascii,
            encoding=encoding,
            bom=bom,
        )

    return build()


def raw_records() -> st.SearchStrategy[Blueprint]:
    not_objects = st.sampled_from(
        [b"[]", b"null", b"true", b"0", b'"CreateInvoice"', b"[{}]", b"1e400", b"NaN", b'""', b" "]
    )
    return st.one_of(
        st.builds(
            lambda raw, key: Blueprint("raw:random", key, raw=raw), st.binary(max_size=64), KEYS
        ),
        st.builds(lambda raw, key: Blueprint("raw:not_an_object", key, raw=raw), not_objects, KEYS),
        st.builds(
            lambda text, key: Blueprint("raw:text", key, raw=text.encode("utf-8", "surrogatepass")),
            st.text(max_size=32),
            KEYS,
        ),
        st.builds(
            lambda tree, cut, key: Blueprint(
                "raw:truncated",
                key,
                raw=serialise(tree)[: max(1, len(serialise(tree)) * cut // 10)],
            ),
            _json_values(),
            st.integers(1, 9),
            KEYS,
        ),
    )


def _resolve(schema: dict[str, Any], root: dict[str, Any], value: Any) -> dict[str, Any]:
    """The schema an existing value follows: through `$ref`, and in an `anyOf` the
    object (for a dict) or array (for a list) option."""
    for _ in range(10):
        if "$ref" in schema:
            schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
        elif "anyOf" in schema:
            wanted = "object" if isinstance(value, dict) else "array"
            options = [
                o
                for o in schema["anyOf"]
                if o.get("type") == wanted or ("$ref" in o and wanted == "object")
            ]
            if not options:
                return schema
            schema = options[0]
        else:
            return schema
    return schema


def edge_records(bases: list[dict[str, Any]]) -> st.SearchStrategy[Blueprint]:
    """A good envelope (from `bases`) with one to three fields, anywhere in its payload,
    set to a value drawn from that field's schema: mostly the edges (bounds, first and
    last dates, longest strings, fullest lists). The rest stays good, so the record gets
    past the business rules to where the edge is used."""

    @st.composite
    def build(draw: st.DrawFn) -> Blueprint:
        tree = copy.deepcopy(draw(st.sampled_from(bases)))
        root = schema_of(registered_types()[tree["type"]])
        names = []
        for _ in range(draw(st.integers(1, 3))):
            node: Any = tree["payload"]
            schema = root
            while True:
                schema = _resolve(schema, root, node)
                properties = schema.get("properties")
                if not properties or not isinstance(node, dict):
                    break
                name = draw(st.sampled_from(sorted(properties)))
                child, child_schema = node.get(name), properties[name]
                if isinstance(child, dict) and draw(st.booleans()):
                    node, schema = child, child_schema
                    continue
                if isinstance(child, list) and child and draw(st.booleans()):
                    items = _resolve(child_schema, root, child).get("items", {})
                    node = child[draw(st.integers(0, len(child) - 1))]
                    schema = items
                    continue
                node[name] = draw(from_schema(child_schema, root, 1, name))
                names.append(name)
                break
        return Blueprint(f"edge:{tree['type']}:" + "+".join(names), draw(KEYS), tree=tree)

    return build()


def records(topic: str) -> st.SearchStrategy[Blueprint]:
    """One hostile or valid-looking record for `topic`."""
    return st.one_of(
        schema_records(topic),
        schema_records(topic),
        mutated_records(topic),
        mutated_records(topic),
        raw_records(),
    )


def fixed_records(topic: str, valid: dict[str, Any]) -> list[Blueprint]:
    """The cases every topic gets whatever hypothesis draws; `valid` is a good envelope
    of the topic (its `message_id` is FRESH_ID)."""

    def with_(**changes: Any) -> dict[str, Any]:
        return {**copy.deepcopy(valid), **changes}

    def oversized(limit: int) -> bytes:
        body = with_()
        body["payload"] = {**body["payload"], "padding": "x" * (limit + 10_000)}
        return serialise(body)

    payload = valid["payload"]

    def nul(text: str) -> str:
        return text + "\x00"

    def lone(text: str) -> str:
        return text + "\ud800"

    fixed = [
        Blueprint("fixed:deep_array_100000", raw=b"[" * 100_000),
        Blueprint("fixed:deep_object_50000", raw=b'{"a":' * 50_000),
        Blueprint("fixed:deep_closed_5000", raw=b"[" * 5000 + b"]" * 5000),
        Blueprint(
            "fixed:deep_in_payload_5000",
            tree=with_(payload="\ue000deep\ue000"),
            patches=(("\ue000deep\ue000", b"[" * 5000 + b"]" * 5000),),
            ascii=False,
        ),
        Blueprint("fixed:oversized", build_raw=oversized),
        Blueprint("fixed:oversized_garbage", build_raw=lambda limit: b"\xff" * (limit + 1)),
        Blueprint("fixed:tombstone", build_raw=lambda limit: None),
        Blueprint("fixed:empty", raw=b""),
        Blueprint("fixed:random_bytes", raw=bytes(range(256)) * 4),
        Blueprint("fixed:not_an_object", raw=b'[{"type": "CreateInvoice"}]'),
        Blueprint(
            "fixed:bad_utf8_in_value",
            tree=with_(type="\ue000bad\ue000"),
            patches=(("\ue000bad\ue000", b'"Cr\xffeate"'),),
            ascii=False,
        ),
        Blueprint("fixed:key_nul", KeyChoice("nul"), tree=with_()),
        Blueprint("fixed:key_bad_utf8", KeyChoice("bad_utf8"), tree=with_()),
        Blueprint("fixed:key_huge", KeyChoice("huge"), tree=with_()),
        Blueprint("fixed:no_key", KeyChoice("none"), tree=with_()),
        Blueprint(
            "fixed:huge_string",
            tree=with_(payload={**valid["payload"], "padding": "x" * HUGE_CHARS}),
        ),
        Blueprint("fixed:nul_everywhere", tree=with_(payload=_map_strings(payload, nul))),
        Blueprint("fixed:surrogate_escaped", tree=with_(payload=_map_strings(payload, lone))),
        Blueprint(
            "fixed:surrogate_bytes", tree=with_(payload=_map_strings(payload, lone)), ascii=False
        ),
        Blueprint("fixed:utf16_body", tree=with_(), encoding="utf-16"),
        Blueprint("fixed:bom", tree=with_(), bom=True),
        Blueprint("fixed:correlation_garbage", tree=with_(correlation_id="x", causation_id=7)),
        # An attributable command whose type holds a lone surrogate: its CommandRejected
        # must still be written (it once failed to serialise, and went unanswered).
        Blueprint("fixed:type_surrogate", tree=with_(type="Create\ud800Invoice")),
        Blueprint("fixed:type_missing", tree={k: v for k, v in with_().items() if k != "type"}),
        Blueprint(
            "fixed:payload_missing", tree={k: v for k, v in with_().items() if k != "payload"}
        ),
        Blueprint("fixed:payload_not_object", tree=with_(payload=[valid["payload"]])),
        Blueprint("fixed:envelope_extra", tree=with_(extra_field=1)),
    ]
    fixed += [
        Blueprint(f"fixed:website_key={website!r:.20}", tree=with_(website_key=website))
        for website in HOSTILE_WEBSITES
    ]
    fixed += [
        Blueprint(f"fixed:type={name}", tree=with_(type=name))
        for name in sorted(registered_types())
    ]
    return fixed


def _map_strings(tree: Any, change: Callable[[str], str]) -> Any:
    if isinstance(tree, dict):
        return {k: _map_strings(v, change) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map_strings(v, change) for v in tree]
    if isinstance(tree, str):
        return change(tree)
    return tree
