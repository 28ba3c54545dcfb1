from datetime import datetime, timezone

from sira.ingest.labels import record_labels
from sira.ingest.pii import Redactor

R = Redactor(b"k")
KNOWN = datetime(2026, 9, 10, tzinfo=timezone.utc)


async def test_labels_are_idempotent_updatable_and_validated(clean_db):
    labels = [
        {"event_id": "e1", "label": 1, "known_at": KNOWN, "source": "chargeback"},
        {"event_id": "e2", "label": "legit", "known_at": "2026-09-11", "source": "review"},
        {"event_id": "e3", "label": "maybe", "known_at": KNOWN},
        {"event_id": "e4", "label": True},
    ]
    async with clean_db.acquire() as conn:
        first = await record_labels(conn, labels, redactor=R)
        assert (first.inserted, first.updated, first.unchanged, first.rejected) == (2, 0, 0, 2)
        assert first.reasons == {"invalid_field": 1, "missing_field": 1}
        again = await record_labels(conn, labels[:2], redactor=R)
        assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
        reversed_ = await record_labels(
            conn, [{"event_id": "e1", "label": False, "known_at": KNOWN, "source": "chargeback"}], redactor=R
        )
        assert reversed_.updated == 1
        assert await conn.fetchval("SELECT count(*) FROM sira_feedback") == 2
        assert await conn.fetchval("SELECT label FROM sira_feedback WHERE event_id = 'e1'") is False
        dead = await conn.fetch("SELECT source, reason_code, field FROM sira_rejected_events ORDER BY event_id")
        assert [(d["source"], d["reason_code"], d["field"]) for d in dead] == [
            ("feedback:import", "invalid_field", "label"), ("feedback:import", "missing_field", "known_at")]


async def test_a_sentinel_label_time_is_refused_not_folded(clean_db):
    """known_at = 9999-12-31 (a file's "unknown"): stored, it overflowed the daily checkpoints' midnights after it,
    and every later advance or rebuild of the feature states failed on it."""
    from datetime import timedelta

    from sira.features.definitions import PAYMENTS_V2
    from sira.features.states import rebuild

    async with clean_db.acquire() as conn:
        await conn.execute("INSERT INTO sira_events (event_id, occurred_at, amount, customer_id) VALUES"
                           " ('s1', $1, 10, 'c1')", KNOWN - timedelta(days=1))
        done = await record_labels(conn, [{"event_id": "s1", "label": True, "known_at": "9999-12-31T00:00:00Z"},
                                          {"event_id": "s1", "label": True, "known_at": "1970-01-01",
                                           "source": "review"}], redactor=R)
        assert (done.inserted, done.rejected, dict(done.reasons)) == (0, 2, {"invalid_field": 2})
        dead = await conn.fetch("SELECT field, reason FROM sira_rejected_events ORDER BY id")
        assert [d["field"] for d in dead] == ["known_at", "known_at"] and "1990 and 2200" in dead[0]["reason"]
        async with conn.transaction():
            assert (await rebuild(conn, PAYMENTS_V2)).events == 1


