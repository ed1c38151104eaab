"""Messages to debtors: a background task sends the message jobs that `SendMessage`
recorded, and answers each with `RecordMessageOutcome`.

Each job is its own unit: claim, commit, send, record.

- **Claim**: one short transaction marks due jobs `sending` (their `available_at`
  becomes the end of a lease, `MESSAGE_LEASE_S`) with a claim token, and commits.
- **Send**: each job in a task of its own (at most `MESSAGE_MAX_IN_FLIGHT`, and
  `MESSAGE_MAX_IN_FLIGHT_PER_PROVIDER` sends per provider: SMTP, SMS, print/spool), each
  send under one deadline (`MESSAGE_SEND_TIMEOUT_S`). The message is rendered for the
  invoice's culture and each channel and sent on the first channel that works, in the
  step's order, skipping contact methods marked unreachable and channels not configured.
- **Record**: the job's outcome (`sent`, `sent_backup`, `skipped_no_methods`) goes into
  the outbox in the job's own transaction, only while its claim token still matches.

What a failure does:

- a channel that cannot reach the debtor (`ChannelFailed`: a refused recipient, a
  provider's 4xx, an address the SMTP path cannot send) → the next channel;
- an unexpected exception while rendering or sending on one channel → that channel
  counts as failed with the code `unexpected_<Type>` (such errors come from the
  debtor's or the template's data, so the same channel would fail again) → the next
  channel;
- an unreachable provider (`TransientFailure`) → the whole job is postponed
  (`TRANSIENT_DELAYS_S`); on the last try it counts as that channel failing;
- an unexpected exception outside any channel (the stored command no longer parses,
  the templates cannot be read) → the job is postponed on the same schedule with the
  code in `last_error`; after the last try it is answered `skipped_no_methods`.

A worker that dies mid-send leaves its jobs `sending`; when the lease lapses they are
claimed and sent again (at-least-once). The outcome's message id is derived from the
command's, so the invoice service records it once whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client import Counter

from contracts import topics
from contracts.catalog import key_for
from contracts.envelope import Envelope, envelope_class, new_envelope, parse_envelope
from contracts.invoice import Channel, MessageOutcome, RecordMessageOutcome
from contracts.notifier import SendMessage
from services.notifier.channels import ChannelFailed, Rendered, TransientFailure
from services.notifier.channels.email import EmailSender
from services.notifier.channels.letter import LetterSender
from services.notifier.channels.sms import SmsSender
from services.notifier.limits import NotifierLimits, error_code
from services.notifier.metrics import GIVE_UPS, NO_CHANNEL, RETRIES
from services.notifier.repository import ClaimedJob, NotifierRepository
from services.notifier.templates import (
    BUILT_IN,
    MessageContext,
    Template,
    cultures_to_try,
    day,
    default_template_key,
    fill,
)
from services.runtime.app import Runtime
from services.runtime.logs import get_logger
from services.runtime.outbox import OutboxMessage

log = get_logger(__name__)

#: Most jobs claimed per claim transaction.
BATCH_SIZE = 20
#: Back-off (seconds) after a provider was unreachable or the job failed outside any
#: channel; after the last one, the channel counts as failed and the next one is tried
#: (or the job is answered `skipped_no_methods`).
TRANSIENT_DELAYS_S: tuple[float, ...] = (5, 30, 120, 600)
#: Seconds kept free at the end of a lease for recording the outcome.
_LEASE_MARGIN_S = 10.0

SENT = Counter("cm_notifier_messages_total", "Messages to debtors, by outcome", ["outcome"])
CHANNEL_RESULTS = Counter(
    "cm_notifier_channel_results_total", "Results per channel", ["channel", "result"]
)

#: Namespace of RecordMessageOutcome ids (derived from the SendMessage's id).
_OUTCOME_IDS = uuid.UUID("0b8f6e2a-52f4-4d0c-8f7e-2c6a1d9b7e30")

#: The custom parameter naming the merchant in messages ([CompanyName]).
COMPANY_NAME_PARAMETER = "CompanyName"

MerchantTemplates = dict[tuple[str, Channel], Template]


def choose_template(
    merchant: MerchantTemplates, template_key: str, default_key: str, culture: str, channel: Channel
) -> Template | None:
    """The merchant's text for the channel (a letter may use the e-mail text), else the
    built-in one of the key, else the built-in default of the step's action; each in the
    invoice's culture first."""
    cultures = cultures_to_try(culture)
    channels = [channel, Channel.EMAIL] if channel == Channel.LETTER else [channel]
    for ch in channels:
        for c in cultures:
            if (c, ch) in merchant:
                return merchant[c, ch]
    for key in (template_key, default_key):
        for c in cultures:
            if (found := BUILT_IN.get((key, c, channel))) is not None:
                return found
    return None


