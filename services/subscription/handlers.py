"""One function per subscription message: load (locked), call the domain, save, emit —
one transaction. The rules are in docs/subscriptions.md."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, time
from decimal import Decimal

from babel.numbers import list_currencies
from pydantic import ValidationError

from contracts import topics
from contracts.catalog import key_for_payload, timer_for
from contracts.debtor import Debtor, DebtorSnapshot
from contracts.envelope import FieldError, new_envelope
from contracts.fields import decimals_of, minor_unit
from contracts.invoice import (
    AddOrUpdateDebtor,
    CreateCombinedInvoice,
    CreateCreditNote,
    CreateInvoice,
    InvoiceEvent,
    InvoiceLine,
    InvoiceStatus,
)
from contracts.limits import MAX_AMOUNT, MAX_DATE, MAX_SUBSCRIPTION_KEY_LENGTH, MAX_TEXT_LENGTH
from contracts.payments import (
    CollectPayment,
    Transaction,
    TransactionStatus,
    TransactionStatusChanged,
)
from contracts.scheduler import CancelTimer
from contracts.subscription import (
    BillingIntervalSnapshot,
    CreateCombinedSubscription,
    CreateSubscription,
    RatePlan,
    RatePlanSnapshot,
    RunBilling,
    RunMerchantBilling,
    StopSubscription,
    SubscriptionEvent,
    SubscriptionEventName,
    SubscriptionFields,
    SubscriptionSnapshot,
    SubscriptionStatus,
    UpdateSubscription,
)
from services.runtime.consumer import HandlerContext
from services.subscription import domain
from services.subscription.repository import (
    Subscription,
    SubscriptionBatch,
    SubscriptionRepository,
)

_CURRENCIES = frozenset(list_currencies())
#: The most periods one RunBilling bills; the rest are due at once (the next timer is
#: due in the past and fires immediately), so a long catch-up goes in steps.
MAX_PERIODS_PER_RUN = 24
#: Namespace of the message ids of a bill run's CreateInvoice commands.
_INVOICE_IDS = uuid.UUID("6f1c2a52-3d0e-4a4e-9a1b-5b7f5d0c9e21")
#: Namespace of the message ids of the credit notes of an early stop.
_CREDIT_IDS = uuid.UUID("0b8f3c64-58a7-4d2b-8c1e-7a9d4e6f2b13")
#: Namespace of the message ids of CollectPayment requests (one per invoice).
_COLLECT_IDS = uuid.UUID("a3d5e7f9-1b2c-4d6e-8f0a-2c4e6a8b0d1f")
#: Namespace of the message ids of a merchant-wide bill run's RunBilling commands.
_RUN_IDS = uuid.UUID("5c7e9a1b-3d5f-4a7c-9e1b-3d5f7a9c1e3b")
#: Subscriptions per page of a merchant-wide bill run (RunMerchantBilling).
MERCHANT_RUN_PAGE = 500


def _plan_version(plan: RatePlan) -> domain.PlanVersion:
    """A rate plan from a command, as the domain bills it."""
    return domain.PlanVersion(
        product_code=plan.product_code,
        description=plan.description,
        unit_price=plan.unit_price,
        quantity=plan.quantity,
        vat_percentage=plan.vat_percentage,
        start_date=plan.start_date,
        end_date=plan.end_date,
    )


def _repo(ctx: HandlerContext) -> SubscriptionRepository:
    return SubscriptionRepository(ctx.conn, ctx.website_key, ctx.batch_state(SubscriptionBatch))


def _unknown(key: str) -> list[FieldError]:
    return [
        FieldError(
            "payload.subscription_key",
            "unknown_subscription",
            f"no subscription {key} for this merchant",
        )
    ]


def _not_running(sub: Subscription, code: str) -> FieldError | None:
    """A pending or failed subscription is not billed nor changed (`code` says which)."""
    if sub.status in (SubscriptionStatus.PENDING, SubscriptionStatus.FAILED):
        return FieldError(
            "payload.subscription_key", code, f"subscription {sub.key} is {sub.status.value}"
        )
    return None


async def _running(ctx: HandlerContext, key: str, code: str) -> Subscription | None:
    """The merchant's subscription `key` when it can be billed or changed; otherwise the
    command is rejected (unknown, or pending/failed under `code`) and None comes back."""
    sub = await _repo(ctx).get(key)
    if sub is None:
        ctx.reject(_unknown(key))
        return None
    error = _not_running(sub, code)
    if error is not None:
        ctx.reject([error])
        return None
    return sub


def request_hash(cmd: SubscriptionFields) -> str:
    return hashlib.sha256(cmd.model_dump_json().encode()).hexdigest()


# --- validation ----------------------------------------------------------------------------


def _full_line(plan: RatePlan | domain.PeriodLine) -> InvoiceLine:
    """A plan as an invoice line on its full terms: its product code is the sku."""
    return InvoiceLine(
        sku=plan.product_code,
        description=plan.description,
        quantity=plan.quantity,
        unit_price=plan.unit_price,
        vat_percentage=plan.vat_percentage,
    )


def _duplicate_plan(at: str, product_code: str, why: str) -> FieldError:
    return FieldError(
        f"{at}.product_code", "duplicate_product_code", f"product code {product_code} {why}"
    )


def _line_errors(at: str, plan: RatePlan) -> list[FieldError]:
    """A plan must make a valid invoice line (its product code becomes the sku)."""
    errors = []
    try:
        _full_line(plan)
    except ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            errors.append(
                FieldError(
                    f"{at}.{'product_code' if name == 'sku' else name}".rstrip("."),
                    str(error["type"]),
                    str(error["msg"]),
                )
            )
    return errors


def create_errors(cmd: SubscriptionFields) -> list[FieldError]:
    """The business rules of a new subscription, each failing field named."""
    errors: list[FieldError] = []
    if len(cmd.subscription_key) > MAX_SUBSCRIPTION_KEY_LENGTH:
        errors.append(
            FieldError(
                "payload.subscription_key",
                "too_long",
                f"at most {MAX_SUBSCRIPTION_KEY_LENGTH} characters, so that invoice and "
                "credit note numbers made from it fit",
            )
        )
    known_currency = cmd.currency in _CURRENCIES
    if not known_currency:
        errors.append(
            FieldError(
                "payload.currency",
                "unknown_currency",
                f"{cmd.currency} is not an ISO 4217 currency",
            )
        )
    if cmd.end_date is not None and cmd.end_date < cmd.start_date:
        errors.append(
            FieldError("payload.end_date", "end_before_start", "the end date is before the start")
        )
    seen: set[str] = set()
    total = Decimal(0)
    for i, plan in enumerate(cmd.rate_plans):
        at = f"payload.rate_plans.{i}"
        if plan.product_code in seen:
            errors.append(_duplicate_plan(at, plan.product_code, "appears more than once"))
        seen.add(plan.product_code)
        if known_currency and decimals_of(plan.unit_price) > minor_unit(cmd.currency):
            errors.append(
                FieldError(
                    f"{at}.unit_price",
                    "too_many_decimals",
                    f"{cmd.currency} has {minor_unit(cmd.currency)} decimals",
                )
            )
        if plan.unit_price < 0:
            errors.append(FieldError(f"{at}.unit_price", "negative", "a price is not negative"))
        if plan.quantity <= 0:
            errors.append(FieldError(f"{at}.quantity", "not_positive", "a quantity is positive"))
        if plan.start_date < cmd.start_date or (
            cmd.end_date is not None and plan.start_date > cmd.end_date
        ):
            errors.append(
                FieldError(
                    f"{at}.start_date",
                    "outside_subscription",
                    "a plan starts within the subscription's dates",
                )
            )
        if plan.end_date is not None and plan.end_date < plan.start_date:
            errors.append(
                FieldError(f"{at}.end_date", "end_before_start", "the plan ends before it starts")
            )
        errors += _line_errors(at, plan)
        total += abs(plan.quantity * plan.unit_price) * (1 + plan.vat_percentage / 100)
    if total > MAX_AMOUNT:
        errors.append(
            FieldError(
                "payload.rate_plans",
                "total_too_large",
                f"the plans together cost more than {MAX_AMOUNT} per period",
            )
        )
    return errors


def transaction_errors(cmd: CreateCombinedSubscription, taken_by: str | None) -> list[FieldError]:
    """The initial transaction: in the subscription's currency, a first status, its key
    not already another subscription's initial transaction."""
    t = cmd.transaction
    errors = []
    if cmd.currency in _CURRENCIES and decimals_of(t.amount) > minor_unit(cmd.currency):
        errors.append(
            FieldError(
                "payload.transaction.amount",
                "too_many_decimals",
                f"{cmd.currency} has {minor_unit(cmd.currency)} decimals",
            )
        )
    if t.status not in _INITIAL_STATUSES:
        errors.append(
            FieldError(
                "payload.transaction.status",
                "not_initial",
                "an initial transaction is pending, success or failed",
            )
        )
    if taken_by is not None and taken_by != cmd.subscription_key:
        errors.append(
            FieldError(
                "payload.transaction.transaction_key",
                "duplicate_transaction_key",
                "the transaction is the initial payment of another subscription",
            )
        )
    return errors


