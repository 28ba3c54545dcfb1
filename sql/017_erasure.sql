-- 017: erasure of a data subject (#25). `sira subject forget` deletes a person's events, dead letters,
-- features, states, checkpoints, predictions and labels once a second admin approves the request. The
-- request names the person only by the keyed hash the audit log uses (the approver types the id again);
-- the erasure leaves a tombstone: who, when, why, what counts.
CREATE TABLE sira_erasure_requests (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_ref          text NOT NULL CHECK (subject_ref ~ '^subject-[0-9a-f]{32}$'),
    status               text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'executed', 'rejected')),
    reason               text NOT NULL CHECK (length(reason) BETWEEN 1 AND 2000),
    requested_by         text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    decided_by           text,
    decided_at           timestamptz,
    counts               jsonb NOT NULL DEFAULT '{}'::jsonb,  -- what was deleted, per table and store
    files                jsonb NOT NULL DEFAULT '[]'::jsonb,  -- outputs outside the database to look at
    cleanup              jsonb,  -- what Redis and the spool still hold of the person (their keys), until removed
    CONSTRAINT sira_erasure_requests_decided CHECK ((status = 'pending') = (decided_at IS NULL)),
    CONSTRAINT sira_erasure_requests_four_eyes CHECK (decided_by IS DISTINCT FROM requested_by)
);
CREATE UNIQUE INDEX sira_erasure_requests_one_pending ON sira_erasure_requests (subject_ref) WHERE status = 'pending';

-- The gate: an event of an erased person that happened before the erasure is never stored again (a replayed
-- spool, a re-imported file, a late stream entry); what happens after it starts fresh. Digests are salted
-- with a random value of this database, so the table holds no customer id.
CREATE TABLE sira_erasure_salt (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    salt      bytea NOT NULL
);
INSERT INTO sira_erasure_salt (salt)
VALUES (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
CREATE TABLE sira_erased_subjects (
    digest     bytea PRIMARY KEY,   -- sha256(salt || customer id)
    erased_at  timestamptz NOT NULL
);

-- The per-event feature rows are append-only; an erasure (and only it, in its own transaction) deletes the
-- person's. The audit log stays append-only whatever is set.
CREATE OR REPLACE FUNCTION sira_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('sira.partition_maintenance', true) = 'on' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_OP = 'DELETE' AND current_setting('sira.erasure', true) = 'on' AND TG_TABLE_NAME LIKE 'sira\_features%' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
