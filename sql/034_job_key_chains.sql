-- 034: who acts behind a job's key, however long the chain. A job's key minted by another job's key (allowed
-- until 2026-12-07: `sira jobs runtime-env` run with a job's key) was followed 5 hops at most (020, 027), so a
-- version trained through a chain of 6 was created by a job's key rather than a person, and its creator could
-- approve it. The chain is now followed to its end (a key's creator existed before it, so it ends; the bound only
-- guards a hand-edited table), and a person who minted a job's key with a JWT (created_by jwt:<sub>) is that sub,
-- as their JWT is: the two were different names, and the four-eyes rules let them approve their own version.
-- (SIRA no longer mints a job's key with a job's key, nor accepts one so minted: sira.core.auth.)
CREATE OR REPLACE FUNCTION sira_principal(who text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    behind text;
    hops integer := 0;
BEGIN
    WHILE who LIKE 'job-%' AND hops < 10000 LOOP
        SELECT created_by INTO behind FROM sira_api_keys WHERE name = who;
        EXIT WHEN behind IS NULL;
        who := behind;
        hops := hops + 1;
    END LOOP;
    IF who LIKE 'jwt:%' THEN
        RETURN substr(who, 5);
    END IF;
    RETURN who;
END
$$;
