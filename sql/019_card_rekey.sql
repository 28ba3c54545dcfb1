-- 019: `sira pii rekey-cards` (sira.monitoring.rekey) replaces card tokens stored as a source sent them (a card
-- number among them) by their keyed tokens, also as the entity id of feature set v1's per-event feature rows.
-- Those rows stay append-only but to that command (in its own transaction, under the insert lock: a card's
-- entity id may become a token, nothing else changes) and to an erasure. The audit log stays append-only
-- whatever is set.
CREATE OR REPLACE FUNCTION sira_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
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
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
