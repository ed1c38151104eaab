-- The transactional outbox: messages written with the state that caused them,
-- published by the relay in id order per shard (shard = hash of the Kafka key).
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    shard       smallint    NOT NULL,
    topic       text        NOT NULL,
    key         text,
    value       bytea       NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '[]'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_shard_id ON outbox (shard, id);

-- The inbox: one row per handled message, inserted in the same transaction as its effects.
CREATE TABLE inbox (
    consumer    text        NOT NULL,
    message_id  uuid        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX inbox_received_at ON inbox (received_at);

-- The result of every external command, republished when the command is redelivered.
CREATE TABLE command_results (
    command_id  uuid        PRIMARY KEY,
    topic       text        NOT NULL,
    key         text,
    value       bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
