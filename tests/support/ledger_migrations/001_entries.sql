CREATE TABLE entries (
    website_key text    NOT NULL,
    entry_id    text    NOT NULL,
    amount      numeric NOT NULL,
    message_id  uuid    NOT NULL,
    PRIMARY KEY (website_key, entry_id)
);