_INITIAL_STATUSES = frozenset(
    {TransactionStatus.PENDING, TransactionStatus.SUCCESS, TransactionStatus.FAILED}
)


# --- snapshots, events, timers -------------------------------------------------------------


def snapshot(sub: Subscription) -> SubscriptionSnapshot:
    b = sub.billing
    current = [
        domain.plan_version(b, code, b.next_period_index)
        for code in dict.fromkeys(plan.product_code for plan in b.plans)
    ]
    return SubscriptionSnapshot(
        subscription_key=b.subscription_key,
        status=sub.status,
        debtor=DebtorSnapshot.model_validate(sub.debtor),
        currency=b.currency,
        scheme_key=sub.scheme_key,
        interval=BillingIntervalSnapshot(unit=b.interval.unit, count=b.interval.count),
        billing_timing=b.timing,
        start_date=b.start_date,
        end_date=b.end_date,
        rate_plans=[
            RatePlanSnapshot(
                product_code=p.product_code,
                description=p.description,
                unit_price=p.unit_price,
                quantity=p.quantity,
                vat_percentage=p.vat_percentage,
                start_date=p.start_date,
                end_date=p.end_date,
            )
            for p in current
            if p is not None
        ],
        payment_term_days=b.payment_term_days,
        billing_day=b.billing_day,
        next_period_index=b.next_period_index,
        next_billing_date=_next_billing_date(b)
        if sub.status == SubscriptionStatus.ACTIVE
        else None,
        initial_transaction_key=sub.initial_transaction_key,
        payment_method=sub.payment_method,
        mandate_reference=sub.mandate_reference,
    )


