-- 015: where a model's governance events are told besides SIRA_WEBHOOK_URLS: names of receivers from
-- SIRA_NOTIFY_RECEIVERS_FILE (a Slack incoming webhook, a PagerDuty change-events integration, a signed
-- SIRA webhook), each in its own payload format. Names only: the URLs and keys are secrets, kept in files.
ALTER TABLE sira_models
    ADD COLUMN notify text[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(notify) <= 10 AND array_to_string(notify, ',') ~ '^([a-z][a-z0-9_-]{0,62}(,|$))*$');
