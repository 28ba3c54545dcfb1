-- People, not keys: a JWT's identity is named jwt:<sub>, an API key by its name, so a person holding a key
-- named ds2 who requested a promotion could approve it with a JWT whose sub is ds2 (the names differed). The
-- four-eyes rules compare the person: a JWT's name without its jwt: prefix (its sub, never followed as a
-- job's key), a job's key the person who minted it (020).
CREATE OR REPLACE FUNCTION sira_principal(who text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    behind text;
BEGIN
    IF who LIKE 'jwt:%' THEN
        RETURN substr(who, 5);
    END IF;
    FOR hop IN 1..5 LOOP  -- a job's key minted by another job's key: follow it a few hops
        EXIT WHEN who IS NULL OR who NOT LIKE 'job-%';
        SELECT created_by INTO behind FROM sira_api_keys WHERE name = who;
        EXIT WHEN behind IS NULL;
        who := behind;
    END LOOP;
    RETURN who;
END
$$;

-- The creator of a version can neither approve nor reject its promotion, its requester cannot approve it,
-- and one person decides once on a request (UNIQUE (request_id, approver) compared names: a key and a JWT of
-- the same person were two approvals).
CREATE OR REPLACE FUNCTION sira_approvals_not_creator() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    creator text;
    requester text;
    person text := sira_principal(NEW.approver);
BEGIN
    SELECT sira_principal(v.created_by), sira_principal(r.requested_by) INTO creator, requester
      FROM sira_promotion_requests r JOIN sira_model_versions v ON v.id = r.version_id
     WHERE r.id = NEW.request_id;
    IF creator = person THEN
        RAISE EXCEPTION 'the creator of a version cannot approve or reject its promotion'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'sira_approvals_not_creator';
    END IF;
    IF NEW.decision = 'approve' AND requester = person THEN
        RAISE EXCEPTION 'the requester of a promotion cannot approve it'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'sira_approvals_not_requester';
    END IF;
    IF EXISTS (SELECT 1 FROM sira_approvals a
                WHERE a.request_id = NEW.request_id AND a.id IS DISTINCT FROM NEW.id
                  AND sira_principal(a.approver) = person) THEN
        RAISE EXCEPTION '% has already decided on this request', person
            USING ERRCODE = 'unique_violation', CONSTRAINT = 'sira_approvals_one_per_person';
    END IF;
    RETURN NEW;
END
$$;
