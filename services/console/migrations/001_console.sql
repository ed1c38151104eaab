-- The console's read models (built from the event topics only) and its own accounts.

-- One row per invoice: the latest snapshot the invoice events carried (by `sequence`).
--   step_index:   the last scheme step taken (previous_step_index), null before the first
--   open_amount:  open principal plus open admin costs (open_amount_incl_admin_costs)
--   admin_costs:  admin and statutory costs charged (amount_admin_costs), and paid
--   snapshot:     the InvoiceSnapshot as the last event carried it, without `debtor`
--                 (no personal data in the console; `debtor_code` is kept)
CREATE TABLE invoices (
    website_key      text        NOT NULL,
    invoice_key      text        NOT NULL,
    invoice_number   text        NOT NULL,
    type             text        NOT NULL,
    status_code      integer     NOT NULL,
    is_test          boolean     NOT NULL,
    is_paid          boolean     NOT NULL,
    scheme_key       text        NOT NULL,
    step_index       integer,
    next_step_index  integer,
    next_step_due_at timestamptz,
    debtor_code      text,
    currency         text        NOT NULL,
    amount_debit     numeric     NOT NULL,
    open_amount      numeric     NOT NULL,
    amount_paid      numeric     NOT NULL,
    admin_costs      numeric     NOT NULL,
    admin_costs_paid numeric     NOT NULL,
    invoice_date     date        NOT NULL,
    due_date         date        NOT NULL,
    last_sequence    integer     NOT NULL,
    last_event_at    timestamptz NOT NULL,
    snapshot         jsonb       NOT NULL,
    PRIMARY KEY (website_key, invoice_key)
);
-- The list pages by (due_date, invoice_key) descending, per merchant and per filter:
-- keyset paging reads one index range whatever the page.
CREATE INDEX invoices_page ON invoices (website_key, due_date DESC, invoice_key DESC);
CREATE INDEX invoices_status_page
    ON invoices (website_key, status_code, due_date DESC, invoice_key DESC);
CREATE INDEX invoices_scheme_page
    ON invoices (website_key, scheme_key, due_date DESC, invoice_key DESC);
CREATE INDEX invoices_step_page
    ON invoices (website_key, step_index, due_date DESC, invoice_key DESC);
CREATE INDEX invoices_debtor_page
    ON invoices (website_key, debtor_code, due_date DESC, invoice_key DESC);
-- Search by invoice number (exact or prefix).
CREATE INDEX invoices_number ON invoices (website_key, invoice_number text_pattern_ops);

-- Every invoice event, for the timeline.
CREATE TABLE invoice_events (
    website_key  text        NOT NULL,
    invoice_key  text        NOT NULL,
    sequence     integer     NOT NULL,
    message_id   uuid        NOT NULL,
    event        text        NOT NULL,
    category     text        NOT NULL,
    parameters   jsonb       NOT NULL,
    status_code  integer     NOT NULL,
    open_amount  numeric     NOT NULL,
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (website_key, invoice_key, sequence)
);

-- CommandAccepted / CommandRejected by command id (every merchant's, from the results
-- topic). `command_results` is the runtime's own table: hence the name.
CREATE TABLE results (
    website_key  text        NOT NULL,
    command_id   uuid        NOT NULL,
    command_type text,
    accepted     boolean     NOT NULL,
    errors       jsonb       NOT NULL,
    keys         jsonb       NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (website_key, command_id)
);

-- What the console itself sent, for whom and by whom (the payload: to show a scheme
-- version the console saved, and to start its next version from it).
CREATE TABLE sent_commands (
    website_key  text        NOT NULL,
    command_id   uuid        NOT NULL,
    command_type text        NOT NULL,
    invoice_key  text,
    scheme_key   text,
    subject      text,
    payload      jsonb       NOT NULL,
    username     text        NOT NULL,
    sent_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (website_key, command_id)
);
CREATE INDEX sent_commands_subject ON sent_commands (website_key, subject, sent_at DESC)
    WHERE subject IS NOT NULL;
CREATE INDEX sent_commands_scheme ON sent_commands (website_key, scheme_key, sent_at DESC)
    WHERE scheme_key IS NOT NULL;
CREATE INDEX sent_commands_invoice ON sent_commands (website_key, invoice_key, sent_at DESC);

-- Subscriptions and collection cases: the last snapshot their events carried (these
-- events have no sequence: a snapshot older than the stored one by business time is
-- kept out), and each event for the detail page.
CREATE TABLE subscriptions (
    website_key       text        NOT NULL,
    subscription_key  text        NOT NULL,
    status            text        NOT NULL,
    currency          text        NOT NULL,
    scheme_key        text        NOT NULL,
    next_billing_date date,
    last_event        text        NOT NULL,
    last_event_at     timestamptz NOT NULL,
    snapshot          jsonb       NOT NULL,
    PRIMARY KEY (website_key, subscription_key)
);
CREATE INDEX subscriptions_status ON subscriptions (website_key, status, subscription_key);
CREATE TABLE subscription_events (
    website_key      text        NOT NULL,
    message_id       uuid        NOT NULL,
    subscription_key text        NOT NULL,
    event            text        NOT NULL,
    invoice_number   text,
    period_index     integer,
    reason           text,
    status           text        NOT NULL,
    occurred_at      timestamptz NOT NULL,
    PRIMARY KEY (website_key, message_id)
);
CREATE INDEX subscription_events_of ON subscription_events (website_key, subscription_key, occurred_at);

CREATE TABLE cases (
    website_key      text        NOT NULL,
    case_key         text        NOT NULL,
    state            text        NOT NULL,
    invoice_number   text,
    environment      text        NOT NULL,
    agency_code      text,
    currency         text        NOT NULL,
    amount           numeric     NOT NULL,
    collected_amount numeric     NOT NULL,
    last_event       text        NOT NULL,
    last_event_at    timestamptz NOT NULL,
    snapshot         jsonb       NOT NULL,
    PRIMARY KEY (website_key, case_key)
);
CREATE INDEX cases_state ON cases (website_key, state, case_key);
CREATE TABLE case_events (
    website_key      text        NOT NULL,
    message_id       uuid        NOT NULL,
    case_key         text        NOT NULL,
    event            text        NOT NULL,
    reason           text,
    state            text        NOT NULL,
    collected_amount numeric     NOT NULL,
    occurred_at      timestamptz NOT NULL,
    PRIMARY KEY (website_key, message_id)
);
CREATE INDEX case_events_of ON case_events (website_key, case_key, occurred_at);

-- Console accounts, each of one merchant (website key). password_hash: argon2id (PHC).
CREATE TABLE users (
    username      text        PRIMARY KEY,
    website_key   text        NOT NULL,
    password_hash text        NOT NULL,
    culture       text        NOT NULL,
    time_zone     text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Sessions: the cookie carries a random token, the table only its SHA-256.
CREATE TABLE sessions (
    token_sha256 text        PRIMARY KEY,
    username     text        NOT NULL REFERENCES users ON DELETE CASCADE,
    csrf_token   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);

-- Failed sign-ins in the throttling window, by username and by client address
-- (`user:<name>`, `ip:<address>`); pruned as they age out.
CREATE TABLE sign_in_failures (
    key       text        NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sign_in_failures_key ON sign_in_failures (key, failed_at);
