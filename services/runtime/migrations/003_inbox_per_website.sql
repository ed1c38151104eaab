-- Deduplication and stored answers per tenant: a message id is unique only within the
-- website that sent it. Merchant B reusing merchant A's message_id is B's own command:
-- handled, and answered with B's answer, never A's. Rows from before this migration
-- get website_key '' (they stop deduplicating; they expire with the retention window).
ALTER TABLE inbox ADD COLUMN website_key text NOT NULL DEFAULT '';
ALTER TABLE inbox DROP CONSTRAINT inbox_pkey;
ALTER TABLE inbox ADD PRIMARY KEY (consumer, website_key, message_id);
ALTER TABLE inbox ALTER COLUMN website_key DROP DEFAULT;

ALTER TABLE command_results ADD COLUMN website_key text NOT NULL DEFAULT '';
ALTER TABLE command_results DROP CONSTRAINT command_results_pkey;
ALTER TABLE command_results ADD PRIMARY KEY (website_key, command_id);
ALTER TABLE command_results ALTER COLUMN website_key DROP DEFAULT;
