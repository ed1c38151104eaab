"""`cm`: publish envelopes to and read messages from the platform's Kafka topics.

    cm publish FILE.json [--topic T] [--key K]     (FILE may be `-` for stdin)
    cm tail TOPIC [--from-beginning] [--follow] [--type X] [--website-key W]
    cm topics
    cm console add-user --website-key W --username U [--culture C] [--time-zone Z]
                        [--password-stdin] [--replace-password]

Bootstrap servers: $KAFKA_BOOTSTRAP_SERVERS, else the address the running
`python -m devstack run|up` recorded in .devstack/, else 127.0.0.1:9092.
Topic names get $CM_TOPIC_PREFIX in front. `cm console` writes the console's accounts
to $DATABASE_URL, else the database the running devstack recorded. Authentication as for
the services: $KAFKA_SECURITY_PROTOCOL (default PLAINTEXT), $KAFKA_SASL_MECHANISM,
$KAFKA_SASL_USERNAME, $KAFKA_SASL_PASSWORD (docs/deploy.md, "The cm CLI").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from contracts import catalog
from contracts.envelope import ParseError, parse_envelope

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


class CliError(Exception):
    pass


def bootstrap_servers() -> str:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        return env
    try:
        from devstack.runner import state_file  # noqa: PLC0415

        recorded = state_file().info().get("env", {}).get("KAFKA_BOOTSTRAP_SERVERS")
    except Exception:
        recorded = None
    return str(recorded) if recorded else DEFAULT_BOOTSTRAP


def database_url() -> str:
    env = os.environ.get("DATABASE_URL")
    if env:
        return env
    try:
        from devstack.runner import state_file  # noqa: PLC0415

        recorded = state_file().info().get("env", {}).get("DATABASE_URL")
    except Exception:
        recorded = None
    if not recorded:
        raise CliError("no DATABASE_URL, and no running `make run` recorded one")
    return str(recorded)


def topic_prefix() -> str:
    return os.environ.get("CM_TOPIC_PREFIX", "")


def topic_for_type(type_name: str) -> str | None:
    """The base topic a message type travels on, from the catalog (None: unknown type)."""
    try:
        return catalog.topic_for_type(type_name)
    except KeyError:
        return None


#: A field of a key template: `{website_key}`, `{payload.debtor.code}`.
_TEMPLATE_FIELD = re.compile(r"\{([^{}]+)\}")


def message_key(envelope: dict[str, Any]) -> str | None:
    """The Kafka key the catalog gives the message (e.g. `{website_key}:{subscription_key}`).
    A message that does not parse (a broken example) gets its type's key template filled
    in from the JSON as it is, or else its website key."""
    try:
        return catalog.key_for(parse_envelope(json.dumps(complete(envelope))))
    except ParseError:
        pass
    website_key = envelope.get("website_key")
    fallback = str(website_key) if website_key else None
    type_name = str(envelope.get("type", ""))
    topic = topic_for_type(type_name)
    if topic is None:
        return fallback
    template = catalog.topic_spec(topic).key_template(type_name)

    def value(match: re.Match[str]) -> str:
        found: Any = {"website_key": website_key, "payload": envelope.get("payload")}
        for part in match.group(1).split("."):
            if not isinstance(found, dict) or found.get(part) in (None, ""):
                raise LookupError(match.group(1))
            found = found[part]
        return str(found)

    try:
        return _TEMPLATE_FIELD.sub(value, template)
    except LookupError:  # the template names a field the message lacks
        return fallback


def complete(envelope: dict[str, Any]) -> dict[str, Any]:
    envelope = dict(envelope)
    envelope.setdefault("message_id", str(uuid.uuid4()))
    envelope.setdefault("occurred_at", datetime.now(UTC).isoformat())
    return envelope


def _load(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CliError(f"{path}: not JSON: {err}") from err
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(i, dict) for i in items):
        raise CliError(f"{path}: expected an envelope object or a list of them")
    return items


def kafka_options() -> dict[str, Any]:
    """Authentication from the environment, read as the services read it."""
    from services.runtime.kafka_auth import KafkaAuthError, client_options  # noqa: PLC0415
    from services.runtime.settings import Settings  # noqa: PLC0415

    try:
        return client_options(Settings())
    except (KafkaAuthError, ValueError) as err:  # pydantic's ValidationError is one
        raise CliError(str(err)) from err


def _producer() -> AIOKafkaProducer:
    # Never idempotent: the embedded broker (Tansu) cannot hand out producer ids.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers(),
        enable_idempotence=False,
        acks="all",
        **kafka_options(),
    )


def _consumer() -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(),
        **kafka_options(),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )


async def publish(path: str, topic: str | None, key: str | None) -> int:
    envelopes = [complete(e) for e in _load(path)]
    plans: list[tuple[str, str | None, dict[str, Any]]] = []
    for envelope in envelopes:
        base = topic
        if base is None:
            type_name = str(envelope.get("type", ""))
            base = topic_for_type(type_name)
            if base is None:
                raise CliError(f"no known topic for type {type_name!r}: pass --topic")
        plans.append((topic_prefix() + base, key or message_key(envelope), envelope))
    producer = _producer()
    await producer.start()
    try:
        for full_topic, msg_key, envelope in plans:
            meta = await producer.send_and_wait(
                full_topic,
                json.dumps(envelope).encode(),
                key=msg_key.encode() if msg_key else None,
            )
            print(envelope["message_id"])
            print(
                f"  -> {full_topic}[{meta.partition}]@{meta.offset} key={msg_key}",
                file=sys.stderr,
            )
    finally:
        await producer.stop()
    return 0


def _decode(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


async def tail(
    topic: str,
    *,
    from_beginning: bool,
    follow: bool,
    type_filter: str | None,
    website_key: str | None,
) -> int:
    full_topic = topic_prefix() + topic
    consumer = _consumer()
    await consumer.start()
    try:
        # Look first: a metadata lookup of a missing topic would create it (Tansu does).
        if full_topic not in await consumer.topics():
            raise CliError(f"no topic {full_topic!r} (cm topics lists them)")
        partitions = consumer.partitions_for_topic(full_topic) or set()
        tps = [TopicPartition(full_topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        end = await consumer.end_offsets(tps)
        while True:
            if not follow and await _at_end(consumer, end):
                return 0
            batches = await consumer.getmany(*tps, timeout_ms=200, max_records=500)
            for records in batches.values():
                for record in records:
                    value = _decode(record.value)
                    if type_filter and not (
                        isinstance(value, dict) and value.get("type") == type_filter
                    ):
                        continue
                    if website_key and not (
                        isinstance(value, dict) and value.get("website_key") == website_key
                    ):
                        continue
                    line = {
                        "topic": record.topic,
                        "key": record.key.decode(errors="replace") if record.key else None,
                        "partition": record.partition,
                        "offset": record.offset,
                        "value": value,
                    }
                    print(json.dumps(line, ensure_ascii=False), flush=True)
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    for tp, offset in end.items():
        if int(await consumer.position(tp)) < offset:
            return False
    return True


async def topics() -> int:
    consumer = _consumer()
    await consumer.start()
    try:
        names = sorted(await consumer.topics())
        for name in names:
            parts = consumer.partitions_for_topic(name) or set()
            print(f"{name}\t{len(parts)}")
    finally:
        await consumer.stop()
    return 0


async def console_add_user(args: argparse.Namespace) -> int:
    from services.console.accounts import AccountError, add_user  # noqa: PLC0415

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        import getpass  # noqa: PLC0415

        password = getpass.getpass("password (12 characters or more): ")
        if getpass.getpass("again: ") != password:
            raise CliError("the passwords differ")
    try:
        created = await add_user(
            database_url(),
            args.username,
            args.website_key,
            password,
            culture=args.culture,
            time_zone=args.time_zone,
            replace_password=args.replace_password,
        )
    except AccountError as err:
        raise CliError(str(err)) from err
    if created:
        print(f"created console user {args.username} of {args.website_key}")
    elif args.replace_password:
        print(f"new password for console user {args.username}")
    else:
        raise CliError(f"the username {args.username!r} is taken (--replace-password sets it)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_pub = sub.add_parser("publish", help="publish one envelope or a JSON list of envelopes")
    p_pub.add_argument("file", help="JSON file, or - for stdin")
    p_pub.add_argument("--topic", help="base topic name (default: from the message type)")
    p_pub.add_argument("--key", help="Kafka key (default: the catalog's key of the type)")
    p_tail = sub.add_parser("tail", help="print a topic's messages as JSON lines")
    p_tail.add_argument("topic", help="base topic name, e.g. cm.invoice.events")
    p_tail.add_argument("--from-beginning", action="store_true")
    p_tail.add_argument("--follow", "-f", action="store_true", help="keep waiting for more")
    p_tail.add_argument("--type", dest="type_filter", help="only messages of this type")
    p_tail.add_argument("--website-key", help="only messages of this merchant")
    sub.add_parser("topics", help="list topics and their partition counts")
    p_console = sub.add_parser("console", help="the merchant console's accounts")
    console_sub = p_console.add_subparsers(dest="console_command", required=True)
    p_user = console_sub.add_parser("add-user", help="create a sign-in for one merchant")
    p_user.add_argument("--website-key", required=True, help="the merchant")
    p_user.add_argument("--username", required=True)
    p_user.add_argument("--culture", default="nl-NL", help="amounts and dates, e.g. en-GB")
    p_user.add_argument("--time-zone", default="Europe/Amsterdam")
    p_user.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    p_user.add_argument(
        "--replace-password", action="store_true", help="set a new password if the user exists"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "publish":
            return asyncio.run(publish(args.file, args.topic, args.key))
        if args.command == "tail":
            return asyncio.run(
                tail(
                    args.topic,
                    from_beginning=args.from_beginning,
                    follow=args.follow,
                    type_filter=args.type_filter,
                    website_key=args.website_key,
                )
            )
        if args.command == "console":
            return asyncio.run(console_add_user(args))
        return asyncio.run(topics())
    except CliError as err:
        print(f"cm: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as err:
        print(f"cm: {err} (bootstrap {bootstrap_servers()})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
