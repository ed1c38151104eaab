-- Issue 11: secrets and personal data at rest.

-- webhooks.secret now holds `fernet:` + a Fernet token (CM_SECRET_KEY, see
-- services/notifier/secrets.py). Rows of older versions hold the plain secret: they keep
-- working and are encrypted by the notifier when it starts.
COMMENT ON COLUMN webhooks.secret IS
    'fernet:<token> (encrypted with CM_SECRET_KEY); plain text only in rows from before issue 11';

-- A push delivered or given up keeps its body (the invoice snapshot: debtor data) for
-- NOTIFIER_RETENTION_DAYS after settled_at; then body becomes NULL (pruned_at says
-- when). The row stays: its push_message_id keeps a redelivered InvoiceEvent from
-- making a second delivery, and its status and log keep the history.
ALTER TABLE webhook_deliveries
    ALTER COLUMN body DROP NOT NULL,
    ADD COLUMN settled_at timestamptz,
    ADD COLUMN pruned_at  timestamptz;

UPDATE webhook_deliveries d
   SET settled_at = COALESCE(
           d.delivered_at,
           (SELECT max(l.attempted_at) FROM webhook_delivery_log l WHERE l.delivery_id = d.id),
           d.created_at)
 WHERE d.status IN ('delivered', 'failed');

CREATE INDEX webhook_deliveries_prunable
    ON webhook_deliveries (settled_at)
    WHERE body IS NOT NULL AND status IN ('delivered', 'failed');

-- The same for a message job done or given up: its command (the SendMessage with the
-- invoice snapshot) becomes NULL NOTIFIER_RETENTION_DAYS after done_at; command_id,
-- the outcome, channel and message_log stay.
ALTER TABLE message_jobs
    ALTER COLUMN command DROP NOT NULL,
    ADD COLUMN pruned_at timestamptz;

CREATE INDEX message_jobs_prunable
    ON message_jobs (done_at)
    WHERE command IS NOT NULL AND status IN ('done', 'failed');
