"""Messages of the subscription service (`cm.subscription.commands`,
`cm.subscription.events`).

Kafka key: `{website_key}:{subscription_key}`. Rate plans are identified within a
subscription by their `product_code`. A bill run creates one invoice per subscription
and period, numbered `{subscription_key}-{period_index}`.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import StrEnum

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from contracts.debtor import Debtor, DebtorSnapshot, UnreachableFlags
from contracts.envelope import Command, Event, Money, MoneyTotal, register
from contracts.fields import (
    BusinessDate,
    Currency,
    Decimal4,
    Identifier,
    Part,
    Quantity,
    SnapshotPart,
    Text,
    VatPercentage,
    check_line_total,
)
from contracts.invoice import DEFAULT_SCHEME_KEY
from contracts.limits import MAX_INTERVAL_COUNT, MAX_RATE_PLANS
from contracts.payments import Transaction


class IntervalUnit(StrEnum):
    """The unit of a billing interval."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"


class BillingTiming(StrEnum):
    """When a period is invoiced."""

    ADVANCE = "advance"
    ARREARS = "arrears"


class SubscriptionStatus(StrEnum):
    """Where a subscription stands."""

    PENDING = "pending"
    ACTIVE = "active"
    STOPPED = "stopped"
    FAILED = "failed"


class SubscriptionEventName(StrEnum):
    """What happened to a subscription."""

    CREATED = "SubscriptionCreated"
    ACTIVATED = "SubscriptionActivated"
    CREATION_FAILED = "SubscriptionCreationFailed"
    UPDATED = "SubscriptionUpdated"
    STOPPED = "SubscriptionStopped"
    RESTARTED = "SubscriptionRestarted"
    PERIOD_BILLED = "PeriodBilled"
    PAYMENT_REQUESTED = "PaymentRequested"
    INVOICE_REJECTED = "InvoiceRejected"


class BillingInterval(Part):
    """The length of a billing period: `count` times `unit`, at most ten years."""

    unit: IntervalUnit = Field(description="day, week, month, quarter or year.")
    count: int = Field(
        default=1,
        ge=1,
        le=max(MAX_INTERVAL_COUNT.values()),
        description="How many units per period: at most 3650 days, 520 weeks, 120 months, "
        "40 quarters or 10 years.",
    )

    @field_validator("count")
    @classmethod
    def _at_most_ten_years(cls, count: int, info: ValidationInfo) -> int:
        unit = info.data.get("unit")  # absent when the unit itself failed
        strict = info.config is not None and info.config.get("extra_fields_behavior") == "forbid"
        if strict and unit is not None and count > MAX_INTERVAL_COUNT[unit.value]:
            raise PydanticCustomError(
                "interval_too_long",
                "a billing interval is at most {limit} {unit}s",
                {"limit": MAX_INTERVAL_COUNT[unit.value], "unit": unit.value},
            )
        return count


class RatePlan(Part):
    """A product billed every period; prorated by days when it starts or ends inside one."""

    product_code: Identifier = Field(description="Identifies the plan within the subscription.")
    description: Text = Field(description="The invoice line's description.")
    unit_price: Money = Field(description="Price per unit per period, excluding VAT.")
    quantity: Quantity = Field(default=Decimal(1), description="How many units.")
    vat_percentage: VatPercentage = Field(description="VAT rate in percent, e.g. `21`.")
    start_date: BusinessDate = Field(description="First day the plan is billed.")
    end_date: BusinessDate | None = Field(default=None, description="Last day the plan is billed.")

    @model_validator(mode="after")
    def _total_fits(self) -> RatePlan:
        if self.model_config.get("extra") == "forbid":  # not in the snapshot twin
            check_line_total(self.quantity, self.unit_price, self.vat_percentage)
        return self


class RatePlanChange(Part):
    """A new price or quantity for a plan, from the next period on."""

    product_code: Identifier = Field(description="The plan to change.")
    unit_price: Money | None = Field(default=None, description="The new unit price.")
    quantity: Quantity | None = Field(default=None, description="The new quantity.")


class RatePlanStop(Part):
    """An end date for a plan."""

    product_code: Identifier = Field(description="The plan to stop.")
    end_date: BusinessDate = Field(description="Last day the plan is billed.")


