-- Schemes, versioned: an invoice keeps the version it was created with.
-- Built-in schemes have website_key '' and exist for every merchant.
CREATE TABLE schemes (
    website_key text        NOT NULL,
    scheme_key  text        NOT NULL,
    version     integer     NOT NULL,
    name        text        NOT NULL,
    steps       jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (website_key, scheme_key, version)
);

INSERT INTO schemes (website_key, scheme_key, version, name, steps) VALUES
('', 'DefaultNone', 1, 'No steps', '[]'),
('', 'DefaultCM1', 1, 'Credit management default', '[
  {"index": 1, "action": "PaymentInvitation", "days": 0, "channels": ["email"], "template_key": "payment_invitation"},
  {"index": 2, "action": "Reminder", "days": 7, "channels": ["email", "letter"], "template_key": "reminder_1"},
  {"index": 3, "action": "Reminder", "days": 21, "channels": ["email", "letter"], "template_key": "reminder_2", "states_costs": true},
  {"index": 4, "action": "AdminCostIncrease", "days": 38, "admin_cost": "statutory"},
  {"index": 5, "action": "TransferToCollectionAgency", "days": 52}
]');

-- Debtors per merchant; invoices name their debtor, snapshots read it from here.
CREATE TABLE debtors (
    website_key  text        NOT NULL,
    debtor_code  text        NOT NULL,
    debtor_guid  uuid        NOT NULL,
    data         jsonb       NOT NULL,
    unreachable  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (website_key, debtor_code)
);

-- Invoices: the aggregate as JSON, with the columns queries need.
CREATE TABLE invoices (
    website_key    text        NOT NULL,
    invoice_number text        NOT NULL,
    invoice_key    text        NOT NULL UNIQUE,
    status         smallint    NOT NULL,
    debtor_code    text,
    plan_dossier   text,
    state          jsonb       NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (website_key, invoice_number)
);
CREATE INDEX invoices_debtor ON invoices (website_key, debtor_code);

-- Every event emitted, in sequence per invoice (the invoice's history).
CREATE TABLE invoice_events (
    website_key    text        NOT NULL,
    invoice_number text        NOT NULL,
    sequence       integer     NOT NULL,
    message_id     uuid        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    event          text        NOT NULL,
    parameters     jsonb       NOT NULL,
    PRIMARY KEY (website_key, invoice_number, sequence)
);

-- Transactions that arrived before their invoice; applied when it is created.
CREATE TABLE early_transactions (
    website_key    text        NOT NULL,
    invoice_number text        NOT NULL,
    message_id     uuid        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    transaction    jsonb       NOT NULL,
    PRIMARY KEY (website_key, invoice_number, message_id)
);

CREATE TABLE payment_plans (
    website_key    text    NOT NULL,
    dossier_number text    NOT NULL,
    state          jsonb   NOT NULL,
    PRIMARY KEY (website_key, dossier_number)
);
