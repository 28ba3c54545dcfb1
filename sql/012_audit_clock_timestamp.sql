-- 012: an audit row is dated when it is written, not when its transaction began. With now(), two
-- overlapping production changes were listed in the right order (id, under the model's row lock) with
-- times out of order: the change written last was dated before the one it followed.
ALTER TABLE sira_audit_log ALTER COLUMN occurred_at SET DEFAULT clock_timestamp();
