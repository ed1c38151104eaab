"""Issue 14's fast paths give what their references give (property tests).

- `contracts.fields._header_address`: a plain address is answered without the header
  parser; the answer is the parser's (`_header_address_parsed`).
- `contracts.fields.construct_complete`: the instance `model_construct` builds.
- `services.runtime.outbox._may_be_too_large`: the headers are decoded only near the
  limit; the answer is `record_size(...) > max_bytes`.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.envelope import envelope_class, new_envelope, registered_types
from contracts.fields import (
    _PLAIN_ADDRESS,
    _header_address,
    _header_address_parsed,
    construct_complete,
)
from contracts.invoice import InvoiceSnapshot
from contracts.results import CommandAccepted
from services.runtime.outbox import _may_be_too_large, record_size

# --- e-mail addresses --------------------------------------------------------------------

plain_addresses = st.from_regex(_PLAIN_ADDRESS, fullmatch=True)
near_addresses = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.text(st.sampled_from('ab.-_%+"(); \\é@!#'), min_size=0, max_size=8),
    st.text(st.sampled_from("ab.-[]_ é@"), min_size=0, max_size=8),
)


@settings(max_examples=500, deadline=None)
@given(plain_addresses)
def test_a_plain_address_is_one_the_parser_carries(address: str) -> None:
    assert _header_address_parsed(address)


@settings(max_examples=500, deadline=None)
@given(st.one_of(plain_addresses, near_addresses, st.text(max_size=20)))
def test_the_fast_answer_is_the_parsers(address: str) -> None:
    assert _header_address(address) == _header_address_parsed(address)


# --- construct_complete ------------------------------------------------------------------


def _same_instance(fast: Any, slow: Any) -> None:
    assert type(fast) is type(slow)
    assert fast.__dict__ == slow.__dict__
    assert list(fast.__dict__) == list(slow.__dict__)
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.__pydantic_extra__ == slow.__pydantic_extra__
    assert fast.__pydantic_private__ == slow.__pydantic_private__
    assert repr(fast) == repr(slow)
    assert fast == slow


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(registered_types())),
    st.uuids(),
    st.one_of(st.none(), st.uuids()),
    st.text(min_size=1, max_size=10),
)
def test_an_envelope_of_every_type_is_the_one_model_construct_builds(
    type_name: str, message_id: uuid.UUID, causation: uuid.UUID | None, site: str
) -> None:
    cls = envelope_class(registered_types()[type_name])
    values = {
        "message_id": message_id,
        "type": type_name,
        "website_key": site,
        "occurred_at": datetime(2026, 11, 1, tzinfo=UTC),
        "correlation_id": message_id,
        "causation_id": causation,
        "payload": {"any": "payload"},
    }
    _same_instance(construct_complete(cls, dict(values)), cls.model_construct(**values))


@settings(max_examples=100, deadline=None)
@given(st.sets(st.sampled_from(sorted(InvoiceSnapshot.model_fields))), st.booleans())
def test_a_snapshot_with_any_fields_is_the_one_model_construct_builds(
    left_out: set[str], with_unknown: bool
) -> None:
    """Every field given: the fast way; a field missing or one too many: model_construct
    itself (defaults filled, unknown names dropped) — the same instance either way."""
    values: dict[str, Any] = {
        name: f"v-{name}" for name in InvoiceSnapshot.model_fields if name not in left_out
    }
    if with_unknown:
        values["not_a_field"] = 1
    _same_instance(
        construct_complete(InvoiceSnapshot, dict(values)),
        InvoiceSnapshot.model_construct(**values),
    )


def test_the_hot_path_envelope_serializes_as_before() -> None:
    accepted = CommandAccepted(command_type="CreateInvoice", command_id=uuid.uuid4(), keys={})
    cause = new_envelope(
        accepted,
        website_key="shop-1",
        occurred_at=datetime(2026, 11, 1, tzinfo=UTC),
    )
    fast = new_envelope(
        accepted, website_key="shop-1", occurred_at=cause.occurred_at, caused_by=cause
    )
    slow = envelope_class(CommandAccepted).model_construct(
        message_id=fast.message_id,
        type=CommandAccepted.TYPE,
        website_key="shop-1",
        occurred_at=cause.occurred_at,
        correlation_id=cause.message_id,
        causation_id=cause.message_id,
        payload=accepted,
    )
    _same_instance(fast, slow)
    assert fast.to_json() == slow.to_json()


# --- the relay's size check --------------------------------------------------------------

header_text = st.text(max_size=40)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.none(), st.binary(max_size=300)),
    st.integers(min_value=0, max_value=3000),
    st.lists(st.tuples(header_text, header_text), max_size=4),
    st.integers(min_value=100, max_value=3500),
)
def test_the_relays_size_check_is_record_size(
    key: bytes | None, value_len: int, headers: list[tuple[str, str]], max_bytes: int
) -> None:
    row = {"value": b"x" * value_len, "headers": json.dumps(headers, ensure_ascii=False)}
    decoded = [(k, v.encode()) for k, v in headers]
    expected = record_size(key, row["value"], decoded) > max_bytes
    assert _may_be_too_large(key, row, max_bytes) == expected
