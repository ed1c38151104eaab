"""`cm`: publish envelopes to and read messages from the platform's Kafka topics.

    cm publish FILE.json [--topic T] [--key K]     (FILE may be `-` for stdin)
    cm tail TOPIC [--from-beginning] [--follow] [--type X] [--website-key W]
    cm topics
    cm interest-rates [FILE]                       (the rate table, FILE's version over it)
    cm interest --kind consumer|commercial --amount A --due YYYY-MM-DD --as-of YYYY-MM-DD
               [--paid YYYY-MM-DD:AMOUNT ...]      (statutory interest, per period)
    cm dlq list [--service S] [--code C] [--since T] [--until T] [--json]
    cm dlq replay [ID ...] [--service S] [--code C] [--since T] [--until T] [--again]
    cm console add-user --website-key W --username U [--culture C] [--time-zone Z]
                        [--password-stdin] [--replace-password]

Bootstrap servers: $KAFKA_BOOTSTRAP_SERVERS, else the address the running
`python -m devstack run|up` recorded in .devstack/, else 127.0.0.1:9092.
Topic names get $CM_TOPIC_PREFIX in front. `cm console` writes the console's accounts
to $DATABASE_URL, else the database the running devstack recorded. Authentication as for
the services: $KAFKA_SECURITY_PROTOCOL (default PLAINTEXT), $KAFKA_SASL_MECHANISM,
$KAFKA_SASL_USERNAME, $KAFKA_SASL_PASSWORD (docs/deploy.md, "The cm CLI").
`cm dlq` also reads the services' dead-letter tables in $DATABASE_URL (else the
devstack's, else postgresql://postgres@127.0.0.1:5432/postgres); docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from cmcli.environment import setting
from contracts import catalog
from contracts import interest as statutory
from contracts.envelope import ParseError, parse_envelope

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


class CliError(Exception):
    pass


def bootstrap_servers() -> str:
    return setting("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP


def database_url() -> str:
    found = setting("DATABASE_URL")
    if not found:
        raise CliError("no DATABASE_URL, and no running `make run` recorded one")
    return found


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


def interest_rates(file: str | None) -> int:
    """Print the rate table the services would load (docs/interest.md): the shipped one
    with FILE (else $CM_INTEREST_RATES) over it; refused when it does not load."""
    extra = file or os.environ.get(statutory.RATES_ENV)
    try:
        table = statutory.load_rates(Path(extra) if extra else None)
    except (ValueError, KeyError, OSError) as err:
        raise CliError(f"the rate table does not load: {err}") from err
    print(f"version {table.version}")
    for kind in statutory.InterestKind:
        for period in table.of(kind):
            mark = "  (verify)" if period.verify else ""
            print(f"{kind.value}\t{period.start}\t{period.percent}%\t{period.source}{mark}")
        until = table.published_until(kind)
        print(f"{kind.value}\tfrom {until}: the last rate carried on, provisional")
    return 0


def interest(kind: str, amount: str, due: str, as_of: str, paid: list[str]) -> int:
    """Print the statutory interest on `amount` due `due`, as of `as_of`, per period."""
    try:
        due_day = date.fromisoformat(due)
        moves = [statutory.Movement(due_day, statutory.MovementKind.PRINCIPAL, Decimal(amount))]
        for item in paid:
            day, _, value = item.partition(":")
            moves.append(
                statutory.Movement(
                    date.fromisoformat(day), statutory.MovementKind.PAYMENT, Decimal(value)
                )
            )
        result = statutory.statutory_interest(
            moves,
            statutory.InterestKind(kind),
            due_day,
            date.fromisoformat(as_of),
            statutory.rates(),
        )
    except (ValueError, InvalidOperation) as err:
        raise CliError(str(err)) from err
    money = statutory.money
    print("from\tto\trate\tdays\tyear\tbase\tinterest")
    for p in result.periods:
        flag = "\tprovisional" if p.provisional else ""
        print(
            f"{p.start}\t{p.end}\t{p.percent}%\t{p.days}\t{p.year_days}\t"
            f"{money(p.base)}\t{money(p.interest)}{flag}"
        )
    print(
        f"total {money(result.total)}; capitalised {money(result.capitalised)}; "
        f"paid {money(result.paid)}; open {money(result.open)}; "
        f"principal {money(result.principal)}"
    )
    return 0


def _add_dlq(sub: Any) -> None:
    p_dlq = sub.add_parser("dlq", help="list and replay dead letters (docs/operations.md)")
    dlq_sub = p_dlq.add_subparsers(dest="dlq_command", required=True)
    p_list = dlq_sub.add_parser("list", help="the dead letters the services keep")
    p_replay = dlq_sub.add_parser(
        "replay", help="publish dead letters again to their original topic, key and headers"
    )
    p_replay.add_argument("ids", nargs="*", help="dead letter ids (from cm dlq list)")
    for p in (p_list, p_replay):
        p.add_argument("--service", action="append", default=[], help="only this service")
        p.add_argument(
            "--schema", action="append", default=[], help="a service's schema, if not its name"
        )
        p.add_argument("--code", action="append", default=[], help="only with this error code")
        p.add_argument("--since", help="created at or after: 2h, 30m, 7d or an ISO time")
        p.add_argument("--until", help="created before: 2h, 30m, 7d or an ISO time")
    p_list.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p_list.add_argument("--limit", type=int, default=200, help="the newest N (default 200)")
    p_replay.add_argument(
        "--again", action="store_true", help="replay dead letters already replayed too"
    )
    p_replay.add_argument("--dry-run", action="store_true", help="say what would be replayed")


def _run_dlq(args: argparse.Namespace) -> int:
    from cmcli import dlq  # noqa: PLC0415

    try:
        filters = dlq.Filters(
            ids=dlq.parse_ids(getattr(args, "ids", [])),
            codes=args.code,
            since=dlq.parse_time(args.since) if args.since else None,
            until=dlq.parse_time(args.until) if args.until else None,
            limit=getattr(args, "limit", None),
        )
        schemas = dlq.schemas_for(args.service, args.schema)
        dsn = dlq.database_url()
        if args.dlq_command == "list":
            return asyncio.run(dlq.list_command(dsn, schemas, filters, as_json=args.json))
        report = asyncio.run(
            dlq.replay(
                dsn,
                bootstrap_servers(),
                schemas,
                filters,
                again=args.again,
                dry_run=args.dry_run,
                kafka_options=kafka_options(),
            )
        )
    except dlq.DlqError as err:
        raise CliError(str(err)) from err
    except asyncpg.PostgresError as err:
        raise CliError(f"the database: {type(err).__name__}: {err}") from err
    dlq.print_report(report)
    return 0 if report.ok else 1


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
    p_rates = sub.add_parser("interest-rates", help="print the statutory interest rate table")
    p_rates.add_argument("file", nargs="?", help="a later table version (JSON) to check")
    p_int = sub.add_parser("interest", help="compute statutory interest, per period")
    p_int.add_argument("--kind", required=True, choices=["consumer", "commercial"])
    p_int.add_argument("--amount", required=True)
    p_int.add_argument("--due", required=True, help="the due date, YYYY-MM-DD")
    p_int.add_argument("--as-of", required=True, help="the last day counted, YYYY-MM-DD")
    p_int.add_argument("--paid", action="append", default=[], help="YYYY-MM-DD:AMOUNT")
    _add_dlq(sub)
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
        if args.command == "interest-rates":
            return interest_rates(args.file)
        if args.command == "interest":
            return interest(args.kind, args.amount, args.due, args.as_of, args.paid)
        if args.command == "dlq":
            return _run_dlq(args)
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
