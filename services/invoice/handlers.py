"""One function per invoice message: load, call the domain, save, emit — one transaction."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from contracts import topics
from contracts.debtor import DebtorSnapshot
from contracts.envelope import FieldError, new_envelope
from contracts.invoice import (
    AddOrUpdateDebtor,
    Channel,
    CreateCombinedInvoice,
    CreateCreditNote,
    CreateCustomEvent,
    CreateInvoice,
    CreatePaymentPlan,
    InvoiceEvent,
    InvoiceStateCommand,
    InvoiceStatus,
    InvoiceType,
    RecordMessageOutcome,
    RegisterCollectedAmount,
    SetCollectionStatus,
    StepAction,
    StepDue,
    TerminatePaymentPlan,
    TriggerNextStep,
    UpsertScheme,
)
from contracts.notifier import SendMessage
from contracts.payments import TransactionStatus, TransactionStatusChanged
from contracts.scheduler import CancelTimer, ScheduleTimer
from contracts.subscription import StopSubscription
from services.invoice import domain, dunning
from services.invoice.domain import Invoice, Outcome
from services.invoice.repository import DebtorRecord, InvoiceBatch, InvoiceRepository
from services.invoice.snapshot import debtor_snapshot, invoice_snapshot
from services.runtime.consumer import HandlerContext, Unprocessable


class Changes:
    """Applies outcomes: numbers their events, emits them with the snapshot, saves."""

    def __init__(self, ctx: HandlerContext, repo: InvoiceRepository) -> None:
        self.ctx = ctx
        self.repo = repo
        self._debtors: dict[str, tuple[DebtorSnapshot | None, str | None]] = {}

    def know(self, record: DebtorRecord) -> None:
        """A debtor just written: no need to read it back."""
        self._debtors[record.code] = (
            debtor_snapshot(record.data, record.unreachable),
            str(record.guid),
        )

    async def _debtor(self, code: str | None) -> tuple[DebtorSnapshot | None, str | None]:
        if code is None:
            return None, None
        if code not in self._debtors:
            record = await self.repo.debtor(code)
            self._debtors[code] = (
                (debtor_snapshot(record.data, record.unreachable), str(record.guid))
                if record is not None
                else (None, None)
            )
        return self._debtors[code]

    async def apply(self, outcome: Outcome) -> Invoice | None:
        invoice = outcome.invoice
        if invoice is None:
            return None
        debtor, guid = await self._debtor(invoice.debtor_code)
        for request in outcome.requests:
            self._request(invoice, request, debtor, guid)
        rows = []
        for event in outcome.events:
            invoice.sequence += 1
            payload = InvoiceEvent.of(
                event.name,
                invoice=invoice_snapshot(invoice, debtor, guid),
                sequence=invoice.sequence,
                parameters=event.parameters,
                category=event.category,
            )
            envelope = self.ctx.emit(
                topics.INVOICE_EVENTS, f"{invoice.website_key}:{invoice.invoice_number}", payload
            )
            rows.append(
                (
                    invoice.invoice_number,
                    invoice.sequence,
                    envelope.message_id,
                    self.ctx.now,
                    event.name.value,
                    event.parameters,
                )
            )
        self._plan_timer(invoice)
        await self.repo.save(invoice)
        await self.repo.log_events(rows)
        return invoice

    def _plan_timer(self, invoice: Invoice) -> None:
        """Keep the scheduler's timer for the invoice's next step in line with its state."""
        plan = dunning.plan_timer(invoice, self.ctx.now)
        if plan is None:
            return
        timer_id = f"invoice-step:{invoice.website_key}:{invoice.invoice_number}"
        if plan.step_index is None or plan.due_at is None:
            self.ctx.emit(topics.SCHEDULER_COMMANDS, timer_id, CancelTimer(timer_id=timer_id))
            return
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
        timer = ScheduleTimer.model_construct(
            timer_id=timer_id,
            due_at=plan.due_at,
            topic=topics.INVOICE_INTERNAL,
            key=f"{invoice.website_key}:{invoice.invoice_number}",
            message=step_due.model_dump(mode="json"),
        )
        self.ctx.emit(topics.SCHEDULER_COMMANDS, timer_id, timer)

    def _request(
        self,
        invoice: Invoice,
        request: domain.Request,
        debtor: DebtorSnapshot | None,
        guid: str | None,
    ) -> None:
        key = f"{invoice.website_key}:{invoice.invoice_number}"
        if isinstance(request, domain.SendStepMessage):
            step = request.step
            self.ctx.emit(
                topics.NOTIFIER_INTERNAL,
                key,
                SendMessage(
                    invoice_number=invoice.invoice_number,
                    step_index=step.index,
                    action=StepAction(step.action),
                    template_key=step.template_key,
                    channels=[Channel(c) for c in step.channels],
                    states_costs=step.states_costs,
                    invoice=invoice_snapshot(invoice, debtor, guid),
                ),
            )
        else:
            self.ctx.emit(
                topics.SUBSCRIPTION_COMMANDS,
                f"{invoice.website_key}:{request.subscription_key}",
                StopSubscription(
                    subscription_key=request.subscription_key,
                    invoice_number=invoice.invoice_number,
                    reason=f"unpaid invoice, scheme step {request.step_index}",
                ),
            )


def _repo(ctx: HandlerContext) -> InvoiceRepository:
    return InvoiceRepository(ctx.conn, ctx.website_key, ctx.batch_state(InvoiceBatch))


def _unknown(field: str, number: str) -> list[FieldError]:
    return [FieldError(field, "unknown_invoice", f"no invoice {number} for this merchant")]


def _answer(ctx: HandlerContext, outcome: Outcome, invoice: Invoice) -> None:
    if outcome.errors:
        ctx.reject(outcome.errors)
    else:
        ctx.accept(invoice_key=invoice.invoice_key)


# --- creation ------------------------------------------------------------------------------


async def create_invoice(ctx: HandlerContext, cmd: CreateInvoice | CreateCombinedInvoice) -> None:
    repo = _repo(ctx)
    await repo.lock_number(cmd.invoice_number)
    existing = await repo.get(cmd.invoice_number)
    if existing is not None:
        if existing.request_hash == domain.request_hash(cmd):
            _repeat_answer(ctx, existing)
        else:
            ctx.reject(
                [
                    FieldError(
                        "payload.invoice_number",
                        "duplicate_invoice_number",
                        f"invoice {cmd.invoice_number} exists with other content",
                    )
                ]
            )
        return
    scheme = await repo.scheme(cmd.scheme_key)
    debtor = await repo.upsert_debtor(cmd.debtor)
    outcome = domain.create_invoice(
        cmd,
        website_key=ctx.website_key,
        now=ctx.now,
        scheme_version=scheme.version if scheme else None,
        scheme_steps=scheme.step_states if scheme else [],
    )
    changes = Changes(ctx, repo)
    changes.know(debtor)
    invoice = await changes.apply(outcome)
    assert invoice is not None
    pending = await repo.take_parked(cmd.invoice_number)
    if isinstance(cmd, CreateCombinedInvoice):
        t = cmd.transaction
        pending.insert(
            0,
            {
                "transaction_key": t.transaction_key,
                "service": t.service,
                "amount": str(t.amount),
                "status": t.status.value,
                "is_slow": False,
            },
        )
    for transaction in pending:
        invoice = await _book(changes, invoice, transaction)
    _answer(ctx, outcome, invoice)


def _repeat_answer(ctx: HandlerContext, existing: Invoice) -> None:
    if existing.status == InvoiceStatus.REJECTED and existing.rejection:
        ctx.reject([FieldError(**error) for error in existing.rejection])
    else:
        ctx.accept(invoice_key=existing.invoice_key)


async def _book(changes: Changes, invoice: Invoice, transaction: dict[str, object]) -> Invoice:
    outcome = domain.apply_transaction(
        invoice,
        transaction_key=str(transaction["transaction_key"]),
        service=str(transaction["service"]),
        amount=Decimal(str(transaction["amount"])),
        status=TransactionStatus(str(transaction["status"])),
        is_slow=bool(transaction.get("is_slow", False)),
    )
    return await changes.apply(outcome) or invoice


# --- debtors -------------------------------------------------------------------------------


async def add_or_update_debtor(ctx: HandlerContext, cmd: AddOrUpdateDebtor) -> None:
    """The debtor's open invoices carry the new details in their next snapshot; no push."""
    await _repo(ctx).upsert_debtor(cmd.debtor, cmd.unreachable)
    ctx.accept(debtor_code=cmd.debtor.code)


