-- Outbox rows the broker refused for good (too large, invalid topic): kept here instead of
-- being retried for ever, so they never hold up the rows behind them. An operator can
-- inspect them and, once the cause is fixed, move them back into the outbox.
CREATE TABLE outbox_parked (
    id          bigint      PRIMARY KEY,
    topic       text        NOT NULL,
    key         text,
    value       bytea       NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '[]'::jsonb,
    created_at  timestamptz NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    reason      text        NOT NULL
);
