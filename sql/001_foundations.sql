-- 001: shared database machinery used by the tables of later migrations.

-- Rows that change keep their own updated_at.
CREATE FUNCTION sira_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- Append-only tables refuse UPDATE and DELETE, except for SIRA's own
-- partition maintenance, which moves rows between partitions.
CREATE FUNCTION sira_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('sira.partition_maintenance', true) = 'on' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Create the monthly (UTC) range partitions of `parent` that cover
-- [range_from, range_to]. Partitions are named <parent>_pYYYY_MM. Rows of
-- those months already sitting in the parent's default partition are moved
-- into the new partition, so creating a partition late never fails.
-- Returns the number of partitions created.
CREATE FUNCTION sira_ensure_month_partitions(parent regclass, range_from timestamptz, range_to timestamptz)
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
                created := created + 1;
            END IF;
        END IF;
        month_start := month_end;
    END LOOP;
    RETURN created;
END
$$;