def _next_billing_date(state: domain.BillingState) -> date | None:
    """The next bill run's date, None when nothing is left to bill or it lies beyond
    the dates the platform handles (year 2999)."""
    when = domain.next_billing_date(state)
    return when if when is not None and when <= MAX_DATE else None


def _emit_event(
    ctx: HandlerContext,
    sub: Subscription,
    name: SubscriptionEventName,
    *,
    invoice_number: str | None = None,
    period_index: int | None = None,
    reason: str | None = None,
) -> None:
    event = SubscriptionEvent(
        event=name,
        subscription=snapshot(sub),
        invoice_number=invoice_number,
        period_index=period_index,
        reason=reason,
    )
    ctx.emit(topics.SUBSCRIPTION_EVENTS, key_for_payload(event, ctx.website_key), event)


def timer_id(sub: Subscription) -> str:
    return f"subscription:{sub.key}:billing"


def _plan_timer(ctx: HandlerContext, sub: Subscription) -> None:
    """The bill-run timer at the next billing date (00:00 UTC), or none."""
    tid = timer_id(sub)
    when = _next_billing_date(sub.billing) if sub.status == SubscriptionStatus.ACTIVE else None
    if when is None:
        ctx.emit(topics.SCHEDULER_COMMANDS, tid, CancelTimer(timer_id=tid))
        return
    due_at = datetime.combine(when, time(0), tzinfo=UTC)
    run = new_envelope(
        RunBilling.model_construct(subscription_key=sub.key, as_of=None),
        website_key=ctx.website_key,
        occurred_at=due_at,
        caused_by=ctx.envelope,
    )
    ctx.emit(topics.SCHEDULER_COMMANDS, tid, timer_for(tid, due_at, run))


def _settled_status(sub: Subscription) -> Subscription:
    """Active while a period is left to bill; stopped once the end date leaves none."""
    if (
        sub.status == SubscriptionStatus.ACTIVE
        and sub.billing.end_date is not None
        and domain.next_billing_date(sub.billing) is None
    ):
        return replace(sub, status=SubscriptionStatus.STOPPED)
    return sub


# --- CreateSubscription --------------------------------------------------------------------


async def create_subscription(ctx: HandlerContext, cmd: CreateSubscription) -> None:
    """A new subscription, `active` from the start."""
    await _create(ctx, cmd)


async def create_combined_subscription(
    ctx: HandlerContext, cmd: CreateCombinedSubscription
) -> None:
    """A new subscription with its initial payment: `active` when the transaction has
    succeeded, `pending` while it is pending, `failed` (never billed) when it failed."""
    await _create(ctx, cmd)


