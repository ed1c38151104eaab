"""Schemes and scheme steps executed on invoices (pure: no I/O, no clock; docs/dunning.md).

A step runs when its timer fires (`step_due`, StepDue from the scheduler) or, on a test
invoice, when asked (`trigger_next_step`); the notifier's answer to a step's message is
recorded by `record_message_outcome`. The timer itself is planned after every change by
`domain.schedule.plan_timer`.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

from contracts.envelope import FieldError
from contracts.fields import with_minor_unit
from contracts.invoice import (
    DEFAULT_SCHEME_KEY,
    INTEREST_COST,
    NO_STEPS_SCHEME_KEY,
    InvoiceEventName,
    MessageOutcome,
    SchemeStep,
    StepAction,
)
from contracts.statutory import applies_to, statutory_costs
from services.invoice.domain.amounts import add_admin_costs
from services.invoice.domain.custom_events import fill_tags
from services.invoice.domain.interest import accrue, book_interest
from services.invoice.domain.merchant import local_day, local_midnight
from services.invoice.domain.model import ZERO, Invoice, S, SchemeStepState
from services.invoice.domain.outcome import (
    EventOut,
    Outcome,
    SendStepMessage,
    StopSubscriptionRequest,
    reject,
)
from services.invoice.domain.status import move

BUILT_IN_SCHEME_KEYS = frozenset({DEFAULT_SCHEME_KEY, NO_STEPS_SCHEME_KEY})

# --- the Dutch statutory collection costs (art. 6:96 BW, Besluit vergoeding BIK) ---------

#: The 14-day term counts from the day after receipt: the costs may be charged from this
#: many days after the day the letter went out (e-mail/SMS arrive the same day, a letter
#: is taken to arrive two days later).
LETTER_TERM_DAYS = {"email": 15, "sms": 15, "letter": 17}
#: A scheme's statutory step must be at least this many days after its 14-day letter.
STATUTORY_MIN_GAP_DAYS = 17
#: The `Reason` of the IncreasedAdminFee (Amount 0) of a statutory step skipped because
#: the invoice is not in euros, the scale's currency (contracts/statutory.py).
STATUTORY_NOT_IN_EUR = "statutory_costs_only_in_eur"
#: The `Reason` of the IncreasedAdminFee of a statutory step that charged the costs (an
#: interest step says `statutory_interest`, `domain.interest.INTEREST_REASON`; a flat
#: admin cost has no `Reason`). The console's costs report splits the costs by it.
STATUTORY_COSTS = "statutory_costs"


# --- schemes -------------------------------------------------------------------------------

_MESSAGE_ACTIONS = (StepAction.PAYMENT_INVITATION, StepAction.REMINDER)


def scheme_errors(scheme_key: str, steps: list[SchemeStep]) -> list[FieldError]:
    """Why a scheme cannot be saved, per field (empty when it can)."""
    errors: list[FieldError] = []
    if scheme_key in BUILT_IN_SCHEME_KEYS:
        errors.append(
            FieldError(
                "payload.scheme_key",
                "built_in_scheme",
                f"{scheme_key} is built in and cannot be changed",
            )
        )
    last_days: int | None = None
    for i, step in enumerate(steps):
        at = f"payload.steps.{i}"
        if step.index != i + 1:
            errors.append(
                FieldError(
                    f"{at}.index",
                    "step_order",
                    f"steps are numbered 1..n in order; expected {i + 1}",
                )
            )
        if step.action == StepAction.PAYMENT_INVITATION:
            if step.days < 0:
                errors.append(
                    FieldError(
                        f"{at}.days",
                        "negative",
                        "an invitation cannot go out before the invoice date",
                    )
                )
        else:
            if last_days is not None and step.days < last_days:
                errors.append(
                    FieldError(
                        f"{at}.days",
                        "offset_order",
                        "a step cannot be due before the step before it",
                    )
                )
            last_days = step.days
        if step.action in _MESSAGE_ACTIONS:
            if not step.channels:
                errors.append(
                    FieldError(
                        f"{at}.channels",
                        "channels_required",
                        f"a {step.action.value} needs at least one channel",
                    )
                )
            elif len(set(step.channels)) != len(step.channels):
                errors.append(
                    FieldError(f"{at}.channels", "duplicate_channel", "a channel is listed twice")
                )
        elif step.channels:
            errors.append(
                FieldError(
                    f"{at}.channels", "not_a_message", f"a {step.action.value} sends no message"
                )
            )
        if step.states_costs and step.action != StepAction.REMINDER:
            errors.append(
                FieldError(
                    f"{at}.states_costs",
                    "not_a_reminder",
                    "only a Reminder can be the 14-day letter",
                )
            )
        if step.action == StepAction.ADMIN_COST_INCREASE:
            if step.admin_cost is None:
                errors.append(
                    FieldError(
                        f"{at}.admin_cost",
                        "required",
                        "an AdminCostIncrease needs an amount or `statutory`",
                    )
                )
            elif step.admin_cost == INTEREST_COST:
                if step.days < 1:
                    errors.append(
                        FieldError(
                            f"{at}.days",
                            "interest_before_due",
                            "statutory interest runs from the day after the due date: an "
                            "interest step is due at least 1 day after it",
                        )
                    )
            elif step.admin_cost != "statutory" and Decimal(step.admin_cost) <= ZERO:
                errors.append(
                    FieldError(f"{at}.admin_cost", "not_positive", "admin costs must be positive")
                )
            elif step.admin_cost == "statutory":
                letters = [
                    s for s in steps[:i] if s.action == StepAction.REMINDER and s.states_costs
                ]
                if not any(step.days - s.days >= STATUTORY_MIN_GAP_DAYS for s in letters):
                    errors.append(
                        FieldError(
                            f"{at}.admin_cost",
                            "statutory_without_14_day_letter",
                            "statutory costs need an earlier Reminder with states_costs at least "
                            f"{STATUTORY_MIN_GAP_DAYS} days before (art. 6:96 lid 6 BW)",
                        )
                    )
        elif step.admin_cost is not None:
            errors.append(
                FieldError(
                    f"{at}.admin_cost", "not_a_cost_step", "only an AdminCostIncrease adds costs"
                )
            )
        if step.action == StepAction.THRESHOLD and step.threshold_amount is None:
            errors.append(
                FieldError(
                    f"{at}.threshold_amount", "required", "a Threshold needs threshold_amount"
                )
            )
        if step.action == StepAction.CUSTOM_EVENT and not step.message:
            errors.append(FieldError(f"{at}.message", "required", "a CustomEvent needs a message"))
    return errors


# --- steps ---------------------------------------------------------------------------------


def step_due(
    invoice: Invoice, *, step_index: int, scheme_version: int, schedule_version: int, now: datetime
) -> Outcome:
    """A timer fired. Ignored when stale (versions), when the invoice no longer runs
    steps (paid, paused, past its max_step_index, a test invoice) or already ran it;
    refused (`not_due`) before the time the invoice's own schedule set for the step."""
    if (
        scheme_version != invoice.scheme_version
        or schedule_version != invoice.schedule_version
        or invoice.timer_step != step_index
    ):
        return Outcome()
    if invoice.timer_due_at is not None and now < invoice.timer_due_at:
        return reject(
            "occurred_at",
            "not_due",
            f"step {step_index} is due at {invoice.timer_due_at.isoformat()}, "
            f"not at {now.isoformat()}",
        )
    updated = invoice.changed()
    updated.timer_step = updated.timer_due_at = None  # the timer is spent
    step = updated.next_step
    if step is None or step.index != step_index or not updated.may_run_steps:
        return Outcome(invoice=updated)
    return run_step(updated, step, now)


