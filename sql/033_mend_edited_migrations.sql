-- 033: a database migrated with an earlier content of 002 or 017 (both were edited after they were committed;
-- sql/manifest.toml lists the earlier checksums SIRA accepts in the ledger) gets what the edits added, so it ends
-- with the schema a fresh install has. On any other database this changes nothing. (019's earlier contents need
-- nothing here: 032 replaced the function they defined.)

-- 017 as af55753 committed it had no `cleanup` column (cb9e241 added it). It is the table's last column and no
-- later migration adds one, so the columns end in the same order as a fresh install's.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = 'sira_erasure_requests'::regclass AND attname = 'cleanup' AND NOT attisdropped) THEN
        ALTER TABLE sira_erasure_requests ADD COLUMN cleanup jsonb;
    END IF;
END
$$;

-- 002 as 6624de8 committed it keyed sira_features by (feature_set, feature_set_version, entity_type, entity_id,
-- as_of, event_id) and indexed event_id apart; 6418859 made one key serve writes and lookups by event. An event
-- has one entity of each type, so the rows stay unique under the shorter key.
DO $$
BEGIN
    IF to_regclass('sira_features_event') IS NOT NULL THEN
        DROP INDEX sira_features_event;
    END IF;
    IF (SELECT pg_get_constraintdef(oid) FROM pg_constraint
         WHERE conrelid = 'sira_features'::regclass AND conname = 'sira_features_pkey')
       IS DISTINCT FROM 'PRIMARY KEY (event_id, entity_type, feature_set, feature_set_version, as_of)' THEN
        ALTER TABLE sira_features DROP CONSTRAINT sira_features_pkey;
        ALTER TABLE sira_features ADD CONSTRAINT sira_features_pkey
            PRIMARY KEY (event_id, entity_type, feature_set, feature_set_version, as_of);
    END IF;
END
$$;
