"""`sira tune` stopped by Ctrl-C or SIGTERM sent to its process group (as a terminal's Ctrl-C, or `kill -TERM -PID`)
while its trials run: the search stops, the run is recorded as failed with the signal's reason, no version is
registered, one line on stderr, exit 130 or 143, and no second Ray is started on the way out."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import fetch_rows, migrate_database, run_sync, wait_until

TRIALS = 200


def table(path: Path) -> Path:
    """A small labelled table: 600 rows, three features, one positive in ten."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, 3))
    y = (rng.random(600) < 0.1).astype(int)
    rows = ["a,b,c,fraud"] + [f"{a:.4f},{b:.4f},{c:.4f},{t}" for (a, b, c), t in zip(x, y)]
    path.write_text("\n".join(rows) + "\n")
    return path


def trial_dirs(results: Path) -> list[Path]:
    return [d for d in results.glob("*/*") if d.is_dir() and d.name.startswith(("_trial", "trial"))] if \
        results.is_dir() else []


@pytest.mark.slow
@pytest.mark.parametrize("signum, reason, name", [
    (signal.SIGINT, "interrupted by Ctrl-C (SIGINT)", "Ctrl-C"),
    (signal.SIGTERM, "terminated by SIGTERM", "SIGTERM"),
])
def test_a_signal_to_the_process_group_stops_the_search_at_once(create_database, tmp_path, signum, reason, name):
    """Ctrl-C ran all 200 trials (115 s, as uninterrupted) before exit 130, recorded "cancelled (interrupted)";
    SIGTERM printed Ray's "SIGTERM handler is not set because current thread is not the main thread" warning and
    started a second Ray session from the search's thread after the first was shut down."""
    dsn = create_database("sira_interrupt_tune")
    run_sync(migrate_database(dsn))
    # trials that never end by themselves: only the signal stops the search
    params = tmp_path / "slow.yaml"
    params.write_text("num_boost_round: 1000000\nearly_stopping_rounds: 1000000\nlearning_rate: 0.0001\n")
    ray_tmp = Path(tempfile.mkdtemp(prefix="sira-ri-", dir="/tmp"))  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIRA_", "RAY_"))}
    env.update({"SIRA_DATABASE_URL": dsn, "SIRA_WORKSPACE": str(tmp_path / "ws"), "SIRA_RAY_NUM_CPUS": "1",
                "RAY_TMPDIR": str(ray_tmp)})
    proc = subprocess.Popen([sys.executable, "-m", "sira", "tune", "--model", "t", "--data",
                             str(table(tmp_path / "t.csv")), "--label", "fraud", "--trials", str(TRIALS),
                             "--params", str(params), "--threads", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a shell job's
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    results = tmp_path / "ws" / "ray_results"
    try:
        wait_until(lambda: trial_dirs(results) or proc.poll() is not None, timeout=180, what="a trial to start")
        assert proc.poll() is None, "".join(lines)
        said = len(lines)
        os.killpg(proc.pid, signum)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=10)
    after = "".join(lines[said:])
    sessions = list((ray_tmp / "ray").glob("session_2*"))
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert code == 128 + signum, after
    assert after.count("\n") == 1 and after.startswith(f"error: interrupted: training t stopped by {name}: run "), \
        after
    assert after.rstrip().endswith(f"is recorded as failed ({reason}); no version was registered"), after
    assert len(sessions) == 1, sessions  # no second Ray started by the search's thread
    assert len(trial_dirs(results)) < TRIALS
    (run,) = run_sync(fetch_rows(dsn, "SELECT kind, status, error FROM sira_training_runs"))
    assert (run["kind"], run["status"], run["error"]) == ("tune", "failed", reason)
    assert run_sync(fetch_rows(dsn, "SELECT version FROM sira_model_versions")) == []
