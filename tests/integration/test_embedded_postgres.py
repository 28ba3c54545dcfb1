"""The embedded PostgreSQL belongs to its workspace: started on demand, stopped by `sira db stop`."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from sira.core import db
from sira.core.config import Settings

SIRA = [sys.executable, "-m", "sira"]


@pytest.fixture
def embedded_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env["SIRA_WORKSPACE"] = str(tmp_path / "ws")
    settings = Settings(workspace=tmp_path / "ws")
    yield env, settings
    server = db.EmbeddedPostgres(settings.embedded_pg_data)
    server.stop()
    if os.geteuid() == 0:
        shutil.rmtree(settings.embedded_pg_data.parent, ignore_errors=True)


def sira(env, *args):
    done = subprocess.run([*SIRA, *args], env=env, capture_output=True, text=True, timeout=180)
    return done.returncode, done.stdout, done.stderr


def test_embedded_server_lifecycle_through_the_cli(embedded_env):
    env, settings = embedded_env
    code, out, err = sira(env, "db", "status", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["mode"] == "embedded" and status["embedded"]["running"] is False

    # Any command that needs the database starts the server on demand...
    code, out, err = sira(env, "db", "migrate", "--json")
    assert code == 0, err
    assert json.loads(out)["applied"][0] == "001_foundations.sql"

    # ...and it keeps running for the workspace after that command exited.
    code, out, _ = sira(env, "db", "status", "--json")
    status = json.loads(out)
    assert status["embedded"]["running"] is True and status["up_to_date"] is True
    assert status["embedded"]["data_dir"] == str(settings.embedded_pg_data)
    if os.geteuid() == 0:
        # As root the data lives under /var/lib/sira, not inside the user's checkout.
        assert status["embedded"]["data_dir"].startswith("/var/lib/sira/")

    code, out, _ = sira(env, "db", "start", "--json")
    assert code == 0 and json.loads(out)["already_running"] is True

    code, out, _ = sira(env, "db", "stop", "--json")
    assert code == 0 and json.loads(out)["stopped"] is True
    code, out, _ = sira(env, "db", "status", "--json")
    assert json.loads(out)["embedded"]["running"] is False

    # Data survives a restart.
    code, out, err = sira(env, "db", "migrate", "--json")
    assert code == 0, err
    assert json.loads(out)["applied"] == []


def test_db_start_refuses_when_an_external_database_is_configured(embedded_env):
    env, _ = embedded_env
    env = {**env, "SIRA_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    code, out, err = sira(env, "db", "start")
    assert code == 2 and out == ""
    assert err.strip() == (
        "error: invalid_input: SIRA_DATABASE_URL is set: SIRA uses that server and has no embedded one to start"
    )


def test_unreachable_database_is_a_one_line_system_error(embedded_env):
    env, _ = embedded_env
    env = {**env, "SIRA_DATABASE_URL": "postgresql://postgres:s3cret@127.0.0.1:1/none"}
    code, _, err = sira(env, "db", "migrate")
    assert code == 1
    assert err.startswith("error: unavailable: cannot reach PostgreSQL at postgresql://postgres@127.0.0.1:1/none")
    assert "s3cret" not in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def elsewhere(tmp_path):
    """A folder that is no SIRA workspace, and the environment of a shell opened there (no SIRA_* set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    settings = Settings(workspace=tmp_path / ".sira")
    yield tmp_path, env, settings
    db.EmbeddedPostgres(settings.embedded_pg_data).stop()
    if os.geteuid() == 0:
        shutil.rmtree(settings.embedded_pg_data.parent, ignore_errors=True)


def test_a_command_outside_any_workspace_starts_no_empty_database(elsewhere):
    """`sira models list` run outside the checkout ran initdb, left a second (empty) PostgreSQL running and
    answered `schema_out_of_date: ... run sira db migrate`: following that advice migrated the wrong database.
    Only the commands that create a workspace create its database; the others say where they looked."""
    folder, env, settings = elsewhere
    done = subprocess.run([*SIRA, "models", "list"], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: no_workspace: ") and str(folder / ".sira") in line
    assert "SIRA_WORKSPACE" in line and "SIRA_DATABASE_URL" in line and "sira db migrate" in line
    assert not (settings.embedded_pg_data / "PG_VERSION").exists()  # no initdb, no server left running
    assert not db.EmbeddedPostgres(settings.embedded_pg_data).status().running

    # `sira db status` looks without creating; `sira db migrate` is what creates a workspace's database
    code, out, err = sira(env | {"SIRA_WORKSPACE": str(folder / ".sira")}, "db", "status", "--json")
    assert code == 0 and json.loads(out)["embedded"]["initialized"] is False, err
    code, out, err = sira(env | {"SIRA_WORKSPACE": str(folder / ".sira")}, "db", "migrate", "--json")
    assert code == 0 and json.loads(out)["applied"], err
    done = subprocess.run([*SIRA, "models", "list"], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=180)
    assert "no_workspace" not in done.stderr and "schema_out_of_date" not in done.stderr  # it is a workspace now
