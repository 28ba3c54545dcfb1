"""Which code trained a version: the commit and its uncommitted changes, a job's too, and the libraries."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sira.core.artifacts import ArtifactRef, load_artifact
from sira.training.runs import TrainRequest, run_training
from sira.training.trainer import CODE_VERSION_ENV, resolve_code_version

CHECKOUT = Path(__file__).resolve().parents[2]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=root,
                          check=True, capture_output=True, text=True).stdout.strip()


def test_the_code_version_says_the_commit_its_uncommitted_changes_or_the_packages_digest(tmp_path):
    """A run from a checkout with uncommitted changes recorded the commit as if it were the code; a folder
    without git (a job's uploaded working dir) recorded "sira 0.1.0" alone."""
    root = tmp_path / "checkout"
    (root / "sira").mkdir(parents=True)
    (root / "sira" / "a.py").write_text("A = 1\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "a")
    commit = git(root, "rev-parse", "--short=12", "HEAD")
    assert resolve_code_version(root) == f"sira 0.1.0 ({commit})"
    (root / "sira" / "a.py").write_text("A = 2\n")
    changed = resolve_code_version(root)
    assert changed.startswith(f"sira 0.1.0 ({commit}, uncommitted changes ") and len(changed.split()[-1]) == 13
    (root / "sira" / "a.py").write_text("A = 3\n")
    assert resolve_code_version(root) != changed  # the changes' digest, not a flag alone
    uploaded = tmp_path / "uploaded"
    shutil.copytree(root, uploaded, ignore=shutil.ignore_patterns(".git"))
    packaged = resolve_code_version(uploaded)
    assert packaged.startswith("sira 0.1.0 (package sha256 ") and packaged == resolve_code_version(uploaded)
    (uploaded / "sira" / "a.py").write_text("A = 4\n")
    assert resolve_code_version(uploaded) != packaged


def test_a_jobs_runtime_env_carries_the_version_of_the_code_it_uploads(clean_db, pg_dsn, tmp_path, monkeypatch,
                                                                        capsys):
    """`sira jobs submit train` recorded code_version "sira 0.1.0": git ran in the uploaded working dir, which has
    no .git. The submitter resolves it where the checkout is and passes it in the job's env."""
    from tests.conftest import cli_in_process

    monkeypatch.chdir(CHECKOUT)
    done = cli_in_process(monkeypatch, capsys, {"SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(tmp_path)},
                          "jobs", "runtime-env", "train")
    assert done.returncode == 0, done.stderr
    env = yaml.safe_load(done.stdout)["env_vars"]
    assert env[CODE_VERSION_ENV] == resolve_code_version(CHECKOUT) and "(" in env[CODE_VERSION_ENV]


async def test_a_run_records_the_code_version_it_is_given_and_the_libraries(clean_db, settings, tmp_path,
                                                                           monkeypatch):
    rng = np.random.default_rng(3)
    table = pd.DataFrame({"amount": rng.lognormal(3, 1, 3000)})
    table["fraud"] = (rng.random(3000) < np.where(table.amount > 60, 0.2, 0.02)).astype(int)
    table.to_parquet(tmp_path / "t.parquet")
    given = "sira 0.1.0 (0123456789ab, uncommitted changes ba9876543210)"
    monkeypatch.setenv(CODE_VERSION_ENV, given)  # what a submitted job's runtime env carries
    done = await run_training(settings, TrainRequest(model="lineage", data=[tmp_path / "t.parquet"], label="fraud",
                                                     num_threads=1, params={"num_boost_round": 20}))
    assert await clean_db.fetchval("SELECT code_version FROM sira_training_runs WHERE run_id = $1::uuid",
                                   done["run_id"]) == given
    manifest = load_artifact(settings, ArtifactRef(done["artifact"]["uri"], done["artifact"]["sha256"])).manifest
    assert manifest["code_version"] == given
    assert {"python", "numpy", "scikit-learn", "lightgbm"} <= set(manifest["versions"])
    assert manifest["versions"]["numpy"] == np.__version__ and json.dumps(manifest["versions"])
