"""Messages of the payment engine: what it reports (`cm.payments.transactions`) and what
the platform asks of it (`cm.payments.requests`).

The payment engine is outside the platform; it reports every status change of a
transaction. The same `transaction_key` moving from `pending` to `success` is one
transaction changing status, not two payments. A subscription with a stored mandate asks
it to collect each new invoice (`CollectPayment`); it answers with the usual
`TransactionStatusChanged` on the invoice.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from contracts.envelope import Command, Event, Money, register
from contracts.fields import BusinessDate, Currency, Identifier, OneLine, Part, Text


class TransactionStatus(StrEnum):
    """Where a transaction stands. Only `success` counts as paid."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"
    REFUNDED = "refunded"
    CHARGEBACK = "chargeback"


PAYMENT_SERVICE_DESCRIPTION = (
    "The payment method, e.g. `ideal`, `sepadirectdebit`, `creditcard`, `paypal`."
)
MANDATE_DESCRIPTION = (
    "The payment engine's reference for collecting again without the debtor (a SEPA "
    "mandate, a stored card); set on a successful first transaction that set one up."
)
SLOW_DESCRIPTION = (
    "A slow method (SEPA direct debit): while `pending` it counts towards "
    "AmountPendingSlow and holds the scheme's steps."
)


class Transaction(Part):
    """The first transaction of a combined request (CreateCombinedInvoice/Subscription)."""

    transaction_key: Identifier = Field(description="The payment engine's transaction key.")
    service: OneLine = Field(min_length=1, max_length=64, description=PAYMENT_SERVICE_DESCRIPTION)
    amount: Money = Field(description="The transaction amount, in the invoice's currency.")
    status: TransactionStatus = Field(description="The transaction's status now.")
    is_slow: bool = Field(default=False, description=SLOW_DESCRIPTION)
    mandate_reference: OneLine | None = Field(
        default=None, min_length=1, max_length=100, description=MANDATE_DESCRIPTION
    )


class TransactionStatusChanged(Event):
    """A transaction on an invoice changed status (payment engine → invoice, subscription).

    `amount` is the transaction's own amount, positive; a `refunded` or `chargeback`
    status takes that amount back (counted in AmountCredit). Kafka key:
    `{website_key}:{invoice_number}`.
    """

    invoice_number: Identifier = Field(description="The invoice the transaction pays.")
    transaction_key: Identifier = Field(
        description="The payment engine's key; stable across status changes."
    )
    service: OneLine = Field(min_length=1, max_length=64, description=PAYMENT_SERVICE_DESCRIPTION)
    amount: Money = Field(description="The transaction amount, in the invoice's currency.")
    status: TransactionStatus = Field(description="The transaction's new status.")
    is_slow: bool = Field(default=False, description=SLOW_DESCRIPTION)
    mandate_reference: OneLine | None = Field(
        default=None, min_length=1, max_length=100, description=MANDATE_DESCRIPTION
    )


class CollectPayment(Command):
    """Collect an invoice with a stored mandate (subscription or invoice → payment engine).

    The subscription service asks for each new invoice of a subscription with a mandate;
    the invoice service asks again for a failed direct debit when the invoice's scheme
    enables recollection (with `collect_date`). Kafka key: `{website_key}:{invoice_number}`.
    The engine answers with `TransactionStatusChanged` on the invoice, as for any payment;
    `message_id` is stable per invoice (per recollection attempt), so a repeated request
    is the same request.
    """

    invoice_number: Identifier = Field(description="The invoice to collect.")
    currency: Currency = Field(description="ISO 4217 currency of the amount.")
    amount: Money = Field(description="The amount to collect, including VAT.")
    service: OneLine = Field(min_length=1, max_length=64, description=PAYMENT_SERVICE_DESCRIPTION)
    mandate_reference: OneLine = Field(
        min_length=1, max_length=100, description="The mandate to collect with."
    )
    subscription_key: Identifier | None = Field(
        default=None, description="The subscription that billed the invoice, if one did."
    )
    description: Text | None = Field(default=None, description="For the debtor's statement.")
    collect_date: BusinessDate | None = Field(
        default=None,
        description="A recollection: the day to collect on (the failed direct debit's day "
        "plus the scheme's `days_between`); as soon as possible when omitted.",
    )


register(TransactionStatusChanged, CollectPayment)
