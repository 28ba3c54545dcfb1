"""Ray job entry points run as scripts, exactly as `ray job submit -- python jobs/...` runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import migrate_database, run_sync

ROOT = Path(__file__).resolve().parents[2]


def test_materialize_job_prints_one_json_object(create_database, tmp_path):
    # a database of its own: an installation with no API key yet, whichever tests ran before in this process
    # (with keys, a job must be given one: tests/e2e/test_job_submission.py)
    dsn = create_database()
    run_sync(migrate_database(dsn))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": dsn, "SIRA_WORKSPACE": str(tmp_path)})
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "materialize.py")], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["feature_set"] == "payments" and set(result["entities"]) == {"customer", "card", "terminal"}


def test_materialize_job_reports_a_bad_database_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "SIRA_WORKSPACE": str(tmp_path)})
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "materialize.py")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("error: unavailable: cannot reach PostgreSQL")
