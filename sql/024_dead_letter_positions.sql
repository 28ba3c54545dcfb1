-- 024: a dead letter read from a stream keeps its position there (a Redis entry id, Kafka's
-- topic:partition:offset): read again after a crash, a rebalance or a claim, it is not stored twice.
ALTER TABLE sira_rejected_events ADD COLUMN stream_position text;
CREATE UNIQUE INDEX sira_rejected_events_position ON sira_rejected_events (source, stream_position)
    WHERE stream_position IS NOT NULL;
