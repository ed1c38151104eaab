"""Messages to debtors: a background task sends the message jobs that `SendMessage`
recorded, and answers each with `RecordMessageOutcome`.

A job is claimed with `FOR UPDATE SKIP LOCKED`; its message is rendered for the
invoice's culture and each channel and sent on the first channel that works, in the
step's order, skipping contact methods marked unreachable and channels not configured.
The outcome (`sent`, `sent_backup`, `skipped_no_methods`) goes into the outbox in the
transaction that marks the job done. A crash between sending and that commit sends the
message again (at-least-once); the outcome's message id is derived from the command's,
so the invoice service records it once whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import Counter

from contracts import topics
from contracts.envelope import Envelope, new_envelope, parse_envelope
from contracts.invoice import Channel, MessageOutcome, RecordMessageOutcome
from contracts.notifier import SendMessage
from services.notifier.channels import ChannelFailed, Rendered, TransientFailure
from services.notifier.channels.email import EmailSender
from services.notifier.channels.letter import LetterSender
from services.notifier.channels.sms import SmsSender
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
from services.runtime.outbox import OutboxMessage, enqueue

log = get_logger(__name__)

#: Jobs claimed per transaction (sent concurrently).
BATCH_SIZE = 20
#: Back-off (seconds) after a provider was unreachable; after the last one, the channel
#: counts as failed and the next one is tried.
TRANSIENT_DELAYS_S: tuple[float, ...] = (5, 30, 120, 600)

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


def _culture(cmd: SendMessage) -> str:
    debtor = cmd.invoice.debtor
    person_culture = debtor.person.culture if debtor and debtor.person else None
    return cmd.invoice.culture or person_culture or "en-US"


def _merchant_name(cmd: SendMessage, website_key: str) -> str:
    for param in cmd.invoice.custom_parameters:
        if param.key == COMPANY_NAME_PARAMETER:
            return param.value
    return website_key


class MessageSender:
    """Sends claimed message jobs and records their outcomes."""

    def __init__(self, runtime: Runtime, client: httpx.AsyncClient) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.email = EmailSender(settings.smtp_host, settings.smtp_port, settings.smtp_from)
        sms_url = settings.sms_provider_url
        self.sms = SmsSender(client, sms_url) if sms_url else None
        self.letter = LetterSender(client, settings.letter_spool_dir, settings.print_provider_url)

    async def send_batch(self, limit: int = BATCH_SIZE) -> int:
        """Send what is due; returns how many jobs were handled."""
        outbox: list[OutboxMessage] = []
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            repo = NotifierRepository(conn)
            jobs = await repo.claim_jobs(limit)
            if not jobs:
                return 0
            prepared = []
            for job in jobs:
                envelope = parse_envelope(json.dumps(job.command), {SendMessage.TYPE})
                cmd: SendMessage = envelope.payload
                key = cmd.template_key or default_template_key(cmd.action, cmd.states_costs)
                prepared.append((job, envelope, await repo.templates(envelope.website_key, key)))
            results = await asyncio.gather(
                *(self._send(job, envelope, templates) for job, envelope, templates in prepared)
            )
            for (job, envelope, _), result in zip(prepared, results, strict=True):
                await repo.log_channel([(job.id, *entry) for entry in result.log])
                if result.outcome is None:
                    delay = TRANSIENT_DELAYS_S[min(job.attempts, len(TRANSIENT_DELAYS_S) - 1)]
                    await repo.postpone_job(job.id, delay)
                    continue
                channel = result.channel.value if result.channel else None
                await repo.finish_job(job.id, result.outcome.value, channel)
                outbox.append(self._outcome_message(envelope, result))
            await enqueue(conn, outbox, self.runtime.settings.relay_shards)
        if outbox and self.runtime.relay is not None:
            self.runtime.relay.wake()
        return len(jobs)

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
            self.runtime.topics(topics.INVOICE_COMMANDS),
            f"{envelope.website_key}:{cmd.invoice_number}",
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
            rendered = Rendered(
                fill(template.subject, context) if template.subject else None,
                fill(template.body, context),
            )
            try:
                detail = await self._deliver(channel, cmd, envelope, rendered, job.id, context)
            except TransientFailure as failure:
                CHANNEL_RESULTS.labels(channel.value, "transient").inc()
                result.log.append((channel.value, "transient", failure.code))
                if not last_try:
                    log.info("provider unreachable; message postponed", code=failure.code, **bound)
                    return JobResult(outcome=None, log=result.log)
                continue
            except ChannelFailed as failure:
                CHANNEL_RESULTS.labels(channel.value, "failed").inc()
                result.log.append((channel.value, "failed", failure.code))
                log.info("channel failed; next one", channel=channel, code=failure.code, **bound)
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
            await self.email.send(debtor.email, name, message, reference)
            return ""
        if channel == Channel.SMS:
            mobile = debtor.phone.mobile if debtor.phone else None
            if self.sms is None or not mobile or debtor.unreachable.mobile:
                return None
            await self.sms.send(mobile, message.body, reference)
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
        )
