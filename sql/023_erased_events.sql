-- The erasure gate for labels: a label of an erased person's payment (a chargeback arriving weeks later)
-- names only the payment's event id, which the gate on customer ids cannot see; it was stored pending its
-- event, which never comes back, then moved to the dead letters. The erasure keeps a salted digest of each
-- of the person's event ids (stored and refused ones); such a label is counted (erased_subject), never kept.
CREATE TABLE sira_erased_events (
    digest     bytea PRIMARY KEY,   -- sha256(salt || event id), salt of sira_erasure_salt
    erased_at  timestamptz NOT NULL
);
