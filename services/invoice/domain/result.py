"""Everything a message means for the invoices it touches (pure).

`Result.add` finishes a rule's `Outcome`: the money that changed is written down with
its day and the statutory interest accrued so far computed (`interest.accrue`), the
held time is counted up to now, the step timer planned (`schedule.plan_timer`) and the
events numbered with the invoice's next sequence, in that order, so the snapshot the
handler attaches to every event shows the invoice exactly as it is saved. Handlers save
each change's invoice, emit its events, requests and timer, and answer with the result's
errors or keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from contracts.debtor import Debtor
from contracts.envelope import FieldError
from services.invoice.domain.amounts import Transaction
from services.invoice.domain.interest import accrue
from services.invoice.domain.model import Invoice
from services.invoice.domain.outcome import EventOut, Outcome, Request
from services.invoice.domain.plans import PaymentPlan
from services.invoice.domain.schedule import TimerPlan, plan_timer


@dataclass(frozen=True)
class NumberedEvent:
    """An event with its place in the invoice's sequence."""

    sequence: int
    event: EventOut


@dataclass
class Change:
    """One invoice after one outcome: the state to save, its numbered events, what it
    asks of other services and what to tell the scheduler (None: nothing)."""

    invoice: Invoice
    events: list[NumberedEvent]
    requests: list[Request]
    timer: TimerPlan | None


@dataclass
class Result:
    """A message's result: the changes in order, the errors to answer (or dead-letter)
    with, the keys an acceptance names, and what else to store: a payment plan, the
    debtor of a new invoice, a transaction that came before its invoice."""

    changes: list[Change] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)
    plan: PaymentPlan | None = None
    debtor: Debtor | None = None
    park: Transaction | None = None

    @classmethod
    def refused(cls, errors: list[FieldError]) -> Result:
        return cls(errors=list(errors))

    def add(self, outcome: Outcome, now: datetime) -> Invoice | None:
        """Take in an outcome's change, finished; returns the invoice after it (None
        when the outcome changed nothing). Errors are kept, the change too: a rejected
        invoice is stored all the same."""
        self.errors += outcome.errors
        invoice = outcome.invoice
        if invoice is None:
            return None
        accrue(invoice, now)
        timer = plan_timer(invoice, now)
        numbered = []
        for event in outcome.events:
            invoice.sequence += 1
            numbered.append(NumberedEvent(invoice.sequence, event))
        self.changes.append(Change(invoice, numbered, list(outcome.requests), timer))
        return invoice
