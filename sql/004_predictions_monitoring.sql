-- 004: the prediction audit trail, labels, drift and live performance.

-- Every answered prediction (production and shadow), by month of scoring time.
CREATE TABLE sira_predictions (
    prediction_id   uuid NOT NULL,
    scored_at       timestamptz NOT NULL DEFAULT now(),
    request_id      text,
    model_id        bigint NOT NULL REFERENCES sira_models (id),
    model_name      text NOT NULL,
    version         integer NOT NULL CHECK (version >= 1),
    role            text NOT NULL DEFAULT 'production' CHECK (role IN ('production', 'shadow')),
    event_id        text,
    features        jsonb NOT NULL DEFAULT '{}'::jsonb,
    score           double precision NOT NULL CHECK (score >= 0 AND score <= 1),
    decision        text NOT NULL CHECK (decision IN ('approve', 'review', 'block')),
    reasons         jsonb NOT NULL DEFAULT '[]'::jsonb,
    flags           jsonb NOT NULL DEFAULT '{}'::jsonb,
    degraded        boolean NOT NULL DEFAULT false,
    latency_ms      real CHECK (latency_ms >= 0),
    PRIMARY KEY (prediction_id, scored_at)
) PARTITION BY RANGE (scored_at);
CREATE TABLE sira_predictions_default PARTITION OF sira_predictions DEFAULT;
CREATE INDEX sira_predictions_model_time ON sira_predictions (model_name, version, scored_at);
CREATE INDEX sira_predictions_request ON sira_predictions (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX sira_predictions_event ON sira_predictions (event_id) WHERE event_id IS NOT NULL;
SELECT sira_ensure_month_partitions('sira_predictions', now() - interval '1 month', now() + interval '2 months');

-- Labels: chargebacks, manual reviews, churn outcomes. known_at is when the label became known.
CREATE TABLE sira_feedback (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text NOT NULL,
    prediction_id   uuid,
    label_name      text NOT NULL DEFAULT 'fraud',
    label           boolean NOT NULL,
    source          text NOT NULL DEFAULT 'unknown',
    known_at        timestamptz NOT NULL,
    occurred_at     timestamptz,
    attributes      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, label_name, source)
);
CREATE INDEX sira_feedback_known_at ON sira_feedback (label_name, known_at);

CREATE TABLE sira_data_drift (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id          bigint NOT NULL REFERENCES sira_models (id),
    version           integer NOT NULL CHECK (version >= 1),
    feature           text NOT NULL,           -- a feature name, '__score__' or '__dataset__'
    window_start      timestamptz NOT NULL,
    window_end        timestamptz NOT NULL,
    n_reference       bigint,
    n_current         bigint,
    psi               double precision,
    ks_statistic      double precision,
    js_divergence     double precision,
    chi2_statistic    double precision,
    p_value           double precision,
    p_value_adjusted  double precision,
    severity          text NOT NULL CHECK (severity IN ('ok', 'warn', 'alert')),
    details           jsonb NOT NULL DEFAULT '{}'::jsonb,
    job_id            text,
    computed_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (window_end > window_start)
);
CREATE INDEX sira_data_drift_model ON sira_data_drift (model_id, computed_at DESC);
CREATE INDEX sira_data_drift_feature ON sira_data_drift (model_id, version, feature, window_end);

CREATE TABLE sira_model_performance (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id           bigint NOT NULL REFERENCES sira_models (id),
    version            integer NOT NULL CHECK (version >= 1),
    role               text NOT NULL DEFAULT 'production' CHECK (role IN ('production', 'shadow')),
    window_start       timestamptz NOT NULL,
    window_end         timestamptz NOT NULL,
    segment            text NOT NULL DEFAULT 'all',
    segment_value      text NOT NULL DEFAULT 'all',
    n                  bigint NOT NULL CHECK (n >= 0),
    n_positive         bigint NOT NULL CHECK (n_positive >= 0 AND n_positive <= n),
    average_precision  double precision,
    roc_auc            double precision,
    metrics            jsonb NOT NULL DEFAULT '{}'::jsonb,
    flagged            boolean NOT NULL DEFAULT false,
    job_id             text,
    computed_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (window_end > window_start)
);
CREATE INDEX sira_model_performance_model ON sira_model_performance (model_id, version, window_end DESC);
