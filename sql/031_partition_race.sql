-- 031: two callers making one month's partition at once (bulk ingest's shards, each making sure of its rows'
-- months) no longer fail. The one that waited on the creator's advisory lock looked again for the partition
-- in a catalog cache the lock does not refresh, saw none, and its CREATE TABLE failed: 'relation
-- "sira_features_p2026_09" already exists', ending the whole ingest. CREATE TABLE's duplicate now means
-- the month was made by the caller it waited for. 026's function otherwise unchanged.
CREATE OR REPLACE FUNCTION sira_ensure_month_partitions(parent regclass, range_from timestamptz, range_to timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    parent_schema text;
    parent_name   text;
    key_column    text;
    default_part  regclass;
    month_start   timestamptz;
    month_end     timestamptz;
    part_name     text;
    created       integer := 0;
    guard         record;
    made_by_another boolean;
BEGIN
    IF range_from IS NULL OR range_to IS NULL OR range_to < range_from THEN
        RAISE EXCEPTION 'sira_ensure_month_partitions: invalid range [%, %]', range_from, range_to
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT n.nspname, c.relname INTO parent_schema, parent_name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = parent;
    key_column := substring(pg_get_partkeydef(parent) FROM '^RANGE \((\w+)\)$');
    IF key_column IS NULL THEN
        RAISE EXCEPTION 'sira_ensure_month_partitions: % is not range-partitioned on one column', parent
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT i.inhrelid::regclass INTO default_part
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';

    month_start := date_trunc('month', range_from AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    WHILE month_start <= range_to LOOP
        month_end := ((month_start AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
        part_name := parent_name || '_p' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM');
        IF to_regclass(format('%I.%I', parent_schema, part_name)) IS NULL THEN
            -- Concurrent callers for the same month queue here. The one that waited may look again in a
            -- catalog cache the lock did not refresh and see no partition: CREATE TABLE (which does refresh
            -- it) then says the creator made it, and this caller leaves the month to it.
            PERFORM pg_advisory_xact_lock(hashtext(parent_schema || '.' || part_name));
            made_by_another := false;
            IF to_regclass(format('%I.%I', parent_schema, part_name)) IS NULL THEN
                BEGIN
                    EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                                   parent_schema, part_name, parent);
                EXCEPTION WHEN duplicate_table THEN
                    made_by_another := true;
                END;
            ELSE
                made_by_another := true;
            END IF;
            IF NOT made_by_another THEN
                IF default_part IS NOT NULL THEN
                    PERFORM set_config('sira.partition_maintenance', 'on', true);
                    EXECUTE format(
                        'WITH moved AS (DELETE FROM %s WHERE %I >= $1 AND %I < $2 RETURNING *) '
                        'INSERT INTO %I.%I SELECT * FROM moved',
                        default_part, key_column, key_column, parent_schema, part_name)
                    USING month_start, month_end;
                    PERFORM set_config('sira.partition_maintenance', 'off', true);
                END IF;
                EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                               parent, parent_schema, part_name, month_start, month_end);
                -- a statement trigger of the parent (TRUNCATE refused) does not fire for a partition
                -- truncated on its own: each partition gets the parent's (BEFORE TRUNCATE: tgtype bits 2 and 32)
                FOR guard IN SELECT t.tgname, t.tgfoid::regproc AS fn FROM pg_trigger t
                              WHERE t.tgrelid = parent AND NOT t.tgisinternal AND (t.tgtype & 34) = 34 LOOP
                    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %I.%I FOR EACH STATEMENT EXECUTE FUNCTION %s()',
                                   guard.tgname, parent_schema, part_name, guard.fn);
                END LOOP;
                created := created + 1;
            END IF;
        END IF;
        month_start := month_end;
    END LOOP;
    RETURN created;
END
$$;
