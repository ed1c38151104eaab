"""The reference agency adapter (services/collection/agency_sim.py) on the real broker.

Each test has a topic prefix of its own. The simulator runs in-process as an asyncio task
(one test runs it as `python -m services.collection.agency_sim`, configured by the
environment). A request counts as handled once the simulator's consumer group has
committed past it: it commits a request only when its answers are all acknowledged by
the broker (or dropped by a recall), so waiting for the commit is waiting for the
answers, without sleeping and without guessing how many will come.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import RecordMetadata

from contracts import topics
from contracts.catalog import types_for_topic
from contracts.collection import TransferCase
from contracts.envelope import parse_envelope
from contracts.topics import TopicNames
from services.collection.agency_sim import GROUP, AgencySim, SimSettings, answer_id
from services.runtime.app import ensure_topics
from tests.support.kafka import envelope, poll_until, read_all

ROOT = Path(__file__).resolve().parents[2]
AGENCY = "AG-SIM"
WEBSITE = "shop-1"
OCCURRED_AT = "2027-02-05T09:30:00+01:00"

# --- helpers -------------------------------------------------------------------------------


def transfer_case(
    case_key: str,
    amount: str,
    currency: str = "EUR",
    *,
    reference: str | None = None,
    external_id: str | None = None,
) -> dict[str, Any]:
    """A valid TransferCase payload (checked against the contract here, so a mistake in
    the test fails here and not as a skipped record)."""
    payload: dict[str, Any] = {
        "case_key": case_key,
        "agency_code": AGENCY,
        "invoice_number": f"INV-{case_key}",
        "external_id": external_id or f"EXT-{case_key}",
        "billing_address": {
            "name": "Jane Doe",
            "street": "Main street",
            "house_number": "1",
            "postal_code": "1011 AA",
            "city": "Amsterdam",
            "country": "NL",
            "email": "jane.doe@example.com",
            "mobile_phone": "+31612345678",
        },
        "line_items": [
            {
                "description": "Open amount",
                "quantity": "1",
                "unit_price": amount,
                "vat_percentage": "0",
            }
        ],
        "currency": currency,
        "due_date": "2027-01-01",
        "amount": amount,
        "reference": reference,
    }
    TransferCase.model_validate(payload)
    return payload


def request(type_: str, payload: dict[str, Any], message_id: str | None = None) -> bytes:
    body = envelope(
        type_, payload, website_key=WEBSITE, occurred_at=OCCURRED_AT, message_id=message_id
    )
    return json.dumps(body).encode()


def recall_case(case_key: str) -> dict[str, Any]:
    return {"case_key": case_key, "agency_code": AGENCY, "reason": "paid directly"}


def request_key(case_key: str) -> str:
    return f"{AGENCY}:{case_key}"


async def send(
    bootstrap: str, topic: str, items: list[tuple[str | None, bytes]]
) -> list[RecordMetadata]:
    """Publish one by one (in order), returning where each record landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        return [
            await producer.send_and_wait(topic, value, key=key.encode() if key else None)
            for key, value in items
        ]
    finally:
        await producer.stop()


async def send_one_batch(
    bootstrap: str, topic: str, key: str, values: list[bytes]
) -> list[RecordMetadata]:
    """Publish `values` as ONE record batch on `key`'s partition: a consumer fetches them
    together, so the simulator handles them in the same poll."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        partition = DefaultPartitioner()(key.encode(), partitions, partitions)
        batch = producer.create_batch()
        for value in values:
            assert batch.append(key=key.encode(), value=value, timestamp=None) is not None
        first: RecordMetadata = await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()
    return [first._replace(offset=first.offset + n) for n in range(len(values))]


async def committed(bootstrap: str, group: str, topic: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets on `topic` (-1: none), asked of the coordinator by a
    consumer that does not join the group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        found = {}
        for partition in sorted(consumer.partitions_for_topic(topic) or ()):
            offset = await consumer.committed(TopicPartition(topic, partition))
            found[(topic, partition)] = -1 if offset is None else offset
        return found
    finally:
        await consumer.stop()


async def handled(bootstrap: str, prefix: str, sent: list[RecordMetadata]) -> None:
    """Wait until the simulator committed past every record in `sent`."""
    needed: dict[tuple[str, int], int] = {}
    for meta in sent:
        slot = (meta.topic, meta.partition)
        needed[slot] = max(needed.get(slot, 0), meta.offset + 1)

    async def past() -> bool:
        done = await committed(bootstrap, prefix + GROUP, prefix + topics.AGENCY_REQUESTS)
        return all(done.get(slot, -1) >= offset for slot, offset in needed.items())

    await poll_until(past, timeout=60, interval=0.1, what=f"commits past {needed}")


async def answers(bootstrap: str, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Every answer on the prefixed cm.agency.answers, by Kafka key, in order; each
    one must parse as a command the collection service takes on that topic."""
    allowed = types_for_topic(topics.AGENCY_ANSWERS)
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in sorted(
        await read_all(bootstrap, prefix + topics.AGENCY_ANSWERS),
        key=lambda r: (r.partition, r.offset),
    ):
        parse_envelope(record.value, allowed)
        assert record.headers.get("content-type") == "application/json"
        assert record.key is not None
        found[record.key].append(record.json())
    return dict(found)


