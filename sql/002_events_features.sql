-- 002: ingested events, rejected events, the feature store.

-- Every accepted event, PII already tokenised. Idempotent by event_id.
CREATE TABLE sira_events (
    event_id      text PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 200),
    seq           bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- arrival order, for incremental jobs
    event_type    text NOT NULL DEFAULT 'payment' CHECK (event_type IN ('payment', 'usage')),
    occurred_at   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    source        text NOT NULL DEFAULT 'unknown',
    customer_id   text,
    account_id    text,
    card_token    text,          -- keyed HMAC of the card number, never the number
    merchant_id   text,
    terminal_id   text,
    device_id     text,
    ip_token      text,
    email_token   text,
    phone_token   text,
    amount        numeric(20, 4),
    currency      char(3) CHECK (currency ~ '^[A-Z]{3}$'),
    country       char(2) CHECK (country ~ '^[A-Z]{2}$'),
    channel       text,
    attributes    jsonb NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT sira_events_has_entity
        CHECK (num_nonnulls(customer_id, account_id, card_token, merchant_id, terminal_id) >= 1),
    CONSTRAINT sira_events_payment_amount
        CHECK (event_type <> 'payment' OR amount IS NOT NULL)
);
CREATE INDEX sira_events_occurred_at ON sira_events (occurred_at);
CREATE INDEX sira_events_customer ON sira_events (customer_id, occurred_at) WHERE customer_id IS NOT NULL;
CREATE INDEX sira_events_card ON sira_events (card_token, occurred_at) WHERE card_token IS NOT NULL;
CREATE INDEX sira_events_terminal ON sira_events (terminal_id, occurred_at) WHERE terminal_id IS NOT NULL;
CREATE INDEX sira_events_account ON sira_events (account_id, occurred_at) WHERE account_id IS NOT NULL;

-- Events that failed validation: the reason and the (redacted) payload, never dropped.
CREATE TABLE sira_rejected_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      text,
    source        text NOT NULL DEFAULT 'unknown',
    reason_code   text NOT NULL,
    reason        text NOT NULL,
    field         text,
    payload       jsonb NOT NULL DEFAULT '{}'::jsonb,
    rejected_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sira_rejected_events_rejected_at ON sira_rejected_events (rejected_at);
CREATE INDEX sira_rejected_events_event_id ON sira_rejected_events (event_id) WHERE event_id IS NOT NULL;

-- Raw feature vectors, one row per (entity, event), append-only, by month of event time.
CREATE TABLE sira_features (
    feature_set          text NOT NULL,
    feature_set_version  integer NOT NULL CHECK (feature_set_version >= 1),
    entity_type          text NOT NULL CHECK (entity_type ~ '^[a-z][a-z0-9_]*$'),
    entity_id            text NOT NULL,
    as_of                timestamptz NOT NULL,   -- event time the vector describes
    event_id             text NOT NULL,
    features             jsonb NOT NULL,
    computed_at          timestamptz NOT NULL DEFAULT now(),
    -- One index serves both idempotent writes and lookups by event; point-in-time
    -- reads go to sira_events, bulk reads scan partitions by as_of.
    PRIMARY KEY (event_id, entity_type, feature_set, feature_set_version, as_of)
) PARTITION BY RANGE (as_of);
CREATE TABLE sira_features_default PARTITION OF sira_features DEFAULT;
CREATE TRIGGER sira_features_append_only
    BEFORE UPDATE OR DELETE ON sira_features
    FOR EACH ROW EXECUTE FUNCTION sira_refuse_change();

-- The latest vector per entity, for online serving.
CREATE TABLE sira_feature_snapshots (
    entity_type          text NOT NULL CHECK (entity_type ~ '^[a-z][a-z0-9_]*$'),
    entity_id            text NOT NULL,
    feature_set          text NOT NULL,
    feature_set_version  integer NOT NULL CHECK (feature_set_version >= 1),
    features             jsonb NOT NULL,
    as_of                timestamptz NOT NULL,   -- event time of the newest event folded in
    last_event_id        text,
    event_count          bigint NOT NULL DEFAULT 0 CHECK (event_count >= 0),
    state                jsonb NOT NULL DEFAULT '{}'::jsonb,  -- incremental aggregation state
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_type, entity_id, feature_set, feature_set_version)
);
CREATE INDEX sira_feature_snapshots_updated_at ON sira_feature_snapshots (updated_at);
CREATE TRIGGER sira_feature_snapshots_touch
    BEFORE UPDATE ON sira_feature_snapshots
    FOR EACH ROW EXECUTE FUNCTION sira_touch_updated_at();

SELECT sira_ensure_month_partitions('sira_features', now() - interval '1 month', now() + interval '2 months');
