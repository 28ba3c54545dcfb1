-- 008: serving replicas follow the registry.
-- A change of a model's production or staging version is announced on the
-- sira_registry channel (delivered at commit, whatever code made the change);
-- replicas reload and swap. Polling covers a replica that missed it.
CREATE FUNCTION sira_registry_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (TG_OP = 'INSERT' AND NEW.status IN ('production', 'staging'))
       OR (TG_OP = 'UPDATE' AND OLD.status IS DISTINCT FROM NEW.status
           AND (OLD.status IN ('production', 'staging') OR NEW.status IN ('production', 'staging'))) THEN
        PERFORM pg_notify('sira_registry', json_build_object(
            'model_id', NEW.model_id, 'version', NEW.version, 'status', NEW.status)::text);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER sira_registry_notify AFTER INSERT OR UPDATE OF status ON sira_model_versions
    FOR EACH ROW EXECUTE FUNCTION sira_registry_notify();

-- Idempotent score calls look up earlier answers by (model, request id) within a day.
CREATE INDEX sira_predictions_model_request ON sira_predictions (model_name, request_id, scored_at)
    WHERE request_id IS NOT NULL;
