-- 003: models, training runs, versions, promotion requests and approvals.

CREATE TABLE sira_models (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                 text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    display_name         text,
    description          text,
    model_type           text NOT NULL CHECK (model_type IN ('fraud_detection', 'churn', 'anomaly')),
    owner                text,
    entity_type          text NOT NULL DEFAULT 'customer' CHECK (entity_type ~ '^[a-z][a-z0-9_]*$'),
    label_name           text NOT NULL DEFAULT 'fraud',
    feature_set          text,
    feature_set_version  integer CHECK (feature_set_version >= 1),
    label_maturity_days  integer NOT NULL DEFAULT 30 CHECK (label_maturity_days BETWEEN 0 AND 3650),
    decision_targets     jsonb NOT NULL DEFAULT '{}'::jsonb,
    required_approvals   integer NOT NULL DEFAULT 2 CHECK (required_approvals BETWEEN 0 AND 20),
    promotion_policy     jsonb NOT NULL DEFAULT '{}'::jsonb,
    settings             jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_by           text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER sira_models_touch BEFORE UPDATE ON sira_models
    FOR EACH ROW EXECUTE FUNCTION sira_touch_updated_at();

CREATE TABLE sira_training_runs (
    run_id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    model_id             bigint NOT NULL REFERENCES sira_models (id),
    kind                 text NOT NULL DEFAULT 'train' CHECK (kind IN ('train', 'tune', 'retrain')),
    status               text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'succeeded', 'failed')),
    params               jsonb NOT NULL DEFAULT '{}'::jsonb,
    metrics              jsonb NOT NULL DEFAULT '{}'::jsonb,
    dataset_fingerprint  jsonb,
    timings              jsonb NOT NULL DEFAULT '{}'::jsonb,
    error                text,
    code_version         text,
    ray_job_id           text,
    started_by           text NOT NULL,
    started_at           timestamptz NOT NULL DEFAULT now(),
    finished_at          timestamptz,
    CONSTRAINT sira_training_runs_finished CHECK ((status = 'running') = (finished_at IS NULL)),
    CONSTRAINT sira_training_runs_failure_reason CHECK (status <> 'failed' OR error IS NOT NULL)
);
CREATE INDEX sira_training_runs_model ON sira_training_runs (model_id, started_at DESC);

CREATE TABLE sira_model_versions (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id             bigint NOT NULL REFERENCES sira_models (id),
    version              integer NOT NULL CHECK (version >= 1),
    status               text NOT NULL DEFAULT 'candidate'
                         CHECK (status IN ('candidate', 'validated', 'staging', 'production', 'archived', 'rejected')),
    run_id               uuid REFERENCES sira_training_runs (run_id),
    artifact_uri         text NOT NULL,
    artifact_sha256      text NOT NULL CHECK (artifact_sha256 ~ '^[0-9a-f]{64}$'),
    feature_set_version  integer,
    feature_schema       jsonb NOT NULL DEFAULT '[]'::jsonb,
    params               jsonb NOT NULL DEFAULT '{}'::jsonb,
    metrics              jsonb NOT NULL DEFAULT '{}'::jsonb,
    thresholds           jsonb NOT NULL DEFAULT '{}'::jsonb,
    description          text,
    created_by           text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    status_changed_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_id, version)
);
-- The invariants of governance live here, not in application code.
CREATE UNIQUE INDEX sira_model_versions_one_production ON sira_model_versions (model_id) WHERE status = 'production';
CREATE UNIQUE INDEX sira_model_versions_one_staging ON sira_model_versions (model_id) WHERE status = 'staging';
CREATE INDEX sira_model_versions_status ON sira_model_versions (model_id, status);
CREATE INDEX sira_model_versions_created_at ON sira_model_versions (created_at);
CREATE TRIGGER sira_model_versions_touch BEFORE UPDATE ON sira_model_versions
    FOR EACH ROW EXECUTE FUNCTION sira_touch_updated_at();

CREATE TABLE sira_promotion_requests (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id             bigint NOT NULL REFERENCES sira_models (id),
    version_id           bigint NOT NULL REFERENCES sira_model_versions (id),
    artifact_sha256      text NOT NULL CHECK (artifact_sha256 ~ '^[0-9a-f]{64}$'),
    target_status        text NOT NULL DEFAULT 'production' CHECK (target_status IN ('staging', 'production')),
    status               text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'approved', 'rejected', 'cancelled', 'superseded')),
    required_approvals   integer NOT NULL CHECK (required_approvals >= 0),
    requested_by         text NOT NULL,
    reason               text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    decided_at           timestamptz,
    CONSTRAINT sira_promotion_requests_decided CHECK ((status = 'pending') = (decided_at IS NULL))
);
CREATE UNIQUE INDEX sira_promotion_requests_one_pending ON sira_promotion_requests (version_id) WHERE status = 'pending';
CREATE INDEX sira_promotion_requests_model ON sira_promotion_requests (model_id, created_at DESC);
CREATE TRIGGER sira_promotion_requests_touch BEFORE UPDATE ON sira_promotion_requests
    FOR EACH ROW EXECUTE FUNCTION sira_touch_updated_at();

CREATE TABLE sira_approvals (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id           bigint NOT NULL REFERENCES sira_promotion_requests (id),
    approver             text NOT NULL,
    decision             text NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment              text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (request_id, approver)
);

-- The creator of a version can never approve it, whatever the application does.
CREATE FUNCTION sira_approvals_not_creator() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    creator text;
BEGIN
    SELECT v.created_by INTO creator
      FROM sira_promotion_requests r JOIN sira_model_versions v ON v.id = r.version_id
     WHERE r.id = NEW.request_id;
    IF creator = NEW.approver THEN
        RAISE EXCEPTION 'the creator of a version cannot approve it'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'sira_approvals_not_creator';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER sira_approvals_not_creator BEFORE INSERT OR UPDATE ON sira_approvals
    FOR EACH ROW EXECUTE FUNCTION sira_approvals_not_creator();
