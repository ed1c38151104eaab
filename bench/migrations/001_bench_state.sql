-- The bench service's state: one row per handled BenchRecord command.
CREATE TABLE bench_state (
    account     text    NOT NULL,
    seq         bigint  NOT NULL,
    amount      numeric NOT NULL,
    message_id  uuid    NOT NULL,
    PRIMARY KEY (account, seq)
);