async def _create(
    ctx: HandlerContext, cmd: CreateSubscription | CreateCombinedSubscription
) -> None:
    repo = _repo(ctx)
    await repo.lock_key(cmd.subscription_key)
    fingerprint = request_hash(cmd)
    existing = await repo.get(cmd.subscription_key)
    if existing is not None:
        if existing.request_hash == fingerprint:
            # A repeat: the same answer (the status as it stands now).
            ctx.accept(subscription_key=existing.key, status=existing.status.value)
        else:
            ctx.reject(
                [
                    FieldError(
                        "payload.subscription_key",
                        "duplicate_subscription_key",
                        f"subscription {cmd.subscription_key} exists with other content",
                    )
                ]
            )
        return
    errors = create_errors(cmd)
    transaction: Transaction | None = None
    if isinstance(cmd, CreateCombinedSubscription):
        transaction = cmd.transaction
        await repo.lock_key(f"transaction:{transaction.transaction_key}")
        taken_by = await repo.key_of_transaction(transaction.transaction_key)
        errors += transaction_errors(cmd, taken_by)
    if errors:
        ctx.reject(errors)
        return
    billing = domain.BillingState(
        subscription_key=cmd.subscription_key,
        currency=cmd.currency,
        interval=cmd.interval,
        timing=cmd.billing_timing,
        start_date=cmd.start_date,
        end_date=cmd.end_date,
        billing_day=cmd.billing_day,
        payment_term_days=cmd.payment_term_days,
        plans=tuple(_plan_version(p) for p in cmd.rate_plans),
    )
    sub = Subscription(
        status=SubscriptionStatus.ACTIVE,
        request_hash=fingerprint,
        billing=billing,
        debtor=cmd.debtor.model_dump(mode="json"),
        scheme_key=cmd.scheme_key,
    )
    if transaction is not None:
        sub = replace(
            sub,
            status=SubscriptionStatus.PENDING,
            initial_transaction=transaction.model_dump(mode="json"),
        )
        sub = _settle_initial(
            sub, transaction.status, transaction.service, transaction.mandate_reference
        )
    await repo.insert(sub)
    if sub.status == SubscriptionStatus.FAILED:
        _emit_event(
            ctx, sub, SubscriptionEventName.CREATION_FAILED, reason="the initial transaction failed"
        )
    else:
        _emit_event(ctx, sub, SubscriptionEventName.CREATED)
    _plan_timer(ctx, sub)
    ctx.accept(subscription_key=sub.key, status=sub.status.value)


def _settle_initial(
    sub: Subscription,
    status: TransactionStatus,
    service: str,
    mandate_reference: str | None,
    amount: Decimal | None = None,
) -> Subscription:
    """A pending subscription after its initial transaction reached `status`: active
    (method and mandate stored) on success, failed on failure, still pending otherwise."""
    assert sub.initial_transaction is not None
    if status == TransactionStatus.SUCCESS:
        initial = {**sub.initial_transaction, "status": status.value, "service": service}
        if amount is not None:
            initial["amount"] = str(amount)
        return replace(
            sub,
            status=SubscriptionStatus.ACTIVE,
            initial_transaction=initial,
            payment_method=service,
            mandate_reference=mandate_reference or sub.initial_transaction.get("mandate_reference"),
        )
    if status in (
        TransactionStatus.FAILED,
        TransactionStatus.REFUNDED,
        TransactionStatus.CHARGEBACK,
    ):
        return replace(
            sub,
            status=SubscriptionStatus.FAILED,
            initial_transaction={**sub.initial_transaction, "status": status.value},
        )
    return sub


# --- the payment engine's answers ------------------------------------------------------------


async def transaction_status_changed(ctx: HandlerContext, evt: TransactionStatusChanged) -> None:
    """A pending combined subscription's initial transaction, matched by its key,
    succeeded (active: billed from its start) or failed (failed: never billed). Any
    other transaction is the invoice service's business only."""
    repo = _repo(ctx)
    key = await repo.key_of_transaction(evt.transaction_key)
    if key is None:
        return
    sub = await repo.get(key)
    if sub is None or sub.status != SubscriptionStatus.PENDING:
        return  # settled before: later changes of the payment are the invoice's
    settled = _settle_initial(sub, evt.status, evt.service, evt.mandate_reference, evt.amount)
    if settled.status == SubscriptionStatus.PENDING:
        return
    await repo.save(settled)
    if settled.status == SubscriptionStatus.ACTIVE:
        _emit_event(ctx, settled, SubscriptionEventName.ACTIVATED)
        _plan_timer(ctx, settled)
    else:
        _emit_event(
            ctx,
            settled,
            SubscriptionEventName.CREATION_FAILED,
            reason=f"the initial transaction is {evt.status.value}",
        )