def trigger_next_step(invoice: Invoice, now: datetime) -> Outcome:
    """TriggerNextStep: a test invoice runs its next step at once."""
    if not invoice.is_test:
        return reject(
            "payload.invoice_number",
            "not_a_test_invoice",
            "only test invoices can be moved on by hand",
        )
    if invoice.status != S.ACTIVE:
        return reject(
            "payload.invoice_number",
            "invalid_status",
            f"the invoice is not active (status {int(invoice.status)})",
        )
    if invoice.is_paid or invoice.slow_payment_covers:
        return reject(
            "payload.invoice_number",
            "nothing_open",
            "a paid invoice (or one a pending payment covers) runs no steps",
        )
    step = invoice.next_step
    if step is None:
        return reject("payload.invoice_number", "no_next_step", "the scheme has no step left")
    return run_step(invoice.changed(), step, now, forced=True)


def _done(invoice: Invoice, step: SchemeStepState, now: datetime) -> None:
    invoice.previous_step_index = step.index
    invoice.previous_step_date_time = now
    invoice.waiting_step = invoice.waiting_until = None


def run_step(
    invoice: Invoice, step: SchemeStepState, now: datetime, forced: bool = False
) -> Outcome:
    """Execute one step on `invoice` (a copy the caller owns)."""
    index = {"StepIndex": str(step.index)}
    if step.action in (StepAction.PAYMENT_INVITATION, StepAction.REMINDER):
        _done(invoice, step, now)
        return Outcome(invoice=invoice, requests=[SendStepMessage(step)])
    if step.action == StepAction.ADMIN_COST_INCREASE:
        return _admin_costs(invoice, step, now, forced)
    if step.action == StepAction.TRANSFER_TO_COLLECTION_AGENCY:
        moved = move(invoice, S.PENDING_TRANSFER_TO_COLLECTION_AGENCY, now)
        _done(moved, step, now)
        parameters = {**index, "StatusCode": str(int(moved.status))}
        if step.agency_code:
            parameters["AgencyCode"] = step.agency_code
        return Outcome(
            invoice=moved,
            events=[EventOut(InvoiceEventName.TRANSFERRED_TO_COLLECTION_AGENCY, parameters)],
        )
    if step.action == StepAction.THRESHOLD:
        _done(invoice, step, now)
        if invoice.open_amount_incl_admin_costs < Decimal(step.threshold_amount or "0"):
            invoice.scheme_ended = True  # below the threshold: no further step runs
        return Outcome(invoice=invoice)
    if step.action == StepAction.STOP_SUBSCRIPTION:
        _done(invoice, step, now)
        requests = (
            [StopSubscriptionRequest(invoice.subscription_key, step.index)]
            if invoice.subscription_key
            else []
        )
        return Outcome(invoice=invoice, requests=list(requests))
    # CustomEvent
    _done(invoice, step, now)
    accrue(invoice, now)  # `[InterestAccrued]` as of the step
    message = fill_tags(step.message or "", invoice)
    return Outcome(
        invoice=invoice,
        events=[EventOut(InvoiceEventName.CUSTOM_EVENT, {"CustomEventMessage": message, **index})],
    )


