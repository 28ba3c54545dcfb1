-- 018: a pending threshold change of a version that can no longer change (archived or rejected) is cancelled
-- when the version leaves validated/staging/production, so no approver is asked to decide what cannot be
-- decided (sira.registry.thresholds.decide_change refuses it: 409 illegal_transition) and the approvals
-- queue does not keep it for good. Existing ones are cancelled here.
CREATE FUNCTION sira_threshold_sets_cancel() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status NOT IN ('validated', 'staging', 'production') THEN
        UPDATE sira_threshold_sets SET status = 'cancelled', decided_at = now()
         WHERE version_id = NEW.id AND status = 'pending';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER sira_threshold_sets_cancel AFTER UPDATE OF status ON sira_model_versions
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION sira_threshold_sets_cancel();

UPDATE sira_threshold_sets s SET status = 'cancelled', decided_at = now()
  FROM sira_model_versions v
 WHERE v.id = s.version_id AND s.status = 'pending' AND v.status NOT IN ('validated', 'staging', 'production');
