-- 029: every value a label has had, and from when it was known. sira_feedback keeps one row per (event,
-- label name, source), overwritten when a source changes its mind (a chargeback reversed): read alone, a
-- reversal known on 11-20 rewrote the features of an 11-10 event that a positive known on 11-03 had counted
-- in. Feature engine v2 reads this history: a source's label is what it last said before a time.
CREATE TABLE sira_feedback_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    text NOT NULL,
    label_name  text NOT NULL,
    source      text NOT NULL,
    label       boolean NOT NULL,
    known_at    timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sira_feedback_history_event ON sira_feedback_history (event_id, label_name);

INSERT INTO sira_feedback_history (event_id, label_name, source, label, known_at)
SELECT event_id, label_name, source, label, known_at FROM sira_feedback ORDER BY id;

-- kept by the database, whoever writes sira_feedback; a label deleted (an erasure, a pending label expired)
-- takes its history with it
CREATE FUNCTION sira_feedback_history_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM sira_feedback_history
         WHERE event_id = OLD.event_id AND label_name = OLD.label_name AND source = OLD.source;
        RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' OR (OLD.label, OLD.known_at) IS DISTINCT FROM (NEW.label, NEW.known_at) THEN
        INSERT INTO sira_feedback_history (event_id, label_name, source, label, known_at)
        VALUES (NEW.event_id, NEW.label_name, NEW.source, NEW.label, NEW.known_at);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER sira_feedback_history_keep AFTER INSERT OR UPDATE OR DELETE ON sira_feedback
    FOR EACH ROW EXECUTE FUNCTION sira_feedback_history_keep();
