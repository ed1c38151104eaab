"""What each message means: one function per message type the invoice service acts on.

Pure. Each takes the message and what its handler loaded, applies the rules (creation,
amounts, status, plans, dunning) and returns a `Result` with everything the message
means: the invoices to save with their numbered events, requests and timer plans, the
plan, debtor or early transaction to store, and the answer (errors, or the keys an
acceptance names). The handler saves and emits it as it is (services/invoice/handlers.py).

A command on one existing invoice takes `(invoice, message)`; the handler loads the
invoice its payload names and answers `unknown_invoice` when there is none.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from contracts.envelope import Envelope, FieldError
from contracts.invoice import (
    CreateCombinedInvoice,
    CreateCreditNote,
    CreateCustomEvent,
    CreateInvoice,
    CreatePaymentPlan,
    InvoiceStateCommand,
    InvoiceType,
    RecordMessageOutcome,
    RegisterCollectedAmount,
    SetCollectionStatus,
    StepDue,
    TerminatePaymentPlan,
    TriggerNextStep,
)
from contracts.payments import TransactionStatus, TransactionStatusChanged
from services.invoice import dunning
from services.invoice.domain import amounts, creation, custom_events, plans, recollect, status
from services.invoice.domain.amounts import Transaction, book_transaction
from services.invoice.domain.merchant import MerchantSettings
from services.invoice.domain.model import Invoice, RecollectionState, S, SchemeStepState
from services.invoice.domain.outcome import Outcome
from services.invoice.domain.plans import PaymentPlan, PlanInvoices
from services.invoice.domain.result import Result


class KnownScheme(Protocol):
    """A version of a scheme as the repository knows it."""

    @property
    def version(self) -> int: ...

    @property
    def step_states(self) -> list[SchemeStepState]: ...

    @property
    def recollection_state(self) -> RecollectionState | None: ...


def _refused(field: str, code: str, message: str) -> Result:
    return Result.refused([FieldError(field, code, message)])


def _one(invoice: Invoice, outcome: Outcome, msg: Envelope[Any]) -> Result:
    """The result of a command on one existing invoice; accepted naming its key."""
    result = Result(keys={"invoice_key": invoice.invoice_key})
    result.add(outcome, msg.occurred_at)
    return result


# --- creation ------------------------------------------------------------------------------


def create_invoice(
    msg: Envelope[CreateInvoice | CreateCombinedInvoice],
    *,
    existing: Invoice | None,
    scheme: KnownScheme | None,
    parked: list[Transaction],
    settings: MerchantSettings | None = None,
) -> Result:
    """A new invoice with its debtor, then its first transaction (a combined invoice)
    and those that came before it, booked. The same number again repeats the first
    answer when the content is the same, and is refused otherwise. `settings` are the
    merchant's (time zone, default culture)."""
    cmd, now = msg.payload, msg.occurred_at
    if existing is not None:
        if existing.request_hash != creation.request_hash(cmd):
            return _refused(
                "payload.invoice_number",
                "duplicate_invoice_number",
                f"invoice {cmd.invoice_number} exists with other content",
            )
        if existing.status == S.REJECTED and existing.rejection:
            return Result.refused([FieldError(**error) for error in existing.rejection])
        return Result(keys={"invoice_key": existing.invoice_key})
    outcome = creation.create_invoice(
        cmd,
        website_key=msg.website_key,
        now=now,
        scheme_version=scheme.version if scheme else None,
        scheme_steps=scheme.step_states if scheme else [],
        settings=settings,
    )
    if outcome.invoice is not None and scheme is not None:
        outcome.invoice.recollection = scheme.recollection_state
    result = Result(debtor=cmd.debtor)
    invoice = result.add(outcome, now)
    assert invoice is not None
    result.keys["invoice_key"] = invoice.invoice_key
    transactions = list(parked)
    if isinstance(cmd, CreateCombinedInvoice):
        first = cmd.transaction
        transactions.insert(
            0,
            Transaction(
                first.transaction_key,
                first.service,
                first.amount,
                first.status,
                first.is_slow,
                first.mandate_reference,
            ),
        )
    for transaction in transactions:
        booked = book_transaction(invoice, transaction)
        if not booked.errors:  # a kept transaction that breaks a rule is not booked
            invoice = result.add(_and_recollect(booked, transaction, now), now) or invoice
    return result


