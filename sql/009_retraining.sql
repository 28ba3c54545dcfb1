-- 009: retraining runs. One row per distinct set of inputs (model, champion, data cut-off, labels
-- known, search settings): a re-run with the same inputs finds it, and either reports what it
-- decided (no duplicate version) or resumes after the last step it completed.
CREATE TABLE sira_retrain_runs (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id            bigint NOT NULL REFERENCES sira_models (id),
    input_key           text NOT NULL CHECK (input_key ~ '^[0-9a-f]{64}$'),
    inputs              jsonb NOT NULL,
    status              text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'succeeded', 'failed')),
    steps               jsonb NOT NULL DEFAULT '{}'::jsonb,   -- completed step -> what it produced
    champion_version    integer,
    challenger_version  integer,
    decision            text CHECK (decision IN ('stage', 'reject', 'hold')),
    report              jsonb,
    error               text,
    attempts            integer NOT NULL DEFAULT 1,
    started_by          text NOT NULL,
    started_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    UNIQUE (model_id, input_key)
);
CREATE TRIGGER sira_retrain_runs_touch BEFORE UPDATE ON sira_retrain_runs
    FOR EACH ROW EXECUTE FUNCTION sira_touch_updated_at();
CREATE INDEX sira_retrain_runs_model ON sira_retrain_runs (model_id, started_at DESC);
