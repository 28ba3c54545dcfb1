-- Who acts behind a name: a job's key (job-<submission id>, minted by `sira jobs submit`) acts for whoever
-- minted it. The four-eyes rules compare people, not keys: a data scientist who also approves could otherwise
-- register a version through a job (its creator: the job's key) or request its promotion with the job's key,
-- then approve it himself.
CREATE FUNCTION sira_principal(who text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    behind text;
BEGIN
    FOR hop IN 1..5 LOOP  -- a job's key minted by another job's key: follow it a few hops
        EXIT WHEN who IS NULL OR who NOT LIKE 'job-%';
        SELECT created_by INTO behind FROM sira_api_keys WHERE name = who;
        EXIT WHEN behind IS NULL;
        who := behind;
    END LOOP;
    RETURN who;
END
$$;

-- The creator of a version, or the requester of its promotion, can never approve it, whatever the
-- application does (003 checked the creator's name only).
CREATE OR REPLACE FUNCTION sira_approvals_not_creator() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    creator text;
    requester text;
BEGIN
    SELECT sira_principal(v.created_by), sira_principal(r.requested_by) INTO creator, requester
      FROM sira_promotion_requests r JOIN sira_model_versions v ON v.id = r.version_id
     WHERE r.id = NEW.request_id;
    IF creator = sira_principal(NEW.approver) THEN
        RAISE EXCEPTION 'the creator of a version cannot approve it'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'sira_approvals_not_creator';
    END IF;
    IF NEW.decision = 'approve' AND requester = sira_principal(NEW.approver) THEN
        RAISE EXCEPTION 'the requester of a promotion cannot approve it'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'sira_approvals_not_requester';
    END IF;
    RETURN NEW;
END
$$;
