-- 035: who posted a dead letter's record over the API. GET /v1/events/rejected answered a service key every
-- source's dead letters, other services' records among them; it now answers a service key those it posted and
-- those no API caller posted, never another API caller's (admin and operator read all). The API's write sets the transaction's sira.posted_by (sira.http.events); a
-- stream's, a file's or a job's dead letters have none. A repeat is the same record from the same position, source
-- AND poster: another service posting the same record has a dead letter of its own.
ALTER TABLE sira_rejected_events ADD COLUMN posted_by text
    DEFAULT nullif(current_setting('sira.posted_by', true), '');
DROP INDEX sira_rejected_events_position;
CREATE UNIQUE INDEX sira_rejected_events_position
    ON sira_rejected_events (source, stream_position, md5(payload::text), coalesce(posted_by, ''))
    WHERE stream_position IS NOT NULL;
CREATE INDEX sira_rejected_events_posted_by ON sira_rejected_events (posted_by, id) WHERE posted_by IS NOT NULL;
