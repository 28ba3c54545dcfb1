-- 032: the switches of the append-only tables are honoured only for a role that owns the table. Partition
-- maintenance (sira.partition_maintenance, set by sira_ensure_month_partitions while it moves a month's rows
-- out of the default partition), an erasure (sira.erasure) and a card rekey (sira.rekey) are custom settings,
-- and any session may make a custom setting: a role granted only SELECT/INSERT/UPDATE/DELETE could rewrite or
-- delete audit rows inside `SET LOCAL sira.partition_maintenance = 'on'`. The owner (or a member of the owning
-- role, as PostgreSQL counts ownership) could drop the trigger anyway, so asking for it costs SIRA's own role
-- nothing (it ran the migrations, owns the tables and is the one that maintains them: ATTACH PARTITION needs
-- the owner too) and closes the switches to every other role. The table asked about is the partition tree's
-- root (a row trigger fires on the partition). 019's function otherwise unchanged.
CREATE OR REPLACE FUNCTION sira_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    by_owner boolean;
BEGIN
    SELECT pg_has_role(current_user, c.relowner, 'USAGE') INTO by_owner
      FROM pg_class c WHERE c.oid = coalesce(pg_partition_root(TG_RELID), TG_RELID);
    IF by_owner THEN
        IF current_setting('sira.partition_maintenance', true) = 'on' THEN
            RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
        END IF;
        IF TG_OP = 'DELETE' AND current_setting('sira.erasure', true) = 'on' AND TG_TABLE_NAME LIKE 'sira\_features%' THEN
            RETURN OLD;
        END IF;
        IF TG_OP = 'UPDATE' AND current_setting('sira.rekey', true) = 'on' AND TG_TABLE_NAME LIKE 'sira\_features%' THEN
            -- a nested IF: other tables' rows have no entity_type (PL/pgSQL does not short-circuit one condition)
            IF OLD.entity_type = 'card' AND NEW.entity_id ~ '^tok_[a-z]+_[0-9a-f]{24}$'
               AND (to_jsonb(NEW) - 'entity_id') = (to_jsonb(OLD) - 'entity_id') THEN
                RETURN NEW;
            END IF;
        END IF;
    END IF;
    IF NOT by_owner THEN
        RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'only a role that owns the table may switch append-only off (sql/032)';
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
