-- 013: labels that arrive before their event. A label whose event_id names no stored event is kept
-- (the event may still come) but marked pending from when it was first written; a label still
-- without its event after SIRA_PENDING_LABEL_TTL_DAYS is moved to sira_rejected_events
-- (reason pending_label_expired). The partial index keeps the expiry check, run on every label
-- write, to a probe of the pending rows only.
ALTER TABLE sira_feedback ADD COLUMN pending_since timestamptz;
UPDATE sira_feedback f SET pending_since = now()
 WHERE NOT EXISTS (SELECT 1 FROM sira_events e WHERE e.event_id = f.event_id);
CREATE INDEX sira_feedback_pending ON sira_feedback (pending_since) WHERE pending_since IS NOT NULL;
