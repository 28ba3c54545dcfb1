"""`sira keys` as an operator uses it: bootstrap, --json shape, one-line errors.

The commands run in this process (``cli_in_process``: the same ``main`` the console script runs, with only
the given SIRA_ settings), as the ~60 commands here would cost over a second each in processes of their
own; `python -m sira` as a process is what the demo's and the jobs' tests run.
"""

import asyncio
import json
import os
import re

import pytest

from tests.conftest import cli_in_process


@pytest.fixture
def sira(monkeypatch, capsys):
    """``sira(env, *args)``: (exit status, stdout, stderr) of ``sira ARGS`` under ``env``'s SIRA_ settings."""
    def run(env, *args):
        done = cli_in_process(monkeypatch, capsys, env, *args)
        return done.returncode, done.stdout, done.stderr
    return run


def test_keys_lifecycle_from_the_command_line(create_database, tmp_path, sira):
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
    # an entity's snapshot and a refresh of them: a key with the role, once keys exist
    for args in (("features", "show", "customer", "c1"), ("features", "materialize")):
        code, out, err = sira(env, *args)
        assert code == 2 and out == "" and err.strip().startswith("error: unauthenticated"), (args, err)
    code, _, err = sira({**env, "SIRA_API_KEY": json.loads(sira(admin, "keys", "create", "--role", "viewer", "--name",
                                                                  "vic", "--json")[1])["key"]},
                        "features", "show", "customer", "c1")
    assert code == 2 and err.strip().startswith("error: forbidden: vic may not features.read"), err
    code, _, err = sira({**env, "SIRA_API_KEY": created["key"]}, "features", "materialize", "--json")
    assert code == 0, err


def test_promotion_flow_from_the_command_line(create_database, tmp_path, sira):
    import numpy as np
    import pandas as pd

    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": create_database(), "SIRA_WORKSPACE": str(tmp_path)})
    assert sira(env, "db", "migrate")[0] == 0
    root = json.loads(sira(env, "keys", "create", "--role", "admin", "--name", "root", "--json")[1])["key"]
    keys = {}
    for name, role in (("dana", "data_scientist"), ("ann", "approver"), ("bob", "approver"), ("oli", "operator")):
        keys[name] = json.loads(sira({**env, "SIRA_API_KEY": root}, "keys", "create", "--role", role, "--name", name,
                                     "--json")[1])["key"]
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"amount": rng.lognormal(3, 1, 3000)})
    df["fraud"] = (rng.random(3000) < np.where(df.amount > 60, 0.2, 0.02)).astype(int)
    df.to_csv(tmp_path / "t.csv", index=False)
    params = tmp_path / "p.yaml"
    params.write_text("num_boost_round: 40\nearly_stopping_rounds: 10\n")
    as_ = lambda who: {**env, "SIRA_API_KEY": keys[who]}  # noqa: E731
    train = ["train", "--model", "fraud", "--data", str(tmp_path / "t.csv"), "--label", "fraud", "--params",
             str(params), "--threads", "1", "--json"]
    code, _, err = sira(env, *train)
    assert code == 2 and "error: unauthenticated:" in err  # keys exist: training needs one
    code, _, err = sira(as_("ann"), *train)
    assert code == 2 and "error: forbidden:" in err  # an approver does not train
    for _ in range(2):
        code, _, err = sira(as_("dana"), *train)
        assert code == 0, err
    for version in (1, 2):
        code, out, err = sira(as_("dana"), "promote", "--model", "fraud", "--version", str(version), "--json")
        assert code == 0 and json.loads(out)["status"] == "pending", err
        assert json.loads(sira(as_("ann"), "approve", "--model", "fraud", "--version", str(version), "--json")[1])[
            "outcome"] == "pending"
        assert json.loads(sira(as_("bob"), "approve", "--model", "fraud", "--version", str(version), "--json")[1])[
            "outcome"] == "approved"
    code, _, err = sira(as_("ann"), "rollback", "--model", "fraud", "--reason", "x")
    assert code == 2 and "error: forbidden:" in err
    code, out, _ = sira(as_("oli"), "rollback", "--model", "fraud", "--reason", "v2 misbehaves", "--json")
    assert code == 0 and json.loads(out)["production"] == 1
    code, out, err = sira(as_("oli"), "rollback", "--model", "fraud", "--reason", "same page", "--expected-version", "2")
    assert (code, out) == (2, "") and err.strip().startswith(
        "error: production_moved: fraud: production is v1, not v2: it changed since you looked"), err
    code, out, _ = sira(as_("ann"), "versions", "compare", "--model", "fraud", "1", "2", "--json")
    compared = json.loads(out)
    assert code == 0 and {"window": "test", "metric": "average_precision"}.items() <= next(
        r for r in compared["metrics"] if r["window"] == "test" and r["metric"] == "average_precision").items()
    test_ap = next(r for r in compared["metrics"] if r["window"] == "test" and r["metric"] == "average_precision")
    code, _, err = sira(as_("ann"), "versions", "show", "--model", "fraud", "--version", "2")  # metrics, as promised
    assert code == 0 and re.search(rf"│ average precision +│ +0\.\d{{4}} │ +{test_ap['v2']:.4f} │", err), err
    code, _, err = sira(as_("ann"), "models", "show", "fraud")  # the table a person reads: AP to 4 places
    assert code == 0 and re.search(r"│ 1 +│ \w+ +│ 0\.\d{4} +│", err), err
    code, out, _ = sira(as_("ann"), "history", "--model", "fraud", "--json")
    assert [(h["from"], h["to"]) for h in json.loads(out)["history"]] == [(None, 1), (1, 2), (2, 1)]
    from sira.http.schemas import History  # GET /v1/models/fraud/history's answer, with nothing more or less

    answer = json.loads(out)
    assert History.model_validate(answer).model_dump(by_alias=True) == answer
    assert (answer["production"], answer["rollback_to"]) == (1, None)  # v1 was first: nothing before it
    assert [h["requested_by"] for h in answer["history"]] == ["dana", "dana", None]
    code, _, err = sira(env, "history", "--model", "fraud")
    assert code == 2 and err.strip().startswith("error: unauthenticated: missing credentials")