# --- transactions --------------------------------------------------------------------------


async def transaction_status_changed(ctx: HandlerContext, evt: TransactionStatusChanged) -> None:
    repo = _repo(ctx)
    await repo.lock_number(evt.invoice_number)
    invoice = await repo.get(evt.invoice_number)
    transaction = {
        "transaction_key": evt.transaction_key,
        "service": evt.service,
        "amount": str(evt.amount),
        "status": evt.status.value,
        "is_slow": evt.is_slow,
    }
    if invoice is None:
        # Payments are never dropped: kept until the invoice is created.
        await repo.park_transaction(
            evt.invoice_number, ctx.envelope.message_id, ctx.now, transaction
        )
        return
    outcome = domain.apply_transaction(
        invoice,
        transaction_key=evt.transaction_key,
        service=evt.service,
        amount=evt.amount,
        status=evt.status,
        is_slow=evt.is_slow,
    )
    if outcome.errors:
        raise Unprocessable(outcome.errors)
    changes = Changes(ctx, repo)
    updated = await changes.apply(outcome)
    if (
        updated is not None
        and updated.plan_dossier
        and updated.type == InvoiceType.PAYMENT_PLAN_INSTALLMENT
    ):
        await _forward_to_originals(changes, invoice, updated, evt)


async def _forward_to_originals(
    changes: Changes, before: Invoice, after: Invoice, evt: TransactionStatusChanged
) -> None:
    """A payment on an installment counts, beyond the plan cost, on the originals."""
    repo = changes.repo
    assert after.plan_dossier is not None
    plan = await repo.plan(after.plan_dossier)
    if plan is None:
        return
    key = f"plan:{plan.dossier_number}:{evt.transaction_key}"
    paid = after.amount_paid - before.amount_paid
    credited = after.amount_credit - before.amount_credit
    originals = await repo.get_many(plan.original_numbers)
    by_number = {inv.invoice_number: inv for inv in originals}
    if paid > 0:
        for original, share in domain.forward_payment(plan, originals, paid, evt.transaction_key):
            await _book(
                changes,
                by_number[original.invoice_number],
                {
                    "transaction_key": key,
                    "service": evt.service,
                    "amount": str(share),
                    "status": "success",
                },
            )
    if credited > 0:
        for number, amount in domain.reverse_forwarded(plan, credited, evt.transaction_key):
            await _book(
                changes,
                by_number[number],
                {
                    "transaction_key": key,
                    "service": evt.service,
                    "amount": str(amount),
                    "status": "refunded",
                },
            )
    installments = await repo.get_many(plan.installment_numbers)
    if plan.status == "active" and all(inv.is_paid for inv in installments):
        plan.status = "paid"
    elif plan.status == "paid" and not all(inv.is_paid for inv in installments):
        plan.status = "active"
    await repo.save_plan(plan)


