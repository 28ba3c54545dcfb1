"""Ingest throughput: SIRA's file ingest (validate, redact, dedupe, features) against a plain COPY.

    python benchmarks/ingest_throughput.py [--events 1000000] [--feature-set payments@2] [--local-below ROWS]

Both load the same simulated rows into the same PostgreSQL in the same run:
the baseline COPYs them as they are into a bare table (no constraints, no
indexes, no features); SIRA runs `sira ingest` on the Parquet file, folding the
events into the feature set named (v2: states and daily checkpoints; v1: a
feature row per event and entity). A file of fewer than ``--local-below`` rows
(default: SIRA's own threshold) loads in this process; a larger one through Ray
Data's tasks, Ray being started before timing (its start-up is not throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from _common import report, scratch_database

from sira.core import db
from sira.core.config import Settings
from sira.core.ray_runtime import init_ray
from sira.demo.simulate import SimulationConfig, simulate
from sira.features.definitions import FeatureSet, parse_feature_set
from sira.ingest.bulk import LOCAL_BELOW, ingest_files


async def plain_copy(dsn: str, path: Path) -> float:
    table = pq.read_table(path)
    records = list(zip(*(table.column(c).to_pylist() for c in table.column_names)))
    conn = await db.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE bench_copy (event_id text, occurred_at timestamptz, customer_id text, card_number text,"
            " merchant_id text, terminal_id text, amount float8, currency text, country text, channel text,"
            " device_id text, ip_address text, email text, phone text)"
        )
        started = time.perf_counter()
        await conn.copy_records_to_table("bench_copy", records=records, columns=table.column_names)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def main(events: int, days: int, fs: FeatureSet, local_below: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        customers = max(50, int(events / (days * 1.2)))
        sim = simulate(SimulationConfig(days=days, customers=customers, seed=1), Path(tmp))
        n = pq.read_metadata(sim.events_path).num_rows
        async with scratch_database(Settings()) as dsn:
            baseline_s = await plain_copy(dsn, sim.events_path)
            settings = Settings(database_url=dsn, workspace=Path(tmp) / "ws")
            init_ray(settings, dsn)
            summary = await asyncio.to_thread(ingest_files, settings, [sim.events_path], feature_sets=[fs],
                                              progress=False, local_below=local_below)
            assert summary.accepted == n, summary.to_dict()
    report("ingest_throughput", {
        "feature_set": f"{fs.name}@{fs.version}", "engine": fs.engine, "events": n,
        "load": "in process" if n < local_below else "Ray Data",
        "copy_events_per_s": round(n / baseline_s),
        "sira_events_per_s": round(n / summary.seconds),
        "ratio_vs_copy": round(baseline_s / summary.seconds, 4),
        "sira_phases_s": {k: round(v, 1) for k, v in summary.phases.items()},
        "feature_rows": summary.features_written, "entity_states": summary.snapshots_updated,
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--feature-set", default="payments@2", help="NAME@VERSION the events are folded into")
    parser.add_argument("--local-below", type=int, default=LOCAL_BELOW,
                        help="rows below which the load runs in this process (0: always Ray Data)")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.days, parse_feature_set(args.feature_set), args.local_below))
