-- 028: a client's request id is claimed before it is scored, so two replicas never both answer it (one
-- scores, the other waits for that answer or is refused: 409 idempotency_conflict for another request,
-- request_in_progress when the answer does not come). The claim the scoring path takes in PostgreSQL when
-- Redis cannot answer for the whole window (it is down, or may have lost answers); one statement, in place
-- of the lookup of sira_predictions it replaces. UNLOGGED: a claim writes no WAL, so its commit waits for no
-- flush; a crash empties the table, and the answers given before it are still found in sira_predictions.
-- Claims older than the idempotency window are deleted by the replicas in the background.
CREATE UNLOGGED TABLE sira_request_claims (
    model_name text NOT NULL,
    request_id text NOT NULL,
    digest     text NOT NULL,          -- the request's digest (sira.serving.idempotency.request_digest)
    claimant   text NOT NULL,          -- the replica scoring it
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, request_id)
);
CREATE INDEX sira_request_claims_claimed_at ON sira_request_claims (claimed_at);