async def invoice_event(ctx: HandlerContext, evt: InvoiceEvent) -> None:
    """A period invoice that the invoice service rejected (status 90) is surfaced once
    as InvoiceRejected; every other invoice event is not the subscription's business."""
    invoice = evt.invoice
    if invoice.subscription_key is None or invoice.status_code != InvoiceStatus.REJECTED:
        return
    repo = _repo(ctx)
    found = await repo.mark_rejected(invoice.invoice_number, ctx.now)
    if found is None:
        return
    sub = await repo.get(found[0])
    if sub is None:
        return
    reason = "; ".join(f"{p.key}: {p.value}" for p in evt.event_parameters) or None
    _emit_event(
        ctx,
        sub,
        SubscriptionEventName.INVOICE_REJECTED,
        invoice_number=invoice.invoice_number,
        period_index=found[1],
        reason=reason,
    )


# --- RunBilling ----------------------------------------------------------------------------


def _invoice_line(line: domain.PeriodLine, period_index: int) -> InvoiceLine:
    """A period line as an invoice line. A full line is quantity times unit price; a
    prorated or catch-up line is one unit at the amount it bills, its description
    saying the days and the full terms, so the lines add up to the invoice."""
    catch_up = line.for_period != period_index
    if not (line.is_prorated or catch_up):
        return _full_line(line)
    days = (
        f" ({f'period {line.for_period}: ' if catch_up else ''}"
        f"{line.active_from.isoformat()} to {line.active_until.isoformat()}, "
        f"{line.active_days}/{line.period_days} days of {line.quantity:f} x {line.unit_price:f})"
    )
    return InvoiceLine(
        sku=line.product_code,
        description=line.description[: MAX_TEXT_LENGTH - len(days)] + days,
        quantity=Decimal(1),
        unit_price=line.net_amount,
        vat_percentage=line.vat_percentage,
    )


def _create_invoice(
    sub: Subscription, period: domain.PeriodInvoice
) -> CreateInvoice | CreateCombinedInvoice:
    last_day = period.period_end.toordinal() - 1
    lines = [_invoice_line(line, period.period_index) for line in period.lines]
    fields = {
        "invoice_number": period.invoice_number,
        "invoice_date": period.invoice_date,
        "due_date": period.due_date,
        "currency": period.currency,
        "amount_debit": period.amount_debit,
        "amount_vat": period.amount_vat,
        "description": f"Subscription {sub.key}, period {period.period_index}: "
        f"{period.period_start.isoformat()} to {date.fromordinal(last_day).isoformat()}",
        "scheme_key": sub.scheme_key,
        "lines": lines,
        "debtor": Debtor.model_validate(sub.debtor),
        "subscription_key": sub.key,
    }
    initial = _unapplied_initial_payment(sub)
    if initial is not None:
        return CreateCombinedInvoice(**fields, transaction=initial)
    return CreateInvoice(**fields)


def _unapplied_initial_payment(sub: Subscription) -> Transaction | None:
    """The successful initial transaction, until it has gone on an invoice (the first
    one the subscription sends)."""
    t = sub.initial_transaction
    if t is None or t["status"] != TransactionStatus.SUCCESS or t.get("invoice_number"):
        return None
    return Transaction(
        transaction_key=t["transaction_key"],
        service=t["service"],
        amount=Decimal(t["amount"]),
        status=TransactionStatus.SUCCESS,
    )


def _request_collection(
    ctx: HandlerContext,
    sub: Subscription,
    command: CreateInvoice | CreateCombinedInvoice,
    index: int,
) -> bool:
    """With a stored mandate, ask the payment engine to collect what the invoice leaves
    open (all of it, or what the initial payment does not cover). True when asked."""
    if sub.mandate_reference is None:
        return False
    amount = command.amount_debit
    if isinstance(command, CreateCombinedInvoice):
        amount -= command.transaction.amount
    if amount <= 0:
        return False
    collect = CollectPayment(
        invoice_number=command.invoice_number,
        currency=command.currency,
        amount=amount,
        service=sub.payment_method or "sepadirectdebit",
        mandate_reference=sub.mandate_reference,
        subscription_key=sub.key,
        description=command.description,
    )
    ctx.emit(
        topics.PAYMENT_REQUESTS,
        key_for_payload(collect, ctx.website_key),
        collect,
        message_id=uuid.uuid5(_COLLECT_IDS, f"{ctx.website_key}:{sub.key}:{index}"),
    )
    return True


