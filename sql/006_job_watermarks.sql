-- 006: positions of incremental jobs (snapshot materialisation, stream consumers), so a
-- re-run continues where the last one stopped.
CREATE TABLE sira_job_watermarks (
    job         text PRIMARY KEY,
    position    bigint NOT NULL CHECK (position >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER sira_job_watermarks_touch BEFORE UPDATE ON sira_job_watermarks
    FOR EACH ROW EXECUTE FUNCTION sira_touch_updated_at();

-- Labels are looked up by event: the unique (event_id, label_name, source) index serves it.
-- Rejected events are read back by source and time in summaries.
CREATE INDEX sira_rejected_events_source ON sira_rejected_events (source, rejected_at);
