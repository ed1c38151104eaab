"""The reference collection-agency adapter: `python -m services.collection.agency_sim`.

A stand-in for a real agency's adapter, for `make run`, demos and tests. It is not part of
the collection service: it talks to it only through Kafka, the way any agency adapter
does, and imports nothing but the contracts and generic runtime helpers.

It reads `cm.agency.requests` (TransferCase, RecallCase) in its own consumer group and
answers on `cm.collection.commands` (key `{website_key}:{case_key}`), per its behaviour:

- `accept` (default): AgencyAccepted (`SIM-{case_key}`), one AddCollectedAmount per
  configured fraction of the case amount (`SIM-{case_key}-{n}`; the last part is the
  rest, so the parts add up to the amount exactly), AgencyProcessed complete with the
  total;
- `refuse`: AgencyRefused;
- `accept_only`: AgencyAccepted and nothing more.

`AGENCY_SIM_BEHAVIOUR`, `AGENCY_SIM_FRACTIONS`, `AGENCY_SIM_PAUSE_MS` and
`AGENCY_SIM_AGENCIES` set it up; a case whose `reference` or `external_id` contains
`sim:<behaviour>` gets that behaviour (docs/agency-sim.md).

Answers carry the request's `website_key`, `occurred_at` (business time, never the wall
clock) and correlation; their message ids are derived from the request's message id and
their position, so a redelivered request yields the very same answers and the collection
service's inbox drops the repeats. A recall drops the case's answers not yet sent. A
request's offset is committed once its answers are all sent (or dropped by a recall).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import signal
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pydantic import field_validator

from contracts import topics as t
from contracts.catalog import key_for, types_for_topic
from contracts.collection import (
    AddCollectedAmount,
    AgencyAccepted,
    AgencyProcessed,
    AgencyRefused,
    RecallCase,
    TransferCase,
)
from contracts.envelope import Envelope, Message, ParseError, new_envelope, parse_envelope
from contracts.fields import minor_unit, with_minor_unit
from contracts.topics import TopicNames
from services.runtime.app import ensure_topics
from services.runtime.kafka_auth import client_options
from services.runtime.logs import configure_logging, failure_site, get_logger
from services.runtime.records import UNREADABLE, install_record_guard
from services.runtime.settings import Settings
from services.runtime.worker import Backoff, StopFlag, run_worker

log = get_logger("services.collection.agency_sim")  # the same under `python -m`

NAME = "agency-sim"
#: The consumer group (behind CM_TOPIC_PREFIX, like the services' groups), under the
#: agency adapters' group prefix of the ACL plan (deploy/kafka/acl-plan.json).
GROUP = "cm.agency-adapter.sim"
#: The longest agency / collection reference the contracts take.
MAX_REFERENCE = 100


class Behaviour(StrEnum):
    """How the simulated agency answers a TransferCase."""

    ACCEPT = "accept"
    REFUSE = "refuse"
    ACCEPT_ONLY = "accept_only"


#: `sim:refuse`, `sim:accept_only` (or `sim:accept-only`) in a case's reference.
_OVERRIDE = re.compile(r"sim:([a-z_-]+)", re.IGNORECASE)


def parse_fractions(text: str) -> tuple[Decimal, ...]:
    """`"0.5,0.5"` → the payment fractions: each above 0, together exactly 1. Empty: no
    AddCollectedAmount at all (AgencyProcessed reports the whole amount)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        fractions = tuple(Decimal(part) for part in parts)
    except InvalidOperation:
        raise ValueError(f"not a list of decimal fractions: {text!r}") from None
    if any(not f.is_finite() or f <= 0 for f in fractions):
        raise ValueError("every fraction must be above 0")
    if fractions and sum(fractions) != 1:
        raise ValueError(f"the fractions add up to {sum(fractions)}, not 1")
    return fractions


