"""Every example in examples/ (what the README and docs tell people to publish) is a
valid message, completed the way `cm publish` completes it; the `broken-` ones are
refused on purpose."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

import contracts  # noqa: F401  (registers every message type)
from contracts.catalog import key_for
from contracts.envelope import ParseError, parse_envelope

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.json"))


def completed(path: Path) -> str:
    body = json.loads(path.read_text())
    body.setdefault("message_id", str(uuid.uuid4()))
    body.setdefault("occurred_at", datetime.now(UTC).isoformat())
    return json.dumps(body)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_an_example_is_a_valid_message_with_a_key(path: Path) -> None:
    if path.name.startswith("broken-"):
        with pytest.raises(ParseError):
            parse_envelope(completed(path))
        return
    envelope = parse_envelope(completed(path))
    assert key_for(envelope)


def test_there_are_examples() -> None:
    assert any(path.name == "run-merchant-billing.json" for path in EXAMPLES)


def test_cm_publish_keys_a_message_as_the_catalog_does() -> None:
    from cmcli.__main__ import message_key  # noqa: PLC0415

    run = json.loads((EXAMPLES[0].parent / "run-merchant-billing.json").read_text())
    assert message_key(run) == "shop-1:bill-run"
    stop = {
        "type": "StopSubscription",
        "website_key": "shop-1",
        "payload": {"subscription_key": "S-1"},
    }
    assert message_key(stop) == "shop-1:S-1"
    # What does not parse is still keyed, by invoice number or merchant.
    broken = {
        "type": "CreateInvoice",
        "website_key": "shop-1",
        "payload": {"invoice_number": "I-1"},
    }
    assert message_key(broken) == "shop-1:I-1"


def test_cm_publish_keys_a_broken_message_by_its_type_template() -> None:
    from cmcli.__main__ import message_key, topic_for_type  # noqa: PLC0415

    broken_debtor = {
        "type": "AddOrUpdateDebtor",
        "website_key": "shop-1",
        "payload": {"debtor": {"code": "D-1"}},
    }
    assert message_key(broken_debtor) == "shop-1:debtor:D-1"
    assert message_key({"type": "Tick", "payload": {}}) == "clock"
    # A field the template names is missing, or the type is unknown: the merchant.
    assert message_key({"type": "AddOrUpdateDebtor", "website_key": "shop-1"}) == "shop-1"
    assert message_key({"type": "ResumeInvoice", "website_key": "shop-1"}) == "shop-1"
    assert topic_for_type("ResumeInvoice") is None
    assert topic_for_type("StepDue") == "cm.invoice.internal"
