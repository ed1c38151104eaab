"""The invoice's step timer and held time (pure; docs/dunning.md "When a step runs").

The scheduler holds at most one timer per invoice, for its next step. After every change
`plan_timer` counts the held time up to now and says what the scheduler must be told:
nothing (the timer set is still right), set a timer, or cancel it. A fired timer comes
back as StepDue carrying the scheme and schedule versions it was set for; a stale or
repeated one is ignored (`dunning.step_due`), so late or duplicated timers are harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.invoice.domain.model import Invoice


def refresh_hold(invoice: Invoice, now: datetime) -> None:
    """Start or stop counting held time (paused statuses, a covering slow payment)."""
    if invoice.held and invoice.held_since is None:
        invoice.held_since = now
    elif not invoice.held and invoice.held_since is not None:
        invoice.held_seconds += max(0, int((now - invoice.held_since).total_seconds()))
        invoice.held_since = None


@dataclass(frozen=True)
class TimerPlan:
    """What to tell the scheduler: set the timer for a step, or cancel it."""

    step_index: int | None  # None: cancel
    due_at: datetime | None
    schedule_version: int


def plan_timer(invoice: Invoice, now: datetime) -> TimerPlan | None:
    """After a change: the timer the invoice needs now, if it differs from the one set.

    Mutates `invoice` (held time, timer fields, schedule version): afterwards
    `timer_step` and `timer_due_at` are what `desired_timer()` says.
    """
    refresh_hold(invoice, now)
    desired = invoice.desired_timer()
    current = (invoice.timer_step, invoice.timer_due_at) if invoice.timer_step else None
    if desired == current:
        return None
    if desired is None:
        invoice.timer_step = invoice.timer_due_at = None
        invoice.schedule_version += 1
        return TimerPlan(None, None, invoice.schedule_version)
    invoice.schedule_version += 1
    invoice.timer_step, invoice.timer_due_at = desired
    # A step already due runs now (after the change that scheduled it), dated now.
    return TimerPlan(desired[0], max(desired[1], now), invoice.schedule_version)