def summary(found: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(a["type"], {k: v for k, v in a["payload"].items() if k != "case_key"}) for a in found]


def accepted(case_key: str) -> tuple[str, dict[str, Any]]:
    return ("AgencyAccepted", {"agency_reference": f"SIM-{case_key}"})


def paid(case_key: str, n: int, amount: str) -> tuple[str, dict[str, Any]]:
    return ("AddCollectedAmount", {"amount": amount, "collection_reference": f"SIM-{case_key}-{n}"})


def processed(total: str) -> tuple[str, dict[str, Any]]:
    return ("AgencyProcessed", {"complete": True, "collected_amount": total})


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    return f"sim{uuid.uuid4().hex[:10]}."


def sim_settings(kafka_bootstrap: str, prefix: str, **overrides: Any) -> SimSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka_bootstrap,
        "cm_topic_prefix": prefix,
        "kafka_session_timeout_ms": 2000,
        "kafka_heartbeat_interval_ms": 500,
        "log_level": "WARNING",
        **overrides,
    }
    return SimSettings(**values)


@pytest.fixture
async def requests_topic(kafka_bootstrap: str, prefix: str) -> str:
    """The prefixed platform topics exist (8 partitions) before anything is published."""
    await ensure_topics(sim_settings(kafka_bootstrap, prefix), TopicNames(prefix))
    return prefix + topics.AGENCY_REQUESTS


Start = Callable[..., Awaitable[AgencySim]]
Stop = Callable[[AgencySim], Awaitable[None]]


@pytest.fixture
async def sims(kafka_bootstrap: str, prefix: str) -> AsyncIterator[tuple[Start, Stop]]:
    """Start simulators in-process (settings overrides as keywords); all stopped after."""
    running: dict[int, tuple[AgencySim, asyncio.Task[None]]] = {}

    async def start(**overrides: Any) -> AgencySim:
        sim = AgencySim(sim_settings(kafka_bootstrap, prefix, **overrides))
        running[id(sim)] = (sim, asyncio.create_task(sim.run()))
        return sim

    async def stop(sim: AgencySim) -> None:
        sim, task = running.pop(id(sim))
        sim.stop()
        await asyncio.wait_for(task, 30)

    yield start, stop
    for sim, _ in list(running.values()):
        await stop(sim)


# --- tests ---------------------------------------------------------------------------------


