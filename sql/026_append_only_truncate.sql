-- 026: append-only tables refuse TRUNCATE too. sira_refuse_change (001, 017, 019) refuses UPDATE and DELETE
-- row by row; TRUNCATE fires no row trigger, so the audit log (production history and rollback read it) and
-- the per-event feature rows could be emptied in one statement. A statement trigger refuses it, on each
-- partition as well (a partitioned table's statement trigger does not fire for a partition truncated on its
-- own), and sira_ensure_month_partitions gives every new partition its parent's TRUNCATE triggers. No setting
-- lets a TRUNCATE through: partition maintenance moves rows, an erasure deletes one person's.
CREATE FUNCTION sira_refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: TRUNCATE refused', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER sira_audit_log_no_truncate
    BEFORE TRUNCATE ON sira_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION sira_refuse_truncate();
CREATE TRIGGER sira_features_no_truncate
    BEFORE TRUNCATE ON sira_features
    FOR EACH STATEMENT EXECUTE FUNCTION sira_refuse_truncate();
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'sira_features'::regclass LOOP
        EXECUTE format('CREATE TRIGGER sira_features_no_truncate BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION sira_refuse_truncate()', part);
    END LOOP;
END
$$;

-- 001's function, the partition's TRUNCATE triggers added.
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
            -- Concurrent callers for the same month queue here; the loser sees the partition.
            PERFORM pg_advisory_xact_lock(hashtext(parent_schema || '.' || part_name));
            IF to_regclass(format('%I.%I', parent_schema, part_name)) IS NULL THEN
                EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                               parent_schema, part_name, parent);
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
