-- SEPA recollection per scheme version (contracts.invoice.Recollection as JSON; NULL: none).
ALTER TABLE schemes ADD COLUMN recollection jsonb;