async def run_billing(ctx: HandlerContext, cmd: RunBilling) -> None:
    """Bill every due period: one CreateInvoice each (a period with no active plan is
    billed without an invoice), a PeriodBilled event each, then the next timer."""
    repo = _repo(ctx)
    sub = await _running(ctx, cmd.subscription_key, "not_billable")
    if sub is None:
        return
    as_of = cmd.as_of or ctx.now.date()
    billed = 0
    invalid: list[FieldError] = []
    for index in domain.due_periods(sub.billing, as_of, limit=MAX_PERIODS_PER_RUN):
        period = domain.invoice_for_period(sub.billing, index)
        if period.due_date > MAX_DATE:
            break  # beyond the dates the platform handles: never billed
        try:
            command = _create_invoice(sub, period) if period.lines else None
        except ValidationError as exc:  # the stored plans no longer make a valid invoice
            invalid = [
                FieldError(
                    f"payload.subscription_key.period.{index}",
                    str(error["type"]),
                    str(error["msg"]),
                )
                for error in exc.errors()
            ]
            break
        message_id = uuid.uuid5(_INVOICE_IDS, f"{ctx.website_key}:{sub.key}:{index}")
        fresh = await repo.mark_billed(
            sub.key,
            index,
            invoice_number=period.invoice_number if command else None,
            message_id=message_id if command else None,
            amount_debit=period.amount_debit,
            amount_vat=period.amount_vat,
            billed_at=ctx.now,
        )
        sub = replace(sub, billing=domain.mark_billed(sub.billing, index))
        if not fresh:
            continue  # billed before (cannot happen under the row lock; the table's word)
        collecting = False
        if command is not None:
            ctx.emit(
                topics.INVOICE_COMMANDS,
                key_for_payload(command, ctx.website_key),
                command,
                message_id=message_id,
            )
            collecting = _request_collection(ctx, sub, command, index)
            if isinstance(command, CreateCombinedInvoice):
                assert sub.initial_transaction is not None
                sub = replace(
                    sub,
                    initial_transaction={
                        **sub.initial_transaction,
                        "invoice_number": command.invoice_number,
                    },
                )
        billed += 1
        sub = _settled_status(sub)
        _emit_event(
            ctx,
            sub,
            SubscriptionEventName.PERIOD_BILLED,
            invoice_number=period.invoice_number if command else None,
            period_index=index,
        )
        if collecting:
            _emit_event(
                ctx,
                sub,
                SubscriptionEventName.PAYMENT_REQUESTED,
                invoice_number=period.invoice_number,
                period_index=index,
            )
    await repo.save(sub, plans=False)
    if invalid:
        # The periods before it stay billed; this one waits for a change that makes its
        # invoice valid (no timer: it would fire and fail again at once).
        ctx.reject(invalid)
        return
    _plan_timer(ctx, sub)
    ctx.accept(subscription_key=sub.key, periods_billed=str(billed))


async def run_merchant_billing(ctx: HandlerContext, cmd: RunMerchantBilling) -> None:
    """One page of a merchant-wide bill run: a RunBilling (with this `as_of`) for each
    active subscription due by then, after `after_key`; the next page follows as a
    RunMerchantBilling to this service. Message ids derive from the run's, so a replay
    queues the same commands (and a period is never billed twice anyway)."""
    as_of = cmd.as_of or ctx.now.date()
    keys = await _repo(ctx).due_keys(as_of, cmd.after_key, MERCHANT_RUN_PAGE)
    run = ctx.envelope.message_id
    for key in keys:
        one = RunBilling(subscription_key=key, as_of=as_of)
        ctx.emit(
            topics.SUBSCRIPTION_INTERNAL,
            key_for_payload(one, ctx.website_key),
            one,
            message_id=uuid.uuid5(_RUN_IDS, f"{run}:{key}"),
        )
    more = len(keys) == MERCHANT_RUN_PAGE
    if more:
        page = RunMerchantBilling(as_of=as_of, after_key=keys[-1])
        ctx.emit(
            topics.SUBSCRIPTION_INTERNAL,
            key_for_payload(page, ctx.website_key),
            page,
            message_id=uuid.uuid5(_RUN_IDS, f"{run}:next"),
        )
    ctx.accept(
        as_of=as_of.isoformat(),
        subscriptions_queued=str(len(keys)),
        continues_after=keys[-1] if more else "",
    )


