-- Combined subscriptions, automatic collection, operator bill runs, rejected invoices.
--   initial_transaction_key: CreateCombinedSubscription's transaction; a
--                     TransactionStatusChanged with this key activates (success) or fails
--                     a pending subscription. Unique per merchant.
--   payment_method, mandate_reference: of the successful initial transaction; a
--                     subscription with a mandate sends CollectPayment for each invoice.
--   next_billing_date: when the next period is billed (null when none is, and on rows
--                     written before this migration until their next change): what a
--                     merchant-wide bill run (RunMerchantBilling) selects on.
ALTER TABLE subscriptions
    ADD COLUMN initial_transaction_key text,
    ADD COLUMN initial_transaction     jsonb,
    ADD COLUMN payment_method          text,
    ADD COLUMN mandate_reference       text,
    ADD COLUMN next_billing_date       date;

CREATE UNIQUE INDEX subscriptions_initial_transaction
    ON subscriptions (website_key, initial_transaction_key)
    WHERE initial_transaction_key IS NOT NULL;

CREATE INDEX subscriptions_active
    ON subscriptions (website_key, subscription_key)
    WHERE status = 'active';

-- rejected_at: when the invoice service rejected the period's invoice (InvoiceRejected
-- surfaced once). credit_notes: how many credit notes the period's invoice has had, so
-- each new one gets its own number.
ALTER TABLE billed_periods
    ADD COLUMN rejected_at  timestamptz,
    ADD COLUMN credit_notes integer NOT NULL DEFAULT 0;

CREATE INDEX billed_periods_invoice ON billed_periods (website_key, invoice_number)
    WHERE invoice_number IS NOT NULL;

-- The first period whose invoice carries the plan (domain.PlanVersion.billed_from_period):
-- a plan added after periods were billed catches up its days in them on that invoice.
ALTER TABLE rate_plan_versions
    ADD COLUMN billed_from_period integer NOT NULL DEFAULT 1;
