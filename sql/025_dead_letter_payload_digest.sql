-- 025: a dead letter is a repeat only when its position AND its payload match one stored. Positions come
-- again: a recreated Kafka topic or cluster starts at offset 0, a recreated Redis stream can be given old
-- ids, and a file's rows are addressed by the file's name and row number; a redelivery brings the same
-- (redacted) payload. 024's index made the position alone unique, so a new bad record at an old position
-- was counted as a duplicate and kept nowhere.
DROP INDEX sira_rejected_events_position;
CREATE UNIQUE INDEX sira_rejected_events_position ON sira_rejected_events (source, stream_position, md5(payload::text))
    WHERE stream_position IS NOT NULL;
