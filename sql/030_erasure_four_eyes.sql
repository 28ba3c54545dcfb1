-- 030: the erasure's two-person rule compares people, not names, as promotions' and threshold changes' do
-- (020, 027): the CHECK of 017 compared decided_by with requested_by as text, so an admin who asked with
-- an API key named ann could carry the erasure out with a JWT whose sub is ann (jwt:ann), or with a job's
-- key minted by ann. The CHECK stays; this refuses the same person under another name.
CREATE FUNCTION sira_erasure_requests_four_eyes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.decided_by IS NOT NULL AND sira_principal(NEW.decided_by) = sira_principal(NEW.requested_by) THEN
        RAISE EXCEPTION 'the admin who asked for an erasure cannot carry it out'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'sira_erasure_requests_four_eyes';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER sira_erasure_requests_four_eyes BEFORE INSERT OR UPDATE OF decided_by, requested_by
    ON sira_erasure_requests FOR EACH ROW EXECUTE FUNCTION sira_erasure_requests_four_eyes();