# --- StopSubscription ----------------------------------------------------------------------


async def stop_subscription(ctx: HandlerContext, cmd: StopSubscription) -> None:
    """Set the end date (the last day billed). The subscription is `stopped` once no
    period is left to bill; periods up to the end date not yet billed (arrears, or a
    last period starting before it) are still billed, prorated, by the timer."""
    repo = _repo(ctx)
    sub = await repo.get(cmd.subscription_key)
    if sub is None:
        ctx.reject(_unknown(cmd.subscription_key))
        return
    end = cmd.end_date or ctx.now.date()
    not_running = _not_running(sub, "not_active")
    errors = [not_running] if not_running is not None else []
    if end < sub.billing.start_date:
        errors.append(
            FieldError("payload.end_date", "end_before_start", "the end date is before the start")
        )
    if errors:
        ctx.reject(errors)
        return
    current = sub.billing.end_date
    if current is not None and end >= current:
        # It already ends by then (a repeat, or the stop step of a later unpaid invoice
        # of a stopped subscription): nothing changes. Ending later is a restart.
        ctx.accept(subscription_key=sub.key, end_date=current.isoformat(), changed="false")
        return
    before = sub.billing
    sub = _settled_status(replace(sub, billing=replace(sub.billing, end_date=end)))
    await _credit_unused_days(ctx, repo, before, sub, end, f"stopped on {end.isoformat()}")
    await repo.save(sub)
    _emit_event(
        ctx,
        sub,
        SubscriptionEventName.STOPPED,
        invoice_number=cmd.invoice_number,
        reason=cmd.reason,
    )
    _plan_timer(ctx, sub)
    ctx.accept(subscription_key=sub.key, end_date=end.isoformat(), changed="true")


async def _credit_unused_days(
    ctx: HandlerContext,
    repo: SubscriptionRepository,
    before: domain.BillingState,
    sub: Subscription,
    end: date,
    why: str,
) -> None:
    """A billed period that runs past `end`, the earliest new end date (of the
    subscription or of a plan), gets a CreateCreditNote on its invoice for the days no
    longer delivered: what it was billed (as recomputed from the state before the
    change) minus what it costs now. Numbered `{invoice_number}-CR-{yyyymmdd of end}`,
    with `-{n}` from the invoice's second credit note on."""
    # Billed periods ending after `end`: from the one containing it (or the first, when
    # it ends before the start of every billed one) up to the last billed.
    first = before.next_period_index
    while (
        first > 1
        and domain.period_bounds(before.start_date, before.interval, first - 1)[1]
        > end + domain.ONE_DAY
    ):
        first -= 1
    if first >= before.next_period_index:
        return
    numbers = await repo.billed_invoices(sub.key, first)
    for index in range(first, before.next_period_index):
        number = numbers.get(index)
        if number is None:
            continue
        credit = domain.credit_for_early_stop(domain.invoice_for_period(before, index), sub.billing)
        if credit is None or credit.amount_credit <= 0:
            continue
        earlier = await repo.count_credit_note(sub.key, index)
        credit_number = domain.credit_note_number(number, end, earlier)
        credit_note = CreateCreditNote(
            original_invoice_number=number,
            credit_note_number=credit_number,
            amount=credit.amount_credit,
            description=f"Subscription {sub.key} {why}: "
            f"{max(line.unused_days for line in credit.lines)} days not used",
        )
        ctx.emit(
            topics.INVOICE_COMMANDS,
            key_for_payload(credit_note, ctx.website_key),
            credit_note,
            message_id=uuid.uuid5(_CREDIT_IDS, f"{ctx.website_key}:{credit_number}"),
        )


# --- UpdateSubscription --------------------------------------------------------------------


def _plan_errors(at: str, plan: RatePlan, currency: str) -> list[FieldError]:
    errors = []
    if decimals_of(plan.unit_price) > minor_unit(currency):
        errors.append(
            FieldError(
                f"{at}.unit_price", "too_many_decimals", f"{currency} has {minor_unit(currency)}"
            )
        )
    if plan.unit_price < 0:
        errors.append(FieldError(f"{at}.unit_price", "negative", "a price is not negative"))
    if plan.quantity <= 0:
        errors.append(FieldError(f"{at}.quantity", "not_positive", "a quantity is positive"))
    if plan.end_date is not None and plan.end_date < plan.start_date:
        errors.append(
            FieldError(f"{at}.end_date", "end_before_start", "the plan ends before it starts")
        )
    return errors + _line_errors(at, plan)


