"""Feature engine v2 against PostgreSQL (#21): the log read as Arrow columns gives the same vectors as the
events themselves; a rebuild's states and checkpoints, the online fold of new (and late) events, and two
writers folding the same entities at once all end in the state the whole log gives, bit for bit."""

import asyncio
import random
from datetime import datetime, timedelta, timezone

import numpy as np

from sira.core import db
from sira.features.columns import read_events, read_labels
from sira.features.definitions import PAYMENTS_V2
from sira.features.engine import EventColumns, Labels, engine_of
from sira.features.states import day_of, fold_events, read_states, rebuild, starting_states

ENGINE = engine_of(PAYMENTS_V2)
T0 = datetime(2026, 9, 1, 3, tzinfo=timezone.utc)
FOREVER = datetime(9999, 1, 1, tzinfo=timezone.utc)
UTC = timezone.utc


def payments(n=400, seed=7, days=12):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        at = T0 + timedelta(seconds=rnd.randrange(days * 86_400))
        out.append({"event_id": f"p{i:04d}", "occurred_at": at, "customer_id": f"c{rnd.randrange(6)}",
                    "card_token": f"k{rnd.randrange(9)}", "terminal_id": f"t{rnd.randrange(3)}",
                    "amount": round(rnd.uniform(1, 900), 2), "country": rnd.choice(["SN", "CI", "FR"]),
                    "device_id": f"d{rnd.randrange(5)}"})
    return out


def positives(events, seed=3):
    rnd = random.Random(seed)
    return [(e["event_id"], e["occurred_at"] + timedelta(hours=rnd.randrange(1, 200))) for e in events[::9]]