class SubscriptionFields(Command):
    """The fields CreateSubscription and CreateCombinedSubscription share (not a message)."""

    subscription_key: Identifier = Field(description="The merchant's subscription key.")
    debtor: Debtor = Field(description="Who pays the subscription.")
    currency: Currency = Field(description="ISO 4217 currency of every amount.")
    scheme_key: Identifier = Field(
        default=DEFAULT_SCHEME_KEY, description="The dunning scheme of its invoices."
    )
    interval: BillingInterval = Field(description="The billing period.")
    billing_timing: BillingTiming = Field(
        default=BillingTiming.ADVANCE,
        description="`advance`: a period is invoiced at its start; `arrears`: at its end.",
    )
    start_date: BusinessDate = Field(description="First day of the first period.")
    end_date: BusinessDate | None = Field(default=None, description="Last day billed, if known.")
    rate_plans: list[RatePlan] = Field(
        min_length=1, max_length=MAX_RATE_PLANS, description="What is billed."
    )
    payment_term_days: int = Field(
        default=14, ge=0, le=365, description="Days from a period's invoice date to its due date."
    )
    billing_day: int | None = Field(
        default=None,
        ge=1,
        le=31,
        description="The day of the period (1 = its first day) on which it is invoiced "
        "(`arrears`: of the period after it); clamped to the period's last day. The "
        "period's first day when omitted.",
    )


class CreateSubscription(SubscriptionFields):
    """Start a subscription; its periods are billed by bill runs."""


class CreateCombinedSubscription(SubscriptionFields):
    """Start a subscription with an initial payment: `pending` until that transaction
    succeeds (then `active`, billed from its start), `failed` and never billed when it
    fails. A `pending` transaction waits for its `TransactionStatusChanged`, matched by
    `transaction_key`. The payment counts on the first period's invoice
    (`{subscription_key}-1`); its payment method and mandate reference are stored and
    collect the later invoices.
    """

    transaction: Transaction = Field(description="The initial payment.")


class UpdateSubscription(Command):
    """Add, change or stop rate plans; replace the debtor or the scheme of future
    invoices. Adding a plan to a stopped subscription restarts it."""

    subscription_key: Identifier = Field(description="The subscription.")
    add_rate_plans: list[RatePlan] = Field(
        default_factory=list,
        max_length=MAX_RATE_PLANS,
        description="New plans (start date in the future).",
    )
    change_rate_plans: list[RatePlanChange] = Field(
        default_factory=list,
        max_length=MAX_RATE_PLANS,
        description="New prices or quantities, from the next period.",
    )
    stop_rate_plans: list[RatePlanStop] = Field(
        default_factory=list, max_length=MAX_RATE_PLANS, description="Plans to end."
    )
    debtor: Debtor | None = Field(
        default=None,
        description="The debtor's new details, replacing the stored ones on future invoices "
        "(the debtor code stays the same).",
    )
    unreachable: UnreachableFlags | None = Field(
        default=None,
        description="Contact methods known not to work (sent as a whole); the invoice "
        "service records them on the debtor, so future invoices skip them.",
    )
    scheme_key: Identifier | None = Field(
        default=None, description="The dunning scheme of future invoices."
    )

    @model_validator(mode="after")
    def _changes_something(self) -> UpdateSubscription:
        if not (
            self.add_rate_plans
            or self.change_rate_plans
            or self.stop_rate_plans
            or self.debtor is not None
            or self.unreachable is not None
            or self.scheme_key is not None
        ):
            raise ValueError(
                "give at least one of add_rate_plans, change_rate_plans, stop_rate_plans, "
                "debtor, unreachable, scheme_key"
            )
        return self


class StopSubscription(Command):
    """Set the subscription's end date: no period after it is billed."""

    subscription_key: Identifier = Field(description="The subscription.")
    end_date: BusinessDate | None = Field(
        default=None, description="Last day billed; the date of `occurred_at` when omitted."
    )
    reason: Text | None = Field(default=None, description="Why, for the event log.")
    invoice_number: Identifier | None = Field(
        default=None, description="The unpaid invoice, when a scheme step stops it."
    )


