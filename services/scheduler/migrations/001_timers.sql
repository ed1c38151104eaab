-- Durable timers: "at due_at, publish message to topic with Kafka key key".
-- A timer is named by its merchant and the caller's id, so merchants never share ids.
CREATE TABLE timers (
    website_key text        NOT NULL,
    timer_id    text        NOT NULL,
    due_at      timestamptz NOT NULL,
    topic       text        NOT NULL,  -- base name; the scheduler adds CM_TOPIC_PREFIX
    key         text        NOT NULL,
    message     jsonb       NOT NULL,  -- the envelope as given; occurred_at is set on firing
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (website_key, timer_id)
);
CREATE INDEX timers_due_at ON timers (due_at);

-- The manual clock (CM_CLOCK=manual): one row, shared by the replicas, only moves forward.
CREATE TABLE clock (
    id  boolean     PRIMARY KEY DEFAULT true CHECK (id),
    now timestamptz NOT NULL
);
INSERT INTO clock (id, now) VALUES (true, '1970-01-01T00:00:00+00:00');
