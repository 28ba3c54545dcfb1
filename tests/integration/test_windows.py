"""Default windows come from where the usable data is (docs/windows.md), whatever live traffic adds now.

The history is written straight into the tables (no Ray, no features): these tests are about which
events the windows take, counted by the label rule, and about failing before anything expensive runs.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from sira.core.audit import Actor
from sira.core.errors import InvalidInput
from sira.monitoring.performance import newest_predictions, read_labelled
from sira.registry import models as registry
from sira.training.runs import TrainRequest, run_training
from sira.training.windows import dense_window, training_windows, window_counts

START = datetime(2026, 9, 1, tzinfo=timezone.utc)
DAYS = 42
PER_DAY = 30


async def load_history(pool, *, label_delay_days: float, live: int = 5) -> dict:
    """``DAYS`` days of payments (every tenth a fraud, its chargeback known ``label_delay_days`` later), then
    ``live`` payments scored a minute ago, unlabelled: what `POST /v1/score` without occurred_at records."""
    events, labels = [], []
    for day in range(DAYS):
        for k in range(PER_DAY):
            at = START + timedelta(days=day, minutes=20 * k)
            eid = f"h-{day}-{k}"
            events.append((eid, at, f"c{k % 7}", 10.0 + k))
            if k % 10 == 3:
                labels.append((eid, True, at + timedelta(days=label_delay_days)))
    now = datetime.now(timezone.utc)
    for i in range(live):
        events.append((f"live-{i}", now - timedelta(minutes=1, seconds=i), "c1", 20.0))
    await pool.executemany("INSERT INTO sira_events (event_id, occurred_at, customer_id, amount) VALUES ($1, $2, $3, $4)",
                           events)
    await pool.executemany("""INSERT INTO sira_feedback (event_id, label, known_at, source)
                              VALUES ($1, $2, $3, 'chargeback')""", labels)
    return {"last": START + timedelta(days=DAYS - 1, minutes=20 * (PER_DAY - 1)), "now": now}


async def test_live_requests_scored_now_do_not_move_the_training_windows(clean_db):
    h = await load_history(clean_db, label_delay_days=3)
    async with clean_db.acquire() as conn:
        w = await training_windows(conn, maturity_days=7, label_delay_days=2)
        counts = await window_counts(conn, w, "fraud")
    assert w.test_to == h["last"] + timedelta(microseconds=1)  # the newest usable event, not the live ones
    assert w.cutoff >= h["now"]  # labels: as of the time of training
    assert w.train_from == START and w.train_from < w.train_to < w.test_from < w.test_to
    assert w.test_from == w.test_to - (w.test_to - w.train_from) / 4  # the newest quarter
    assert w.test_from - w.train_to == timedelta(days=2)  # the label-delay gap
    assert counts["test"]["rows"] > 0 and counts["test"]["positives"] > 0
    async with clean_db.acquire() as conn:  # a sliding training window: only the days before the gap
        slid = await training_windows(conn, maturity_days=7, label_delay_days=2, test_days=5, train_days=10)
    assert slid.test_to == w.test_to and slid.test_from == w.test_to - timedelta(days=5)
    assert slid.train_to == slid.test_from - timedelta(days=2) and slid.train_from == slid.train_to - timedelta(days=10)


async def test_labels_that_arrive_after_the_last_event_count_at_the_cut_off_of_now(clean_db):
    # Chargebacks known 20 days after their payment: every label of the test window arrives after the last event.
    h = await load_history(clean_db, label_delay_days=20, live=0)
    async with clean_db.acquire() as conn:
        w = await training_windows(conn, maturity_days=7, label_delay_days=2)
        assert (await window_counts(conn, w, "fraud"))["test"]["positives"] > 0
        # A backtest as of the last event: the test window's labels were not known yet.
        backtest = await training_windows(conn, maturity_days=7, label_delay_days=2, cutoff=h["last"])
        counts = await window_counts(conn, backtest, "fraud")
    assert backtest.cutoff == h["last"] and backtest.test_to <= h["last"] - timedelta(days=7) + timedelta(seconds=1)
    assert counts["test"]["positives"] == 0


async def test_a_default_test_window_ends_at_the_newest_mature_event_not_in_the_young_chargebacks(clean_db):
    """Past the label maturity only labelled events count, and a young event's label is mostly a chargeback:
    its legitimate neighbours are not known to be so yet. The span ended at the newest labelled event, so a
    cut-off a week after the last payment (chargebacks 3 days after theirs, maturity 7 days) put a default test
    window where every row was a fraud. It ends at the newest mature event: the test rows hold the frauds at
    the rate the history has them."""
    h = await load_history(clean_db, label_delay_days=3, live=0)
    cutoff = h["last"] + timedelta(hours=1)
    async with clean_db.acquire() as conn:
        w = await training_windows(conn, maturity_days=7, label_delay_days=2, cutoff=cutoff)
        counts = await window_counts(conn, w, "fraud")
    assert w.test_to <= w.mature_until + timedelta(microseconds=1)
    assert counts["test"]["rows"] > 0 and counts["test"]["positives"] / counts["test"]["rows"] == pytest.approx(0.1,
                                                                                                              abs=0.02)


async def test_an_empty_window_fails_before_anything_is_created_or_read(clean_db, settings):
    h = await load_history(clean_db, label_delay_days=20, live=0)
    with pytest.raises(InvalidInput) as caught:
        await run_training(settings, TrainRequest(model="fraud", label_maturity_days=7, as_of=h["last"]))
    assert caught.value.code == "empty_window"
    assert "test window" in caught.value.message and "no positive labels" in caught.value.message
    assert "--test-from" in caught.value.message and "--as-of" in caught.value.message
    assert caught.value.details["counts"]["test"]["positives"] == 0
    # nothing was created or recorded: no model, no training run
    assert await clean_db.fetchval("SELECT count(*) FROM sira_models") == 0
    assert await clean_db.fetchval("SELECT count(*) FROM sira_training_runs") == 0
    # a gap with no events at all, set by hand
    gap = h["last"] + timedelta(days=1)
    with pytest.raises(InvalidInput, match="has no usable events") as caught:
        await run_training(settings, TrainRequest(model="fraud", label_maturity_days=7, test_from=gap,
                                                  test_to=gap + timedelta(days=2)))
    assert caught.value.code == "empty_window"


def on_own_connection(dsn, work):
    """Run ``work(conn)`` on a connection of its own: the CLI runs its own event loop, so this test is sync."""
    import asyncio

    from sira.core import db

    async def run():
        conn = await db.connect(dsn)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_train_and_retrain_dry_runs_state_their_windows(clean_db, settings, pg_dsn):
    h = on_own_connection(pg_dsn, lambda conn: load_history(conn, label_delay_days=3))
    from sira.cli.main import app

    runner = CliRunner()
    done = runner.invoke(app, ["train", "--model", "fraud", "--label-maturity", "7", "--dry-run", "--json"])
    assert done.exit_code == 0, done.output
    plan = json.loads(done.stdout)
    assert plan["dry_run"] and plan["windows"]["test_to"] == (h["last"] + timedelta(microseconds=1)).isoformat()
    assert plan["counts"]["train"]["positives"] > 0 and plan["counts"]["test"]["rows"] > 0
    # a maturity of 0 (every label known at once) is the new model's, not the default's 30 days
    day_after = (h["last"] + timedelta(days=1)).strftime("%Y-%m-%d")
    done = runner.invoke(app, ["train", "--model", "fraud", "--label-maturity", "0", "--dry-run", "--json",
                               "--as-of", day_after])
    assert done.exit_code == 0 and json.loads(done.stdout)["windows"]["maturity_days"] == 0, done.output
    # a dry run creates nothing
    assert on_own_connection(pg_dsn, lambda conn: conn.fetchval("SELECT count(*) FROM sira_models")) == 0
    as_of = (h["last"] + timedelta(days=30)).strftime("%Y-%m-%d")
    done = runner.invoke(app, ["train", "--model", "fraud", "--label-maturity", "7", "--dry-run", "--as-of", as_of])
    assert done.exit_code == 0 and done.stdout == ""
    assert "labels known by" in done.stderr and as_of in done.stderr and "labelled events" in done.stderr
    on_own_connection(pg_dsn, registry_model)
    done = runner.invoke(app, ["retrain", "--model", "fraud", "--dry-run", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["windows"]["test_to"] == (h["last"] + timedelta(microseconds=1)).isoformat()


async def registry_model(conn):
    async with conn.transaction():
        await registry.ensure_model(conn, "fraud", actor=Actor.local(), feature_set="payments", feature_set_version=1,
                                    label_maturity_days=7)


async def test_drift_window_walks_back_over_sparse_days(clean_db):
    h = await load_history(clean_db, label_delay_days=3)
    async with clean_db.acquire() as conn:
        found = await dense_window(conn, source="sira_events", where="true", args=(), column="occurred_at", days=7,
                                   min_rows=100)
        assert found.hi == h["last"] + timedelta(microseconds=1) and found.lo == found.hi - timedelta(days=7)
        assert found.rows == 7 * PER_DAY and found.skipped == 5 and found.newest > h["last"]
        with pytest.raises(InvalidInput) as caught:
            await dense_window(conn, source="sira_events", where="true", args=(), column="occurred_at", days=7,
                               min_rows=10_000)
        assert caught.value.code == "insufficient_data"


async def history_with_predictions(pool) -> dict:
    """The simulated history (labels 3 days late), a fraud model, and a prediction of version 1 for every event."""
    h = await load_history(pool, label_delay_days=3)
    async with pool.acquire() as conn:
        await registry_model(conn)
    model_id = await pool.fetchval("SELECT id FROM sira_models")
    rows = await pool.fetch("SELECT event_id, occurred_at FROM sira_events")
    await pool.executemany(
        """INSERT INTO sira_predictions (prediction_id, scored_at, model_id, model_name, version, event_id, score,
                                         decision) VALUES ($1, $2, $3, 'fraud', 1, $4, 0.5, 'review')""",
        [(uuid.uuid4(), r["occurred_at"], model_id, r["event_id"]) for r in rows])
    return h


async def test_performance_range_ends_at_the_newest_prediction_with_a_usable_label(clean_db):
    h = await history_with_predictions(clean_db)
    async with clean_db.acquire() as conn:
        newest, usable = await newest_predictions(conn, "fraud", None, "fraud", h["now"], 7)
        assert newest > h["last"] and usable == h["last"]
        # a chargeback known now for a live payment makes it usable
        await conn.execute("INSERT INTO sira_feedback (event_id, label, known_at, source) VALUES "
                           "('live-0', true, now(), 'chargeback')")
        _, usable = await newest_predictions(conn, "fraud", None, "fraud", datetime.now(timezone.utc), 7)
        assert usable > h["last"]


async def test_a_backtests_range_and_labels_stay_when_labels_are_reversed_after_its_cut_off(clean_db):
    """Live performance read sira_feedback, whose row a source's later word overwrites: every chargeback
    withdrawn after a backtest's cut-off was no label at that cut-off, so its default range ended a week
    earlier and its frauds were gone. It reads what each source had said by the cut-off, as training does."""
    h = await history_with_predictions(clean_db)
    cutoff = h["last"]

    async def backtest() -> tuple:
        async with clean_db.acquire() as conn:
            _, usable = await newest_predictions(conn, "fraud", None, "fraud", cutoff, 7)
            read = await read_labelled(conn, "fraud", START, h["last"], "fraud", cutoff, 7)
        (labelled,) = read.groups.values()
        return usable, list(labelled.at_us), list(labelled.y)

    before = await backtest()
    assert before[0] > h["last"] - timedelta(days=4) and sum(before[2]) > 100
    await clean_db.execute("UPDATE sira_feedback SET label = NOT label, known_at = now()")
    assert await backtest() == before
    # at a cut-off after the reversals they are known: no fraud is left
    cutoff = datetime.now(timezone.utc)
    assert sum((await backtest())[2]) == 0


@pytest.mark.parametrize("make", [
    lambda: ("drift", {"days": float("inf")}, "--days must be a number of days above 0 to 36500"),
    lambda: ("drift", {"days": 1e9}, "--days must be"),
    lambda: ("performance", {"days": float("nan")}, "--days must be"),
    lambda: ("performance", {"days": 3650, "window_days": 0.01}, "at most 1000 windows"),
])
async def test_window_lengths_out_of_bounds_are_refused_before_anything_is_read(settings, make):
    """`--days inf` (or 1e9, or NaN) reached timedelta and failed as `internal`; 365,000 windows of a
    performance run each scanned every prediction (an effective hang)."""
    from sira.monitoring.drift import DriftRequest, run_drift
    from sira.monitoring.performance import PerformanceRequest, run_performance

    kind, fields, message = make()
    with pytest.raises(InvalidInput, match=message) as caught:
        if kind == "drift":
            await run_drift(settings, DriftRequest(model="fraud", **fields))
        else:
            await run_performance(settings, PerformanceRequest(model="fraud", **fields))
    assert caught.value.code == "invalid_option"


@pytest.mark.parametrize("kind", ["train", "train --dry-run", "performance", "retrain --dry-run"])
async def test_a_label_cut_off_in_the_future_is_refused(clean_db, settings, kind):
    """A future --as-of moved the test window forward: unlabelled events 1-15 days old counted as mature
    negatives, and labels known only later were used. The cut-off is now or earlier (a backtest looks back)."""
    from sira.core.auth import Identity
    from sira.monitoring.performance import PerformanceRequest, run_performance
    from sira.monitoring.retrain import RetrainRequest, run_retrain

    await load_history(clean_db, label_delay_days=3)
    async with clean_db.acquire() as conn:
        await registry_model(conn)
    future = datetime.now(timezone.utc) + timedelta(days=57)
    with pytest.raises(InvalidInput, match=r"--as-of .* is in the future") as caught:
        if kind.startswith("train"):
            await run_training(settings, TrainRequest(model="fraud", as_of=future, dry_run="dry" in kind))
        elif kind == "performance":
            await run_performance(settings, PerformanceRequest(model="fraud", as_of=future))
        else:
            await run_retrain(settings, RetrainRequest(model="fraud", as_of=future, dry_run=True),
                              Identity("root", frozenset({"admin"})))
    assert caught.value.code == "invalid_option"
    assert await clean_db.fetchval("SELECT count(*) FROM sira_training_runs") == 0
    # now (and a past cut-off) stays allowed
    plan = await run_training(settings, TrainRequest(model="fraud", as_of=datetime.now(timezone.utc), dry_run=True))
    assert plan["dry_run"]


async def test_windows_out_of_order_are_set_wrongly_not_empty(clean_db, settings):
    """A test window that starts before training ends was `empty_window` (a window that holds nothing usable),
    where every other window set wrongly is `invalid_window` (docs/errors.md)."""
    h = await load_history(clean_db, label_delay_days=20, live=0)
    start = h["last"] - timedelta(days=20)
    with pytest.raises(InvalidInput) as caught:
        await run_training(settings, TrainRequest(model="fraud", label_maturity_days=7, train_from=start,
                                                  train_to=start + timedelta(days=10),
                                                  test_from=start + timedelta(days=5),
                                                  test_to=start + timedelta(days=12)))
    assert caught.value.code == "invalid_window" and "out of order" in caught.value.message
    assert await clean_db.fetchval("SELECT count(*) FROM sira_models") == 0
