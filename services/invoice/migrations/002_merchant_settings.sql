-- A merchant's settings (UpdateMerchantSettings): its time zone, default culture and
-- sender name, as JSON (services/invoice/domain/merchant.py MerchantSettings). A
-- merchant without a row has the defaults.
CREATE TABLE merchant_settings (
    website_key text        PRIMARY KEY,
    settings    jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
