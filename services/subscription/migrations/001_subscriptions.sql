-- Subscriptions, one row per merchant and subscription key.
--   status:       pending | active | stopped | failed (contracts.subscription.SubscriptionStatus)
--   request_hash: sha256 of the CreateSubscription payload, to tell a repeat (same
--                 content: the answer is repeated) from a conflict (refused)
--   state:        what the bill run needs that is not a plan version (JSON, see
--                 services/subscription/repository.py): currency, interval, timing,
--                 dates, billing day, payment term, debtor, scheme, next_period_index
CREATE TABLE subscriptions (
    website_key      text        NOT NULL,
    subscription_key text        NOT NULL,
    status           text        NOT NULL,
    request_hash     text        NOT NULL,
    state            jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (website_key, subscription_key)
);

-- Rate plans as versions: a price or quantity change adds a version effective from
-- the first unbilled period; billed periods keep theirs (domain.PlanVersion).
-- position keeps the order the plans were added (the order of invoice lines).
CREATE TABLE rate_plan_versions (
    website_key           text    NOT NULL,
    subscription_key      text    NOT NULL,
    product_code          text    NOT NULL,
    effective_from_period integer NOT NULL,
    position              integer NOT NULL,
    description           text    NOT NULL,
    unit_price            numeric NOT NULL,
    quantity              numeric NOT NULL,
    vat_percentage        numeric NOT NULL,
    start_date            date    NOT NULL,
    end_date              date,
    PRIMARY KEY (website_key, subscription_key, product_code, effective_from_period),
    FOREIGN KEY (website_key, subscription_key) REFERENCES subscriptions ON DELETE CASCADE
);

-- One row per billed period: the unique key is what makes a repeated or concurrent
-- bill run unable to bill a period twice. invoice_number is null for a period in
-- which no plan was active (billed without an invoice).
CREATE TABLE billed_periods (
    website_key      text        NOT NULL,
    subscription_key text        NOT NULL,
    period_index     integer     NOT NULL,
    invoice_number   text,
    message_id       uuid,
    amount_debit     numeric     NOT NULL,
    amount_vat       numeric     NOT NULL,
    billed_at        timestamptz NOT NULL,
    UNIQUE (website_key, subscription_key, period_index),
    FOREIGN KEY (website_key, subscription_key) REFERENCES subscriptions ON DELETE CASCADE
);
