-- Issue 11: merchants read only their own records, on their own topics
-- `cm.push.{website_key}.{feed}` (services/notifier/feeds.py). One row per merchant that
-- ever sent EnableKafkaPush: its topics exist. `enabled` says whether the notifier
-- copies the merchant's records there now (DisableKafkaPush stops it; the topics stay).
-- `partitions` is what the merchant's topics had when the row was last written.
CREATE TABLE kafka_push_merchants (
    website_key text        PRIMARY KEY,
    enabled     boolean     NOT NULL,
    partitions  integer     NOT NULL,
    enabled_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
