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
from contracts.debtor import Debtor, DebtorSnapshot
from contracts.envelope import FieldError, new_envelope
from contracts.fields import minor_unit
from contracts.invoice import CreateCreditNote, CreateInvoice, InvoiceLine
from contracts.limits import MAX_AMOUNT, MAX_DATE, MAX_TEXT_LENGTH
from contracts.scheduler import CancelTimer, ScheduleTimer
from contracts.subscription import (
    BillingIntervalSnapshot,
    CreateSubscription,
    RatePlan,
    RatePlanSnapshot,
    RunBilling,
    StopSubscription,
    SubscriptionEvent,
    SubscriptionEventName,
    SubscriptionSnapshot,
    SubscriptionStatus,
    UpdateSubscription,
)
from services.runtime.consumer import HandlerContext
from services.subscription import domain
from services.subscription.repository import Subscription, SubscriptionRepository

_CURRENCIES = frozenset(list_currencies())
#: The most periods one RunBilling bills; the rest are due at once (the next timer is
#: due in the past and fires immediately), so a long catch-up goes in steps.
MAX_PERIODS_PER_RUN = 24
#: A subscription key's length at most: `{key}-{period}-CR-{yyyymmdd}` fits an identifier.
MAX_SUBSCRIPTION_KEY_LENGTH = 80
#: Namespace of the message ids of a bill run's CreateInvoice commands.
_INVOICE_IDS = uuid.UUID("6f1c2a52-3d0e-4a4e-9a1b-5b7f5d0c9e21")
#: Namespace of the message ids of the credit notes of an early stop.
_CREDIT_IDS = uuid.UUID("0b8f3c64-58a7-4d2b-8c1e-7a9d4e6f2b13")


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
    return SubscriptionRepository(ctx.conn, ctx.website_key)


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


def request_hash(cmd: CreateSubscription) -> str:
    return hashlib.sha256(cmd.model_dump_json().encode()).hexdigest()


def _decimals(amount: Decimal) -> int:
    exponent = amount.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


# --- validation ----------------------------------------------------------------------------


def _line_errors(at: str, plan: RatePlan) -> list[FieldError]:
    """A plan must make a valid invoice line (its product code becomes the sku)."""
    errors = []
    try:
        InvoiceLine(
            sku=plan.product_code,
            description=plan.description,
            quantity=plan.quantity,
            unit_price=plan.unit_price,
            vat_percentage=plan.vat_percentage,
        )
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


def create_errors(cmd: CreateSubscription) -> list[FieldError]:
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
            errors.append(
                FieldError(
                    f"{at}.product_code",
                    "duplicate_product_code",
                    f"product code {plan.product_code} appears more than once",
                )
            )
        seen.add(plan.product_code)
        if known_currency and _decimals(plan.unit_price) > minor_unit(cmd.currency):
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
        next_billing_date=_next_billing_date(b),
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
) -> None:
    ctx.emit(
        topics.SUBSCRIPTION_EVENTS,
        f"{ctx.website_key}:{sub.key}",
        SubscriptionEvent(
            event=name,
            subscription=snapshot(sub),
            invoice_number=invoice_number,
            period_index=period_index,
        ),
    )


def timer_id(sub: Subscription) -> str:
    return f"subscription:{sub.key}:billing"


def _plan_timer(ctx: HandlerContext, sub: Subscription) -> None:
    """The bill-run timer at the next billing date (00:00 UTC), or none."""
    tid = timer_id(sub)
    when = _next_billing_date(sub.billing) if sub.status != SubscriptionStatus.FAILED else None
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
    ctx.emit(topics.SCHEDULER_COMMANDS, tid, ScheduleTimer.for_envelope(tid, due_at, run))


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
    repo = _repo(ctx)
    await repo.lock_key(cmd.subscription_key)
    fingerprint = request_hash(cmd)
    existing = await repo.get(cmd.subscription_key)
    if existing is not None:
        if existing.request_hash == fingerprint:
            ctx.accept(subscription_key=existing.key)  # a repeat: the same answer
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
    await repo.insert(sub)
    _emit_event(ctx, sub, SubscriptionEventName.CREATED)
    _plan_timer(ctx, sub)
    ctx.accept(subscription_key=sub.key)


# --- RunBilling ----------------------------------------------------------------------------


def _create_invoice(sub: Subscription, period: domain.PeriodInvoice) -> CreateInvoice:
    last_day = period.period_end.toordinal() - 1
    lines = []
    for line in period.lines:
        description = line.description
        if line.is_prorated:
            days = (
                f" ({line.active_from.isoformat()} to "
                f"{line.active_until.isoformat()}, {line.active_days}/{line.period_days} days)"
            )
            description = description[: MAX_TEXT_LENGTH - len(days)] + days
        lines.append(
            InvoiceLine(
                sku=line.product_code,
                description=description,
                quantity=line.quantity,
                unit_price=line.unit_price,
                vat_percentage=line.vat_percentage,
            )
        )
    return CreateInvoice(
        invoice_number=period.invoice_number,
        invoice_date=period.invoice_date,
        due_date=period.due_date,
        currency=period.currency,
        amount_debit=period.amount_debit,
        amount_vat=period.amount_vat,
        description=f"Subscription {sub.key}, period {period.period_index}: "
        f"{period.period_start.isoformat()} to {date.fromordinal(last_day).isoformat()}",
        scheme_key=sub.scheme_key,
        lines=lines,
        debtor=Debtor.model_validate(sub.debtor),
        subscription_key=sub.key,
    )