# --- commands on one existing invoice -----------------------------------------------------


async def _on_invoice(
    ctx: HandlerContext,
    number: str,
    change: Callable[[Invoice], Outcome],
    field: str = "payload.invoice_number",
) -> None:
    """Load the merchant's invoice, apply `change`, save and emit, answer the command."""
    repo = _repo(ctx)
    invoice = await repo.get(number)
    if invoice is None:
        ctx.reject(_unknown(field, number))
        return
    outcome = change(invoice)
    await Changes(ctx, repo).apply(outcome)
    _answer(ctx, outcome, invoice)


async def create_credit_note(ctx: HandlerContext, cmd: CreateCreditNote) -> None:
    await _on_invoice(
        ctx,
        cmd.original_invoice_number,
        lambda invoice: domain.create_credit_note(
            invoice, number=cmd.credit_note_number, amount=cmd.amount, description=cmd.description
        ),
        field="payload.original_invoice_number",
    )


async def create_custom_event(ctx: HandlerContext, cmd: CreateCustomEvent) -> None:
    await _on_invoice(
        ctx, cmd.invoice_number, lambda invoice: domain.custom_event(invoice, cmd.message)
    )


async def change_status(ctx: HandlerContext, cmd: InvoiceStateCommand) -> None:
    """PauseInvoice, UnpauseInvoice, RegisterDispute, ResolveDispute, WriteOffInvoice,
    CancelInvoice and SetEmergency, through the transition table."""
    await _on_invoice(
        ctx,
        cmd.invoice_number,
        lambda invoice: domain.change_status(invoice, ctx.envelope.type, ctx.now, cmd.reason),
    )


