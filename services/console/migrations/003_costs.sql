-- The costs report (docs/console.md "Costs") reads each invoice's IncreasedAdminFee
-- events in sequence: an index of those events only, so the report does not scan the
-- merchant's whole timeline.
CREATE INDEX invoice_events_admin_fees ON invoice_events (website_key, invoice_key, sequence)
    WHERE event = 'IncreasedAdminFee';
