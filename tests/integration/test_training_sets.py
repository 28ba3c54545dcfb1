"""Training sets from the feature store, read straight from the tables: labels as they stood at the label
cut-off, whatever was said since, and feature set v1's vectors for events it stored no row for.

The history is written into the tables directly (labels through ``sira_feedback``, whose trigger keeps the
label history, sql/029); the shard reader and the v2 fold are called in this process, without Ray.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import numpy as np

from sira.features.definitions import PAYMENTS_V1, PAYMENTS_V2
from sira.training.columnar import tiles_rows
from sira.training.datasets import read_feature_shard
from sira.training.windows import Windows, window_counts

START = datetime(2026, 9, 1, tzinfo=timezone.utc)
DAYS = 20
PER_DAY = 24
CUTOFF = START + timedelta(days=30)
WINDOWS = Windows(START, START + timedelta(days=12), START + timedelta(days=14), START + timedelta(days=DAYS),
                  CUTOFF, 5.0)


async def load_payments(pool) -> list[str]:
    """``DAYS`` days of hourly payments over a few customers, cards and terminals; every tenth a fraud whose
    chargeback is known two days later. Returns the frauds' event ids, oldest first."""
    events, frauds = [], []
    for day in range(DAYS):
        for k in range(PER_DAY):
            i = day * PER_DAY + k
            eid = f"p-{i:05d}"
            events.append((eid, START + timedelta(days=day, hours=k), f"c{i % 6}", f"k{i % 4}", f"t{i % 3}",
                           10.0 + (i % 17), "SN" if i % 5 else "FR", "pos" if i % 2 else "ecom", f"d{i % 7}"))
            if i % 10 == 3:
                frauds.append(eid)
    await pool.executemany(
        """INSERT INTO sira_events (event_id, occurred_at, customer_id, card_token, terminal_id, amount, country,
                                    channel, device_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""", events)
    await pool.executemany(
        """INSERT INTO sira_feedback (event_id, label, known_at, source)
           SELECT $1, true, occurred_at + interval '2 days', 'chargeback' FROM sira_events WHERE event_id = $1""",
        [(f,) for f in frauds])
    return frauds


def training_set(dsn: str, windows: Windows) -> dict:
    """The labels of both builders' rows (feature set v1's shard reader, v2's fold): {builder: {event id: label}}."""
    v1 = [r for lo, hi in ((windows.train_from, windows.train_to), (windows.test_from, windows.test_to))
          for r in read_feature_shard(dsn, PAYMENTS_V1.name, PAYMENTS_V1.version, lo, hi, windows, "fraud")]
    _, y, _, ids, _, _ = tiles_rows(dsn, PAYMENTS_V2, windows)
    return {"v1": {r["event_id"]: r["label"] for r in v1}, "v2": dict(zip(ids, y.tolist()))}


async def test_a_label_reversed_after_the_cut_off_leaves_a_backtest_unchanged(clean_db, pg_dsn):
    """A backtest with --as-of reproduces: chargebacks withdrawn after the cut-off (sira_feedback's row is
    overwritten in place) were frauds at the cut-off, in both builders' rows and in the windows' counts. A
    withdrawal known by the cut-off does count."""
    frauds = await load_payments(clean_db)
    before = await asyncio.to_thread(training_set, pg_dsn, WINDOWS)
    async with clean_db.acquire() as conn:
        counts = await window_counts(conn, WINDOWS, "fraud")
    inside = [f for f in frauds if f in before["v1"]]  # not those of the gap between the windows
    assert before["v1"] == before["v2"] and sum(before["v1"].values()) == len(inside) > 30
    reversed_ = [frauds[2], frauds[-2]]  # one in the training window, one in the test window
    assert all(before["v1"][e] == 1.0 for e in reversed_)
    await clean_db.executemany("UPDATE sira_feedback SET label = false, known_at = $2 WHERE event_id = $1",
                               [(e, CUTOFF + timedelta(days=3)) for e in reversed_])
    after = await asyncio.to_thread(training_set, pg_dsn, WINDOWS)
    async with clean_db.acquire() as conn:
        assert await window_counts(conn, WINDOWS, "fraud") == counts
    assert after == before
    # a cut-off after the withdrawals: they are known, the events are legitimate
    later = Windows(*(getattr(WINDOWS, k) for k in ("train_from", "train_to", "test_from", "test_to")),
                    CUTOFF + timedelta(days=4), 5.0)
    now = await asyncio.to_thread(training_set, pg_dsn, later)
    assert now["v1"] == now["v2"] and all(now["v1"][e] == 0.0 for e in reversed_)
    assert sum(now["v1"].values()) == len(inside) - 2
    async with clean_db.acquire() as conn:
        moved = await window_counts(conn, later, "fraud")
    assert moved["train"]["positives"] == counts["train"]["positives"] - 1
    assert moved["test"]["positives"] == counts["test"]["positives"] - 1