async def update_subscription(ctx: HandlerContext, cmd: UpdateSubscription) -> None:
    """Add, change or stop plans. An added plan starts after the message's date; a change
    applies from the first unbilled period; a stopped plan is billed through its end
    date. Adding a plan to a stopped subscription restarts it: the old plans keep the
    old end date as theirs, so the days in between are not billed."""
    repo = _repo(ctx)
    sub = await _running(ctx, cmd.subscription_key, "not_active")
    if sub is None:
        return
    b = sub.billing
    known = {plan.product_code for plan in b.plans}
    today = ctx.now.date()
    errors: list[FieldError] = []
    for i, plan in enumerate(cmd.add_rate_plans):
        at = f"payload.add_rate_plans.{i}"
        if plan.product_code in known:
            errors.append(_duplicate_plan(at, plan.product_code, "exists"))
        known.add(plan.product_code)
        if plan.start_date <= today or plan.start_date < b.start_date:
            errors.append(
                FieldError(
                    f"{at}.start_date",
                    "not_in_future",
                    "an added plan starts after the message's date, within the subscription",
                )
            )
        errors += _plan_errors(at, plan, b.currency)
    existing = {plan.product_code for plan in b.plans}
    for i, change in enumerate(cmd.change_rate_plans):
        at = f"payload.change_rate_plans.{i}"
        if change.product_code not in existing:
            errors.append(FieldError(f"{at}.product_code", "unknown_product_code", "no such plan"))
        if change.unit_price is not None and (
            change.unit_price < 0 or decimals_of(change.unit_price) > minor_unit(b.currency)
        ):
            errors.append(FieldError(f"{at}.unit_price", "invalid_price", "not a valid price"))
        if change.quantity is not None and change.quantity <= 0:
            errors.append(FieldError(f"{at}.quantity", "not_positive", "a quantity is positive"))
    for i, stop in enumerate(cmd.stop_rate_plans):
        at = f"payload.stop_rate_plans.{i}"
        if stop.product_code not in existing:
            errors.append(FieldError(f"{at}.product_code", "unknown_product_code", "no such plan"))
    if errors:
        ctx.reject(errors)
        return
    restart = sub.status == SubscriptionStatus.STOPPED and bool(cmd.add_rate_plans)
    before = b
    if restart and b.end_date is not None:
        old_end = b.end_date
        b = replace(
            b,
            end_date=None,
            plans=tuple(
                replace(p, end_date=old_end if p.end_date is None else min(p.end_date, old_end))
                for p in b.plans
            ),
        )
    for change in cmd.change_rate_plans:
        b = domain.change_plan(b, change.product_code, change.unit_price, change.quantity)
    for stop in cmd.stop_rate_plans:
        b = domain.stop_plan(b, stop.product_code, stop.end_date)
    b = replace(
        b,
        plans=(
            *b.plans,
            # Billed from the first unbilled period, catching up its days before it.
            *(
                replace(_plan_version(p), billed_from_period=b.next_period_index)
                for p in cmd.add_rate_plans
            ),
        ),
    )
    status = SubscriptionStatus.ACTIVE if restart else sub.status
    sub = _settled_status(
        replace(
            sub,
            billing=b,
            status=status,
            debtor=cmd.debtor.model_dump(mode="json") if cmd.debtor else sub.debtor,
            scheme_key=cmd.scheme_key or sub.scheme_key,
        )
    )
    if cmd.stop_rate_plans:
        earliest = min(stop.end_date for stop in cmd.stop_rate_plans)
        codes = ", ".join(stop.product_code for stop in cmd.stop_rate_plans)
        await _credit_unused_days(ctx, repo, before, sub, earliest, f"plans stopped ({codes})")
    if cmd.unreachable is not None:
        # The invoice service keeps the debtor's reachability: future invoices (and the
        # debtor's open ones) skip what does not work.
        update = AddOrUpdateDebtor(
            debtor=Debtor.model_validate(sub.debtor), unreachable=cmd.unreachable
        )
        ctx.emit(topics.INVOICE_COMMANDS, key_for_payload(update, ctx.website_key), update)
    await repo.save(sub)
    _emit_event(
        ctx,
        sub,
        SubscriptionEventName.RESTARTED if restart else SubscriptionEventName.UPDATED,
    )
    _plan_timer(ctx, sub)
    ctx.accept(subscription_key=sub.key)
