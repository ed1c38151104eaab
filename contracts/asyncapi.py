"""The AsyncAPI 3.0.0 document of the whole platform, generated from `contracts`.

    python -m contracts.asyncapi [OUTFILE]        (default: docs/asyncapi.json)

Channels are the topics of `contracts.catalog`, messages are envelopes whose `payload`
is the message's pydantic model (JSON Schema as the model validates it: what a
producer may send), operations are each actor's `send` / `receive` per topic, and the
merchant push is described in its Buckaroo format. Keys are sorted, so the output is
deterministic.
"""

from __future__ import annotations

import inspect
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

import contracts
from contracts.catalog import TOPICS, TopicSpec
from contracts.envelope import Envelope, Message
from contracts.push import MESSAGE_ID_HEADER, InvoicePush

DEFAULT_OUTFILE = Path("docs/asyncapi.json")

_SCHEMAS = "#/components/schemas/"
_KAFKA_BINDING_VERSION = "0.5.0"
_ENVELOPE_SCHEMA = "Envelope"
_PUSH_MESSAGE = "InvoicePush"

_DESCRIPTION = """\
Open-source credit management: invoices, dunning schemes, subscriptions, debt collection
and merchant pushes, as message-driven services over Kafka.

Every message body except the merchant push is UTF-8 JSON in an envelope
(`message_id`, `type`, `website_key`, `occurred_at`, `correlation_id`, `causation_id`,
`payload`) with header `content-type: application/json`. Money is a JSON number or
string in and a string out (`"121.00"`), at most 4 decimals; dates are ISO 8601,
timestamps ISO 8601 with an offset. Commands refuse unknown fields; events ignore them.
A message that does not parse goes to `cm.dlq` and, when attributable, is answered with
`CommandRejected` on `cm.command.results`. Topic names take an optional prefix
(`CM_TOPIC_PREFIX`)."""


def _doc(cls: type) -> str:
    return inspect.cleandoc(cls.__doc__ or cls.__name__)


def _channel_id(topic: str) -> str:
    return topic.replace(".", "_")


def _version() -> str:
    try:
        return metadata.version("credit-management-platform")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _schemas(classes: list[type[Message]]) -> dict[str, Any]:
    """Every model's JSON Schema under one `$defs`, referenced as components/schemas."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (Envelope[Message], "validation"),
        *((cls, "validation") for cls in classes),
        (InvoicePush, "serialization"),
    ]
    _, top = models_json_schema(models, ref_template=_SCHEMAS + "{model}")
    defs: dict[str, Any] = top.get("$defs", {})
    # The bare envelope: its payload is whatever the message's schema says.
    envelope = defs.pop("Envelope_Message_")
    envelope["title"] = _ENVELOPE_SCHEMA
    envelope["properties"]["payload"] = {
        "type": "object",
        "description": "The message's payload; its schema depends on `type`.",
    }
    defs[_ENVELOPE_SCHEMA] = envelope
    defs.pop("Message", None)
    return defs


def _enveloped_message(cls: type[Message], spec: TopicSpec) -> dict[str, Any]:
    doc = _doc(cls)
    return {
        "name": cls.TYPE,
        "title": cls.TYPE,
        "summary": doc.splitlines()[0],
        "description": doc,
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "properties": {"content-type": {"type": "string", "const": "application/json"}},
        },
        "payload": {
            "type": "object",
            "allOf": [{"$ref": _SCHEMAS + _ENVELOPE_SCHEMA}],
            "properties": {
                "type": {"type": "string", "const": cls.TYPE},
                "payload": {"$ref": _SCHEMAS + cls.__name__},
            },
        },
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": f"Kafka key: `{spec.key_template(cls.TYPE)}`.",
                },
                "bindingVersion": _KAFKA_BINDING_VERSION,
            }
        },
    }


def _push_message(spec: TopicSpec) -> dict[str, Any]:
    doc = _doc(InvoicePush)
    return {
        "name": _PUSH_MESSAGE,
        "title": "Merchant invoice push",
        "summary": doc.splitlines()[0],
        "description": inspect.cleandoc(sys.modules[InvoicePush.__module__].__doc__ or ""),
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "properties": {
                MESSAGE_ID_HEADER: {
                    "type": "string",
                    "format": "uuid",
                    "description": "The InvoiceEvent's message_id (webhooks: `webhook-id`).",
                }
            },
        },
        "payload": {"$ref": _SCHEMAS + InvoicePush.__name__},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": f"Kafka key: `{spec.key}`."},
                "bindingVersion": _KAFKA_BINDING_VERSION,
            }
        },
    }


def _operation(
    action: str, channel_id: str, actor: str, summary: str, names: list[str]
) -> dict[str, Any]:
    """`actor` sends or receives the messages `names` on the channel."""
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel_id}"},
        "summary": summary,
        "messages": [
            {"$ref": f"#/channels/{channel_id}/messages/{name}"} for name in sorted(names)
        ],
        "tags": [{"name": actor}],
    }


def build() -> dict[str, Any]:
    """The AsyncAPI document as a JSON-ready dict."""
    classes = sorted(
        {cls for spec in TOPICS.values() for cls in spec.messages}, key=lambda cls: cls.TYPE
    )
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in TOPICS.values():
        channel_id = _channel_id(spec.name)
        names = [cls.TYPE for cls in spec.messages] if spec.enveloped else [_PUSH_MESSAGE]
        for cls in spec.messages:
            messages[cls.TYPE] = _enveloped_message(cls, spec)
        if not spec.enveloped:
            messages[_PUSH_MESSAGE] = _push_message(spec)
        channels[channel_id] = {
            "address": spec.name,
            "title": spec.name,
            "description": f"{spec.description} Kafka key: `{spec.key}`."
            + (
                " Platform-only: no merchant, payment engine or agency has access."
                if spec.platform_only
                else ""
            ),
            "tags": [{"name": "platform-only" if spec.platform_only else "external"}],
            "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in names},
            "bindings": {"kafka": {"topic": spec.name, "bindingVersion": _KAFKA_BINDING_VERSION}},
        }
        for actor, sent in spec.producers.items():
            operations[f"{actor}_send_{channel_id}"] = _operation(
                "send",
                channel_id,
                actor,
                f"{actor} publishes to {spec.name}.",
                [cls.TYPE for cls in sent] or names,
            )
        for actor in spec.consumers:
            operations[f"{actor}_receive_{channel_id}"] = _operation(
                "receive", channel_id, actor, f"{actor} consumes {spec.name}.", names
            )
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Credit management platform",
            "version": _version(),
            "description": f"{inspect.cleandoc(contracts.__doc__ or '')}\n\n{_DESCRIPTION}",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The embedded broker of `make run` (KAFKA_BOOTSTRAP_SERVERS).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _schemas(classes)},
    }


def render() -> str:
    """The document as deterministic JSON text (sorted keys, trailing newline)."""
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in {"-h", "--help"}):
        sys.stderr.write("usage: python -m contracts.asyncapi [OUTFILE]\n")
        return 2
    outfile = Path(args[0]) if args else DEFAULT_OUTFILE
    outfile.parent.mkdir(parents=True, exist_ok=True)
    outfile.write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
