-- Webhook delivery attempts, from the notifier's WebhookDeliveryAttempted events
-- (cm.notifier.events): one row per attempt of a delivery (a push to the merchant's
-- endpoint). No URL, secret, body or personal data travels in them.
--   outcome:        delivered, failed (a retry is due at next_retry_at) or given_up
--   error:          http_{status} or an error code (timeout, ConnectError, ...)
--   attempted_at:   when the notifier recorded the attempt (wall clock)
--   next_retry_at:  when the next attempt is due (the scheduler's business time)
CREATE TABLE webhook_attempts (
    website_key     text        NOT NULL,
    delivery_id     text        NOT NULL,
    attempt         integer     NOT NULL,
    message_id      uuid        NOT NULL,
    invoice_number  text        NOT NULL,
    push_message_id uuid        NOT NULL,
    outcome         text        NOT NULL,
    status_code     integer,
    error           text,
    duration_ms     bigint,
    attempted_at    timestamptz NOT NULL,
    next_retry_at   timestamptz,
    PRIMARY KEY (website_key, delivery_id, attempt)
);
-- The invoice page: its attempts, newest first.
CREATE INDEX webhook_attempts_invoice
    ON webhook_attempts (website_key, invoice_number, attempted_at DESC);
-- The delivery log: the merchant's recent attempts, newest first.
CREATE INDEX webhook_attempts_recent ON webhook_attempts (website_key, attempted_at DESC);
