-- The customer a dead letter is about, as sira_events.customer_id holds it (scrubbed), whatever the source
-- named the column: a dead letter keeps its record with the source's own column names (for replay), so an
-- import mapped with --map (CUST -> customer_id) was found by neither the erasure nor the subject export,
-- which looked in payload->>'customer_id'. Rows stored before this migration keep that fallback.
ALTER TABLE sira_rejected_events ADD COLUMN customer_id text;
CREATE INDEX sira_rejected_events_customer ON sira_rejected_events (customer_id) WHERE customer_id IS NOT NULL;
