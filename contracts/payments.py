"""Messages of the payment engine (`cm.payments.transactions`).

The payment engine is outside the platform; it reports every status change of a
transaction. The same `transaction_key` moving from `pending` to `success` is one
transaction changing status, not two payments.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from contracts.envelope import Event, Money, register
from contracts.fields import Identifier, OneLine, Part


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


class Transaction(Part):
    """The first transaction of a combined request (CreateCombinedInvoice/Subscription)."""

    transaction_key: Identifier = Field(description="The payment engine's transaction key.")
    service: OneLine = Field(min_length=1, max_length=64, description=PAYMENT_SERVICE_DESCRIPTION)
    amount: Money = Field(description="The transaction amount, in the invoice's currency.")
    status: TransactionStatus = Field(description="The transaction's status now.")


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
    is_slow: bool = Field(
        default=False,
        description="A slow method (SEPA direct debit): while `pending` it counts "
        "towards AmountPendingSlow and holds the scheme's steps.",
    )


register(TransactionStatusChanged)
