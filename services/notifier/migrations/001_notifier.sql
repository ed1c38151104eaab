-- Merchant templates: one text per website, template key, culture and channel.
-- Built-in templates live in services/notifier/templates.py and are used when a
-- merchant has none.
CREATE TABLE templates (
    website_key  text        NOT NULL,
    template_key text        NOT NULL,
    culture      text        NOT NULL,
    channel      text        NOT NULL,
    subject      text,
    body         text        NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (website_key, template_key, culture, channel)
);

-- One webhook endpoint per merchant (RegisterWebhook replaces it).
CREATE TABLE webhooks (
    website_key text        PRIMARY KEY,
    url         text        NOT NULL,
    secret      text        NOT NULL,
    enabled     boolean     NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per push to deliver to a merchant's webhook.
--   pending:   may be sent (when no earlier push of the invoice is still open)
--   retrying:  failed; a scheduler timer will make it pending again
--   delivered: the endpoint answered 2xx
--   failed:    given up after the last retry
-- business_time is the time of the message that made the row pending (the
-- InvoiceEvent, then each RetryWebhookDelivery): retries are timed from it.
CREATE TABLE webhook_deliveries (
    id              bigserial   PRIMARY KEY,
    website_key     text        NOT NULL,
    invoice_number  text        NOT NULL,
    sequence        integer     NOT NULL,
    push_message_id uuid        NOT NULL UNIQUE,
    correlation_id  uuid        NOT NULL,
    body            bytea       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    business_time   timestamptz NOT NULL,
    last_status     integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
-- The open pushes of an invoice, in sequence order (the claim's "is an earlier one open?").
CREATE INDEX webhook_deliveries_open
    ON webhook_deliveries (website_key, invoice_number, sequence)
    WHERE status IN ('pending', 'retrying');
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (id) WHERE status = 'pending';

-- Every attempt, and the give-up (outcome WebhookDeliveryFailed).
CREATE TABLE webhook_delivery_log (
    id           bigserial   PRIMARY KEY,
    delivery_id  bigint      NOT NULL REFERENCES webhook_deliveries (id),
    attempt      integer     NOT NULL,
    outcome      text        NOT NULL,
    status_code  integer,
    error        text,
    latency_ms   double precision,
    attempted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_delivery_log_delivery ON webhook_delivery_log (delivery_id, id);

-- A SendMessage accepted by the consumer, sent by a background task.
--   pending: to send (not before available_at: transient failures back off)
--   done:    sent or skipped; its RecordMessageOutcome is in the outbox
CREATE TABLE message_jobs (
    id             bigserial   PRIMARY KEY,
    command_id     uuid        NOT NULL UNIQUE,
    website_key    text        NOT NULL,
    invoice_number text        NOT NULL,
    step_index     integer     NOT NULL,
    command        jsonb       NOT NULL,
    status         text        NOT NULL DEFAULT 'pending',
    attempts       integer     NOT NULL DEFAULT 0,
    available_at   timestamptz NOT NULL DEFAULT now(),
    outcome        text,
    channel        text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    done_at        timestamptz
);
CREATE INDEX message_jobs_pending ON message_jobs (available_at, id) WHERE status = 'pending';

-- What happened on each channel of a message (no personal data: codes only).
CREATE TABLE message_log (
    id         bigserial   PRIMARY KEY,
    job_id     bigint      NOT NULL REFERENCES message_jobs (id),
    channel    text        NOT NULL,
    result     text        NOT NULL,
    detail     text,
    logged_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_log_job ON message_log (job_id, id);
