-- 016: versioned decision thresholds (#25). A version's review/block thresholds are a history of threshold
-- sets: revision 1 is what training chose on validation; a change is a new set, requested and approved as a
-- promotion is (sira_threshold_approvals), and becomes the version's one active set. Each prediction records
-- the set that decided it, so an explanation of an old decision shows the thresholds of its day.
-- sira_model_versions.thresholds/threshold_set keep the active set's values (maintained here, by trigger,
-- for every reader: serving, batch scoring, drift, performance); a change is announced on sira_registry
-- so replicas swap thresholds without reloading the artifact.
CREATE TABLE sira_threshold_sets (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version_id           bigint NOT NULL REFERENCES sira_model_versions (id),
    revision             integer NOT NULL CHECK (revision >= 1),
    review               double precision NOT NULL,
    block                double precision NOT NULL,
    status               text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'active', 'superseded', 'rejected', 'cancelled')),
    required_approvals   integer NOT NULL CHECK (required_approvals >= 0),
    requested_by         text NOT NULL,
    reason               text,
    evidence             jsonb NOT NULL DEFAULT '{}'::jsonb,  -- what the requester saw: the what-if at these values
    created_at           timestamptz NOT NULL DEFAULT now(),
    decided_at           timestamptz,
    activated_at         timestamptz,
    UNIQUE (version_id, revision),
    CONSTRAINT sira_threshold_sets_order CHECK (0 <= review AND review <= block AND block <= 1),
    CONSTRAINT sira_threshold_sets_decided CHECK ((status = 'pending') = (decided_at IS NULL))
);
CREATE UNIQUE INDEX sira_threshold_sets_one_active ON sira_threshold_sets (version_id) WHERE status = 'active';
CREATE UNIQUE INDEX sira_threshold_sets_one_pending ON sira_threshold_sets (version_id) WHERE status = 'pending';

CREATE TABLE sira_threshold_approvals (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    set_id               bigint NOT NULL REFERENCES sira_threshold_sets (id),
    approver             text NOT NULL,
    decision             text NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment              text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (set_id, approver)
);

ALTER TABLE sira_model_versions ADD COLUMN threshold_set bigint;
ALTER TABLE sira_predictions ADD COLUMN threshold_set bigint;

-- A registered version's first set: the thresholds its training chose (activated below).
CREATE FUNCTION sira_threshold_sets_first() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.thresholds ? 'review' AND NEW.thresholds ? 'block'
       AND (NEW.thresholds->>'review')::float8 BETWEEN 0 AND (NEW.thresholds->>'block')::float8
       AND (NEW.thresholds->>'block')::float8 <= 1 THEN
        INSERT INTO sira_threshold_sets (version_id, revision, review, block, status, required_approvals,
                                         requested_by, reason, decided_at, activated_at)
        VALUES (NEW.id, 1, (NEW.thresholds->>'review')::float8, (NEW.thresholds->>'block')::float8, 'active', 0,
                NEW.created_by, 'chosen on validation at training', NEW.created_at, NEW.created_at);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER sira_threshold_sets_first AFTER INSERT ON sira_model_versions
    FOR EACH ROW EXECUTE FUNCTION sira_threshold_sets_first();

-- The active set is the version's thresholds for every reader; replicas hear of it at commit.
CREATE FUNCTION sira_threshold_sets_activate() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v record;
BEGIN
    IF NEW.status = 'active' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'active') THEN
        UPDATE sira_model_versions
           SET thresholds = jsonb_build_object('review', NEW.review, 'block', NEW.block), threshold_set = NEW.id
         WHERE id = NEW.version_id
        RETURNING model_id, version, status INTO v;
        IF TG_OP = 'UPDATE' THEN  -- revision 1 comes with its version, which announces itself
            PERFORM pg_notify('sira_registry', json_build_object(
                'model_id', v.model_id, 'version', v.version, 'status', v.status, 'threshold_set', NEW.id)::text);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER sira_threshold_sets_activate AFTER INSERT OR UPDATE OF status ON sira_threshold_sets
    FOR EACH ROW EXECUTE FUNCTION sira_threshold_sets_activate();

-- Versions registered before this migration: their thresholds become revision 1.
INSERT INTO sira_threshold_sets (version_id, revision, review, block, status, required_approvals, requested_by,
                                 reason, decided_at, activated_at)
SELECT id, 1, (thresholds->>'review')::float8, (thresholds->>'block')::float8, 'active', 0, created_by,
       'chosen on validation at training', created_at, created_at
  FROM sira_model_versions
 WHERE thresholds ? 'review' AND thresholds ? 'block'
   AND (thresholds->>'review')::float8 BETWEEN 0 AND (thresholds->>'block')::float8
   AND (thresholds->>'block')::float8 <= 1;