def letter_term_ends(invoice: Invoice) -> datetime | None:
    """When statutory costs may be charged after the 14-day letter, or None if none went out."""
    if invoice.cost_letter_sent_at is None:
        return None
    days = LETTER_TERM_DAYS.get(invoice.cost_letter_channel or "letter", 17)
    # Days as the merchant counts them: in its time zone, like the steps.
    sent_day: date = local_day(invoice.cost_letter_sent_at, invoice.time_zone)
    return local_midnight(sent_day + timedelta(days=days), invoice.time_zone)


def _letter_outcome_pending(invoice: Invoice, step: SchemeStepState) -> bool:
    """A 14-day letter before `step` ran, and its outcome has not been recorded yet."""
    ran = invoice.previous_step_index or 0
    return any(
        s.action == StepAction.REMINDER
        and s.states_costs
        and s.index < step.index
        and s.index <= ran
        and s.index not in invoice.outcomes_recorded
        for s in invoice.effective_steps
    )


def _admin_costs(invoice: Invoice, step: SchemeStepState, now: datetime, forced: bool) -> Outcome:
    if step.admin_cost == INTEREST_COST:
        # The statutory interest accrued so far, less what was added before (docs/interest.md).
        return _admin_fee_added(invoice, step, now, book_interest(invoice, now))
    if step.admin_cost == "statutory" and not applies_to(invoice.currency):
        # The scale is in euros: nothing is charged, and the event says why.
        amount = with_minor_unit(ZERO, invoice.currency)
        return _admin_fee_added(
            invoice, step, now, {"Amount": str(amount), "Reason": STATUTORY_NOT_IN_EUR}
        )
    if step.admin_cost == "statutory":
        if invoice.debtor_is_person:
            term_ends = letter_term_ends(invoice)
            if term_ends is None and _letter_outcome_pending(invoice, step):
                # The 14-day letter ran but the notifier has not said how it went: wait
                # for its outcome (the timer is set again when it arrives).
                invoice.waiting_step, invoice.waiting_until = step.index, None
                return Outcome(invoice=invoice)
            if term_ends is None:
                # No 14-day letter went out: the costs may never be charged; go on.
                _done(invoice, step, now)
                return Outcome(invoice=invoice)
            if now < term_ends and not forced:
                invoice.waiting_step, invoice.waiting_until = step.index, term_ends
                return Outcome(invoice=invoice)
        principal = max(ZERO, invoice.open_amount)
        amount = statutory_costs(principal, invoice.currency)  # an EUR invoice (above)
        add_admin_costs(invoice, amount)
        return _admin_fee_added(
            invoice, step, now, {"Amount": str(amount), "Reason": STATUTORY_COSTS}
        )
    # A flat admin cost: its event carries no `Reason`.
    amount = Decimal(step.admin_cost or "0")
    add_admin_costs(invoice, amount)
    return _admin_fee_added(invoice, step, now, {"Amount": str(amount)})


