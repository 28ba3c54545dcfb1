"""A shortened `make demo`, so CI covers what the demo does."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq


def test_short_demo_runs_end_to_end(pg_dsn, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(tmp_path / "ws"), "DEMO_SCALE": "0.05"})
    done = subprocess.run(
        [sys.executable, "-m", "sira", "demo", "--days", "6", "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [s["step"] for s in report["steps"]][:2] == ["migrate", "simulate"]
    assert report["database"]["schema_version"] >= 5
    events = pq.read_table(report["simulation"]["events_path"])
    assert events.num_rows == report["simulation"]["events"] > 0
    assert report["simulation"]["fraud_events"] > 0
    assert "sira_events" in report["tables"] and "sira_predictions" in report["tables"]