class RunBilling(Command):
    """Invoice every period of the subscription that is due (a bill-run timer)."""

    subscription_key: Identifier = Field(description="The subscription.")
    as_of: BusinessDate | None = Field(
        default=None,
        description="Bill the periods due on or before this date; the date of "
        "`occurred_at` when omitted.",
    )


class RunMerchantBilling(Command):
    """An operator's bill run over all of a merchant's active subscriptions: queues a
    `RunBilling` (with this `as_of`) for each one whose next billing date is on or
    before `as_of`, in pages of subscription keys. Each page is answered; the next page
    is a `RunMerchantBilling` with `after_key` that the service sends itself.

    Kafka key: `{website_key}:bill-run`.
    """

    as_of: BusinessDate | None = Field(
        default=None,
        description="Bill the periods due on or before this date; the date of "
        "`occurred_at` when omitted.",
    )
    after_key: Identifier | None = Field(
        default=None,
        description="Continue after this subscription key (set by the service on the "
        "pages after the first).",
    )


class BillingIntervalSnapshot(BillingInterval):
    """A billing period as reported in an event."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class RatePlanSnapshot(RatePlan):
    """A rate plan as reported in an event: read as it was stored (the limits on numbers
    apply to new plans only)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    unit_price: MoneyTotal = Field(description="Price per unit per period, excluding VAT.")
    quantity: Decimal4 = Field(default=Decimal(1), description="How many units.")
    vat_percentage: Decimal4 = Field(description="VAT rate in percent, e.g. `21`.")


class SubscriptionSnapshot(SnapshotPart):
    """A subscription as it stands after a change."""

    subscription_key: str = Field(description="The merchant's subscription key.")
    status: SubscriptionStatus = Field(description="pending, active, stopped or failed.")
    debtor: DebtorSnapshot = Field(description="Who pays the subscription.")
    currency: str = Field(description="ISO 4217 currency.")
    scheme_key: str = Field(description="The dunning scheme of its invoices.")
    interval: BillingIntervalSnapshot = Field(description="The billing period.")
    billing_timing: BillingTiming = Field(description="advance or arrears.")
    start_date: date = Field(description="First day of the first period.")
    end_date: date | None = Field(default=None, description="Last day billed, if set.")
    rate_plans: list[RatePlanSnapshot] = Field(description="The plans, current prices.")
    payment_term_days: int = Field(default=14, description="Invoice date to due date, in days.")
    billing_day: int | None = Field(
        default=None, description="The day of the period on which it is invoiced, if set."
    )
    next_period_index: int = Field(ge=1, description="The next period to bill (from 1).")
    next_billing_date: date | None = Field(
        default=None, description="When the next period is billed; null when none is."
    )
    initial_transaction_key: str | None = Field(
        default=None, description="CreateCombinedSubscription: the initial transaction."
    )
    payment_method: str | None = Field(
        default=None, description="The initial transaction's payment method, once it succeeded."
    )
    mandate_reference: str | None = Field(
        default=None,
        description="The mandate that collects each new invoice (`CollectPayment`), if any.",
    )


class SubscriptionEvent(Event):
    """Something happened to a subscription; `subscription` is the state after it."""

    event: SubscriptionEventName = Field(description="What happened.")
    subscription: SubscriptionSnapshot = Field(description="The subscription after it.")
    invoice_number: str | None = Field(
        default=None,
        description="PeriodBilled: the invoice created for the period; PaymentRequested: "
        "the invoice to collect; InvoiceRejected: the invoice the invoice service "
        "rejected; SubscriptionStopped: the unpaid invoice whose scheme step stopped it.",
    )
    period_index: int | None = Field(
        default=None,
        ge=1,
        description="PeriodBilled, PaymentRequested, InvoiceRejected: the period.",
    )
    reason: str | None = Field(
        default=None,
        description="InvoiceRejected: the invoice service's errors; SubscriptionStopped, "
        "SubscriptionCreationFailed: why.",
    )


register(
    CreateSubscription,
    CreateCombinedSubscription,
    UpdateSubscription,
    StopSubscription,
    RunBilling,
    RunMerchantBilling,
    SubscriptionEvent,
)