def _admin_fee_added(
    invoice: Invoice, step: SchemeStepState, now: datetime, parameters: dict[str, str]
) -> Outcome:
    """The admin-cost step done, and its IncreasedAdminFee event with `parameters`."""
    _done(invoice, step, now)
    return Outcome(
        invoice=invoice,
        events=[
            EventOut(
                InvoiceEventName.INCREASED_ADMIN_FEE,
                {"StepIndex": str(step.index), **parameters},
            )
        ],
    )


# --- message outcomes ----------------------------------------------------------------------

#: (action, outcome) → the event it becomes.
OUTCOME_EVENTS: dict[tuple[StepAction, MessageOutcome], InvoiceEventName] = {
    (
        StepAction.PAYMENT_INVITATION,
        MessageOutcome.SENT,
    ): InvoiceEventName.SENT_PAYMENT_INVITATION_MESSAGE,
    (
        StepAction.PAYMENT_INVITATION,
        MessageOutcome.SENT_BACKUP,
    ): InvoiceEventName.SENT_BACKUP_PAYMENT_INVITATION_MESSAGE,
    (
        StepAction.PAYMENT_INVITATION,
        MessageOutcome.SKIPPED_NO_METHODS,
    ): InvoiceEventName.SKIPPED_REMINDER_BECAUSE_NO_METHODS_REMAIN,
    (StepAction.REMINDER, MessageOutcome.SENT): InvoiceEventName.SENT_REMINDER_MESSAGE,
    (
        StepAction.REMINDER,
        MessageOutcome.SENT_BACKUP,
    ): InvoiceEventName.SENT_BACKUP_REMINDER_MESSAGE,
    (
        StepAction.REMINDER,
        MessageOutcome.SKIPPED_NO_METHODS,
    ): InvoiceEventName.SKIPPED_REMINDER_BECAUSE_NO_METHODS_REMAIN,
}


def record_message_outcome(
    invoice: Invoice,
    *,
    step_index: int,
    outcome: MessageOutcome,
    channel: str | None,
    now: datetime,
) -> Outcome:
    """The notifier's answer to a step's message becomes event 10, 11, 4, 5 or 6."""
    if step_index in invoice.outcomes_recorded:
        return Outcome()
    step = next((s for s in invoice.scheme_steps if s.index == step_index), None)
    if step is None or step.action not in (StepAction.PAYMENT_INVITATION, StepAction.REMINDER):
        return reject(
            "payload.step_index",
            "not_a_message_step",
            f"step {step_index} of the invoice's scheme sends no message",
        )
    updated = invoice.changed()
    updated.outcomes_recorded.append(step_index)
    if step.states_costs and outcome != MessageOutcome.SKIPPED_NO_METHODS:
        updated.cost_letter_sent_at = now
        updated.cost_letter_channel = channel
    if step.states_costs and updated.waiting_step is not None and updated.waiting_until is None:
        # A cost step was waiting for this outcome: it may run from the letter's term
        # end (or at once, to be skipped, when no letter went out).
        updated.waiting_until = letter_term_ends(updated) or now
    parameters = {"StepIndex": str(step_index)}
    if channel:
        parameters["Channel"] = channel
    return Outcome(
        invoice=updated, events=[EventOut(OUTCOME_EVENTS[(step.action, outcome)], parameters)]
    )