class SimSettings(Settings):
    """The services' settings (KAFKA_BOOTSTRAP_SERVERS, CM_TOPIC_PREFIX, LOG_FORMAT, ...)
    plus the simulator's own."""

    agency_sim_behaviour: Behaviour = Behaviour.ACCEPT
    #: Fractions of the case amount paid by AddCollectedAmount, in order; the last part
    #: is whatever is left, so the parts add up to the amount exactly.
    agency_sim_fractions: str = "0.5,0.5"
    #: Wall-clock pause before each answer after the first (0: answer at once). Only
    #: pacing: the answers' `occurred_at` is the request's all the same.
    agency_sim_pause_ms: int = 0
    #: Comma-separated agency codes to answer for; empty: every agency.
    agency_sim_agencies: str = ""

    @field_validator("agency_sim_fractions")
    @classmethod
    def _valid_fractions(cls, value: str) -> str:
        parse_fractions(value)
        return value

    @field_validator("agency_sim_behaviour", mode="before")
    @classmethod
    def _behaviour_spelling(cls, value: Any) -> Any:
        return value.strip().lower().replace("-", "_") if isinstance(value, str) else value

    @property
    def fractions(self) -> tuple[Decimal, ...]:
        return parse_fractions(self.agency_sim_fractions)

    @property
    def agencies(self) -> frozenset[str]:
        return frozenset(a.strip() for a in self.agency_sim_agencies.split(",") if a.strip())


# --- what the agency answers (pure) -----------------------------------------------------


def behaviour_for(case: TransferCase, default: Behaviour) -> Behaviour:
    """The case's own `sim:<behaviour>` (reference first, then external_id), else `default`."""
    for text in (case.reference, case.external_id):
        for found in _OVERRIDE.finditer(text or ""):
            with contextlib.suppress(ValueError):
                return Behaviour(found.group(1).lower().replace("-", "_"))
    return default


def split_amount(amount: Decimal, currency: str, fractions: Sequence[Decimal]) -> list[Decimal]:
    """The payments for `fractions` of `amount`: each rounded to the currency's minor unit,
    the last one what is left, so they add up to `amount` exactly. Zero parts (an amount
    too small to split) are left out; nothing is paid of an amount of zero or less."""
    total = with_minor_unit(amount, currency)
    if total <= 0 or not fractions:
        return []
    quantum = Decimal(1).scaleb(-minor_unit(currency))
    parts: list[Decimal] = []
    collected = Decimal(0)
    for fraction in fractions[:-1]:
        part = min((total * fraction).quantize(quantum, ROUND_HALF_UP), total - collected)
        parts.append(part)
        collected += part
    parts.append(total - collected)
    return [part for part in parts if part > 0]


def _reference(case_key: str, suffix: str = "") -> str:
    """`SIM-{case_key}{suffix}`, the case key shortened so it fits the contracts."""
    room = MAX_REFERENCE - len("SIM-") - len(suffix)
    return f"SIM-{case_key[:room]}{suffix}"


def plan_answers(
    case: TransferCase, behaviour: Behaviour, fractions: Sequence[Decimal]
) -> list[Message]:
    """The answers to a TransferCase, in the order they are sent."""
    if behaviour is Behaviour.REFUSE:
        return [
            AgencyRefused(
                case_key=case.case_key,
                reason="Refused by the agency simulator (behaviour refuse).",
            )
        ]
    answers: list[Message] = [
        AgencyAccepted(case_key=case.case_key, agency_reference=_reference(case.case_key))
    ]
    if behaviour is Behaviour.ACCEPT_ONLY:
        return answers
    payments = split_amount(case.amount, case.currency, fractions)
    answers += [
        AddCollectedAmount(
            case_key=case.case_key,
            amount=part,
            collection_reference=_reference(case.case_key, f"-{n}"),
        )
        for n, part in enumerate(payments, start=1)
    ]
    total = sum(payments, Decimal(0)) if payments else with_minor_unit(case.amount, case.currency)
    answers.append(
        AgencyProcessed(
            case_key=case.case_key,
            complete=True,
            collected_amount=with_minor_unit(max(total, Decimal(0)), case.currency),
        )
    )
    return answers


def answer_id(request_id: uuid.UUID, position: int) -> uuid.UUID:
    """The message id of the answer at `position`: the same on every redelivery."""
    return uuid.uuid5(request_id, f"{NAME}/{position}")


def answer_envelopes(request: Envelope[Any], answers: Sequence[Message]) -> list[Envelope[Any]]:
    """The answers as envelopes caused by `request`: its merchant, its business time."""
    return [
        new_envelope(
            payload,
            website_key=request.website_key,
            occurred_at=request.occurred_at,
            caused_by=request,
            message_id=answer_id(request.message_id, position),
        )
        for position, payload in enumerate(answers)
    ]


# --- the adapter ------------------------------------------------------------------------

