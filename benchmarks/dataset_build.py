"""Training-set build rate, feature set v1 and v2, each against a `COPY ... TO STDOUT` of what it reads.

    python benchmarks/dataset_build.py [--events 100000]

Simulated events are ingested (not timed), then in one run:
- v1 (``payments@1``): the baseline streams the builder's own query (events joined with their JSONB feature
  rows and labels) over the whole window out of PostgreSQL with COPY; SIRA builds the labelled matrix (time
  shards as Ray Data tasks, label rules, label-derived features recomputed as of each event);
- v2 (``payments@2``, feature engine v2): the baseline COPYs, one after another, the window's event columns
  and label columns (what the builder reads, from a horizon before the window: no checkpoints here); SIRA
  reads them as Arrow columns (two connections at once), folds them with the compiled kernel (a thread per
  entity type) and applies the label rule, in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import timedelta

from _common import report, simulated_database

from sira.core import db
from sira.demo.simulate import SimulationConfig
from sira.features.definitions import PAYMENTS_V1
from sira.training.datasets import SHARD_SQL, build_feature_dataset
from sira.training.windows import Windows


async def copy_baseline(dsn: str, windows: Windows) -> tuple[float, int]:
    conn = await db.connect(dsn)
    try:
        chunks: list[int] = []
        started = time.perf_counter()
        await conn.copy_from_query(SHARD_SQL, windows.train_from, windows.test_to, PAYMENTS_V1.name,
                                   PAYMENTS_V1.version, windows.cutoff, "fraud",
                                   output=lambda data: chunks.append(len(data)) or asyncio.sleep(0))
        seconds = time.perf_counter() - started
        rows = await conn.fetchval("SELECT count(*) FROM sira_events WHERE occurred_at >= $1 AND occurred_at < $2",
                                   windows.train_from, windows.test_to)
        return seconds, rows
    finally:
        await conn.close()


async def copy_columns(dsn: str, windows: Windows) -> float:
    """Seconds to COPY out what the v2 builder reads: the event columns (from a horizon before the window:
    no checkpoints here), the positive labels' columns, the labels' summary for the label rule."""
    from sira.features.columns import US_SQL
    from sira.features.definitions import PAYMENTS_V2
    from sira.features.engine import engine_of
    from sira.training.columnar import FEEDBACK_SQL, SEGMENTS

    engine = engine_of(PAYMENTS_V2)
    start = windows.train_from - timedelta(microseconds=engine.horizon_us)
    columns = ", ".join(dict.fromkeys([*engine.columns, *SEGMENTS]))
    conn = await db.connect(dsn)
    try:
        sink = (lambda data: asyncio.sleep(0))
        started = time.perf_counter()
        await conn.copy_from_query(f"SELECT event_id, {US_SQL.format('occurred_at')}, (amount * 10000)::int8,"
                                   f" {columns} FROM sira_events WHERE occurred_at >= $1 AND occurred_at < $2",
                                   start, windows.test_to, output=sink)
        await conn.copy_from_query(f"SELECT f.event_id, {US_SQL.format('f.known_at')} FROM sira_feedback f"
                                   " WHERE f.label AND f.known_at >= $1 AND f.known_at < $2", start, windows.test_to,
                                   output=sink)
        await conn.copy_from_query(FEEDBACK_SQL, windows.cutoff, "fraud", output=sink)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def main(events: int, days: int) -> None:
    async with simulated_database(SimulationConfig(days=days, customers=max(50, int(events / (days * 1.2))),
                                                   seed=2)) as dsn:
        conn = await db.connect(dsn)
        first, last = await conn.fetchrow("SELECT min(occurred_at), max(occurred_at) FROM sira_events")
        await conn.close()
        end = last - timedelta(days=7)
        windows = Windows(first, end - timedelta(days=7), end - timedelta(days=5), end, last, 7)
        copy_s, rows = await copy_baseline(dsn, windows)
        started = time.perf_counter()
        ds, _ = await asyncio.to_thread(build_feature_dataset, dsn, PAYMENTS_V1, windows)
        sira_s = time.perf_counter() - started
        from sira.features.definitions import PAYMENTS_V2

        await asyncio.to_thread(build_feature_dataset, dsn, PAYMENTS_V2, windows)  # compiled before timing
        copy2_s = await copy_columns(dsn, windows)
        started = time.perf_counter()
        ds2, _ = await asyncio.to_thread(build_feature_dataset, dsn, PAYMENTS_V2, windows)
        v2_s = time.perf_counter() - started
    report("dataset_build", {
        "events_in_windows": rows, "labelled_rows": int(ds.matrix.y.size), "features": len(PAYMENTS_V1.names()),
        "copy_rows_per_s": round(rows / copy_s), "sira_rows_per_s": round(rows / sira_s),
        "ratio_vs_copy": round(copy_s / sira_s, 3), "shards": ds.fingerprint["shards"],
        "v2_copy_columns_rows_per_s": round(rows / copy2_s), "v2_rows_per_s": round(rows / v2_s),
        "v2_ratio_vs_copy_columns": round(copy2_s / v2_s, 3), "v2_events_folded": ds2.fingerprint["events_folded"],
        "v2_same_rows_as_v1": ds2.ids == ds.ids,
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.days))
