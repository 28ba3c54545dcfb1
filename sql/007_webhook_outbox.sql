-- 007: registry events for webhooks, written in the same transaction as the change they
-- announce (a transactional outbox), delivered after the commit with retries.
CREATE TABLE sira_webhook_outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event            text NOT NULL,
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    delivered_to     text[] NOT NULL DEFAULT '{}',
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sira_webhook_outbox_due ON sira_webhook_outbox (next_attempt_at) WHERE status = 'pending';
CREATE TRIGGER sira_webhook_outbox_touch BEFORE UPDATE ON sira_webhook_outbox
    FOR EACH ROW EXECUTE FUNCTION sira_touch_updated_at();
