-- The counterfactual of a decision as first computed from a refold of the log that reproduced the features
-- it was scored with: an explanation report of one prediction stays the same when events arriving later
-- (a late payment before it, a rebuilt entity) change what a refold gives (sira.monitoring.explanation).
-- Holds amounts and hours of a payment, no identifier; an erasure deletes it with the prediction.
CREATE TABLE sira_counterfactuals (
    prediction_id   uuid PRIMARY KEY,
    result          jsonb NOT NULL,
    computed_at     timestamptz NOT NULL DEFAULT now()
);