#: (website_key, agency_code, case_key)
CaseId = tuple[str, str, str]


@dataclass
class _Partition:
    """Offsets read from one partition and those whose answers are still being sent."""

    next_offset: int = 0
    open: set[int] = field(default_factory=set)
    committed: int = -1

    def commit_point(self) -> int:
        return min(self.open) if self.open else self.next_offset


class AgencySim:
    """The simulated agency: `await AgencySim(settings).run()` until `stop()`."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.topics = TopicNames(settings.cm_topic_prefix)
        self.behaviour = settings.agency_sim_behaviour
        self.fractions = settings.fractions
        self.agencies = settings.agencies
        self.pause_s = settings.agency_sim_pause_ms / 1000
        self._allowed = types_for_topic(t.AGENCY_REQUESTS)
        self._stop = StopFlag()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[TopicPartition, _Partition] = {}
        #: The newest answer task per case (a case's answers go out one after another).
        self._playing: dict[CaseId, asyncio.Task[None]] = {}
        #: Recalled cases (in memory only): nothing more is sent for them.
        self._recalled: set[CaseId] = set()
        #: Set by a recall to end the pause of the case's answers at once.
        self._wakers: dict[CaseId, asyncio.Event] = {}

    def stop(self) -> None:
        """End `run()` after the current poll; answers not yet sent are not sent."""
        self._stop.stopped = True

    async def run(self) -> None:
        settings = self.settings
        install_record_guard()
        await ensure_topics(settings, self.topics)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"cm-{NAME}",
            acks="all",
            enable_idempotence=False,  # the embedded broker has no idempotent producer
            linger_ms=settings.kafka_linger_ms,
            **client_options(settings),
        )
        self._consumer = AIOKafkaConsumer(
            self.topics(t.AGENCY_REQUESTS),
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"cm-{NAME}",
            group_id=self.topics(GROUP),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            max_poll_records=settings.kafka_max_records,
            max_partition_fetch_bytes=max(1_048_576, settings.kafka_max_message_bytes),
            **client_options(settings),
        )
        await self._producer.start()
        try:
            await self._consumer.start()
            log.info(
                "agency sim started",
                topic=self.topics(t.AGENCY_REQUESTS),
                group=self.topics(GROUP),
                behaviour=self.behaviour.value,
                fractions=[str(f) for f in self.fractions],
                pause_ms=settings.agency_sim_pause_ms,
                agencies=sorted(self.agencies) or "all",
            )
            await run_worker(NAME, self._poll, idle_s=0.0, stop=self._stop)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        playing = [task for task in self._playing.values() if not task.done()]
        for task in playing:
            task.cancel()
        await asyncio.gather(*playing, return_exceptions=True)
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._commit()
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        log.info("agency sim stopped", cases_not_finished=len(playing))

    # -- consuming ---------------------------------------------------------------------------

    async def _poll(self) -> int:
        """One round: read what is there, start the answers, commit what is done."""
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=100)
        count = 0
        for tp, records in batches.items():
            partition = self._partitions.setdefault(tp, _Partition())
            for record in records:
                count += 1
                partition.next_offset = max(partition.next_offset, record.offset + 1)
                task = self._handle(record)
                if task is not None:
                    partition.open.add(record.offset)
                    task.add_done_callback(functools.partial(_finished, partition, record.offset))
        await self._commit()
        return count

    async def _commit(self) -> None:
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        offsets = {
            tp: p.commit_point()
            for tp, p in self._partitions.items()
            if tp in assigned and p.commit_point() > p.committed
        }
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except Exception as exc:
            # A rebalance took the partition away: the next owner reads it again, and
            # the answers it sends again carry the same message ids.
            log.warning("offset commit failed", error_type=type(exc).__name__)
            return
        for tp, offset in offsets.items():
            self._partitions[tp].committed = offset

    def _handle(self, record: Any) -> asyncio.Task[None] | None:
        """Act on one record; the task sending its answers, if it has any."""
        where = {"partition": record.partition, "offset": record.offset}
        unreadable = dict(record.headers or ()).get(UNREADABLE)
        if unreadable is not None:
            reason = bytes(unreadable).decode("utf-8", "replace")
            log.warning("record skipped: unreadable", **where, reason=reason)
            return None
        try:
            request = parse_envelope(record.value or b"", self._allowed)
        except ParseError as err:
            # Field paths and codes only: a request is full of personal data.
            log.warning(
                "record skipped: not a valid agency request",
                **where,
                type=err.type,
                message_id=str(err.message_id) if err.message_id else None,
                errors=[f"{e.field}: {e.code}" for e in err.errors],
            )
            return None
        payload = request.payload
        case: CaseId = (request.website_key, payload.agency_code, payload.case_key)
        context = {
            "website_key": request.website_key,
            "agency_code": payload.agency_code,
            "case_key": payload.case_key,
            "message_id": str(request.message_id),
        }
        if self.agencies and payload.agency_code not in self.agencies:
            log.debug("request for another agency: ignored", type=request.type, **context)
            return None
        if isinstance(payload, RecallCase):
            self._recalled.add(case)
            if (waker := self._wakers.get(case)) is not None:
                waker.set()
            log.info("case recalled: nothing more is sent for it", **context, **where)
            return None
        assert isinstance(payload, TransferCase)
        if case in self._recalled:
            log.info("transfer of a recalled case: not answered", **context, **where)
            return None
        behaviour = behaviour_for(payload, self.behaviour)
        answers = answer_envelopes(request, plan_answers(payload, behaviour, self.fractions))
        log.info(
            "case transferred",
            behaviour=behaviour.value,
            environment=payload.environment.value,
            answers=len(answers),
            **context,
            **where,
        )
        previous = self._playing.get(case)
        task = asyncio.create_task(self._play(case, answers, previous), name=f"{NAME}-case")
        self._playing[case] = task
        task.add_done_callback(lambda done: self._forget(case, done))
        return task

    def _forget(self, case: CaseId, task: asyncio.Task[None]) -> None:
        if self._playing.get(case) is task:
            del self._playing[case]

    # -- answering ---------------------------------------------------------------------------

    async def _play(
        self,
        case: CaseId,
        answers: Sequence[Envelope[Any]],
        previous: asyncio.Task[None] | None,
    ) -> None:
        """Send a case's answers in order, after the case's earlier ones, until recalled."""
        if previous is not None:
            await asyncio.wait([previous])
        waker = self._wakers[case] = asyncio.Event()
        sent: list[str] = []
        try:
            for position, answer in enumerate(answers):
                if position and self.pause_s > 0 and case not in self._recalled:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waker.wait(), self.pause_s)
                if case in self._recalled:
                    log.info(
                        "answers dropped: the case was recalled",
                        website_key=case[0],
                        case_key=case[2],
                        sent=sent,
                        dropped=[a.type for a in answers[position:]],
                    )
                    return
                await self._send(answer)
                sent.append(answer.type)
        finally:
            if self._wakers.get(case) is waker:
                del self._wakers[case]
        log.info("answers sent", website_key=case[0], case_key=case[2], types=sent)

    async def _send(self, answer: Envelope[Any]) -> None:
        """Publish one answer and wait for all in-sync replicas; retry until it is taken."""
        assert self._producer is not None
        topic = self.topics(t.AGENCY_ANSWERS)  # the agencies' own topic, for every answer
        key = key_for(answer)
        backoff = Backoff(initial_s=self.settings.retry_backoff_ms / 1000, max_s=30.0)
        while True:
            try:
                await self._producer.send_and_wait(
                    topic,
                    answer.to_json(),
                    key=key.encode() if key else None,
                    headers=[("content-type", b"application/json")],
                )
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning(
                    "answer not published; retrying",
                    type=answer.type,
                    message_id=str(answer.message_id),
                    error_type=type(exc).__name__,
                    at=failure_site(exc),
                    failures_in_a_row=backoff.failures,
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)


def _finished(partition: _Partition, offset: int, task: asyncio.Task[None]) -> None:
    """A request's answers are done: sent, dropped by a recall, or failed (logged)."""
    if task.cancelled():
        return  # stopped half-way: not committed, so answered again after a restart
    exc = task.exception()
    if exc is not None:
        log.error("answering a case failed", error_type=type(exc).__name__, at=failure_site(exc))
    partition.open.discard(offset)


async def main() -> None:
    settings = SimSettings()
    configure_logging(NAME, fmt=settings.log_format, level=settings.log_level)
    sim = AgencySim(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, sim.stop)
    await sim.run()


if __name__ == "__main__":
    asyncio.run(main())