async def test_accept_answers_every_case_in_order_with_parts_adding_up_exactly(
    kafka_bootstrap: str, prefix: str, requests_topic: str, sims: tuple[Start, Stop]
) -> None:
    start, _ = sims
    await start()  # the defaults: accept, 50 % then the rest
    cases = {"C-1": "121.00", "C-2": "100.01", "C-3": "0.01", "C-4": "75"}
    bodies = {
        key: request("TransferCase", transfer_case(key, amount)) for key, amount in cases.items()
    }
    sent = await send(
        kafka_bootstrap, requests_topic, [(request_key(k), b) for k, b in bodies.items()]
    )
    await handled(kafka_bootstrap, prefix, sent)

    found = await answers(kafka_bootstrap, prefix)
    assert set(found) == {f"{WEBSITE}:{key}" for key in cases}
    assert summary(found[f"{WEBSITE}:C-1"]) == [
        accepted("C-1"),
        paid("C-1", 1, "60.50"),
        paid("C-1", 2, "60.50"),
        processed("121.00"),
    ]
    assert summary(found[f"{WEBSITE}:C-2"]) == [
        accepted("C-2"),
        paid("C-2", 1, "50.01"),  # 50.005 rounded half up; the rest is 50.00
        paid("C-2", 2, "50.00"),
        processed("100.01"),
    ]
    assert summary(found[f"{WEBSITE}:C-3"]) == [  # half a cent rounds up: nothing is left
        accepted("C-3"),
        paid("C-3", 1, "0.01"),
        processed("0.01"),
    ]
    assert summary(found[f"{WEBSITE}:C-4"]) == [  # written with the currency's decimals
        accepted("C-4"),
        paid("C-4", 1, "37.50"),
        paid("C-4", 2, "37.50"),
        processed("75.00"),
    ]
    for key, amount in cases.items():
        parts = [Decimal(a["payload"]["amount"]) for a in found[f"{WEBSITE}:{key}"][1:-1]]
        assert sum(parts) == Decimal(amount)

    # The envelope: the request's merchant, business time and correlation; ids derived
    # from the request's id and the answer's position.
    for key, body in bodies.items():
        req = json.loads(body)
        for position, answer in enumerate(found[f"{WEBSITE}:{key}"]):
            assert answer["website_key"] == WEBSITE
            assert datetime.fromisoformat(answer["occurred_at"]) == datetime.fromisoformat(
                OCCURRED_AT
            )
            assert answer["causation_id"] == req["message_id"]
            assert answer["correlation_id"] == req["message_id"]
            assert answer["message_id"] == str(answer_id(uuid.UUID(req["message_id"]), position))
            assert answer["payload"]["case_key"] == key


async def test_fractions_from_the_settings_in_each_currencys_minor_unit(
    kafka_bootstrap: str, prefix: str, requests_topic: str, sims: tuple[Start, Stop]
) -> None:
    start, _ = sims
    await start(agency_sim_fractions="0.3, 0.3, 0.4")
    cases = {"E-1": ("100.01", "EUR"), "J-1": ("1001", "JPY"), "B-1": ("10.005", "BHD")}
    sent = await send(
        kafka_bootstrap,
        requests_topic,
        [
            (request_key(key), request("TransferCase", transfer_case(key, amount, currency)))
            for key, (amount, currency) in cases.items()
        ],
    )
    await handled(kafka_bootstrap, prefix, sent)

    found = await answers(kafka_bootstrap, prefix)
    assert summary(found[f"{WEBSITE}:E-1"]) == [
        accepted("E-1"),
        paid("E-1", 1, "30.00"),
        paid("E-1", 2, "30.00"),
        paid("E-1", 3, "40.01"),
        processed("100.01"),
    ]
    assert summary(found[f"{WEBSITE}:J-1"]) == [
        accepted("J-1"),
        paid("J-1", 1, "300"),
        paid("J-1", 2, "300"),
        paid("J-1", 3, "401"),
        processed("1001"),
    ]
    assert summary(found[f"{WEBSITE}:B-1"]) == [
        accepted("B-1"),
        paid("B-1", 1, "3.002"),  # 3.0015 rounded half up
        paid("B-1", 2, "3.002"),
        paid("B-1", 3, "4.001"),
        processed("10.005"),
    ]