async def run_billing(ctx: HandlerContext, cmd: RunBilling) -> None:
    """Bill every due period: one CreateInvoice each (a period with no active plan is
    billed without an invoice), a PeriodBilled event each, then the next timer."""
    repo = _repo(ctx)
    sub = await _running(ctx, cmd.subscription_key, "not_billable")
    if sub is None:
        return
    as_of = cmd.as_of or ctx.now.date()
    billed = 0
    for index in domain.due_periods(sub.billing, as_of, limit=MAX_PERIODS_PER_RUN):
        period = domain.invoice_for_period(sub.billing, index)
        if period.due_date > MAX_DATE:
            break  # beyond the dates the platform handles: never billed
        try:
            command = _create_invoice(sub, period) if period.lines else None
        except ValidationError as exc:  # the stored plans no longer make a valid invoice
            ctx.reject(
                [
                    FieldError(
                        f"payload.subscription_key.period.{index}",
                        str(error["type"]),
                        str(error["msg"]),
                    )
                    for error in exc.errors()
                ]
            )
            return
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
        if command is not None:
            ctx.emit(
                topics.INVOICE_COMMANDS,
                f"{ctx.website_key}:{period.invoice_number}",
                command,
                message_id=message_id,
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
    await repo.save(sub)
    _plan_timer(ctx, sub)
    ctx.accept(subscription_key=sub.key, periods_billed=str(billed))


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
    if sub.billing.end_date is not None and end > sub.billing.end_date:
        errors.append(
            FieldError(
                "payload.end_date",
                "after_current_end",
                f"the subscription already ends on {sub.billing.end_date.isoformat()}",
            )
        )
    if errors:
        ctx.reject(errors)
        return
    before = sub.billing
    sub = _settled_status(replace(sub, billing=replace(sub.billing, end_date=end)))
    await _credit_unused_days(ctx, repo, before, sub)
    await repo.save(sub)
    _emit_event(ctx, sub, SubscriptionEventName.STOPPED, invoice_number=cmd.invoice_number)
    _plan_timer(ctx, sub)
    ctx.accept(subscription_key=sub.key)


async def _credit_unused_days(
    ctx: HandlerContext,
    repo: SubscriptionRepository,
    before: domain.BillingState,
    sub: Subscription,
) -> None:
    """A billed period that runs past the new end date gets a CreateCreditNote on its
    invoice for the days no longer delivered: what it was billed (as recomputed from the
    state before the stop, with the end date then) minus what it costs now. Numbered
    `{invoice_number}-CR-{end date}`, so a second, earlier stop credits the rest anew."""
    end = sub.billing.end_date
    assert end is not None
    # Billed periods ending after the new end date: from the one containing it (or the
    # first, when it ends before the start of every billed one) up to the last billed.
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
        ctx.emit(
            topics.INVOICE_COMMANDS,
            f"{ctx.website_key}:{number}",
            CreateCreditNote(
                original_invoice_number=number,
                credit_note_number=f"{number}-CR-{end.strftime('%Y%m%d')}",
                amount=credit.amount_credit,
                description=f"Subscription {sub.key} stopped on {end.isoformat()}: "
                f"{max(line.unused_days for line in credit.lines)} days not used",
            ),
            message_id=uuid.uuid5(_CREDIT_IDS, f"{ctx.website_key}:{number}:{end.isoformat()}"),
        )


# --- UpdateSubscription --------------------------------------------------------------------


def _plan_errors(at: str, plan: RatePlan, currency: str) -> list[FieldError]:
    errors = []
    if _decimals(plan.unit_price) > minor_unit(currency):
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
            errors.append(
                FieldError(
                    f"{at}.product_code",
                    "duplicate_product_code",
                    f"product code {plan.product_code} exists",
                )
            )
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
            change.unit_price < 0 or _decimals(change.unit_price) > minor_unit(b.currency)
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
            *(_plan_version(p) for p in cmd.add_rate_plans),
        ),
    )
    status = SubscriptionStatus.ACTIVE if restart else sub.status
    sub = _settled_status(replace(sub, billing=b, status=status))
    await repo.save(sub)
    _emit_event(
        ctx,
        sub,
        SubscriptionEventName.RESTARTED if restart else SubscriptionEventName.UPDATED,
    )
    _plan_timer(ctx, sub)
    ctx.accept(subscription_key=sub.key)