def _and_recollect(booked: Outcome, transaction: Transaction, now: datetime) -> Outcome:
    """A booked transaction, then the recollection its failure may ask for."""
    if booked.invoice is None:
        return booked
    return booked.then(recollect.recollect(booked.invoice, transaction.key, now))


# --- transactions --------------------------------------------------------------------------


def plan_paid_through(invoice: Invoice) -> str | None:
    """The payment plan a transaction on `invoice` also pays (its dossier), if any."""
    if invoice.type == InvoiceType.PAYMENT_PLAN_INSTALLMENT:
        return invoice.plan_dossier
    return None


def transaction_status_changed(
    invoice: Invoice | None,
    msg: Envelope[TransactionStatusChanged],
    members: PlanInvoices | None = None,
) -> Result:
    """Book a transaction (kept until its invoice exists: payments are never dropped).
    On an installment, what it pays beyond the plan cost goes on to the originals
    (`members`, loaded for the dossier `plan_paid_through` names)."""
    evt, now = msg.payload, msg.occurred_at
    transaction = Transaction(
        evt.transaction_key,
        evt.service,
        evt.amount,
        evt.status,
        evt.is_slow,
        evt.mandate_reference,
    )
    if invoice is None:
        return Result(park=transaction)
    outcome = book_transaction(invoice, transaction)
    if outcome.errors:
        return Result.refused(outcome.errors)
    result = Result()
    after = result.add(_and_recollect(outcome, transaction, now), now)
    if after is not None and members is not None:
        originals = {inv.invoice_number: inv for inv in members.originals}
        booked: dict[str, Outcome] = {}
        for number, forwarded in plans.forwarded_transactions(members, invoice, after, transaction):
            booked[number] = book_transaction(originals[number], forwarded)
            originals[number] = booked[number].invoice or originals[number]
        installments = {inv.invoice_number: inv for inv in members.installments}
        installments[after.invoice_number] = after
        moves = plans.settle(
            members.plan, list(installments.values()), list(originals.values()), now
        )
        # One change per original: what was forwarded to it, then its status move.
        for number in [*booked, *(n for n in moves if n not in booked)]:
            outcome = booked.get(number, Outcome())
            result.add(outcome.then(moves[number]) if number in moves else outcome, now)
        result.plan = members.plan
    return result


def register_collected_amount(invoice: Invoice, msg: Envelope[RegisterCollectedAmount]) -> Result:
    """Money the agency collected counts as a payment on the invoice."""
    cmd = msg.payload
    errors = amounts.money_errors("payload.amount", cmd.amount, invoice.currency, allow_zero=False)
    if errors:
        return Result.refused(errors)
    collected = Transaction(
        f"collection:{cmd.case_key}:{msg.message_id}",
        "collection",
        cmd.amount,
        TransactionStatus.SUCCESS,
    )
    return _one(invoice, book_transaction(invoice, collected), msg)


# --- commands on one invoice ---------------------------------------------------------------


def create_credit_note(invoice: Invoice, msg: Envelope[CreateCreditNote]) -> Result:
    cmd = msg.payload
    outcome = amounts.create_credit_note(
        invoice, number=cmd.credit_note_number, amount=cmd.amount, description=cmd.description
    )
    return _one(invoice, outcome, msg)


def create_custom_event(invoice: Invoice, msg: Envelope[CreateCustomEvent]) -> Result:
    return _one(
        invoice, custom_events.custom_event(invoice, msg.payload.message, msg.occurred_at), msg
    )


