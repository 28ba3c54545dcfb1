"""Online and offline features agree; snapshots, late events, labels and point-in-time reads."""

from datetime import datetime, timedelta, timezone

import pytest

from sira.core.errors import NotFound
from sira.features import store as feature_store
from sira.features.definitions import PAYMENTS_V1
from sira.features.store import historical_features, materialize, read_snapshot
from sira.ingest.bulk import ingest_records
from sira.ingest.labels import record_labels
from sira.ingest.pii import Redactor

R = Redactor(b"feature-store-tests")
T0 = datetime(2026, 9, 1, tzinfo=timezone.utc)


def payment(i, minutes, customer, terminal, amount, card="4111111111111111", country="SN", **extra):
    return {"event_id": f"p{i:04d}", "occurred_at": (T0 + timedelta(minutes=minutes)).isoformat(),
            "customer_id": customer, "terminal_id": terminal, "card_number": card, "amount": amount,
            "country": country, "device_id": f"dev-{customer}", **extra}


def timeline(n=120, seed=5):
    import random

    rnd = random.Random(seed)
    minute = 0
    out = []
    for i in range(n):
        minute += rnd.randint(1, 400)
        out.append(payment(i, minute, f"c{rnd.randint(0, 5)}", f"t{rnd.randint(0, 3)}", round(rnd.uniform(1, 300), 2),
                           card=["4111111111111111", "4000056655665556", "5555555555554444"][rnd.randint(0, 2)],
                           country=rnd.choice(["SN", "SN", "FR"])))
    return out


async def vectors(pool):
    rows = await pool.fetch("SELECT entity_type, event_id, features FROM sira_features")
    return {(r["entity_type"], r["event_id"]): r["features"] for r in rows}


async def test_online_ingest_equals_offline_recomputation(clean_db):
    events = timeline()
    for start in range(0, len(events), 7):  # small batches, in time order, as a stream delivers them
        await ingest_records(clean_db, events[start:start + 7], redactor=R, feature_sets=[PAYMENTS_V1], source="test")
    online = await vectors(clean_db)
    assert len(online) == 4 * len(events)
    async with clean_db.acquire() as conn:
        stored = [dict(r) for r in await conn.fetch(
            "SELECT event_id, occurred_at, amount::float8 AS amount, customer_id, card_token, terminal_id FROM sira_events"
        )]
        offline_rows = await feature_store.compute_event_features(conn, PAYMENTS_V1, stored)
    offline = {(r.entity_type, r.event_id): r.features for r in offline_rows}
    assert offline.keys() == online.keys()
    mismatches = [k for k in online if online[k] != offline[k]]
    assert not mismatches, mismatches[:3]


async def test_snapshots_follow_the_newest_event_and_fold_late_events(clean_db):
    fs = PAYMENTS_V1
    await ingest_records(clean_db, [payment(1, 0, "c1", "t1", 10), payment(2, 60 * 24, "c1", "t1", 20)],
                         redactor=R, feature_sets=[fs], source="test")
    async with clean_db.acquire() as conn:
        snap = await read_snapshot(conn, fs, "customer", "c1", now=T0 + timedelta(days=1, minutes=5))
    assert snap.features["customer_count_30d"] == 2 and snap.as_of == T0 + timedelta(days=1)
    assert not snap.stale
    # A late event inside the lookback: stored, folded into the state, snapshot recomputed as of the newest.
    await ingest_records(clean_db, [payment(3, 60 * 12, "c1", "t1", 30)], redactor=R, feature_sets=[fs], source="test")
    async with clean_db.acquire() as conn:
        snap = await read_snapshot(conn, fs, "customer", "c1", now=T0 + timedelta(days=3))
        late_row = await conn.fetchval(
            "SELECT features FROM sira_features WHERE entity_type = 'customer' AND event_id = 'p0003'"
        )
    assert snap.as_of == T0 + timedelta(days=1)
    assert snap.features["customer_count_30d"] == 3 and snap.features["customer_sum_amount_30d"] == 60
    assert late_row["customer_count_1d"] == 2  # the late event's own vector sees only what came before it
    assert snap.stale  # two days without events against a one-day TTL
    # An event older than the lookback: stored for offline use, the online state is unchanged.
    await ingest_records(clean_db, [payment(4, -60 * 24 * 40, "c1", "t1", 99)], redactor=R, feature_sets=[fs], source="test")
    async with clean_db.acquire() as conn:
        again = await read_snapshot(conn, fs, "customer", "c1")
        assert await conn.fetchval("SELECT count(*) FROM sira_events WHERE event_id = 'p0004'") == 1
    assert again.features == snap.features
    # Windows age correctly when evaluated later from the state.
    later = feature_store.features_at(fs.entity("customer"), again.state, T0 + timedelta(days=2, hours=1))
    assert later["customer_count_1d"] == 0 and later["customer_count_7d"] == 3
    with pytest.raises(NotFound):
        async with clean_db.acquire() as conn:
            await read_snapshot(conn, fs, "customer", "nobody")