async def set_collection_status(ctx: HandlerContext, cmd: SetCollectionStatus) -> None:
    await _on_invoice(
        ctx,
        cmd.invoice_number,
        lambda invoice: domain.set_collection_status(
            invoice, cmd.status_code.invoice_status, cmd.case_key, ctx.now
        ),
    )


async def register_collected_amount(ctx: HandlerContext, cmd: RegisterCollectedAmount) -> None:
    """Money the agency collected counts as a payment on the invoice."""

    def collect(invoice: Invoice) -> Outcome:
        errors = domain.money_errors(
            "payload.amount", cmd.amount, invoice.currency, allow_zero=False
        )
        if errors:
            return Outcome(errors=errors)
        return domain.apply_transaction(
            invoice,
            transaction_key=f"collection:{cmd.case_key}:{ctx.envelope.message_id}",
            service="collection",
            amount=cmd.amount,
            status=TransactionStatus.SUCCESS,
            is_slow=False,
        )

    await _on_invoice(ctx, cmd.invoice_number, collect)


# --- payment plans -------------------------------------------------------------------------


async def create_payment_plan(ctx: HandlerContext, cmd: CreatePaymentPlan) -> None:
    repo = _repo(ctx)
    fingerprint = domain.request_hash(cmd)
    existing = await repo.plan(cmd.dossier_number)
    if existing is not None:
        if existing.request_hash == fingerprint:
            ctx.accept(dossier_number=cmd.dossier_number)
        else:
            ctx.reject(
                [
                    FieldError(
                        "payload.dossier_number",
                        "duplicate_dossier_number",
                        f"payment plan {cmd.dossier_number} exists",
                    )
                ]
            )
        return
    numbers = [f"{cmd.dossier_number}-{i + 1}" for i in range(cmd.installment_count)]
    if taken := await repo.get_many(numbers):
        ctx.reject(
            [
                FieldError(
                    "payload.dossier_number",
                    "installment_number_taken",
                    f"invoice {taken[0].invoice_number} exists",
                )
            ]
        )
        return
    originals = await repo.get_many(cmd.included_invoice_numbers)
    scheme = await repo.scheme(cmd.scheme_key)
    plan, outcomes, errors = domain.start_payment_plan(
        website_key=ctx.website_key,
        dossier=cmd.dossier_number,
        originals=originals,
        requested=list(cmd.included_invoice_numbers),
        installment_count=cmd.installment_count,
        initial_amount=cmd.initial_amount,
        cost=cmd.payment_plan_cost_amount,
        start_date=cmd.start_date,
        interval=cmd.interval.value,
        scheme_key=cmd.scheme_key,
        scheme_version=scheme.version if scheme else None,
        scheme_steps=scheme.step_states if scheme else [],
        now=ctx.now,
        fingerprint=fingerprint,
    )
    if errors or plan is None:
        ctx.reject(errors)
        return
    changes = Changes(ctx, repo)
    for outcome in outcomes:
        await changes.apply(outcome)
    await repo.save_plan(plan)
    ctx.accept(
        dossier_number=plan.dossier_number, installment_numbers=",".join(plan.installment_numbers)
    )