async def test_refuse_and_the_per_case_overrides(
    kafka_bootstrap: str, prefix: str, requests_topic: str, sims: tuple[Start, Stop]
) -> None:
    start, _ = sims
    await start(agency_sim_behaviour="refuse")
    payloads = [
        transfer_case("R-1", "50.00"),
        transfer_case("R-2", "50.00", reference="Order 7 sim:accept"),
        transfer_case("R-3", "50.00", external_id="EXT-3 SIM:Accept-Only"),
        transfer_case("R-4", "50.00", reference="sim:nonsense"),  # unknown: the default
    ]
    sent = await send(
        kafka_bootstrap,
        requests_topic,
        [(request_key(p["case_key"]), request("TransferCase", p)) for p in payloads],
    )
    await handled(kafka_bootstrap, prefix, sent)

    found = await answers(kafka_bootstrap, prefix)
    refused = ("AgencyRefused", {"reason": "Refused by the agency simulator (behaviour refuse)."})
    assert {key: summary(items) for key, items in found.items()} == {
        f"{WEBSITE}:R-1": [refused],
        f"{WEBSITE}:R-2": [
            accepted("R-2"),
            paid("R-2", 1, "25.00"),
            paid("R-2", 2, "25.00"),
            processed("50.00"),
        ],
        f"{WEBSITE}:R-3": [accepted("R-3")],
        f"{WEBSITE}:R-4": [refused],
    }


async def test_a_redelivered_request_gets_the_very_same_answers(
    kafka_bootstrap: str, prefix: str, requests_topic: str, sims: tuple[Start, Stop]
) -> None:
    start, _ = sims
    await start()
    body = request("TransferCase", transfer_case("D-1", "80.00"))
    sent = await send(kafka_bootstrap, requests_topic, [(request_key("D-1"), body)] * 2)
    await handled(kafka_bootstrap, prefix, sent)

    found = (await answers(kafka_bootstrap, prefix))[f"{WEBSITE}:D-1"]
    assert [a["type"] for a in found] == [
        "AgencyAccepted",
        "AddCollectedAmount",
        "AddCollectedAmount",
        "AgencyProcessed",
    ] * 2
    assert found[:4] == found[4:]  # same message ids, same everything: the inbox drops them
    assert len({a["message_id"] for a in found}) == 4


async def test_answers_pending_at_a_stop_are_sent_after_the_restart_with_the_same_ids(
    kafka_bootstrap: str, prefix: str, requests_topic: str, sims: tuple[Start, Stop]
) -> None:
    start, stop = sims
    first = await start(agency_sim_pause_ms=600_000)  # accepts, then waits "ten minutes"
    sent = await send(
        kafka_bootstrap,
        requests_topic,
        [(request_key("S-1"), request("TransferCase", transfer_case("S-1", "10.00")))],
    )

    async def accepted_only() -> list[dict[str, Any]] | None:
        found = (await answers(kafka_bootstrap, prefix)).get(f"{WEBSITE}:S-1", [])
        return found or None

    before = await poll_until(accepted_only, timeout=60, interval=0.1, what="AgencyAccepted")
    assert [a["type"] for a in before] == ["AgencyAccepted"]
    await stop(first)
    # Not committed: the request's answers were not all sent.
    slot = (sent[0].topic, sent[0].partition)
    done = await committed(kafka_bootstrap, prefix + GROUP, requests_topic)
    assert done.get(slot, -1) <= sent[0].offset

    await start()  # the same group, no pause: the request comes again
    await handled(kafka_bootstrap, prefix, sent)
    found = (await answers(kafka_bootstrap, prefix))[f"{WEBSITE}:S-1"]
    assert summary(found) == [
        accepted("S-1"),
        accepted("S-1"),
        paid("S-1", 1, "5.00"),
        paid("S-1", 2, "5.00"),
        processed("10.00"),
    ]
    assert found[0] == found[1]


async def test_a_recall_stops_the_answers_still_pending(
    kafka_bootstrap: str, prefix: str, requests_topic: str, sims: tuple[Start, Stop]
) -> None:
    start, _ = sims
    await start(agency_sim_pause_ms=600_000)
    transfer = request("TransferCase", transfer_case("P-1", "10.00"))
    first = await send(kafka_bootstrap, requests_topic, [(request_key("P-1"), transfer)])

    async def some() -> list[dict[str, Any]] | None:
        return (await answers(kafka_bootstrap, prefix)).get(f"{WEBSITE}:P-1") or None

    await poll_until(some, timeout=60, interval=0.1, what="AgencyAccepted")
    # The recall, then the same transfer delivered again: neither gets an answer. The
    # commit past them proves the paused answers ended (the pause is ten minutes).
    later = await send(
        kafka_bootstrap,
        requests_topic,
        [
            (request_key("P-1"), request("RecallCase", recall_case("P-1"))),
            (request_key("P-1"), transfer),
        ],
    )
    await handled(kafka_bootstrap, prefix, first + later)
    assert summary((await answers(kafka_bootstrap, prefix))[f"{WEBSITE}:P-1"]) == [accepted("P-1")]


