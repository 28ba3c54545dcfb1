-- 005: API keys and the audit log.

CREATE TABLE sira_api_keys (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$'),
    key_prefix    text NOT NULL UNIQUE,    -- the public part of a key, for lookup
    key_hash      text NOT NULL,           -- keyed hash of the whole key; the key itself is never stored
    roles         text[] NOT NULL CHECK (
                      cardinality(roles) >= 1
                      AND roles <@ ARRAY['service', 'viewer', 'analyst', 'data_scientist',
                                         'approver', 'operator', 'admin']::text[]),
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    revoked_by    text,
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);

-- Who did what to which thing, from where, with what outcome. Append-only.
CREATE TABLE sira_audit_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    actor           text NOT NULL,
    actor_kind      text NOT NULL CHECK (actor_kind IN ('api_key', 'jwt', 'policy', 'system', 'bootstrap')),
    action          text NOT NULL,
    target_type     text,
    target_id       text,
    source_address  text,
    outcome         text NOT NULL DEFAULT 'success' CHECK (outcome IN ('success', 'denied', 'failed')),
    details         jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX sira_audit_log_occurred_at ON sira_audit_log (occurred_at);
CREATE INDEX sira_audit_log_target ON sira_audit_log (target_type, target_id, occurred_at);
CREATE INDEX sira_audit_log_actor ON sira_audit_log (actor, occurred_at);
CREATE TRIGGER sira_audit_log_append_only
    BEFORE UPDATE OR DELETE ON sira_audit_log
    FOR EACH ROW EXECUTE FUNCTION sira_refuse_change();
