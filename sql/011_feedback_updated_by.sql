-- 011: who changed a label last, and when. A label's row kept naming whoever first created it after
-- someone else overwrote its value; the change is now traceable.
ALTER TABLE sira_feedback ADD COLUMN updated_by text, ADD COLUMN updated_at timestamptz;