async def test_a_recall_read_with_its_transfer_leaves_the_case_unanswered(
    kafka_bootstrap: str, prefix: str, requests_topic: str, sims: tuple[Start, Stop]
) -> None:
    start, _ = sims
    await start()
    sent = await send_one_batch(
        kafka_bootstrap,
        requests_topic,
        request_key("Q-1"),
        [
            request("TransferCase", transfer_case("Q-1", "10.00")),
            request("RecallCase", recall_case("Q-1")),
        ],
    )
    sent += await send(
        kafka_bootstrap,
        requests_topic,
        [(request_key("Q-2"), request("TransferCase", transfer_case("Q-2", "10.00")))],
    )
    await handled(kafka_bootstrap, prefix, sent)
    found = await answers(kafka_bootstrap, prefix)
    assert set(found) == {f"{WEBSITE}:Q-2"}
    assert summary(found[f"{WEBSITE}:Q-2"]) == [
        accepted("Q-2"),
        paid("Q-2", 1, "5.00"),
        paid("Q-2", 2, "5.00"),
        processed("10.00"),
    ]


async def test_garbage_is_skipped_and_the_next_request_answered(
    kafka_bootstrap: str, prefix: str, requests_topic: str, sims: tuple[Start, Stop]
) -> None:
    start, _ = sims
    await start()
    broken = transfer_case("G-1", "10.00")
    broken["amount"] = "ten euros"
    key = request_key("G-2")  # one key: the garbage comes first on the partition
    sent = await send(
        kafka_bootstrap,
        requests_topic,
        [
            (key, b"not json at all"),
            (key, b"[1, 2, 3]"),
            (None, b""),
            (key, request("CreateCase", {"case_key": "G-1"})),  # not a type of this topic
            (key, request("TransferCase", broken)),
            (key, request("TransferCase", transfer_case("G-2", "10.00"))),
        ],
    )
    await handled(kafka_bootstrap, prefix, sent)
    found = await answers(kafka_bootstrap, prefix)
    assert set(found) == {f"{WEBSITE}:G-2"}
    assert [a["type"] for a in found[f"{WEBSITE}:G-2"]] == [
        "AgencyAccepted",
        "AddCollectedAmount",
        "AddCollectedAmount",
        "AgencyProcessed",
    ]


async def test_runs_as_a_module_configured_by_the_environment_and_logs_no_personal_data(
    kafka_bootstrap: str, prefix: str, requests_topic: str
) -> None:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "CM_TOPIC_PREFIX": prefix,
        "KAFKA_SESSION_TIMEOUT_MS": "2000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "AGENCY_SIM_BEHAVIOUR": "accept_only",
        "AGENCY_SIM_AGENCIES": f"{AGENCY},AG-OTHER",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.collection.agency_sim"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        broken = transfer_case("M-1", "10.00")
        broken["due_date"] = "someday"
        elsewhere = transfer_case("M-3", "10.00")
        elsewhere["agency_code"] = "AG-NOT-SIMULATED"
        sent = await send(
            kafka_bootstrap,
            requests_topic,
            [
                (request_key("M-1"), request("TransferCase", broken)),
                ("AG-NOT-SIMULATED:M-3", request("TransferCase", elsewhere)),
                (request_key("M-2"), request("TransferCase", transfer_case("M-2", "10.00"))),
            ],
        )
        await handled(kafka_bootstrap, prefix, sent)
        found = await answers(kafka_bootstrap, prefix)
        assert {key: summary(items) for key, items in found.items()} == {
            f"{WEBSITE}:M-2": [accepted("M-2")]
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output.decode(errors="replace")
    lines = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    skipped = [
        line for line in lines if line["event"] == "record skipped: not a valid agency request"
    ]
    assert [s["errors"] for s in skipped] == [["payload.due_date: date_from_datetime_parsing"]]
    assert any(line["event"] == "agency sim stopped" for line in lines)
    for secret in (b"Jane", b"jane.doe@example.com", b"+31612345678", b"Main street"):
        assert secret not in output
