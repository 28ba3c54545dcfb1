-- 014: feature engine v2 (#21). Feature sets computed by sira.features.tiles keep one packed binary
-- state per entity (sira.features.packing: a few hundred bytes to a few KB whatever the entity's event
-- rate) instead of its raw events as JSONB, and a daily checkpoint of each state that changed that day,
-- so a cold entity or a training window starts from a checkpoint plus the events since.
CREATE TABLE sira_entity_states (
    feature_set          text NOT NULL,
    feature_set_version  integer NOT NULL CHECK (feature_set_version >= 1),
    entity_type          text NOT NULL CHECK (entity_type ~ '^[a-z][a-z0-9_]*$'),
    entity_id            text NOT NULL,
    state                bytea NOT NULL,
    newest_at            timestamptz NOT NULL,      -- the newest event folded in
    revision             bigint NOT NULL DEFAULT 1 CHECK (revision >= 1),  -- +1 on every write
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (feature_set, feature_set_version, entity_type, entity_id)
);
CREATE TRIGGER sira_entity_states_touch
    BEFORE UPDATE ON sira_entity_states
    FOR EACH ROW EXECUTE FUNCTION sira_touch_updated_at();

-- A checkpoint as of day D holds every event before D (UTC midnight) and every label known before D.
CREATE TABLE sira_state_checkpoints (
    feature_set          text NOT NULL,
    feature_set_version  integer NOT NULL CHECK (feature_set_version >= 1),
    entity_type          text NOT NULL CHECK (entity_type ~ '^[a-z][a-z0-9_]*$'),
    entity_id            text NOT NULL,
    as_of                timestamptz NOT NULL CHECK (as_of = date_trunc('day', as_of AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'),
    state                bytea NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (feature_set, feature_set_version, entity_type, entity_id, as_of)
) PARTITION BY RANGE (as_of);
CREATE TABLE sira_state_checkpoints_default PARTITION OF sira_state_checkpoints DEFAULT;