async def test_an_analyst_cannot_reach_a_chargeback_through_a_column_mapping(clean_db, settings, tmp_path):
    """`--map source=nosuchcol` left the file's own `source` column (chargeback) in place, and the analyst
    check read only the mapped column: the analyst's import flipped the chargeback. Every source a row would
    be recorded under is checked now, and a mapping naming a column not in the file, or one the file has its
    own column for, is refused before anything is read into the database."""
    import pytest

    from sira.core.auth import Identity
    from sira.core.errors import InvalidInput, PermissionDenied
    from sira.ingest.labels import import_label_files

    psp, ana = Identity("psp", frozenset({"service"})), Identity("ana", frozenset({"analyst"}))
    chargeback = tmp_path / "chargeback.csv"
    chargeback.write_text("event_id,label,known_at,source\nt1,1,2026-03-01T00:00:00Z,chargeback\n")
    assert (await import_label_files(settings, [chargeback], who=psp, created_by="psp")).inserted == 1
    flip = tmp_path / "flip.csv"
    flip.write_text("event_id,label,known_at,source\nt1,0,2026-03-01T00:00:00Z,chargeback\n")
    with pytest.raises(InvalidInput, match="mapped column.s. not in the file: nosuchcol"):
        await import_label_files(settings, [flip], mapping={"source": "nosuchcol"}, who=ana, created_by="ana")
    both = tmp_path / "both.csv"
    both.write_text("event_id,label,known_at,source,x\nt1,0,2026-03-01T00:00:00Z,chargeback,analyst:ana\n")
    with pytest.raises(InvalidInput, match="--map source=x: the file has its own source column too"):
        await import_label_files(settings, [both], mapping={"source": "x"}, who=ana, created_by="ana")
    with pytest.raises(InvalidInput, match="its own source column"):  # the same file from a service key alike
        await import_label_files(settings, [both], mapping={"source": "x"}, who=psp, created_by="psp")
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("event_id,label,known_at,origin\nt1,0,2026-03-01T00:00:00Z,chargeback\n")
    with pytest.raises(PermissionDenied, match="only service keys name the source"):
        await import_label_files(settings, [renamed], mapping={"source": "origin"}, who=ana, created_by="ana")
    rows = await clean_db.fetch("SELECT source, label, updated_by FROM sira_feedback WHERE event_id = 't1'")
    assert [tuple(r) for r in rows] == [("chargeback", True, None)]