def v1_vectors(dsn: str, windows: Windows) -> dict:
    """Feature set v1's rows of a training set (its shard reader): {event id: row}."""
    return {r["event_id"]: r for lo, hi in ((windows.train_from, windows.train_to), (windows.test_from, windows.test_to))
            for r in read_feature_shard(dsn, PAYMENTS_V1.name, PAYMENTS_V1.version, lo, hi, windows, "fraud")}


async def test_a_label_reversed_after_the_cut_off_leaves_v1_label_features_unchanged(clean_db, pg_dsn):
    """Finding: feature set v1's label-derived features (terminal_risk_*) of a training set were recomputed
    from sira_feedback as it is now, so a chargeback withdrawn after the cut-off moved the risk of the later
    events of its terminal: the same --as-of backtest gave other vectors (its labels did not move). They now
    read the labels as they stood at the cut-off, as the label column does; a withdrawal known by the cut-off
    still counts."""
    frauds = await load_payments(clean_db)
    risk = [n for n in PAYMENTS_V1.names() if "_risk_" in n]
    before = await asyncio.to_thread(v1_vectors, pg_dsn, WINDOWS)
    reversed_ = [frauds[2], frauds[3]]  # of the training window: the later events of their terminals count them
    await clean_db.executemany("UPDATE sira_feedback SET label = false, known_at = $2 WHERE event_id = $1",
                               [(e, CUTOFF + timedelta(days=3)) for e in reversed_])
    after = await asyncio.to_thread(v1_vectors, pg_dsn, WINDOWS)
    moved = {(e, n) for e in before for n in risk if before[e][n] != after[e][n]}
    assert not moved, sorted(moved)[:5]
    assert after == before
    # a cut-off after the withdrawals: they are known, and the terminals' later risk drops
    later = Windows(*(getattr(WINDOWS, k) for k in ("train_from", "train_to", "test_from", "test_to")),
                    CUTOFF + timedelta(days=4), 5.0)
    now = await asyncio.to_thread(v1_vectors, pg_dsn, later)
    assert now.keys() == before.keys()
    lower = [e for e in now if now[e]["terminal_risk_30d"] < before[e]["terminal_risk_30d"]]
    assert len(lower) > 20 and all(now[e]["terminal_risk_30d"] <= before[e]["terminal_risk_30d"] for e in now)
    # once every word is known by the cut-off, the labels as they stood then are sira_feedback's: what ingest,
    # serving and a read without a cut-off (batch scoring, drift) count
    current = {r["event_id"]: r for lo, hi in ((START, START + timedelta(days=DAYS)),)
               for r in await asyncio.to_thread(read_feature_shard, pg_dsn, "payments", 1, lo, hi, None, "fraud")}
    assert {e: [now[e][n] for n in risk] for e in now} == {e: [current[e][n] for n in risk] for e in now}


async def test_feature_set_v1_events_without_a_stored_row_get_their_vectors_from_the_event_log(clean_db, pg_dsn):
    """Feature set v1 stores a row per event only while it is in service: an event without one was a row of
    missing values (a model on payments@1 trained on 41 of 53 features missing, and was registered). Its
    vector is computed from the event log now, the one ingest would have stored, and the row says so."""
    from sira.core import db
    from sira.features import store

    await load_payments(clean_db)
    lo, hi = START + timedelta(days=9), START + timedelta(days=11)
    computed = await asyncio.to_thread(read_feature_shard, pg_dsn, "payments", 1, lo, hi, None, "fraud")
    assert len(computed) == 2 * PER_DAY
    names = PAYMENTS_V1.names()
    for name in ("amount", "customer_count_1d", "card_count_7d", "terminal_count_30d", "customer_amount_ratio_30d"):
        assert all(r[name] is not None for r in computed), name
    assert all(r["from_log"] for r in computed)
    # what ingest stores for the same events (the offline path, written as ingest writes it)
    conn = await db.connect(pg_dsn)
    try:
        events = [dict(r) for r in await conn.fetch(
            """SELECT event_id, occurred_at, customer_id, card_token, terminal_id, amount::float8 AS amount
                 FROM sira_events WHERE occurred_at >= $1 AND occurred_at < $2""", lo, hi)]
        async with conn.transaction():
            await store.write_feature_rows(conn, PAYMENTS_V1, await store.compute_event_features(conn, PAYMENTS_V1,
                                                                                                events))
    finally:
        await conn.close()
    read = await asyncio.to_thread(read_feature_shard, pg_dsn, "payments", 1, lo, hi, None, "fraud")
    assert not any(r["from_log"] for r in read)
    assert np.array_equal(np.array([[r[n] for n in names] for r in read], dtype=float),
                          np.array([[r[n] for n in names] for r in computed], dtype=float), equal_nan=True)


