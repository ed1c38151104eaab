-- Debt collector configurations, one row per merchant and key (contracts.collection
-- UpsertDebtCollectorConfiguration). At most one default per merchant.
CREATE TABLE configurations (
    website_key                text        NOT NULL,
    configuration_key          text        NOT NULL,
    agency_code                text        NOT NULL,
    conditions                 jsonb       NOT NULL,
    priority                   integer     NOT NULL,
    is_default                 boolean     NOT NULL,
    open_cases_for_chargebacks boolean     NOT NULL,
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (website_key, configuration_key)
);
CREATE UNIQUE INDEX configurations_one_default ON configurations (website_key) WHERE is_default;

-- Cases. state: preparing | reviewing | processing | failed | closed.
--   request_hash: sha256 of the CreateCase payload (a repeat is answered again; other
--                 content under the key is refused); null for automatic cases
--   data:         what no rule reads (billing address, line items, due date, external
--                 id, contract date, language, reference), as the case snapshot shows it
--   transferred:  the agency holds the case (a TransferCase went out, no answer ended it)
CREATE TABLE cases (
    website_key       text        NOT NULL,
    case_key          text        NOT NULL,
    state             text        NOT NULL,
    invoice_number    text,
    environment       text        NOT NULL,
    request_hash      text,
    currency          text        NOT NULL,
    amount            numeric     NOT NULL,
    collected_amount  numeric     NOT NULL DEFAULT 0,
    configuration_key text,
    agency_code       text,
    agency_reference  text,
    transferred       boolean     NOT NULL DEFAULT false,
    data              jsonb       NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (website_key, case_key)
);
-- The open case of an invoice (what a settled invoice recalls).
CREATE INDEX cases_invoice ON cases (website_key, invoice_number) WHERE invoice_number IS NOT NULL;

-- Documents, stored with their case (contents in Postgres, bounded per case).
CREATE TABLE documents (
    website_key  text        NOT NULL,
    case_key     text        NOT NULL,
    position     integer     NOT NULL,
    name         text        NOT NULL,
    content_type text        NOT NULL,
    content      bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (website_key, case_key, position),
    FOREIGN KEY (website_key, case_key) REFERENCES cases ON DELETE CASCADE
);

-- The agency's collection references already booked: a repeat is booked once.
CREATE TABLE collection_references (
    website_key text NOT NULL,
    case_key    text NOT NULL,
    reference   text NOT NULL,
    PRIMARY KEY (website_key, case_key, reference),
    FOREIGN KEY (website_key, case_key) REFERENCES cases ON DELETE CASCADE
);
