"""`sira train --dry-run` refuses what the run itself would refuse before anything is created: an unknown --type."""

from __future__ import annotations

from tests.conftest import cli_in_process

REFUSAL = "error: invalid_input: model type must be one of fraud_detection, churn, anomaly\n"


def test_a_dry_run_refuses_an_unknown_model_type_as_the_run_does(clean_db, pg_dsn, tmp_path, monkeypatch, capsys):
    """`sira train --model fraud2 --dry-run --type foo` printed the plan and exited 0; the run was refused (the type
    was checked only in registry.ensure_model, which the dry run never calls)."""
    env = {"SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(tmp_path)}
    for extra in (["--dry-run"], []):
        done = cli_in_process(monkeypatch, capsys, env, "train", "--model", "fraud2", "--type", "foo", *extra)
        assert (done.returncode, done.stderr) == (2, REFUSAL), done.stderr