async def store(conn, events, labels=()):
    await conn.executemany(
        """INSERT INTO sira_events (event_id, occurred_at, amount, customer_id, card_token, terminal_id, country,
                                    device_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        [(e["event_id"], e["occurred_at"], e["amount"], e["customer_id"], e["card_token"], e["terminal_id"],
          e["country"], e["device_id"]) for e in events])
    await conn.executemany(
        "INSERT INTO sira_feedback (event_id, label_name, label, source, known_at) VALUES ($1, 'fraud', true, 't', $2)",
        list(labels))


def offline(events, labels):
    """The reference: one build over everything, from the events as dicts (not from the database)."""
    cols = EventColumns.from_events(events, ENGINE.columns)
    us = {e["event_id"]: ENGINE_US(e["occurred_at"]) for e in events}
    return ENGINE.build(cols, Labels.of_events(cols, [e for e, _ in labels], [ENGINE_US(k) for _, k in labels])), us


def ENGINE_US(t):
    return (t - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


def same(a, b):
    return np.array_equal(a, b, equal_nan=True)


def cli_env(dsn, settings):
    """The SIRA_ settings a command run in this process reads: the test's database and workspace."""
    return {"SIRA_DATABASE_URL": dsn, "SIRA_WORKSPACE": str(settings.workspace)}


async def test_the_log_read_as_columns_gives_the_vectors_of_the_events_themselves(clean_db):
    events, labels = payments(), None
    labels = positives(events)
    async with db.transaction(clean_db) as conn:
        await store(conn, events, labels)
        cols = await read_events(conn, ENGINE, T0 - timedelta(days=1), FOREVER)
        known = await read_labels(conn, ENGINE, T0 - timedelta(days=1), FOREVER)
    assert len(cols) == len(events) and len(known) == len(labels)
    (expected, _), _ = offline(events, labels)
    rows, _ = ENGINE.build(cols, known)
    index = {eid: i for i, eid in enumerate(cols.event_id.tolist())}
    assert same(rows[[index[e["event_id"]] for e in events]], expected)


async def test_a_rebuild_writes_every_state_and_daily_checkpoints_a_window_can_start_from(clean_db):
    events = payments()
    labels = positives(events)
    async with db.transaction(clean_db) as conn:
        await store(conn, events, labels)
        result = await rebuild(conn, PAYMENTS_V2)
    last = max([e["occurred_at"] for e in events] + [k for _, k in labels])
    assert result.days == (day_of(last) - day_of(T0)).days + 1 and result.events == len(events) and result.labels == len(labels)
    (expected, finals), _ = offline(events, labels)
    async with clean_db.acquire() as conn:
        for entity, states in finals.items():
            stored = await read_states(conn, PAYMENTS_V2, entity, list(states))
            assert stored.keys() == states.keys()
            for key, state in states.items():  # what the store holds reads as the whole log's state
                t = int(state[0, 1])
                assert same(ENGINE.decode(entity, stored[key])[0], state[0])
                assert ENGINE.features_at(entity, ENGINE.decode(entity, stored[key]), t) == \
                    ENGINE.features_at(entity, state, t)
        assert await conn.fetchval("SELECT count(*) FROM sira_state_checkpoints") == result.checkpoints > 0
        # a window from day 6: checkpoints as of day 6, then the log from there
        day = day_of(T0 + timedelta(days=6))
        read_from, start = await starting_states(conn, ENGINE, day)
        assert read_from == day and start["terminal"]
        cols = await read_events(conn, ENGINE, read_from, FOREVER)
        known = await read_labels(conn, ENGINE, read_from, FOREVER)
    rows, _ = ENGINE.build(cols, known, start)
    index = {e["event_id"]: i for i, e in enumerate(events)}
    for i, eid in enumerate(cols.event_id.tolist()):
        assert same(rows[i], expected[index[eid]]), eid


def checkpoints_by_definition(events, labels):
    """What the checkpoints are, computed the slow way: for each entity and UTC day with one of its events or a
    label of one of its events known that day (a label known before its event counts at the event's time),
    once it has an event, its state folded from every event before the next midnight and every label known
    before it."""
    day_us = 86_400_000_000
    at = {e["event_id"]: ENGINE_US(e["occurred_at"]) for e in events}
    known = [(eid, max(ENGINE_US(k), at[eid])) for eid, k in labels]
    by_id = {e["event_id"]: e for e in events}
    touched = {(spec.entity, e[spec.key_column], at[e["event_id"]] // day_us + 1) for e in events
               for spec in PAYMENTS_V2.entities}
    touched |= {(spec.entity, by_id[eid][spec.key_column], k // day_us + 1) for eid, k in known
                for spec in PAYMENTS_V2.entities}
    expected = {}
    for midnight in sorted({d for _, _, d in touched}):
        before = [e for e in events if at[e["event_id"]] < midnight * day_us]
        cols = EventColumns.from_events(before, ENGINE.columns)
        done = [(eid, k) for eid, k in known if k < midnight * day_us]
        _, finals = ENGINE.build(cols, Labels.of_events(cols, [e for e, _ in done], [k for _, k in done]))
        for entity, key, d in touched:
            if d == midnight and key in finals[entity]:
                expected[(entity, key, midnight * day_us)] = finals[entity][key]
    return expected


async def test_each_checkpoint_is_the_state_of_every_event_and_label_before_its_midnight(clean_db):
    """The rebuild replays each entity once and packs its state at every midnight after a day that changed it;
    each checkpoint must hold everything before that midnight (labels known late in a day after its last event
    included) and nothing after: its newest event and its features then and later are those of the fold of
    everything before the midnight — the definition a window starting from it relies on."""
    events = payments(n=300, seed=41, days=9)
    labels = positives(events)
    labelled = {eid for eid, _ in labels}
    labels += [(e["event_id"], e["occurred_at"] - timedelta(hours=2)) for e in events[5::37]  # "known" before it
               if e["event_id"] not in labelled]
    async with db.transaction(clean_db) as conn:
        await store(conn, events, labels)
        result = await rebuild(conn, PAYMENTS_V2)
        stored = {(r["entity_type"], r["entity_id"], ENGINE_US(r["as_of"])): r["state"] for r in await conn.fetch(
            "SELECT entity_type, entity_id, as_of, state FROM sira_state_checkpoints")}
    expected = checkpoints_by_definition(events, labels)
    assert result.checkpoints == len(stored) and stored.keys() == expected.keys()
    for (entity, key, midnight), state in expected.items():
        read = ENGINE.decode(entity, stored[(entity, key, midnight)])
        assert same(read[0], state[0])
        for later in (0, 3_600_000_000, 3 * 86_400_000_000):
            t = midnight + later
            assert ENGINE.features_at(entity, read, t) == ENGINE.features_at(entity, state, t), (entity, key, t)


async def test_a_log_folded_in_spans_of_days_gives_the_bytes_of_one_span(clean_db, monkeypatch):
    """A large log is read and replayed a few days at a time (memory); each span starts from the states packed
    at its first midnight, which is what the one-span replay continues from too: the same bytes."""
    import sira.features.states as states

    events = payments(n=300, seed=53, days=9)
    async with db.transaction(clean_db) as conn:
        await store(conn, events, positives(events))
        await rebuild(conn, PAYMENTS_V2)
        whole = await stored_states(conn)
        monkeypatch.setattr(states, "CHUNK_EVENTS", 45)  # ~1.4 days a span
        assert len(await states._spans(conn, day_of(T0))) >= 5
        await conn.execute("TRUNCATE sira_entity_states, sira_state_checkpoints, sira_job_watermarks")
        spans = await rebuild(conn, PAYMENTS_V2)
        assert await stored_states(conn) == whole and spans.events == len(events)


async def test_online_folds_of_new_and_late_events_end_where_the_whole_log_does(clean_db):
    events = sorted(payments(seed=11), key=lambda e: e["occurred_at"])
    rnd = random.Random(5)
    batches = [events[i:i + 13] for i in range(0, len(events), 13)]
    late = [e for b in batches[3:] for e in b if rnd.random() < 0.05]  # arrive two batches after their time
    vectors, arrival = {}, {}
    folded_late = 0
    for k, batch in enumerate(batches + [[], []]):
        arriving = [e for e in batch if e not in late] + [e for b in batches[max(0, k - 2):k - 1] for e in b
                                                          if e in late and k >= 2]
        if not arriving:
            continue
        async with db.transaction(clean_db) as conn:
            await store(conn, arriving)
            folded = await fold_events(conn, PAYMENTS_V2, arriving)
        folded_late += folded.late
        vectors.update({e["event_id"]: v for e, v in zip(arriving, folded.vectors)})
        arrival.update({e["event_id"]: k for e in arriving})
    assert folded_late > 0 and len(vectors) == len(events)
    (expected, finals), _ = offline(events, [])
    # every event whose predecessors had arrived by its batch (a late one included) has the log's vector
    complete = [i for i, e in enumerate(events) if all(arrival[p["event_id"]] <= arrival[e["event_id"]]
                                                       for p in events[:i])]
    assert len(complete) > len(events) // 3 and any(e in late for e in (events[i] for i in complete))
    for i in complete:
        assert same(vectors[events[i]["event_id"]], expected[i]), events[i]["event_id"]
    await assert_states_are(clean_db, finals)


async def assert_states_are(pool, finals):
    async with pool.acquire() as conn:
        for entity, states in finals.items():
            stored = await read_states(conn, PAYMENTS_V2, entity, list(states))
            for key, state in states.items():
                got = ENGINE.decode(entity, stored[key])
                assert same(got[0], state[0]), (entity, key)
                assert ENGINE.features_at(entity, got, int(state[0, 1])) == \
                    ENGINE.features_at(entity, state, int(state[0, 1])), (entity, key)


async def test_two_writers_folding_the_same_entities_at_once_lose_no_update(clean_db):
    """Two stream consumers taking alternate batches of the same entities, each storing and folding its
    batch in its own transaction at the same time: the states end as the whole log's."""
    events = sorted(payments(n=300, seed=13, days=4), key=lambda e: e["occurred_at"])
    batches = [events[i:i + 10] for i in range(0, len(events), 10)]

    async def writer(mine):
        for batch in mine:
            async with db.transaction(clean_db) as conn:
                await store(conn, batch)
                await asyncio.sleep(0)  # let the other writer interleave between storing and folding
                await fold_events(conn, PAYMENTS_V2, batch)

    await asyncio.gather(writer(batches[0::2]), writer(batches[1::2]))
    (_, finals), _ = offline(events, [])
    await assert_states_are(clean_db, finals)


async def test_sira_features_rebuild_builds_what_a_switch_needs(clean_db, pg_dsn, settings, monkeypatch, capsys):
    import json

    from tests.conftest import cli_in_process

    events = payments(n=120, seed=17, days=3)
    async with db.transaction(clean_db) as conn:
        await store(conn, events, positives(events))
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, cli_env(pg_dsn, settings), "features", "rebuild",
                                   "--feature-set", "payments@2", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["feature_set"] == "payments@2" and report["events"] == len(events)
    assert report["entities"] == {"customer": 6, "card": 9, "terminal": 3} and report["checkpoints"] > 0
    (_, finals), _ = offline(events, positives(events))
    await assert_states_are(clean_db, finals)


async def test_an_event_stored_after_the_checkpoints_with_an_older_time_makes_a_window_read_the_log(clean_db):
    events = payments(n=200, seed=23, days=8)
    async with db.transaction(clean_db) as conn:
        await store(conn, events)
        await rebuild(conn, PAYMENTS_V2)
        day = day_of(T0 + timedelta(days=5))
        assert (await starting_states(conn, ENGINE, day))[0] == day  # fresh: from the checkpoints
        straggler = {**events[0], "event_id": "late-1", "occurred_at": T0 + timedelta(days=2)}
        await store(conn, [straggler])
        read_from, start = await starting_states(conn, ENGINE, day)
        assert read_from < day and start == {}  # stale: a horizon of the log instead
        cols = await read_events(conn, ENGINE, read_from, FOREVER)
    rows, _ = ENGINE.build(cols, None, start)
    (expected, _), _ = offline(events + [straggler], [])
    index = {e["event_id"]: i for i, e in enumerate(events + [straggler])}
    for i, eid in enumerate(cols.event_id.tolist()):
        if cols.ts[i] >= ENGINE_US(day):
            assert same(rows[i], expected[index[eid]]), eid


async def stored_states(conn):
    """Every state and checkpoint, as bytes: what two ways of building them must agree on."""
    states = [tuple(r) for r in await conn.fetch(
        "SELECT entity_type, entity_id, state, newest_at FROM sira_entity_states ORDER BY 1, 2")]
    checkpoints = [tuple(r) for r in await conn.fetch(
        "SELECT entity_type, entity_id, as_of, state FROM sira_state_checkpoints ORDER BY 1, 2, 3")]
    return states, checkpoints


async def test_advance_folds_new_late_events_and_labels_into_the_states_and_checkpoints_a_rebuild_gives(clean_db):
    from sira.features.states import advance

    events = payments(n=400, seed=29, days=10)
    labels = positives(events)
    first, later = events[:250], events[250:]  # the later ones spread over all ten days: many are late
    async with db.transaction(clean_db) as conn:
        await store(conn, first, [lab for lab in labels if lab[0] in {e["event_id"] for e in first}][:10])
        await rebuild(conn, PAYMENTS_V2)
        nothing = await advance(conn, PAYMENTS_V2)
        assert nothing.events == 0 and nothing.entities == {"customer": 0, "card": 0, "terminal": 0}
        await store(conn, later, [lab for lab in labels if lab[0] in {e["event_id"] for e in later}])
        await conn.executemany(  # and labels of events stored before
            "INSERT INTO sira_feedback (event_id, label_name, label, source, known_at) VALUES ($1, 'fraud', true,"
            " 't', $2)", [lab for lab in labels if lab[0] in {e["event_id"] for e in first}][10:])
        done = await advance(conn, PAYMENTS_V2)
        assert done.checkpoints > 0 and sum(done.entities.values()) > 0
        advanced = await stored_states(conn)
        await conn.execute("TRUNCATE sira_entity_states, sira_state_checkpoints, sira_job_watermarks")
        await rebuild(conn, PAYMENTS_V2)
        assert await stored_states(conn) == advanced
    (_, finals), _ = offline(events, labels)
    await assert_states_are(clean_db, finals)


async def test_advance_without_a_rebuild_first_is_one(clean_db):
    from sira.features.states import advance

    events = payments(n=80, seed=31, days=3)
    async with db.transaction(clean_db) as conn:
        await store(conn, events)
        done = await advance(conn, PAYMENTS_V2)
    assert done.events == len(events) and done.entities == {"customer": 6, "card": 9, "terminal": 3}


async def test_events_ingested_in_small_batches_fold_into_the_states_the_log_gives(clean_db):
    """``POST /v1/events``, the stream and a replica's recorder (``ingest_batch``) on feature engine v2:
    states as the whole log gives them, no per-event feature rows."""
    from sira.ingest.bulk import ingest_records
    from sira.ingest.pii import Redactor

    raw = [{"event_id": e["event_id"], "occurred_at": e["occurred_at"].isoformat(), "customer_id": e["customer_id"],
            "card_number": "4111111111111111" if e["card_token"] < "k4" else "5555555555554444",
            "terminal_id": e["terminal_id"], "amount": e["amount"], "country": e["country"],
            "device_id": e["device_id"]} for e in sorted(payments(n=150, seed=37, days=4),
                                                         key=lambda e: e["occurred_at"])]
    written = 0
    for i in range(0, len(raw), 11):
        summary = await ingest_records(clean_db, raw[i:i + 11], redactor=Redactor(b"states"), source="test",
                                       feature_sets=[PAYMENTS_V2])
        assert summary.accepted == len(raw[i:i + 11]) and summary.features_written == 0
        written += summary.snapshots_updated
    assert written > 0 and await clean_db.fetchval("SELECT count(*) FROM sira_features") == 0
    async with clean_db.acquire() as conn:
        cols = await read_events(conn, ENGINE, T0 - timedelta(days=1), FOREVER)
    _, finals = ENGINE.build(cols)
    await assert_states_are(clean_db, finals)


async def test_a_replicas_recorder_folds_the_events_a_v2_model_scored_into_their_states(clean_db):
    """The spool's event records of a model trained on payments@2 (``store_records``), replayed twice."""
    from sira.ingest.events import normalize
    from sira.ingest.pii import Redactor
    from sira.serving.records import store_records

    redactor = Redactor(b"recorder")
    rows = [normalize({"event_id": e["event_id"], "occurred_at": e["occurred_at"].isoformat(),
                       "customer_id": e["customer_id"], "terminal_id": e["terminal_id"], "amount": e["amount"],
                       "country": e["country"], "device_id": e["device_id"]}, redactor, "serving")
            for e in sorted(payments(n=60, seed=41, days=2), key=lambda e: e["occurred_at"])]
    records = [{"kind": "event", "feature_set": "payments", "feature_set_version": 2,
                "row": {**r, "occurred_at": r["occurred_at"].isoformat()}} for r in rows]
    for _ in range(2):  # a spool segment stored again after a crash changes nothing
        for i in range(0, len(records), 8):
            await store_records(clean_db, records[i:i + 8])
    async with clean_db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sira_events") == len(rows)
        cols = await read_events(conn, ENGINE, T0 - timedelta(days=1), FOREVER)
    _, finals = ENGINE.build(cols)
    assert set(finals) == {"customer", "card", "terminal"} and not finals["card"]
    await assert_states_are(clean_db, finals)


async def test_batch_scoring_and_drift_read_stored_events_with_the_vectors_of_the_whole_log(clean_db, settings):
    """``events_source`` of a v2 feature set (what batch scoring and drift of stored events read): day by
    day from the checkpoints, and from a horizon of the log once an event stored later made them stale."""
    from sira.monitoring.batch import events_source

    events = payments(n=300, seed=43, days=8)
    labels = positives(events)
    async with db.transaction(clean_db) as conn:
        await store(conn, events, labels)
        await rebuild(conn, PAYMENTS_V2)
    (expected, _), _ = offline(events, labels)
    index = {e["event_id"]: i for i, e in enumerate(events)}
    lo, hi = day_of(T0 + timedelta(days=2)), day_of(T0 + timedelta(days=6)) + timedelta(hours=7)
    wanted = sorted((e["occurred_at"], e["event_id"]) for e in events if lo <= e["occurred_at"] < hi)
    for stale in (False, True):
        if stale:  # an event stored after the checkpoints, older than the range
            straggler = {**events[0], "event_id": "late-1", "occurred_at": T0 + timedelta(hours=30)}
            async with db.transaction(clean_db) as conn:
                await store(conn, [straggler])
            events, index = events + [straggler], {**index, "late-1": len(events)}
            (expected, _), _ = offline(events, labels)
        source = events_source(db.resolve_dsn(settings), PAYMENTS_V2, "fraud", lo, hi, len(wanted),
                               keep_columns=True)
        table = await asyncio.to_thread(source.read, {"lo": np.array([p["lo"] for p in source.parts]),
                                                      "hi": np.array([p["hi"] for p in source.parts])})
        assert len(source.parts) == 5 and table.column("event_id").to_pylist() == [eid for _, eid in wanted]
        got = np.column_stack([table.column(n).to_numpy(zero_copy_only=False).astype(float)
                               for n in ENGINE.names])
        assert same(got, expected[[index[eid] for _, eid in wanted]])


async def test_sira_features_materialize_of_a_v2_set_advances_its_states_and_checkpoints(clean_db, pg_dsn, settings,
                                                                                       monkeypatch, capsys):
    import json

    from tests.conftest import cli_in_process

    events = payments(n=90, seed=47, days=3)
    async with db.transaction(clean_db) as conn:
        await store(conn, events[:60])
        await rebuild(conn, PAYMENTS_V2)
        await store(conn, events[60:], positives(events))
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, cli_env(pg_dsn, settings), "features", "materialize",
                                   "--feature-set", "payments@2", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["feature_set"], report["version"]) == ("payments", 2) and report["checkpoints"] > 0
    assert report["events"] >= 30 and set(report["entities"]) == {"customer", "card", "terminal"}
    (_, finals), _ = offline(events, positives(events))
    await assert_states_are(clean_db, finals)
    # who refreshed the states is audited (the command checked the role and kept no trace of the work)
    entry = await clean_db.fetchrow("SELECT action, target_id, outcome, details FROM sira_audit_log "
                                    "WHERE action = 'features.materialize'")
    assert (entry["target_id"], entry["outcome"]) == ("payments@2", "success") and entry["details"]["entities"]


async def test_an_event_committed_after_an_advance_read_the_log_is_folded_by_the_next_advance(clean_db):
    """Two writers: the first takes its sequence values, the second takes later ones and commits first. An
    advance that read the log in between must not move its watermark past the first writer's events (they
    would never be read: states and checkpoints would lack them until a rebuild): it waits for it."""
    from sira.features.states import advance
    from sira.ingest.bulk import store_events
    from sira.ingest.pii import Redactor

    events = payments(n=120, seed=43, days=4)
    first, slow, quick = events[:100], events[100:110], events[110:]

    def sent(batch):
        return [{**e, "occurred_at": e["occurred_at"].isoformat()} for e in batch]

    async def advanced_alone():
        async with db.transaction(clean_db) as conn:
            return await advance(conn, PAYMENTS_V2)

    async with db.transaction(clean_db) as conn:
        await store(conn, first)
        await rebuild(conn, PAYMENTS_V2)
    redactor = Redactor(b"positions")
    async with clean_db.acquire() as writer:
        held = writer.transaction()
        await held.start()
        await store_events(writer, sent(slow), redactor=redactor, source="slow")  # uncommitted, lower seqs
        async with db.transaction(clean_db) as conn:
            await store_events(conn, sent(quick), redactor=redactor, source="quick")
        running = asyncio.create_task(advanced_alone())
        await asyncio.sleep(0.5)
        assert not running.done()  # it waits for the first writer (it did not: it read the log without it)
        await held.commit()
    await running
    async with db.transaction(clean_db) as conn:
        await advance(conn, PAYMENTS_V2)
        advanced = await stored_states(conn)
        await conn.execute("TRUNCATE sira_entity_states, sira_state_checkpoints, sira_job_watermarks")
        await rebuild(conn, PAYMENTS_V2)
        assert await stored_states(conn) == advanced


async def test_a_label_changed_after_the_checkpoints_is_refolded_by_the_next_advance(clean_db):
    """A chargeback withdrawn (positive to negative) and a review that found fraud (negative to positive),
    both updates of labels written before the checkpoints: the next advance refolds what they change."""
    from sira.features.states import advance
    from sira.ingest.labels import record_labels
    from sira.ingest.pii import Redactor

    events = payments(n=150, seed=47, days=5)
    labels = positives(events)
    negative = events[1]
    async with db.transaction(clean_db) as conn:
        await store(conn, events, labels)
        await conn.execute("INSERT INTO sira_feedback (event_id, label_name, label, source, known_at)"
                           " VALUES ($1, 'fraud', false, 't', $2)", negative["event_id"], negative["occurred_at"])
        await rebuild(conn, PAYMENTS_V2)
        withdrawn, known = labels[0]
        changed = await record_labels(conn, [
            {"event_id": withdrawn, "label": False, "known_at": (known + timedelta(days=3)).isoformat()},
            {"event_id": negative["event_id"], "label": True,
             "known_at": (negative["occurred_at"] + timedelta(hours=5)).isoformat()},
        ], redactor=Redactor(b"labels"), source="t")
        assert changed.updated == 2
        done = await advance(conn, PAYMENTS_V2)
        assert done.labels > 0
        advanced = await stored_states(conn)
        await conn.execute("TRUNCATE sira_entity_states, sira_state_checkpoints, sira_job_watermarks")
        await rebuild(conn, PAYMENTS_V2)
        assert await stored_states(conn) == advanced


async def test_text_a_csv_reader_takes_for_missing_is_read_back_from_the_log_as_text(clean_db):
    """Namibia's country code "NA", a terminal "N/A", an event id "null": the log is read through PostgreSQL's
    CSV output, whose parser took them for missing values (refolds and training sets then disagreed with the
    online fold, and refolding the terminal "N/A" failed on a key the fold never saw)."""
    from sira.features.states import log_vectors

    events = payments(n=60, seed=53, days=3)
    for e in events[::3]:
        e["terminal_id"], e["country"] = "N/A", "NA"
    events[1]["event_id"] = "null"
    async with db.transaction(clean_db) as conn:
        await store(conn, events)
        cols = await read_events(conn, ENGINE, T0 - timedelta(days=1), FOREVER)
        assert set(cols.columns["terminal_id"].to_pylist()) == {e["terminal_id"] for e in events}
        assert set(cols.columns["country"].to_pylist()) == {e["country"] for e in events}
        assert "null" in cols.event_id.tolist()
        state, vectors = await log_vectors(conn, ENGINE, "terminal", "N/A", T0)
    assert len(vectors) == sum(e["terminal_id"] == "N/A" for e in events)
    ((rows, finals), _) = offline(events, [])
    assert same(ENGINE.decode("terminal", ENGINE.encode("terminal", state)), finals["terminal"]["N/A"])


async def test_reading_the_log_positions_holds_no_writer_back_behind_a_slow_one(clean_db):
    """While a slow writer (a large label import) is in flight, the read of the positions waits for it without
    queueing for the lock: in PostgreSQL's queue it held every new writer (the serving recorder, the stream)
    back until the slow one committed."""
    from sira.features.store import log_positions, writing_log

    async with clean_db.acquire() as slow, clean_db.acquire() as reader, clean_db.acquire() as other:
        held = slow.transaction()
        await held.start()
        await writing_log(slow)
        reading = asyncio.create_task(log_positions(reader))
        await asyncio.sleep(0.3)
        assert not reading.done()  # it waits for the slow writer
        async with other.transaction():
            await other.execute("SET LOCAL lock_timeout = '2s'")
            await writing_log(other)  # not behind the reader: no lock_timeout
            await other.execute("INSERT INTO sira_events (event_id, occurred_at, customer_id, amount) VALUES ('w1', $1, 'c', 1)",
                                T0)
        await held.commit()
        assert await asyncio.wait_for(reading, 10) == (await clean_db.fetchval("SELECT max(seq) FROM sira_events"), 0)


async def test_an_amount_folds_online_as_the_log_stores_it_whatever_its_decimals(clean_db):
    """numeric(20,4) rounds the exact value of the float sent: 57.12345 is 57.1234499999... and is stored 57.1234,
    while the online fold rounded the float product 571234.5 to 57.1235 (online and offline disagreed)."""
    from sira.ingest.bulk import store_events
    from sira.ingest.pii import Redactor

    rnd = random.Random(59)
    amounts = [57.12345, 123.45675, 1.03125, 2.00015, 5e-05, 999999.99995, 0.1, 12.345]
    amounts += [round(rnd.uniform(0, 10_000), 5) for _ in range(400)] + [rnd.uniform(0, 1e6) for _ in range(200)]
    events = [{"event_id": f"a{i}", "occurred_at": (T0 + timedelta(seconds=i)).isoformat(), "customer_id": "c",
               "amount": a} for i, a in enumerate(amounts)]
    async with db.transaction(clean_db) as conn:
        summary, _ = await store_events(conn, events, redactor=Redactor(b"amounts"), source="test")
        assert summary.accepted == len(events)
        stored = await read_events(conn, ENGINE, T0 - timedelta(days=1), FOREVER)
    online = EventColumns.from_events([{**e, "occurred_at": T0} for e in events], ENGINE.columns)
    by_id = dict(zip(stored.event_id.tolist(), stored.amount.tolist()))
    assert [by_id[e] for e in online.event_id.tolist()] == online.amount.tolist()


async def test_a_state_an_online_writer_folds_into_during_a_rebuild_is_not_overwritten(clean_db, monkeypatch):
    """A rebuild takes no entity lock: a payment folded online (committed) after the rebuild read the log was
    overwritten by the rebuild's state, which lacks it, and later folds built on that."""
    from sira.features import states as engine_states
    from sira.ingest.bulk import ingest_records
    from sira.ingest.pii import Redactor

    events = sorted(payments(n=200, seed=61, days=4), key=lambda e: e["occurred_at"])
    stored, live = events[:-1], events[-1]
    async with db.transaction(clean_db) as conn:
        await store(conn, stored)
        await rebuild(conn, PAYMENTS_V2)
    real = engine_states._fold_range

    async def a_payment_arrives_meanwhile(*args, **kwargs):
        folded = await real(*args, **kwargs)
        summary = await ingest_records(clean_db, [{**live, "occurred_at": live["occurred_at"].isoformat()}],
                                       redactor=Redactor(b"live"), source="live", feature_sets=[PAYMENTS_V2])
        assert summary.accepted == 1 and summary.snapshots_updated == 3
        return folded

    monkeypatch.setattr(engine_states, "_fold_range", a_payment_arrives_meanwhile)
    async with db.transaction(clean_db) as conn:
        await rebuild(conn, PAYMENTS_V2)
    monkeypatch.undo()
    (_, finals), _ = offline(events, [])
    await assert_states_are(clean_db, finals)


async def test_a_sparse_history_gets_checkpoint_partitions_only_for_the_months_it_has(clean_db):
    """Events in 1990 and now: a rebuild made a partition for every month in between in one transaction (~440,
    ten locks each; up to 2200, out of shared memory, and every later ingest failed the same way). Only the
    months that get checkpoints get a partition now, and the checkpoints read back as the log folds."""
    now = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=1)
    events = [{**e, "occurred_at": at, "customer_id": "c0"}
              for e, at in zip(payments(n=3), (datetime(1990, 1, 15, tzinfo=timezone.utc), now - timedelta(days=1),
                                               now))]
    async with db.transaction(clean_db) as conn:
        await store(conn, events)
        result = await rebuild(conn, PAYMENTS_V2)
    months = [r["month"] for r in await clean_db.fetch(
        """SELECT substring(c.relname FROM '_p(\\d{4}_\\d{2})$') AS month FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'sira_state_checkpoints'::regclass""")]
    assert "1990_01" in months and not [m for m in months if m and "1990_02" <= m <= "2024_12"]
    as_of = {r["as_of"] for r in await clean_db.fetch("SELECT as_of FROM sira_state_checkpoints")}
    assert datetime(1990, 1, 16, tzinfo=timezone.utc) in as_of and len(as_of) == 3 == len(
        {day_of(e["occurred_at"]) for e in events})
    assert await clean_db.fetchval("SELECT count(*) FROM sira_state_checkpoints") == result.checkpoints
    assert await clean_db.fetchval("SELECT count(*) FROM ONLY sira_state_checkpoints_default") == 0
    (_, finals), _ = offline(events, [])
    await assert_states_are(clean_db, finals)


async def test_an_amount_the_log_holds_past_int64_units_saturates_instead_of_failing_every_refold(clean_db):
    """Validation now refuses amounts over a trillion; a log may hold one from before (950,000,000,000,000:
    past int64 in 1e-4 units). Read from the log it saturated nowhere: bigint out of range, in every later
    advance. Now it folds as :func:`tiles.fixed` folds it online: saturated, and so does the window's sum."""
    events = [{**e, "customer_id": "c0"} for e in payments(n=3)]
    events[1]["amount"] = 950_000_000_000_000
    async with db.transaction(clean_db) as conn:
        await store(conn, events)
        await rebuild(conn, PAYMENTS_V2)
    (_, finals), _ = offline(events, [])
    await assert_states_are(clean_db, finals)
    state = finals["customer"]["c0"]
    assert ENGINE.features_at("customer", state, int(state[0, 1]))["customer_sum_amount_30d"] == (2**63 - 1) / 1e4


async def test_a_reversed_label_counts_until_its_reversal_was_known_not_before(clean_db):
    """Finding: a reversal (the same source, label false, known 11-20) overwrote the label row, and the features
    read only its current value: an 11-10 payment's terminal_risk_7d, 1.0 with the positive known since 11-03,
    became 0.0 offline, a fact of 11-20 used for 11-10. The label's history is kept (sql/029) and read: positive
    from 11-03 until 11-20, online and offline alike."""
    from sira.ingest.bulk import ingest_records
    from sira.ingest.labels import record_labels
    from sira.ingest.pii import Redactor

    day = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)
    base = {"customer_id": "c-rev", "card_token": "k-rev", "terminal_id": "t-rev", "amount": 10.0,
            "country": "SN", "device_id": "d"}
    x, y, z = ({**base, "event_id": f"rev-{n}", "occurred_at": at} for n, at in
               (("x", day), ("y", day + timedelta(days=9)), ("z", day + timedelta(days=20))))
    redactor = Redactor(b"states")
    def raw(e):
        return {**e, "occurred_at": e["occurred_at"].isoformat()}

    await ingest_records(clean_db, [raw(x), raw(y)], redactor=redactor, source="test")  # folded online too
    async with db.transaction(clean_db) as conn:
        await record_labels(conn, [{"event_id": "rev-x", "label": True, "known_at": datetime(2026, 11, 3, tzinfo=UTC),
                                    "source": "bank"}], redactor=redactor)
    async with db.transaction(clean_db) as conn:
        await record_labels(conn, [{"event_id": "rev-x", "label": False,
                                    "known_at": datetime(2026, 11, 20, tzinfo=UTC), "source": "bank"}],
                            redactor=redactor)
    await ingest_records(clean_db, [raw(z)], redactor=redactor, source="test")
    async with clean_db.acquire() as conn:
        events = await read_events(conn, ENGINE, T0 - timedelta(days=400), FOREVER)
        labels = await read_labels(conn, ENGINE, T0 - timedelta(days=400), FOREVER)
        stored = await read_states(conn, PAYMENTS_V2, "terminal", ["t-rev"])
    vectors, finals = ENGINE.build(events, labels)
    at = {eid: i for i, eid in enumerate(events.event_id.tolist())}
    names = ENGINE.names
    assert vectors[at["rev-y"], names.index("terminal_risk_7d")] == 1.0  # the positive known on 11-03
    assert vectors[at["rev-z"], names.index("terminal_risk_30d")] == 0.0  # reversed on 11-20: x no longer
    assert vectors[at["rev-z"], names.index("terminal_risk_count_30d")] == 2.0
    later = ENGINE_US(day + timedelta(days=28))  # the online state (labels folded as written) reads the same
    online = ENGINE.features_at("terminal", ENGINE.decode("terminal", stored["t-rev"]), later)
    assert online == ENGINE.features_at("terminal", finals["terminal"]["t-rev"], later)
    assert online["terminal_risk_count_30d"] == 3.0
