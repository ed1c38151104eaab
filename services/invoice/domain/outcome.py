"""What a rule returns for one invoice: the new state, its events, its requests.

A rule (`status.change_status`, `amounts.apply_transaction`, `dunning.run_step`, …) takes
the state and returns an `Outcome`; it never numbers events nor plans the timer. The
functions of `commands` gather outcomes into a `result.Result`, which does both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING

from contracts.envelope import FieldError
from contracts.invoice import EventCategory, InvoiceEventName

if TYPE_CHECKING:
    from services.invoice.domain.model import Invoice, SchemeStepState


@dataclass(frozen=True)
class EventOut:
    """An event to emit; `result.Result` numbers it, the handler attaches the snapshot."""

    name: InvoiceEventName
    parameters: dict[str, str] = field(default_factory=dict)
    category: EventCategory | None = None


@dataclass(frozen=True)
class SendStepMessage:
    """Ask the notifier to send a step's message (PaymentInvitation or Reminder)."""

    step: SchemeStepState


@dataclass(frozen=True)
class StopSubscriptionRequest:
    """Ask the subscription service to stop the invoice's subscription."""

    subscription_key: str
    step_index: int


@dataclass(frozen=True)
class CollectRequest:
    """Ask the payment engine to collect a failed direct debit again (CollectPayment)."""

    amount: Decimal
    service: str
    mandate_reference: str
    collect_date: date
    attempt: int


Request = SendStepMessage | StopSubscriptionRequest | CollectRequest


@dataclass
class Outcome:
    """What a rule did: the new state (None: unchanged), events, requests to other
    services and errors (a broken rule: nothing changes)."""

    invoice: Invoice | None = None
    events: list[EventOut] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def then(self, other: Outcome) -> Outcome:
        """This outcome followed by `other`, a rule applied to this one's invoice: one
        change with the events of both, in order."""
        return Outcome(
            invoice=other.invoice or self.invoice,
            events=[*self.events, *other.events],
            errors=[*self.errors, *other.errors],
            requests=[*self.requests, *other.requests],
        )


def reject(field_name: str, code: str, message: str) -> Outcome:
    return Outcome(errors=[FieldError(field_name, code, message)])