async def test_a_model_on_a_feature_set_out_of_service_trains_on_real_vectors(clean_db, settings, ray_session):
    """`sira models update fraudv1 --feature-set payments@1` then `sira train`: the set had no stored rows,
    and the candidate was registered on features missing for every row. Now its vectors come from the event
    log: no feature of the reference is missing everywhere, and the run records how many were computed."""
    from sira.core.artifacts import ArtifactRef, load_artifact
    from sira.core.auth import Identity
    from sira.monitoring.retrain import RetrainRequest, run_retrain
    from sira.registry import models as registry
    from sira.training.runs import TrainRequest, run_training

    await load_payments(clean_db)
    async with clean_db.acquire() as conn:
        await registry.create_model(conn, Identity("t-admin", frozenset({"admin"})), "fraudv1",
                                    model_type="fraud_detection", feature_set="payments", feature_set_version=1,
                                    label_maturity_days=5)
    # a dry run says so first (sira retrain --dry-run here; sira train --dry-run calls the same)
    plan = await run_retrain(settings, RetrainRequest(model="fraudv1", trials=0, label_delay_days=1, dry_run=True),
                             Identity("t-data_scientist", frozenset({"data_scientist"})))
    windowed = plan["counts"]["train"]["rows"] + plan["counts"]["test"]["rows"]  # every event is mature
    assert plan["feature_rows"] == {"feature_set": "payments@1", "events_without_feature_rows": windowed}
    result = await run_training(settings, TrainRequest(model="fraudv1", label_delay_days=1, num_threads=1,
                                                       params={"num_boost_round": 30, "min_data_in_leaf": 5}))
    run = await clean_db.fetchrow("SELECT dataset_fingerprint FROM sira_training_runs WHERE run_id = $1::uuid",
                                  result["run_id"])
    rows = run["dataset_fingerprint"]["rows"]
    assert rows > 300 and run["dataset_fingerprint"]["features_from_log"] == rows
    manifest = load_artifact(settings, ArtifactRef(result["artifact"]["uri"], result["artifact"]["sha256"])).manifest
    missing = {name: f["missing_rate"] for name, f in manifest["reference"]["features"].items()}
    assert not [name for name, rate in missing.items() if rate == 1.0], missing


def test_sira_train_dry_run_says_which_vectors_will_come_from_the_event_log(create_database, tmp_path, monkeypatch,
                                                                            capsys):
    from sira.core import db
    from sira.core.auth import Identity
    from sira.registry import models as registry
    from tests.conftest import cli_in_process, migrate_database, run_sync

    dsn = create_database("sira_v1_plan")

    async def load() -> None:
        await migrate_database(dsn)
        pool = await db.create_pool(dsn)
        try:
            await load_payments(pool)
            async with db.transaction(pool) as conn:
                await registry.create_model(conn, Identity("t-admin", frozenset({"admin"})), "fraudv1",
                                            model_type="fraud_detection", feature_set="payments",
                                            feature_set_version=1, label_maturity_days=5)
        finally:
            await pool.close()

    run_sync(load())
    env = {"SIRA_DATABASE_URL": dsn, "SIRA_WORKSPACE": str(tmp_path)}
    args = ["train", "--model", "fraudv1", "--label-delay", "1", "--dry-run"]
    done = cli_in_process(monkeypatch, capsys, env, *args, "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    windowed = plan["counts"]["train"]["rows"] + plan["counts"]["test"]["rows"]  # every event is mature
    assert plan["feature_rows"] == {"feature_set": "payments@1", "events_without_feature_rows": windowed}
    said = cli_in_process(monkeypatch, capsys, env, *args)
    assert said.returncode == 0 and f"payments@1 stores none for {windowed:,} events" in " ".join(said.stderr.split())


async def test_a_v1_training_set_is_read_when_no_cpu_is_free(clean_db, pg_dsn, ray_session, caplog):
    """A feature set v1 training job on a 1-CPU head hung at "building the training set..." forever: its driver
    held the only CPU and Ray Data's read tasks waited for one without a word. With no CPU free, this process
    reads the shards itself, says so, and builds the same set."""
    from sira.training.datasets import build_feature_dataset
    from tests.conftest import cpus_held

    await load_payments(clean_db)
    with cpus_held(leaving=0):
        held, held_split = await asyncio.wait_for(
            asyncio.to_thread(build_feature_dataset, pg_dsn, PAYMENTS_V1, WINDOWS), timeout=120)
    assert "no CPU free for Ray Data's read tasks" in caplog.text
    assert held.fingerprint["rows"] == held_split.train.size + held_split.valid.size + held_split.test.size > 300
    free, _ = await asyncio.to_thread(build_feature_dataset, pg_dsn, PAYMENTS_V1, WINDOWS)  # Ray Data's tasks
    assert free.fingerprint["content_sha256"] == held.fingerprint["content_sha256"]
