"""Training sets from the feature store, read straight from the tables: labels as they stood at the label
cut-off, whatever was said since, and feature set v1's vectors for events it stored no row for.

The history is written into the tables directly (labels through ``sira_feedback``, whose trigger keeps the
label history, sql/029); the shard reader and the v2 fold are called in this process, without Ray.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

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
                           10.0 + (i % 17), "SN" if i % 5 else "FR", "pos" if i % 2 else "ecom"))
            if i % 10 == 3:
                frauds.append(eid)
    await pool.executemany(
        """INSERT INTO sira_events (event_id, occurred_at, customer_id, card_token, terminal_id, amount, country,
                                    channel) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""", events)
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

