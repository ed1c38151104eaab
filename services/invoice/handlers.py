"""The invoice service's handlers: load, call one domain function, save and emit what it
returns, answer; one transaction (the consumer's).

What a message means is decided in `domain.commands`; here it is only loaded, stored and
sent: each change's invoice saved, its events emitted with the invoice's snapshot, its
requests sent to the notifier or the subscription service, its timer plan to the
scheduler. Every message goes to its catalog topic with its catalog key.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from contracts.catalog import key_for_payload, timer_for, topic_for_type
from contracts.debtor import DebtorSnapshot
from contracts.envelope import Envelope, FieldError, Message, new_envelope
from contracts.invoice import (
    AddOrUpdateDebtor,
    Channel,
    CreateCombinedInvoice,
    CreateInvoice,
    CreatePaymentPlan,
    InvoiceEvent,
    InvoiceSnapshot,
    StepAction,
    StepDue,
    TerminatePaymentPlan,
    UpdateMerchantSettings,
    UpsertScheme,
)
from contracts.notifier import SendMessage
from contracts.payments import CollectPayment, TransactionStatusChanged
from contracts.scheduler import CancelTimer
from contracts.subscription import StopSubscription
from services.invoice import dunning
from services.invoice.domain import (
    Change,
    Invoice,
    PlanInvoices,
    Result,
    Transaction,
    commands,
    merchant,
)
from services.invoice.domain.outcome import (
    CollectRequest,
    SendStepMessage,
    StopSubscriptionRequest,
)
from services.invoice.domain.plans import installment_numbers
from services.invoice.domain.schedule import TimerPlan
from services.invoice.repository import DebtorRecord, InvoiceBatch, InvoiceRepository
from services.invoice.snapshot import debtor_snapshot, invoice_snapshot
from services.runtime.consumer import HandlerContext, HandlerSpec, Unprocessable, key_field

Decide = Callable[[Invoice, Envelope[Any]], Result]
#: Namespace of the message ids of recollections (one per invoice and attempt).
_RECOLLECT_IDS = uuid.UUID("5b0e3c7a-9d41-4f6e-8a2b-6c1d9e3f7a15")


def _repo(ctx: HandlerContext) -> InvoiceRepository:
    return InvoiceRepository(ctx.conn, ctx.website_key, ctx.batch_state(InvoiceBatch))


def _send(ctx: HandlerContext, payload: Message) -> Envelope[Any]:
    """Emit `payload` on its catalog topic with its catalog key."""
    return ctx.emit(
        topic_for_type(payload.TYPE), key_for_payload(payload, ctx.website_key), payload
    )


class Publisher:
    """Saves and emits a `Result`: the debtor of a new invoice, each change's invoice
    with its events (carrying the invoice's snapshot), requests and timer, the plan."""

    def __init__(self, ctx: HandlerContext, repo: InvoiceRepository) -> None:
        self.ctx = ctx
        self.repo = repo
        self._debtors: dict[str, tuple[DebtorSnapshot | None, str | None]] = {}

    def _know(self, record: DebtorRecord) -> None:
        self._debtors[record.code] = (
            debtor_snapshot(record.data, record.unreachable),
            str(record.guid),
        )

    async def _debtor(self, code: str | None) -> tuple[DebtorSnapshot | None, str | None]:
        if code is None:
            return None, None
        if code not in self._debtors:
            record = await self.repo.debtor(code)
            if record is None:
                return None, None
            self._know(record)
        return self._debtors[code]

    async def publish(self, result: Result) -> None:
        if result.debtor is not None:  # a debtor just written: no need to read it back
            self._know(await self.repo.upsert_debtor(result.debtor))
        for change in result.changes:
            await self._change(change)
        if result.plan is not None:
            await self.repo.save_plan(result.plan)

    async def _change(self, change: Change) -> None:
        invoice = change.invoice
        debtor, guid = await self._debtor(invoice.debtor_code)
        snapshot = invoice_snapshot(invoice, debtor, guid)
        for request in change.requests:
            if isinstance(request, CollectRequest):
                self._collect(invoice, request)
                continue
            # The merchant's sender name as set now: the notifier reads no invoice tables.
            sender_name = (await self.repo.merchant_settings()).sender_name
            _send(self.ctx, _request_message(invoice, request, snapshot, sender_name))
        rows = []
        for numbered in change.events:
            event = numbered.event
            envelope = _send(
                self.ctx,
                InvoiceEvent.of(
                    event.name,
                    invoice=snapshot,
                    sequence=numbered.sequence,
                    parameters=event.parameters,
                    category=event.category,
                ),
            )
            rows.append(
                (
                    invoice.invoice_number,
                    numbered.sequence,
                    envelope.message_id,
                    self.ctx.now,
                    event.name.value,
                    event.parameters,
                )
            )
        if change.timer is not None:
            _send(self.ctx, self._timer_message(invoice, change.timer))
        await self.repo.save(invoice)
        await self.repo.log_events(rows)

    def _collect(self, invoice: Invoice, request: CollectRequest) -> None:
        """Ask the payment engine to collect again (cm.payments.requests, as the
        subscription service does), with an id stable per invoice and attempt."""
        collect = CollectPayment(
            invoice_number=invoice.invoice_number,
            currency=invoice.currency,
            amount=request.amount,
            service=request.service,
            mandate_reference=request.mandate_reference,
            subscription_key=invoice.subscription_key,
            description=invoice.description,
            collect_date=request.collect_date,
        )
        self.ctx.emit(
            topic_for_type(collect.TYPE),
            key_for_payload(collect, self.ctx.website_key),
            collect,
            message_id=uuid.uuid5(
                _RECOLLECT_IDS,
                f"{invoice.website_key}:{invoice.invoice_number}:{request.attempt}",
            ),
        )

    def _timer_message(self, invoice: Invoice, plan: TimerPlan) -> Message:
        """The scheduler's timer for the invoice's next step, or its cancellation."""
        timer_id = f"invoice-step:{invoice.website_key}:{invoice.invoice_number}"
        if plan.step_index is None or plan.due_at is None:
            return CancelTimer(timer_id=timer_id)
        # Built from the service's own values: no re-validation on this hot path.
        step_due = new_envelope(
            StepDue.model_construct(
                invoice_number=invoice.invoice_number,
                step_index=plan.step_index,
                scheme_version=invoice.scheme_version,
                schedule_version=plan.schedule_version,
            ),
            website_key=invoice.website_key,
            occurred_at=plan.due_at,
            caused_by=self.ctx.envelope,
        )
        return timer_for(timer_id, plan.due_at, step_due)


def _request_message(
    invoice: Invoice,
    request: SendStepMessage | StopSubscriptionRequest,
    snapshot: InvoiceSnapshot,
    sender_name: str | None,
) -> Message:
    if isinstance(request, SendStepMessage):
        step = request.step
        return SendMessage(
            invoice_number=invoice.invoice_number,
            step_index=step.index,
            action=StepAction(step.action),
            template_key=step.template_key,
            channels=[Channel(c) for c in step.channels],
            states_costs=step.states_costs,
            invoice=snapshot,
            sender_name=sender_name,
        )
    return StopSubscription(
        subscription_key=request.subscription_key,
        invoice_number=invoice.invoice_number,
        reason=f"unpaid invoice, scheme step {request.step_index}",
    )


async def _complete(
    ctx: HandlerContext, repo: InvoiceRepository, result: Result, *, answers: bool = True
) -> None:
    """Save and emit `result`, then answer the command with its errors or its keys. A
    message that gets no answer and breaks a rule is dead-lettered, nothing applied."""
    if result.errors and not answers:
        raise Unprocessable(result.errors)
    await Publisher(ctx, repo).publish(result)
    if not answers:
        return
    if result.errors:
        ctx.reject(result.errors)
    else:
        ctx.accept(**result.keys)


# --- commands on one existing invoice -----------------------------------------------------


def on_invoice(
    decide: Decide, *, answers: bool = True, unknown_is_ignored: bool = False
) -> HandlerSpec:
    """The handler of a message about one existing invoice, the one its Kafka key names
    (the catalog's key template, as the batch hooks read it): load it, `decide`, save
    and emit, answer. An unknown invoice is refused (`unknown_invoice` on that field),
    or ignored when `unknown_is_ignored`."""

    async def handle(ctx: HandlerContext, cmd: Message) -> None:
        field = key_field(ctx.envelope.type)
        if field is None:
            raise TypeError(f"{ctx.envelope.type} is not keyed by an invoice number")
        repo = _repo(ctx)
        number = attrgetter(field)(cmd)
        invoice = await repo.get(number)
        if invoice is not None:
            result = decide(invoice, ctx.envelope)
        elif unknown_is_ignored:
            return
        else:
            result = Result.refused(
                [
                    FieldError(
                        f"payload.{field}",
                        "unknown_invoice",
                        f"no invoice {number} for this merchant",
                    )
                ]
            )
        await _complete(ctx, repo, result, answers=answers)

    return HandlerSpec(handle, answers=answers)


# --- creation and transactions -------------------------------------------------------------


async def create_invoice(ctx: HandlerContext, cmd: CreateInvoice | CreateCombinedInvoice) -> None:
    repo = _repo(ctx)
    await repo.lock_number(cmd.invoice_number)
    existing = await repo.get(cmd.invoice_number)
    scheme, parked = None, []
    if existing is None:
        scheme = await repo.scheme(cmd.scheme_key)
        parked = [Transaction.from_stored(t) for t in await repo.take_parked(cmd.invoice_number)]
    result = commands.create_invoice(
        ctx.envelope,
        existing=existing,
        scheme=scheme,
        parked=parked,
        settings=await repo.merchant_settings(),
    )
    await _complete(ctx, repo, result)


async def transaction_status_changed(ctx: HandlerContext, evt: TransactionStatusChanged) -> None:
    repo = _repo(ctx)
    await repo.lock_number(evt.invoice_number)
    invoice = await repo.get(evt.invoice_number)
    members = None
    if invoice is not None and (dossier := commands.plan_paid_through(invoice)):
        members = await _plan_invoices(repo, dossier)
    result = commands.transaction_status_changed(invoice, ctx.envelope, members)
    if result.park is not None:
        await repo.park_transaction(
            evt.invoice_number, ctx.envelope.message_id, ctx.now, result.park.stored()
        )
    await _complete(ctx, repo, result, answers=False)


async def add_or_update_debtor(ctx: HandlerContext, cmd: AddOrUpdateDebtor) -> None:
    """The debtor's open invoices carry the new details in their next snapshot; no push."""
    await _repo(ctx).upsert_debtor(cmd.debtor, cmd.unreachable)
    ctx.accept(debtor_code=cmd.debtor.code)


# --- payment plans -------------------------------------------------------------------------


async def _plan_invoices(repo: InvoiceRepository, dossier: str) -> PlanInvoices | None:
    plan = await repo.plan(dossier)
    if plan is None:
        return None
    return PlanInvoices(
        plan,
        originals=await repo.get_many(plan.original_numbers),
        installments=await repo.get_many(plan.installment_numbers),
    )


async def create_payment_plan(ctx: HandlerContext, cmd: CreatePaymentPlan) -> None:
    repo = _repo(ctx)
    existing = await repo.plan(cmd.dossier_number)
    taken: list[Invoice] = []
    originals: list[Invoice] = []
    scheme = None
    if existing is None:
        numbers = installment_numbers(cmd.dossier_number, cmd.installment_count)
        taken = await repo.get_many(numbers)
        originals = await repo.get_many(cmd.included_invoice_numbers)
        scheme = await repo.scheme(cmd.scheme_key)
    result = commands.create_payment_plan(
        ctx.envelope, existing=existing, taken=taken, originals=originals, scheme=scheme
    )
    await _complete(ctx, repo, result)


async def terminate_payment_plan(ctx: HandlerContext, cmd: TerminatePaymentPlan) -> None:
    repo = _repo(ctx)
    members = await _plan_invoices(repo, cmd.dossier_number)
    await _complete(ctx, repo, commands.terminate_payment_plan(ctx.envelope, members))


# --- schemes -------------------------------------------------------------------------------


async def upsert_scheme(ctx: HandlerContext, cmd: UpsertScheme) -> None:
    """A new version of the merchant's scheme; invoices keep the version they have."""
    errors = dunning.scheme_errors(cmd.scheme_key, list(cmd.steps))
    if errors:
        ctx.reject(errors)
        return
    version = await _repo(ctx).add_scheme_version(
        cmd.scheme_key,
        cmd.name,
        [step.model_dump(mode="json") for step in cmd.steps],
        cmd.recollection.model_dump(mode="json") if cmd.recollection else None,
    )
    ctx.accept(scheme_key=cmd.scheme_key, scheme_version=str(version))


# --- merchant settings ---------------------------------------------------------------------


async def update_merchant_settings(ctx: HandlerContext, cmd: UpdateMerchantSettings) -> None:
    """Replace the merchant's settings. Invoices plan their next step in the new time
    zone from their next change on; timers already set stay (docs/invoices.md)."""
    errors = merchant.settings_errors(cmd)
    if errors:
        ctx.reject(errors)
        return
    await _repo(ctx).save_merchant_settings(merchant.MerchantSettings.of(cmd))
    ctx.accept(time_zone=cmd.time_zone)