def test_models_versions_and_audit_commands(create_database, tmp_path, sira):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": create_database(), "SIRA_WORKSPACE": str(tmp_path)})
    assert sira(env, "db", "migrate")[0] == 0
    root = {**env, "SIRA_API_KEY": json.loads(sira(env, "keys", "create", "--role", "admin", "--name", "root",
                                                   "--json")[1])["key"]}
    ds_key = json.loads(sira(root, "keys", "create", "--role", "data_scientist", "--name", "dana", "--json")[1])["key"]
    ds = {**env, "SIRA_API_KEY": ds_key}
    code, _, err = sira(ds, "models", "create", "churn", "--type", "churn", "--required-approvals", "0")
    assert code == 2 and "error: forbidden:" in err  # governance settings need an admin
    code, out, err = sira(ds, "models", "create", "churn", "--type", "churn", "--json")
    assert code == 0 and json.loads(out)["required_approvals"] == 2, err
    code, _, err = sira(ds, "models", "create", "Churn2", "--type", "churn")  # said in words, not a constraint's name
    assert code == 2 and err.strip() == ("error: invalid_input: invalid model name: lowercase letters, digits, '-' "
                                         "and '_', starting with a letter, at most 63"), err
    targets = tmp_path / "targets.yaml"
    targets.write_text("review_rate: 0.05\nblock_precision: 0.9\n")
    code, out, _ = sira(root, "models", "update", "churn", "--required-approvals", "3", "--targets", str(targets),
                        "--json")
    assert code == 0 and json.loads(out)["decision_targets"] == {"review_rate": 0.05, "block_precision": 0.9}
    code, _, err = sira(root, "models", "update", "churn", "--targets", str(tmp_path / "missing.yaml"))
    assert code == 2 and err.strip().startswith("error: not_found: file not found")
    code, out, _ = sira(ds, "models", "list", "--json")
    assert [m["name"] for m in json.loads(out)["models"]] == ["churn"]
    code, _, err = sira(ds, "versions", "show", "--model", "churn", "--version", "1")
    assert code == 2 and err.strip() == "error: not_found: model 'churn' has no version 1"
    code, out, _ = sira(root, "audit", "--target", "churn", "--json")
    assert [e["action"] for e in json.loads(out)["entries"]] == ["model.update", "model.create"]
    code, _, err = sira(ds, "audit")
    assert code == 2 and "error: forbidden:" in err
    code, out, _ = sira(root, "audit", "--actor", "dana", "--json")
    denied = [e for e in json.loads(out)["entries"] if e["outcome"] == "denied"]
    assert [e["action"] for e in denied] == ["audit.read", "models.settings"]  # refusals are audited too
    # a page at a time: --before the last answer's next_before reads the older entries, none twice
    code, out, _ = sira(root, "audit", "--json")
    everything = [e["id"] for e in json.loads(out)["entries"]]
    pages, before, limit = [], None, str(len(everything) // 2 + 1)  # two pages: the second one not full
    while True:
        code, out, err = sira(root, "audit", "--limit", limit, "--json", *(["--before", str(before)] if before else []))
        assert code == 0, err
        page = json.loads(out)
        pages += [e["id"] for e in page["entries"]]
        before = page["next_before"]
        if before is None:
            break
    assert pages == everything and len(everything) > 2 and len(pages) > int(limit)


def test_ingest_and_label_import_need_keys_once_keys_exist(create_database, tmp_path, sira):
    import pyarrow as pa
    import pyarrow.parquet as pq

    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": create_database(), "SIRA_WORKSPACE": str(tmp_path), "SIRA_RAY_NUM_CPUS": "1"})
    assert sira(env, "db", "migrate")[0] == 0
    pq.write_table(pa.table({"event_id": ["l1"], "label": [True], "known_at": ["2026-09-02T00:00:00Z"]}),
                   tmp_path / "labels.parquet")
    assert sira(env, "feedback", "import", str(tmp_path / "labels.parquet"))[0] == 0  # no keys yet: local user
    root = {**env, "SIRA_API_KEY": json.loads(sira(env, "keys", "create", "--role", "admin", "--name", "root",
                                                   "--json")[1])["key"]}
    viewer = json.loads(sira(root, "keys", "create", "--role", "viewer", "--name", "v", "--json")[1])["key"]
    analyst = json.loads(sira(root, "keys", "create", "--role", "analyst", "--name", "a", "--json")[1])["key"]
    code, _, err = sira(env, "feedback", "import", str(tmp_path / "labels.parquet"))
    assert code == 2 and "error: unauthenticated:" in err
    code, _, err = sira({**env, "SIRA_API_KEY": viewer}, "feedback", "import", str(tmp_path / "labels.parquet"))
    assert code == 2 and "error: forbidden:" in err
    assert sira({**env, "SIRA_API_KEY": analyst}, "feedback", "import", str(tmp_path / "labels.parquet"))[0] == 0
    code, _, err = sira({**env, "SIRA_API_KEY": analyst}, "ingest", str(tmp_path / "labels.parquet"))
    assert code == 2 and "error: forbidden:" in err  # ingesting events needs a service key
    # An analyst's labels are their own, as over HTTP: a file of theirs never overwrites a chargeback
    # (named by --source or by the file's source column), nor passes for a review.
    service = json.loads(sira(root, "keys", "create", "--role", "service", "--name", "psp", "--json")[1])["key"]
    chargeback = tmp_path / "chargeback.parquet"
    pq.write_table(pa.table({"event_id": ["l2"], "label": [True], "known_at": ["2026-09-02T00:00:00Z"]}), chargeback)
    assert sira({**env, "SIRA_API_KEY": service}, "feedback", "import", str(chargeback), "--source", "chargeback")[0] == 0
    flip = tmp_path / "flip.parquet"
    pq.write_table(pa.table({"event_id": ["l2"], "label": [False], "known_at": ["2026-09-03T00:00:00Z"]}), flip)
    flip_column = tmp_path / "flip-column.parquet"
    pq.write_table(pa.table({"event_id": ["l2"], "label": [False], "known_at": ["2026-09-03T00:00:00Z"],
                             "source": ["chargeback"]}), flip_column)
    for args in ((str(flip), "--source", "chargeback"), (str(flip), "--source", "review"), (str(flip_column),)):
        code, _, err = sira({**env, "SIRA_API_KEY": analyst}, "feedback", "import", *args)
        assert code == 2 and err.startswith("error: forbidden: only service keys name the source"), (args, err)
    assert sira({**env, "SIRA_API_KEY": analyst}, "feedback", "import", str(flip))[0] == 0  # recorded as theirs
    code, out, _ = sira(root, "audit", "--actor", "a", "--json")
    assert sum(e["outcome"] == "denied" and e["action"] == "feedback.write" for e in json.loads(out)["entries"]) == 3

    async def labels() -> list[tuple]:
        import asyncpg

        conn = await asyncpg.connect(env["SIRA_DATABASE_URL"])
        try:
            return [tuple(r) for r in await conn.fetch(
                "SELECT source, label, created_by FROM sira_feedback WHERE event_id = 'l2' ORDER BY source")]
        finally:
            await conn.close()

    assert asyncio.run(labels()) == [("analyst:a", False, "a"), ("chargeback", True, "psp")]


def test_key_expiry_takes_iso_8601_with_offsets_and_refuses_the_past(create_database, tmp_path, sira):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": create_database(), "SIRA_WORKSPACE": str(tmp_path)})
    assert sira(env, "db", "migrate")[0] == 0
    code, out, err = sira(env, "keys", "create", "--role", "admin", "--name", "root", "--expires", "2020-01-01")
    assert (code, out) == (2, "") and err.strip() == (
        "error: invalid_input: --expires 2020-01-01T00:00:00+00:00 is in the past: a key would be born expired"), err
    code, out, err = sira(env, "keys", "create", "--role", "admin", "--name", "root", "--expires",
                          "2099-01-01T00:00:00Z", "--json")
    assert code == 0, err
    admin = {**env, "SIRA_API_KEY": json.loads(out)["key"]}
    for name, given in (("offset", "2099-01-01T02:30:00+02:30"), ("date", "2099-01-01"),
                        ("naive", "2099-01-01T00:00:00"), ("utc", "2099-01-01T00:00:00.000Z")):
        code, _, err = sira(admin, "keys", "create", "--role", "viewer", "--name", name, "--expires", given)
        assert code == 0, (given, err)
    code, out, _ = sira(admin, "keys", "list", "--json")
    assert {k["expires_at"] for k in json.loads(out)["keys"]} == {"2099-01-01T00:00:00+00:00"}
    for bad in ("tomorrow", "2099-13-01", "01/02/2099"):
        code, out, err = sira(admin, "keys", "create", "--role", "viewer", "--name", "bad", "--expires", bad)
        assert (code, out) == (2, "") and len(err.strip().splitlines()) == 1, (bad, err)
        assert err.startswith(f"error: usage: sira keys create: Invalid value for '--expires': {bad!r} is not an "
                              "ISO 8601 date or time"), (bad, err)  # the type of every date option of the CLI


def test_the_last_admin_key_cannot_revoke_itself_from_the_command_line(create_database, tmp_path, sira):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": create_database(), "SIRA_WORKSPACE": str(tmp_path)})
    assert sira(env, "db", "migrate")[0] == 0
    code, out, err = sira(env, "keys", "create", "--role", "admin", "--name", "root", "--json")
    assert code == 0, err
    admin = {**env, "SIRA_API_KEY": json.loads(out)["key"]}
    code, out, err = sira(admin, "keys", "revoke", "root")
    assert code == 2 and out == "" and err.strip().startswith("error: last_admin: "), err
    code, out, _ = sira(admin, "keys", "list", "--json")
    assert [k["revoked_at"] for k in json.loads(out)["keys"]] == [None]  # the key still works
