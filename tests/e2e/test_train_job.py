"""`jobs/train.py`, as `ray job submit -- python jobs/train.py ...` runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def test_train_job_registers_a_candidate_and_prints_one_json_object(create_database, tmp_path):
    rng = np.random.default_rng(0)
    n = 4000
    df = pd.DataFrame({"amount": rng.lognormal(3, 1, n), "channel": rng.choice(["pos", "ecom"], n)})
    df["fraud"] = (rng.random(n) < np.where(df.amount > 60, 0.15, 0.01)).astype(int)
    df.to_csv(tmp_path / "t.csv", index=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": create_database(), "SIRA_WORKSPACE": str(tmp_path / "ws")})
    subprocess.run([sys.executable, "-m", "sira", "db", "migrate"], env=env, check=True, capture_output=True)
    done = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "train.py"), "--model", "churn-like", "--data", str(tmp_path / "t.csv"),
         "--label", "fraud", "--params", str(ROOT / "tests" / "e2e" / "fast_params.yaml"), "--threads", "1", "--json"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["version"] == 1 and result["status"] == "candidate"
    assert [f["name"] for f in result["feature_schema"]] == ["amount", "channel"]