async def test_a_blank_source_or_label_name_takes_the_default(clean_db, settings, tmp_path):
    """An empty source cell was refused (`source: String should have at least 1 character`), a null label_name
    too (`Input should be a valid string`), though --source is for rows without a source and label_name has a
    default: a null or blank value is no value."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sira.core.auth import Identity
    from sira.ingest.labels import import_label_files

    blank = tmp_path / "blank.csv"
    blank.write_text("event_id,label,known_at,source,label_name\nb1,1,2026-03-01T00:00:00Z,,\n"
                     "b2,1,2026-03-01T00:00:00Z, ,churn_90d\nb3,0,2026-03-01T00:00:00Z,review,\n")
    summary = await import_label_files(settings, [blank], source="bank")
    assert (summary.inserted, summary.rejected) == (3, 0), summary.to_dict()
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"event_id": ["p1"], "label": [True], "known_at": ["2026-03-01T00:00:00Z"],
                             "label_name": pa.array([None], pa.string()), "source": pa.array([None], pa.string())}),
                   nulls)
    ana = Identity("ana", frozenset({"analyst"}))  # an unnamed source is theirs, not a refusal
    summary = await import_label_files(settings, [nulls], who=ana, created_by="ana")
    assert (summary.inserted, summary.rejected) == (1, 0), summary.to_dict()
    rows = await clean_db.fetch("SELECT event_id, source, label_name FROM sira_feedback ORDER BY event_id")
    assert [tuple(r) for r in rows] == [("b1", "bank", "fraud"), ("b2", "bank", "churn_90d"),
                                        ("b3", "review", "fraud"), ("p1", "analyst:ana", "fraud")]


async def test_every_row_read_is_counted_once_a_label_repeated_in_a_file_too(clean_db):
    labels = [{"event_id": "d1", "label": 1, "known_at": KNOWN, "source": "bank"},
              {"event_id": "d1", "label": 0, "known_at": KNOWN, "source": "bank"},  # the last word wins
              {"event_id": "d2", "label": 1, "known_at": KNOWN, "source": "bank"},
              {"event_id": "d3", "label": "maybe", "known_at": KNOWN, "source": "bank"}]
    async with clean_db.acquire() as conn:
        for expected in ((2, 0), (0, 2)):  # imported, then again
            s = await record_labels(conn, labels, redactor=R)
            assert (s.read, s.inserted, s.unchanged, s.duplicates, s.rejected) == (4, *expected, 1, 1)
            assert s.read == s.inserted + s.updated + s.unchanged + s.duplicates + s.rejected
            assert s.to_dict()["duplicates"] == 1
        assert await conn.fetchval("SELECT label FROM sira_feedback WHERE event_id = 'd1'") is False


async def test_a_label_known_in_the_future_is_refused(clean_db):
    """known_at 2199-12-31 was accepted (the range check allows up to 2200); stored, it counts as known at every
    cut-off, and the next ingest made monthly partitions up to it. A label cannot be known before now, give or
    take the clock skew forgiven (KNOWN_AT_SKEW)."""
    from datetime import timedelta

    from sira.ingest.labels import KNOWN_AT_SKEW

    now = datetime.now(timezone.utc)
    async with clean_db.acquire() as conn:
        done = await record_labels(conn, [
            {"event_id": "f1", "label": True, "known_at": "2199-12-31T00:00:00Z", "source": "bank"},
            {"event_id": "f2", "label": True, "known_at": now + KNOWN_AT_SKEW + timedelta(hours=1)},
            {"event_id": "f3", "label": True, "known_at": now + KNOWN_AT_SKEW - timedelta(hours=1)},  # a skewed clock
        ], redactor=R)
        assert (done.inserted, done.rejected, dict(done.reasons)) == (1, 2, {"known_at_in_future": 2})
        dead = await conn.fetch("SELECT event_id, reason_code, field, reason FROM sira_rejected_events ORDER BY id")
        assert [(d["event_id"], d["reason_code"], d["field"]) for d in dead] == [
            ("f1", "known_at_in_future", "known_at"), ("f2", "known_at_in_future", "known_at")]
        assert "in the future" in dead[0]["reason"]
        assert await conn.fetchval("SELECT event_id FROM sira_feedback") == "f3"


async def test_a_bad_line_of_a_label_jsonl_file_is_a_dead_letter_not_a_failed_import(clean_db, settings, tmp_path):
    """Label JSON Lines were read whole by pyarrow: one line that is no JSON, or an event_id that is text on one
    line and a number on the next, failed the import (exit 2). They are read line by line as event files are."""
    import pytest

    from sira.core.errors import InvalidInput
    from sira.ingest.labels import import_label_files

    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"event_id": "j1", "label": 1, "known_at": "2026-03-01T00:00:00Z"}\n'
                      '{"event_id": "j2", "label": 1, "known_at": \n'
                      '\n'
                      '{"event_id": 7, "label": true, "known_at": "2026-03-01T00:00:00Z", "source": "bank"}\n'
                      '["not", "an", "object"]\n')
    summary = await import_label_files(settings, [labels], source="review")
    assert summary.to_dict() | {"pending_event": 0} == {
        "read": 4, "inserted": 2, "updated": 0, "unchanged": 0, "duplicates": 0, "rejected": 2, "pending_event": 0,
        "expired": 0, "rejected_by_reason": {"undecodable": 2}}
    rows = await clean_db.fetch("SELECT event_id, source FROM sira_feedback ORDER BY event_id")
    assert [tuple(r) for r in rows] == [("7", "bank"), ("j1", "review")]
    dead = await clean_db.fetch("SELECT source, reason_code, reason, payload FROM sira_rejected_events ORDER BY id")
    assert [(d["source"], d["reason_code"], d["payload"]) for d in dead] == [
        ("feedback:review", "undecodable", {"file": "labels.jsonl", "line": 2}),
        ("feedback:review", "undecodable", {"file": "labels.jsonl", "line": 5})]
    assert dead[0]["reason"].startswith("line 2: not valid JSON") and "j2" not in dead[0]["reason"]
    not_jsonl = tmp_path / "labels-csv.jsonl"  # no line a JSON object: the wrong file, refused as a whole
    not_jsonl.write_text("event_id,label,known_at\nj9,1,2026-03-01\n")
    with pytest.raises(InvalidInput, match="none of the 2 lines is a JSON object"):
        await import_label_files(settings, [not_jsonl])


async def test_a_label_is_its_source_s_newest_word_whatever_order_or_batches_the_words_came_in(clean_db, settings):
    """A reversal (not fraud, known 09-01) arriving before its chargeback (fraud, known 08-03) left sira_feedback
    saying fraud, whoever came last winning, while training read the history by known_at (not fraud); and the two
    in one batch kept only the last, the history losing the month it was fraud (the terminal's 7-day risk at
    08-10 was 0 or 0.5 depending on the consumer's --batch). Now the newest word by known_at is the label, every
    word is in the history, and the same words give the same label, history and features in any order."""
    from sira.core import db
    from sira.features.definitions import PAYMENTS_V2
    from sira.features.states import online_features
    from sira.ingest.bulk import ingest_records

    chargeback = {"event_id": "k1", "label": 1, "known_at": "2026-08-03T00:00:00Z", "source": "bank"}
    reversal = {**chargeback, "label": 0, "known_at": "2026-09-01T00:00:00Z"}
    events = [{"event_id": f"k{i}", "occurred_at": f"2026-08-{day:02d}T10:00:00Z", "terminal_id": "t1", "amount": 5}
              for i, day in ((1, 1), (2, 2), (3, 10))]
    outcomes = []
    for batches in ([[chargeback, reversal]], [[reversal, chargeback]], [[chargeback], [reversal]],
                    [[reversal], [chargeback]]):
        await clean_db.execute("TRUNCATE sira_events, sira_feedback, sira_feedback_history, sira_entity_states,"
                               " sira_state_checkpoints, sira_job_watermarks")
        await ingest_records(clean_db, events, redactor=R, source="test", feature_sets=[PAYMENTS_V2])
        for labels in batches:
            async with db.transaction(clean_db) as conn:
                done = await record_labels(conn, labels, redactor=R)
                assert done.read == done.inserted + done.updated + done.unchanged + done.earlier + done.duplicates
        async with clean_db.acquire() as conn:
            current = tuple(await conn.fetchrow("SELECT label, known_at FROM sira_feedback"))
            history = [tuple(r) for r in await conn.fetch("SELECT label, known_at FROM sira_feedback_history"
                                                          " ORDER BY known_at, id")]
            risk = (await online_features(conn, PAYMENTS_V2, "terminal", "t1")).features["terminal_risk_7d"]
        outcomes.append((current, history, risk))
    chargeback_at, reversal_at = (datetime.fromisoformat(x["known_at"]) for x in (chargeback, reversal))
    assert outcomes == [((False, reversal_at), [(True, chargeback_at), (False, reversal_at)], 0.5)] * 4, outcomes
    assert done.to_dict()["earlier"] == 1  # the chargeback, last to come: kept in the history only


async def test_an_older_word_arriving_late_is_kept_once_and_refolds_its_event(clean_db):
    """A chargeback arriving after its reversal is counted as `earlier`, kept in the history once (imported again:
    unchanged), and gives its label a new position and updated_at, as an update does, so incremental jobs and
    feature set v2's checkpoints read it."""
    reversal = {"event_id": "o1", "label": 0, "known_at": "2026-09-01T00:00:00Z", "source": "bank"}
    chargeback = {**reversal, "label": 1, "known_at": "2026-08-03T00:00:00Z"}
    async with clean_db.acquire() as conn:
        await record_labels(conn, [reversal], redactor=R)
        before = await conn.fetchrow("SELECT id, updated_at FROM sira_feedback")
        late = await record_labels(conn, [chargeback], redactor=R)
        assert (late.inserted, late.updated, late.earlier, late.unchanged) == (0, 0, 1, 0)
        after = await conn.fetchrow("SELECT id, label, updated_at FROM sira_feedback")
        assert after["id"] > before["id"] and after["label"] is False
        assert before["updated_at"] is None and after["updated_at"] is not None
        again = await record_labels(conn, [chargeback, reversal], redactor=R)
        assert (again.earlier, again.unchanged, again.duplicates) == (0, 1, 1)
        assert await conn.fetchval("SELECT count(*) FROM sira_feedback_history") == 2
        assert await conn.fetchval("SELECT id FROM sira_feedback") == after["id"]  # nothing new: no new position
