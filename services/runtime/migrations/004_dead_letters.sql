-- Dead letters as the service wrote them to cm.dlq, with what a replay needs: the exact
-- key, the headers and the body (at most DLQ_MAX_VALUE_BYTES of it: `value_truncated`
-- says when it was cut, and such a letter is never replayed). `cm dlq list|replay` reads
-- and marks them (docs/operations.md). `id` is the DeadLetter envelope's message_id.
CREATE TABLE dead_letters (
    id                  uuid        PRIMARY KEY,
    consumer            text        NOT NULL,
    topic               text        NOT NULL,
    kafka_partition     integer     NOT NULL,
    kafka_offset        bigint      NOT NULL,
    key                 bytea,
    value               bytea       NOT NULL,
    value_length        integer     NOT NULL,
    value_truncated     boolean     NOT NULL,
    headers             jsonb       NOT NULL DEFAULT '[]'::jsonb,
    website_key         text,
    message_id          uuid,
    message_type        text,
    codes               text[]      NOT NULL,
    error               text        NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- Set by `cm dlq replay` before it publishes: only then may the replay pass the inbox.
    replay_requested_at timestamptz,
    -- Replays the broker acknowledged, and the last one's time.
    replays             integer     NOT NULL DEFAULT 0,
    replayed_at         timestamptz
);
CREATE INDEX dead_letters_created_at ON dead_letters (created_at);

-- The dead letter whose writing put this inbox row there (a handler that failed for good):
-- a replay of exactly that dead letter may take the message past the inbox once.
ALTER TABLE inbox ADD COLUMN dead_letter uuid;