@dataclass
class JobResult:
    outcome: MessageOutcome | None  # None: try the job again later
    channel: Channel | None = None
    log: list[tuple[str, str, str | None]] = field(default_factory=list)
    #: An unexpected error outside any channel (its code): postponed, then given up.
    error: str | None = None


@dataclass
class _Claimed:
    job: ClaimedJob
    lease_ends: float  # time.monotonic(): never later than the lease in the database
    started: bool = False


def _culture(cmd: SendMessage) -> str:
    debtor = cmd.invoice.debtor
    person_culture = debtor.person.culture if debtor and debtor.person else None
    return cmd.invoice.culture or person_culture or "en-US"


def _merchant_name(cmd: SendMessage, website_key: str) -> str:
    """[CompanyName]: the invoice's `CompanyName` parameter, else the merchant's sender
    name, else the website key."""
    for param in cmd.invoice.custom_parameters:
        if param.key == COMPANY_NAME_PARAMETER:
            return param.value
    return cmd.sender_name or website_key


class MessageSender:
    """Claims message jobs and sends each in a task of its own (module docstring).

    `step` is the worker's round: it claims what fits and starts the tasks without
    waiting for them; `wake` is set whenever a task ends."""

    def __init__(
        self, runtime: Runtime, client: httpx.AsyncClient, limits: NotifierLimits | None = None
    ) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.limits = limits = limits or NotifierLimits.of(settings)
        timeout = limits.message_send_timeout_s
        cap = limits.response_max_bytes
        self.email = EmailSender(
            settings.smtp_host, settings.smtp_port, settings.smtp_from, timeout=timeout
        )
        sms_url = settings.sms_provider_url
        self.sms = (
            SmsSender(client, sms_url, timeout_s=timeout, max_response_bytes=cap)
            if sms_url
            else None
        )
        self.letter = LetterSender(
            client,
            settings.letter_spool_dir,
            settings.print_provider_url,
            timeout_s=timeout,
            max_response_bytes=cap,
        )
        self.wake = asyncio.Event()
        self._providers = {
            channel: asyncio.Semaphore(limits.message_max_in_flight_per_provider)
            for channel in Channel
        }
        self._tasks: dict[asyncio.Task[None], _Claimed] = {}

    async def step(self, limit: int = BATCH_SIZE) -> int:
        """Claim what fits and start sending it; returns how many jobs were claimed."""
        room = min(limit, self.limits.message_max_in_flight - len(self._tasks))
        if room <= 0:
            return 0
        claim_started = time.monotonic()
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            jobs = await NotifierRepository(conn).claim_jobs(
                room, lease_s=self.limits.message_lease
            )
        for job in jobs:
            item = _Claimed(job, claim_started + self.limits.message_lease)
            task = asyncio.create_task(self._handle(item))
            self._tasks[task] = item
            task.add_done_callback(self._done)
        return len(jobs)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task)
        self.wake.set()

    async def close(self) -> None:
        """Stop: cancel the tasks; jobs not yet started are released (due again), ones
        cut off mid-send stay `sending` until their lease lapses."""
        unstarted = [item.job for item in self._tasks.values() if not item.started]
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if unstarted:
            with contextlib.suppress(Exception):
                async with self.runtime.pool.acquire() as conn:
                    await NotifierRepository(conn).release_jobs(
                        list({j.claim_token for j in unstarted}), [j.id for j in unstarted]
                    )

    async def _handle(self, item: _Claimed) -> None:
        job = item.job
        item.started = True
        # Everything before the record must end while the lease holds.
        budget = item.lease_ends - time.monotonic() - _LEASE_MARGIN_S
        envelope: Envelope[Any] | None = None
        try:
            async with asyncio.timeout(budget):
                envelope = parse_envelope(json.dumps(job.command), {SendMessage.TYPE})
                cmd: SendMessage = envelope.payload
                key = cmd.template_key or default_template_key(cmd.action, cmd.states_costs)
                async with self.runtime.pool.acquire() as conn:
                    templates = await NotifierRepository(conn).templates(envelope.website_key, key)
                result = await self._send(job, envelope, templates)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # outside any channel: postpone, then give up
            code = "job_timeout" if isinstance(error, TimeoutError) else error_code(error)
            log.warning(
                "message job failed outside its channels; postponed",
                error=code,
                website_key=job.website_key,
                invoice_number=job.invoice_number,
                step_index=job.step_index,
            )
            result = JobResult(outcome=None, log=[("job", "error", code)], error=code)
        try:
            await self._record(job, envelope, result)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the lease brings the job back
            log.error(
                "message job not recorded; it is sent again when its lease lapses",
                error_type=type(error).__name__,
                website_key=job.website_key,
                invoice_number=job.invoice_number,
                step_index=job.step_index,
            )

    async def _record(
        self, job: ClaimedJob, envelope: Envelope[Any] | None, result: JobResult
    ) -> None:
        """The job's outcome in a transaction of its own."""
        last_try = job.attempts + 1 >= len(TRANSIENT_DELAYS_S)
        if result.outcome is None and result.error is not None and last_try:
            # Given up on an error outside any channel: answer "not sent".
            result.outcome = MessageOutcome.SKIPPED_NO_METHODS
            result.log.append(("job", "given_up", result.error))
            GIVE_UPS.labels(NO_CHANNEL).inc()
        elif result.outcome is None and result.error is not None:
            RETRIES.labels(NO_CHANNEL).inc()
        answer: OutboxMessage | None = None
        if result.outcome is not None:
            answer = (
                self._outcome_message(envelope, result)
                if envelope is not None
                else self._fallback_outcome(job, result)
            )
        async with self.runtime.unit_of_work() as work:
            repo = NotifierRepository(work.conn)
            if result.outcome is None:
                delay = TRANSIENT_DELAYS_S[min(job.attempts, len(TRANSIENT_DELAYS_S) - 1)]
                recorded = await repo.postpone_job(job, delay, result.error)
            elif answer is None:
                recorded = await repo.finish_job(job, "failed", None, None, result.error)
            else:
                channel = result.channel.value if result.channel else None
                recorded = await repo.finish_job(
                    job, "done", result.outcome.value, channel, result.error
                )
                work.outbox.append(answer)
            if recorded:
                await repo.log_channel([(job.id, *entry) for entry in result.log])
            else:
                work.outbox.clear()
        if not recorded:
            log.warning(
                "message job handled after its claim lapsed; another worker has it",
                website_key=job.website_key,
                invoice_number=job.invoice_number,
                step_index=job.step_index,
            )

    def _fallback_outcome(self, job: ClaimedJob, result: JobResult) -> OutboxMessage | None:
        """The answer of a job whose stored command no longer parses, from the job's own
        columns; None when even that cannot be built."""
        assert result.outcome is not None
        try:
            command = job.command if isinstance(job.command, dict) else {}
            correlation = command.get("correlation_id")
            answer = envelope_class(RecordMessageOutcome).model_construct(
                message_id=uuid.uuid5(_OUTCOME_IDS, str(job.command_id)),
                type=RecordMessageOutcome.TYPE,
                website_key=job.website_key,
                occurred_at=datetime.fromisoformat(str(command.get("occurred_at")))
                if command.get("occurred_at")
                else datetime.now(UTC),
                correlation_id=uuid.UUID(str(correlation)) if correlation else job.command_id,
                causation_id=job.command_id,
                payload=RecordMessageOutcome(
                    invoice_number=job.invoice_number,
                    step_index=job.step_index,
                    outcome=result.outcome,
                    channel=None,
                ),
            )
            return OutboxMessage(
                self.runtime.topics(topics.INVOICE_INTERNAL),
                key_for(answer),
                answer.to_json(),
            )
        except Exception as error:
            log.error(
                "no answer could be built for a failed message job",
                error_type=type(error).__name__,
                website_key=job.website_key,
                invoice_number=job.invoice_number,
            )
            return None

    def _outcome_message(self, envelope: Envelope[Any], result: JobResult) -> OutboxMessage:
        cmd: SendMessage = envelope.payload
        assert result.outcome is not None
        answer = new_envelope(
            RecordMessageOutcome(
                invoice_number=cmd.invoice_number,
                step_index=cmd.step_index,
                outcome=result.outcome,
                channel=result.channel,
            ),
            website_key=envelope.website_key,
            occurred_at=envelope.occurred_at,  # business time: when the step ran
            caused_by=envelope,
            message_id=uuid.uuid5(_OUTCOME_IDS, str(envelope.message_id)),
        )
        return OutboxMessage(
            self.runtime.topics(topics.INVOICE_INTERNAL),
            key_for(answer),
            answer.to_json(),
        )

    async def _send(
        self, job: ClaimedJob, envelope: Envelope[Any], merchant: MerchantTemplates
    ) -> JobResult:
        cmd: SendMessage = envelope.payload
        culture = _culture(cmd)
        context = MessageContext(
            invoice=cmd.invoice,
            culture=culture,
            sent_at=envelope.occurred_at,
            merchant_name=_merchant_name(cmd, envelope.website_key),
        )
        template_key = cmd.template_key or default_template_key(cmd.action, cmd.states_costs)
        default_key = default_template_key(cmd.action, cmd.states_costs)
        last_try = job.attempts + 1 >= len(TRANSIENT_DELAYS_S)
        result = JobResult(outcome=MessageOutcome.SKIPPED_NO_METHODS)
        bound = {
            "website_key": envelope.website_key,
            "invoice_number": cmd.invoice_number,
            "step_index": cmd.step_index,
        }
        for channel in cmd.channels:
            template = choose_template(merchant, template_key, default_key, culture, channel)
            if template is None:
                result.log.append((channel.value, "skipped", "no_template"))
                continue
            try:
                rendered = Rendered(
                    fill(template.subject, context) if template.subject else None,
                    fill(template.body, context),
                )
                async with self._providers[channel]:
                    detail = await self._deliver(channel, cmd, envelope, rendered, job.id, context)
            except TransientFailure as failure:
                CHANNEL_RESULTS.labels(channel.value, "transient").inc()
                result.log.append((channel.value, "transient", failure.code))
                if not last_try:
                    RETRIES.labels(channel.value).inc()
                    log.info("provider unreachable; message postponed", code=failure.code, **bound)
                    return JobResult(outcome=None, log=result.log)
                GIVE_UPS.labels(channel.value).inc()
                continue
            except ChannelFailed as failure:
                CHANNEL_RESULTS.labels(channel.value, "failed").inc()
                result.log.append((channel.value, "failed", failure.code))
                log.info("channel failed; next one", channel=channel, code=failure.code, **bound)
                continue
            except Exception as error:  # this debtor's or template's data: the next channel
                code = error_code(error)
                CHANNEL_RESULTS.labels(channel.value, "failed").inc()
                result.log.append((channel.value, "failed", code))
                log.warning("channel raised; next one", channel=channel, code=code, **bound)
                continue
            if detail is None:  # no usable contact method, or the channel is not configured
                result.log.append((channel.value, "skipped", "unreachable_or_unavailable"))
                continue
            CHANNEL_RESULTS.labels(channel.value, "sent").inc()
            result.log.append((channel.value, "sent", detail or None))
            result.outcome = (
                MessageOutcome.SENT if channel == cmd.channels[0] else MessageOutcome.SENT_BACKUP
            )
            result.channel = channel
            break
        SENT.labels(result.outcome.value if result.outcome else "postponed").inc()
        log.info("message handled", outcome=result.outcome, channel=result.channel, **bound)
        return result

    async def _deliver(
        self,
        channel: Channel,
        cmd: SendMessage,
        envelope: Envelope[Any],
        message: Rendered,
        job_id: int,
        context: MessageContext,
    ) -> str | None:
        """Send on one channel; None when the channel cannot be used for this debtor."""
        debtor = cmd.invoice.debtor
        if debtor is None:
            return None
        reference = f"{cmd.invoice_number}-step{cmd.step_index}-{job_id}"
        name = (
            f"{debtor.person.first_name} {debtor.person.last_name}"
            if debtor.person
            else debtor.company.name
            if debtor.company
            else ""
        )
        if channel == Channel.EMAIL:
            if not debtor.email or debtor.unreachable.email:
                return None
            await self.email.send(debtor.email, name, message, reference, cmd.sender_name)
            return ""
        if channel == Channel.SMS:
            mobile = debtor.phone.mobile if debtor.phone else None
            if self.sms is None or not mobile or debtor.unreachable.mobile:
                return None
            await self.sms.send(mobile, message.body, reference, cmd.sender_name)
            return ""
        address = debtor.address
        if not self.letter.available or address is None or debtor.unreachable.address:
            return None
        lines = [
            name,
            f"{address.street} {address.house_number or ''}".strip(),
            f"{address.postal_code or ''} {address.city}".strip(),
            address.country,
        ]
        return await self.letter.send(
            lines,
            day(context.sent_at.date(), context.culture),
            message,
            envelope.website_key,
            reference,
            cmd.sender_name,
        )
