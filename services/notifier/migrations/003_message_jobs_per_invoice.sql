-- Message jobs go out one at a time per invoice, in the order they were asked for (the
-- claim skips a job while an earlier one of its invoice is pending or sending); this
-- index keeps that check cheap.
CREATE INDEX message_jobs_open_per_invoice
    ON message_jobs (website_key, invoice_number, id)
    WHERE status IN ('pending', 'sending');
