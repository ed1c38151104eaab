"""Every size and range limit of the wire, in one place (docs/contracts.md, Limits).

A value beyond one of these is a parse error: the command is answered with a
`CommandRejected` naming the field and never reaches a handler. The limits exist so
that whatever parses can also be stored (PostgreSQL `text`, `jsonb`, `integer`) and
computed (`date + timedelta`, `quantity * unit_price`) without an exception, and so
that one message stays far below the broker's message size. They are generous: a
merchant should never meet them with real data.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

# --- dates ---------------------------------------------------------------------------------

#: The first and the last year a date or timestamp in a message may lie in. Python's
#: dates end in 9999; with every offset the platform adds (scheme step days, paused time,
#: installment and billing intervals, timezone offsets) a date from these years stays
#: far inside them.
MIN_YEAR = 1900
MAX_YEAR = 2999
MIN_DATE = date(MIN_YEAR, 1, 1)
MAX_DATE = date(MAX_YEAR, 12, 31)

# --- numbers -------------------------------------------------------------------------------

#: The largest magnitude of an amount a client states (invoice amount, price, payment,
#: admin cost, …): a trillion units of any currency. Amounts the platform adds up (open
#: amounts, the lines of an invoice, totals of payments) may reach 10,000 times this
#: and still fit the 16 integer digits (20 digits, 4 decimals) of an amount on the wire.
MAX_AMOUNT = Decimal(10) ** 12
#: The largest amount the platform writes (sums of client amounts): 20 digits, 4 decimals.
MAX_TOTAL_DIGITS = 20
#: The largest magnitude of a quantity (invoice lines, rate plans); negative quantities
#: (a returned item) are allowed. The line's total is bounded separately (MAX_AMOUNT).
MAX_QUANTITY = Decimal(10) ** 9
#: VAT percentages lie in 0..100.
MAX_VAT_PERCENTAGE = Decimal(100)
#: The largest offset of a scheme step from its base date, either way: ten years.
MAX_STEP_DAYS = 3650
#: The largest counter or version a message carries (PostgreSQL `integer`).
MAX_INT = 2**31 - 1
#: The most installments a payment plan may have.
MAX_INSTALLMENTS = 1000
#: The longest billing interval per unit: ten years.
MAX_INTERVAL_COUNT: dict[str, int] = {
    "day": 3650,
    "week": 520,
    "month": 120,
    "quarter": 40,
    "year": 10,
}

# --- list lengths --------------------------------------------------------------------------

#: Invoice lines of one invoice, and line items of one collection case.
MAX_INVOICE_LINES = 1000
#: Merchant key/value pairs on one invoice.
MAX_CUSTOM_PARAMETERS = 100
#: Payment methods named in `allowed_services`.
MAX_ALLOWED_SERVICES = 100
#: Steps of one dunning scheme; also the largest step index.
MAX_SCHEME_STEPS = 100
#: Channels of one scheme step or message (three exist; repeats are the service's call).
MAX_CHANNELS = 10
#: Invoices one payment plan pays off.
MAX_PLAN_INVOICES = 100
#: Rate plans of one subscription, and plans added, changed or stopped by one update.
MAX_RATE_PLANS = 100
#: Conditions of one debt collector configuration.
MAX_COLLECTOR_CONDITIONS = 100
#: Documents sent with one case.
MAX_DOCUMENTS = 50

# --- string lengths ------------------------------------------------------------------------

#: An identifier the merchant chooses (invoice number, debtor code, scheme key, …) and
#: every identifier the platform derives from one (`contracts.fields.Identifier`).
MAX_IDENTIFIER_LENGTH = 100
#: The most billing periods a subscription can have: one a day from MIN_DATE to MAX_DATE
#: (a period due after MAX_DATE is never billed), so a period index has at most 6 digits.
MAX_PERIOD_INDEX = (MAX_DATE - MIN_DATE).days + 1
#: The most credit notes the subscription service numbers on one period's invoice.
MAX_PERIOD_CREDIT_NOTES = 9999
#: The longest subscription key. Its invoices are numbered `{key}-{period}` and their
#: credit notes `{key}-{period}-CR-{yyyymmdd}`, with `-{n}` from the second on
#: (services/subscription/domain.py): the room for the longest of these suffixes is
#: reserved here, so every number derived from a key fits MAX_IDENTIFIER_LENGTH.
MAX_SUBSCRIPTION_KEY_LENGTH = MAX_IDENTIFIER_LENGTH - len(
    f"-{MAX_PERIOD_INDEX}-CR-yyyymmdd-{MAX_PERIOD_CREDIT_NOTES}"
)

#: Free text: descriptions, reasons, messages, parameter values.
MAX_TEXT_LENGTH = 2000
#: A URL (pay links, webhook endpoints).
MAX_URL_LENGTH = 2000
#: A message template's body.
MAX_TEMPLATE_LENGTH = 100_000
#: A topic name.
MAX_TOPIC_LENGTH = 255
#: How many unstorable strings one answer names (the rest are left out).
MAX_REPORTED_STRINGS = 50

# --- SEPA recollection ---------------------------------------------------------------------

#: Recollections of a failed direct debit one invoice may ask for (a scheme's `attempts`).
MAX_RECOLLECT_ATTEMPTS = 10
#: Days between a failed direct debit and its recollection, at most.
MAX_RECOLLECT_DAYS = 60