async def test_materialize_is_incremental_and_picks_up_labels(clean_db):
    fs = PAYMENTS_V1
    events = [payment(i, i * 60, f"c{i % 3}", "t1", 10 + i) for i in range(12)]
    async with clean_db.acquire() as conn:
        from sira.ingest.bulk import store_events

        async with conn.transaction():
            await store_events(conn, events, redactor=R, source="file")  # no online folding: snapshots empty
        first = await materialize(conn, fs)
        assert first.entities == {"customer": 3, "card": 1, "terminal": 1}
        second = await materialize(conn, fs)
        assert second.entities == {"customer": 0, "card": 0, "terminal": 0}
        # A label on a terminal's event changes that terminal's risk: only it is refreshed.
        await record_labels(conn, [{"event_id": "p0000", "label": True, "known_at": T0 + timedelta(hours=1)}],
                            redactor=R)
        third = await materialize(conn, fs)
        assert third.entities == {"customer": 0, "card": 0, "terminal": 1}
        full = await materialize(conn, fs, full=True)
        assert full.entities["customer"] == 3


async def test_point_in_time_retrieval_never_sees_the_future(clean_db):
    fs = PAYMENTS_V1
    day = 60 * 24
    events = [
        payment(1, 0, "c1", "t1", 10), payment(2, 2 * day, "c1", "t1", 20),
        payment(3, 9 * day, "c2", "t1", 30), payment(4, 9 * day + 30, "c1", "t1", 40),
        payment(5, 20 * day, "c1", "t1", 50),
    ]
    async with clean_db.acquire() as conn:
        from sira.ingest.bulk import store_events

        async with conn.transaction():
            await store_events(conn, events, redactor=R, source="file")
        # p0001 is fraud, known on day 5; p0002 is fraud but only known on day 30
        await record_labels(conn, [
            {"event_id": "p0001", "label": True, "known_at": T0 + timedelta(days=5)},
            {"event_id": "p0002", "label": True, "known_at": T0 + timedelta(days=30)},
        ], redactor=R)
        rows = await historical_features(conn, fs, [
            {"customer_id": "c1", "terminal_id": "t1", "timestamp": T0 + timedelta(days=9, minutes=29)},
            {"event_id": "p0004"},
            {"customer_id": "c1", "timestamp": T0 - timedelta(days=1)},
        ])
    before, at_event, nothing = rows
    assert before["customer_count_30d"] == 2 and before["customer_sum_amount_30d"] == 30  # not p0004 yet
    assert at_event["customer_count_30d"] == 3 and at_event["customer_sum_amount_30d"] == 70  # itself included
    assert at_event["amount"] == 40 and at_event["customer_amount_ratio_30d"] == pytest.approx(40 / (70 / 3))
    # terminal risk at day 9: window (day 9 - 7 - 30, day 9 - 7] holds p0001 and p0002;
    # only p0001's label was known before day 9
    assert at_event["terminal_risk_count_30d"] == 2 and at_event["terminal_risk_30d"] == 0.5
    assert before["amount"] is None  # a timestamp query has no event-level features
    assert nothing["customer_count_30d"] == 0 and nothing["terminal_count_1d"] is None
