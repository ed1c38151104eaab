"""The invoice domain: pure, no I/O, no clock ("now" is the message's time).

- `model`: the `Invoice` as stored, and what its state reads as (amounts, next step).
- `amounts`: booking payments, refunds, admin costs, credit notes; `Transaction`.
- `status`: the status machine (the transition tables) and the move itself.
- `schedule`: held time and the step timer the scheduler keeps (`plan_timer`).
- `plans`: payment plans: installments, forwarding payments, settling, terminating.
- `recollect`: SEPA recollection of a failed direct debit.
- `creation`: the rules of a new invoice; `custom_events`: tags filled in.
- `merchant`: the merchant's settings (time zone of the steps, default culture).
- `outcome`: what a rule returns for one invoice (`Outcome`, events, requests).
- `result`: everything a message means (`Result`): changes finished, events numbered.
- `commands`: one function per message type, from the message to its `Result`.

The schemes and their steps are in `services/invoice/dunning.py`. The names below are
the ones the rest of the service and the unit tests use as `domain.<name>`.
"""

from services.invoice.domain.amounts import (
    Transaction,
    add_admin_costs,
    apply_transaction,
    book_credit,
    book_payment,
    book_transaction,
    create_credit_note,
    money_errors,
)
from services.invoice.domain.creation import (
    create_invoice,
    invoice_errors,
    new_invoice_key,
    request_hash,
)
from services.invoice.domain.custom_events import custom_event, fill_tags, tag_values
from services.invoice.domain.model import (
    HELD,
    SCHEMA_TEST_PREFIXES,
    ZERO,
    Booking,
    CreditNote,
    Invoice,
    RecollectionState,
    SchemeStepState,
)
from services.invoice.domain.outcome import (
    CollectRequest,
    EventOut,
    Outcome,
    Request,
    SendStepMessage,
    StopSubscriptionRequest,
    reject,
)
from services.invoice.domain.plans import (
    InstallmentPlan,
    PaymentPlan,
    PlanInvoices,
    add_interval,
    dossier_errors,
    forward_payment,
    installment_numbers,
    plan_installments,
    reverse_forwarded,
    start_payment_plan,
)
from services.invoice.domain.result import Change, NumberedEvent, Result
from services.invoice.domain.schedule import TimerPlan, plan_timer, refresh_hold
from services.invoice.domain.status import (
    COLLECTION_TRANSITIONS,
    FINAL,
    TRANSITIONS,
    change_status,
    move,
    set_collection_status,
    status_name,
)

__all__ = [
    "COLLECTION_TRANSITIONS",
    "FINAL",
    "HELD",
    "SCHEMA_TEST_PREFIXES",
    "TRANSITIONS",
    "ZERO",
    "Booking",
    "Change",
    "CollectRequest",
    "CreditNote",
    "EventOut",
    "InstallmentPlan",
    "Invoice",
    "NumberedEvent",
    "Outcome",
    "PaymentPlan",
    "PlanInvoices",
    "RecollectionState",
    "Request",
    "Result",
    "SchemeStepState",
    "SendStepMessage",
    "StopSubscriptionRequest",
    "TimerPlan",
    "Transaction",
    "add_admin_costs",
    "add_interval",
    "apply_transaction",
    "book_credit",
    "book_payment",
    "book_transaction",
    "change_status",
    "create_credit_note",
    "create_invoice",
    "custom_event",
    "dossier_errors",
    "fill_tags",
    "forward_payment",
    "installment_numbers",
    "invoice_errors",
    "money_errors",
    "move",
    "new_invoice_key",
    "plan_installments",
    "plan_timer",
    "refresh_hold",
    "reject",
    "request_hash",
    "reverse_forwarded",
    "set_collection_status",
    "start_payment_plan",
    "status_name",
    "tag_values",
]