async def terminate_payment_plan(ctx: HandlerContext, cmd: TerminatePaymentPlan) -> None:
    """Cancel (91) the open installments and reactivate (10) the originals."""
    repo = _repo(ctx)
    plan = await repo.plan(cmd.dossier_number)
    if plan is None:
        ctx.reject(
            [
                FieldError(
                    "payload.dossier_number",
                    "unknown_plan",
                    f"no payment plan {cmd.dossier_number}",
                )
            ]
        )
        return
    if plan.status == "terminated":
        ctx.accept(dossier_number=plan.dossier_number)
        return
    if plan.status == "paid":
        ctx.reject(
            [FieldError("payload.dossier_number", "plan_paid", "a paid plan cannot be terminated")]
        )
        return
    changes = Changes(ctx, repo)
    for installment in await repo.get_many(plan.installment_numbers):
        if not installment.is_paid and installment.status not in domain.FINAL:
            await changes.apply(domain.change_status(installment, "CancelInstallment", ctx.now))
    for original in await repo.get_many(plan.original_numbers):
        if original.status == InvoiceStatus.PAUSED_BY_PAYMENT_PLAN:
            outcome = domain.change_status(original, "EndPaymentPlan", ctx.now)
            if outcome.invoice is not None:
                outcome.invoice.plan_dossier = None
            await changes.apply(outcome)
    plan.status = "terminated"
    await repo.save_plan(plan)
    ctx.accept(dossier_number=plan.dossier_number)


# --- schemes and steps (the dunning engine) ------------------------------------------------


async def upsert_scheme(ctx: HandlerContext, cmd: UpsertScheme) -> None:
    """A new version of the merchant's scheme; invoices keep the version they have."""
    errors = dunning.scheme_errors(cmd.scheme_key, list(cmd.steps))
    if errors:
        ctx.reject(errors)
        return
    version = await _repo(ctx).add_scheme_version(
        cmd.scheme_key, cmd.name, [step.model_dump(mode="json") for step in cmd.steps]
    )
    ctx.accept(scheme_key=cmd.scheme_key, scheme_version=str(version))


async def step_due(ctx: HandlerContext, cmd: StepDue) -> None:
    repo = _repo(ctx)
    invoice = await repo.get(cmd.invoice_number)
    if invoice is None:
        return
    outcome = dunning.step_due(
        invoice,
        step_index=cmd.step_index,
        scheme_version=cmd.scheme_version,
        schedule_version=cmd.schedule_version,
        now=ctx.now,
    )
    if outcome.errors:
        raise Unprocessable(outcome.errors)
    await Changes(ctx, repo).apply(outcome)


async def trigger_next_step(ctx: HandlerContext, cmd: TriggerNextStep) -> None:
    await _on_invoice(
        ctx, cmd.invoice_number, lambda invoice: dunning.trigger_next_step(invoice, ctx.now)
    )


async def record_message_outcome(ctx: HandlerContext, cmd: RecordMessageOutcome) -> None:
    repo = _repo(ctx)
    invoice = await repo.get(cmd.invoice_number)
    if invoice is None:
        raise Unprocessable(_unknown("payload.invoice_number", cmd.invoice_number))
    outcome = dunning.record_message_outcome(
        invoice,
        step_index=cmd.step_index,
        outcome=cmd.outcome,
        channel=cmd.channel.value if cmd.channel else None,
        now=ctx.now,
    )
    if outcome.errors:
        raise Unprocessable(outcome.errors)
    await Changes(ctx, repo).apply(outcome)
