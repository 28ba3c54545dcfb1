"""`sira train` stopped by SIGTERM (`ray job stop`, Kubernetes, systemd) while it trains: its run recorded as
terminated, its job key revoked, the Ray it started shut down, one line on stderr."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

import psutil

from sira.core import db
from sira.core.auth import Identity, create_job_key
from sira.core.config import Settings
from sira.core.ray_runtime import JOBS
from sira.registry import models as registry
from tests.conftest import fetch_rows, migrate_database, run_sync, wait_until
from tests.integration.test_training_sets import load_payments


def test_sigterm_while_training_records_the_run_and_ends_in_one_line(create_database, tmp_path):
    """It printed "Aborted" after a 12-line C++ stack ("*** SIGTERM received ... epoll_wait"), its run read
    "failed | CancelledError: " (no reason), its job's key stayed valid, and the Ray it had started left its
    DashboardAgent and RuntimeEnvAgent running, orphaned."""
    dsn = create_database("sira_sigterm")
    settings = Settings(database_url=dsn, workspace=tmp_path)

    async def load() -> str:
        await migrate_database(dsn)
        pool = await db.create_pool(dsn)
        try:
            await load_payments(pool)
            admin = Identity("t-admin", frozenset({"admin"}))
            async with db.transaction(pool) as conn:  # feature set v1: the training set is read by Ray Data
                await registry.create_model(conn, admin, "fraudv1", model_type="fraud_detection",
                                            feature_set="payments", feature_set_version=1, label_maturity_days=5)
                key, _ = await create_job_key(conn, admin, actions=JOBS["train"].actions, job_name="sira-train-term",
                                              ttl=timedelta(hours=1), pepper=settings.secret("auth_secret"))
            return key
        finally:
            await pool.close()

    key = run_sync(load())
    # long enough to be under way when the signal comes: no early stopping, a tiny learning rate
    params = tmp_path / "slow.yaml"
    params.write_text("num_boost_round: 1000000\nearly_stopping_rounds: 0\nlearning_rate: 0.0001\n"
                      "min_data_in_leaf: 1\nnum_leaves: 63\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIRA_", "RAY_"))}
    env.update({"SIRA_DATABASE_URL": dsn, "SIRA_WORKSPACE": str(tmp_path), "SIRA_API_KEY": key,
                "SIRA_RAY_NUM_CPUS": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "sira", "train", "--model", "fraudv1", "--label-delay", "1",
                             "--params", str(params), "--threads", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(line.startswith("training on") for line in lines) or proc.poll() is not None,
                   timeout=240, what="the run to start training")
        assert proc.poll() is None, "".join(lines)
        time.sleep(1.0)  # inside LightGBM's rounds
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "no Ray started"  # its GCS, raylet and agents
        said = len(lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    after = "".join(lines[said:])
    assert after.count("\n") == 1 and after.startswith(
        "error: interrupted: training fraudv1 stopped by SIGTERM: run "), after
    assert after.rstrip().endswith("is recorded as failed (terminated by SIGTERM); no version was registered"), after
    assert "SIGTERM received" not in "".join(lines) and "Traceback" not in "".join(lines)
    (run,) = run_sync(fetch_rows(dsn, "SELECT status, error, finished_at FROM sira_training_runs"))
    assert (run["status"], run["error"]) == ("failed", "terminated by SIGTERM") and run["finished_at"]
    assert run_sync(fetch_rows(dsn, "SELECT version FROM sira_model_versions")) == []
    (job_key,) = run_sync(fetch_rows(dsn, "SELECT revoked_at FROM sira_api_keys WHERE name = 'job-sira-train-term'"))
    assert job_key["revoked_at"] is not None  # the job's key is worth nothing once it has ended
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [(p.pid, p.name()) for p in alive]  # none of its Ray's processes left behind
