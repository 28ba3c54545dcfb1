"""`sira keys` as an operator uses it: bootstrap, --json shape, one-line errors."""

import json
import os
import subprocess
import sys


def sira(env, *args):
    done = subprocess.run([sys.executable, "-m", "sira", *args], env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def test_keys_lifecycle_from_the_command_line(create_database, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": create_database(), "SIRA_WORKSPACE": str(tmp_path)})
    assert sira(env, "db", "migrate")[0] == 0
    code, out, err = sira(env, "keys", "create", "--role", "admin", "--name", "ops-root", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert set(created) == {"name", "roles", "key"} and created["roles"] == ["admin"]
    code, out, err = sira(env, "keys", "create", "--role", "admin", "--name", "again")
    assert code == 2 and out == "" and err.strip().startswith("error: unauthenticated: an API key is required")
    admin = {**env, "SIRA_API_KEY": created["key"]}
    code, out, _ = sira(admin, "keys", "create", "--role", "viewer", "--role", "analyst", "--name", "ana", "--json")
    assert code == 0 and json.loads(out)["roles"] == ["viewer", "analyst"]
    code, out, _ = sira(admin, "keys", "list", "--json")
    assert [k["name"] for k in json.loads(out)["keys"]] == ["ops-root", "ana"]
    assert created["key"] not in out
    code, _, err = sira(admin, "keys", "create", "--role", "wizard", "--name", "x")
    assert code == 2 and err.strip() == (
        "error: invalid_input: roles must be among service, viewer, analyst, data_scientist, approver, operator, "
        "admin; unknown: wizard")