def change_status(invoice: Invoice, msg: Envelope[InvoiceStateCommand]) -> Result:
    """A status command (its type names its row of `status.TRANSITIONS`)."""
    outcome = status.change_status(invoice, msg.type, msg.occurred_at, msg.payload.reason)
    return _one(invoice, outcome, msg)


def set_collection_status(invoice: Invoice, msg: Envelope[SetCollectionStatus]) -> Result:
    cmd = msg.payload
    outcome = status.set_collection_status(
        invoice, cmd.status_code.invoice_status, cmd.case_key, msg.occurred_at
    )
    return _one(invoice, outcome, msg)


# --- the dunning engine --------------------------------------------------------------------


def step_due(invoice: Invoice, msg: Envelope[StepDue]) -> Result:
    cmd = msg.payload
    outcome = dunning.step_due(
        invoice,
        step_index=cmd.step_index,
        scheme_version=cmd.scheme_version,
        schedule_version=cmd.schedule_version,
        now=msg.occurred_at,
    )
    return _one(invoice, outcome, msg)


def trigger_next_step(invoice: Invoice, msg: Envelope[TriggerNextStep]) -> Result:
    return _one(invoice, dunning.trigger_next_step(invoice, msg.occurred_at), msg)


def record_message_outcome(invoice: Invoice, msg: Envelope[RecordMessageOutcome]) -> Result:
    cmd = msg.payload
    outcome = dunning.record_message_outcome(
        invoice,
        step_index=cmd.step_index,
        outcome=cmd.outcome,
        channel=cmd.channel.value if cmd.channel else None,
        now=msg.occurred_at,
    )
    return _one(invoice, outcome, msg)


# --- payment plans -------------------------------------------------------------------------


def create_payment_plan(
    msg: Envelope[CreatePaymentPlan],
    *,
    existing: PaymentPlan | None,
    taken: list[Invoice],
    originals: list[Invoice],
    scheme: KnownScheme | None,
) -> Result:
    """Pause the originals (22) and create the installments; `taken` are invoices that
    already have an installment's number. The same dossier again is accepted when the
    request is the same, and refused otherwise."""
    cmd, now = msg.payload, msg.occurred_at
    fingerprint = creation.request_hash(cmd)
    if existing is not None:
        if existing.request_hash == fingerprint:
            return Result(keys={"dossier_number": cmd.dossier_number})
        return _refused(
            "payload.dossier_number",
            "duplicate_dossier_number",
            f"payment plan {cmd.dossier_number} exists",
        )
    if taken:
        return _refused(
            "payload.dossier_number",
            "installment_number_taken",
            f"invoice {taken[0].invoice_number} exists",
        )
    plan, outcomes, errors = plans.start_payment_plan(
        website_key=msg.website_key,
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
        now=now,
        fingerprint=fingerprint,
    )
    if errors or plan is None:
        return Result.refused(errors)
    result = Result(
        plan=plan,
        keys={
            "dossier_number": plan.dossier_number,
            "installment_numbers": ",".join(plan.installment_numbers),
        },
    )
    for outcome in outcomes:
        result.add(outcome, now)
    return result


def terminate_payment_plan(
    msg: Envelope[TerminatePaymentPlan], members: PlanInvoices | None
) -> Result:
    """Cancel (91) the open installments and reactivate (10) the originals."""
    dossier = msg.payload.dossier_number
    if members is None:
        return _refused("payload.dossier_number", "unknown_plan", f"no payment plan {dossier}")
    keys = {"dossier_number": dossier}
    if members.plan.status == "terminated":
        return Result(keys=keys)
    if members.plan.status == "paid":
        return _refused("payload.dossier_number", "plan_paid", "a paid plan cannot be terminated")
    result = Result(keys=keys, plan=members.plan)
    for outcome in plans.terminate(members, msg.occurred_at):
        result.add(outcome, msg.occurred_at)
    return result
