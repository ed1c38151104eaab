-- Issue 8: each send is its own unit. A worker claims items in one short transaction
-- (status `sending`, a lease and a claim token), commits, sends without holding row
-- locks, and records each item's outcome in its own transaction, only while its claim
-- token still matches. An item whose lease ran out (the worker died mid-send) is
-- claimable again: at-least-once, receivers deduplicate.

-- Webhook deliveries gain status `sending` (claimed; lease_until is when the claim
-- lapses). A `sending` push blocks the later pushes of its invoice like a pending one.
ALTER TABLE webhook_deliveries
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN claim_token uuid,
    ADD COLUMN last_error  text;

DROP INDEX webhook_deliveries_open;
CREATE INDEX webhook_deliveries_open
    ON webhook_deliveries (website_key, invoice_number, sequence)
    WHERE status IN ('pending', 'sending', 'retrying');

-- The claim walks the merchants with claimable rows, then each merchant's oldest.
DROP INDEX webhook_deliveries_pending;
CREATE INDEX webhook_deliveries_claimable
    ON webhook_deliveries (website_key, id)
    WHERE status IN ('pending', 'sending');

-- Message jobs gain status `sending`; while sending, available_at is the end of the
-- lease, so one condition (`available_at <= now()`) finds due and lapsed jobs alike.
-- `failed`: given up after an error that no channel could be tried for.
ALTER TABLE message_jobs
    ADD COLUMN claim_token uuid,
    ADD COLUMN last_error  text;

DROP INDEX message_jobs_pending;
CREATE INDEX message_jobs_claimable
    ON message_jobs (available_at, id)
    WHERE status IN ('pending', 'sending');
