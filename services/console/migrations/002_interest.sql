-- Statutory interest on the invoice page (docs/console.md "Statutory interest"): each
-- event keeps the money totals its snapshot carried and the day it happened in the
-- merchant's time zone, so the console rebuilds the invoice's money history from the
-- events alone. Rows from before this migration have nulls: their invoices show the
-- snapshot's figure without a breakdown.
--   money_day:  the event's day in the snapshot's time_zone (UTC when it names none)
--   principal:  amount_debit - amount_credit_notes
--   costs:      amount_admin_costs - interest_booked
--   paid:       amount_paid
--   refunded:   amount_credit (refunds, chargebacks)
ALTER TABLE invoice_events
    ADD COLUMN money_day date,
    ADD COLUMN principal numeric,
    ADD COLUMN costs     numeric,
    ADD COLUMN paid      numeric,
    ADD COLUMN refunded  numeric;
