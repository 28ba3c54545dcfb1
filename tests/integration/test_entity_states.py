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


async def test_sira_features_rebuild_builds_what_a_switch_needs(clean_db):
    import json
    import subprocess
    import sys

    events = payments(n=120, seed=17, days=3)
    async with db.transaction(clean_db) as conn:
        await store(conn, events, positives(events))
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "sira", "features", "rebuild",
                                                    "--feature-set", "payments@2", "--json"],
                                   capture_output=True, text=True, timeout=300)
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
