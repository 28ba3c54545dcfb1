"""The retraining pipeline end to end on a database of its own: a challenger that wins is staged, one that
loses is not, the same inputs never register twice, and a run killed part-way resumes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sira.cli.governance import _verdict_note
from sira.core import db
from sira.core.auth import Identity
from sira.core.errors import InvalidInput
from sira.monitoring.retrain import STEPS, RetrainRequest, run_retrain
from sira.registry import models as registry
from tests.conftest import fetch_rows as _fetch
from tests.conftest import served_model

FAST = {"num_boost_round": 60, "early_stopping_rounds": 20, "num_leaves": 15}
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def model(create_database, workspace, ray_session, tmp_path_factory):
    return served_model(create_database, workspace, tmp_path_factory, name="sira_retrain", days=30, customers=400,
                        params=FAST, shift_day=24)


SCIENTIST = Identity("t-data_scientist", frozenset({"data_scientist"}))


async def _policy(model, policy: dict) -> None:
    pool = await db.create_pool(model.dsn, model.settings)
    try:
        async with db.transaction(pool) as conn:
            await registry.update_model(conn, Identity("t-admin", frozenset({"admin"})), "fraud",
                                        promotion_policy=policy, required_approvals=2)
    finally:
        await pool.close()


def versions(model) -> list[tuple[int, str]]:
    rows = asyncio.run(_fetch(model.dsn, "SELECT v.version, v.status FROM sira_model_versions v JOIN sira_models m "
                                         "ON m.id = v.model_id WHERE m.name = 'fraud' ORDER BY v.version"))
    return [(r["version"], r["status"]) for r in rows]


def retrain(model, **kwargs):
    request = RetrainRequest(**{"model": "fraud", "trials": 0, "params": FAST, "num_threads": 2, **kwargs})
    return asyncio.run(run_retrain(model.settings, request, SCIENTIST))


def test_a_losing_challenger_is_not_staged(model):
    asyncio.run(_policy(model, {"min_ap_gain": 0.9}))  # no challenger gains 0.9 AP
    report = retrain(model, seed=1)
    assert report["decision"] == "reject" and not report["staged"]
    assert any("AP gain" in r for r in report["reasons"])
    assert versions(model)[-1] == (report["challenger"], "candidate")
    assert dict(versions(model))[model.version] == "production"
    # whoever stages or promotes it later is told what the policy said (it stayed a candidate, silently)
    asyncio.run(_acting_on_a_rejected_challenger(model, report))


async def _acting_on_a_rejected_challenger(model, report) -> None:
    class Undo(Exception):
        pass

    conn = await db.connect(model.dsn)
    try:
        shown = await registry.show_model(conn, SCIENTIST, "fraud")
        assert {v["version"]: v["retrain_decision"] for v in shown["versions"]}[report["challenger"]] == "reject"
        for act in (registry.stage_version, registry.request_promotion):
            try:
                async with conn.transaction():  # undone: the tests after this one see the versions as they were
                    done = await act(conn, model.settings, SCIENTIST, "fraud", report["challenger"], "try it anyway")
                    verdict = done["retrain_verdict"]
                    assert (verdict["run"], verdict["decision"]) == (report["run"], "reject"), done
                    assert verdict["reasons"] == report["reasons"]
                    # the person is told the rule that failed, not the first reasons (rules that passed)
                    assert verdict["deciding"] == report["deciding"]
                    assert any("AP gain" in r and "is below the minimum +0.900" in r for r in verdict["deciding"])
                    note = _verdict_note(done)
                    assert all(r in note for r in verdict["deciding"]) and "no data check failed" not in note
                    raise Undo
            except Undo:
                pass
    finally:
        await conn.close()


def test_a_winning_challenger_is_staged_and_the_same_inputs_register_nothing_more(model):
    asyncio.run(_policy(model, {"min_ap_gain": -1.0, "max_calibration_error": 1.0, "max_score_psi": 100.0,
                                "block_on_drift": "never", "min_positives": 1}))
    report = retrain(model, seed=2)
    assert report["decision"] == "stage" and report["staged"] and not report["reused"]
    challenger = report["challenger"]
    assert dict(versions(model))[challenger] == "staging"
    assert dict(versions(model))[model.version] == "production"  # production still needs two approvals
    evaluation = report["evaluation"]
    assert evaluation["champion"]["version"] == model.version and evaluation["challenger"]["version"] == challenger
    assert evaluation["rows"] > 0 and evaluation["score_psi"] is not None
    md = Path(report["files"]["markdown"]).read_text()
    assert f"challenger v{challenger} against champion v{model.version}" in md and "| average precision |" in md
    assert json.loads(Path(report["files"]["json"]).read_text())["decision"] == "stage"
    audit = asyncio.run(_fetch(model.dsn, "SELECT actor, details FROM sira_audit_log WHERE action = "
                                          "'retrain.decision' ORDER BY id"))
    assert audit[-1]["actor"] == SCIENTIST.name
    before = versions(model)
    again = retrain(model, seed=2)
    assert again["reused"] and again["run"] == report["run"] and versions(model) == before
    plan = retrain(model, seed=2, dry_run=True)
    assert plan["plan"].startswith("nothing") and plan["steps"] == []


@pytest.mark.slow
def test_a_run_killed_part_way_resumes_after_its_last_step(model, tmp_path, monkeypatch, capsys):
    from tests.conftest import cli_in_process

    asyncio.run(_policy(model, {"min_ap_gain": 0.9}))
    params = tmp_path / "fast.yaml"
    params.write_text("".join(f"{k}: {v}\n" for k, v in FAST.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": model.dsn, "SIRA_WORKSPACE": str(model.settings.workspace),
                "SIRA_API_KEY": model.keys["data_scientist"]})
    args = [sys.executable, "-m", "sira", "retrain", "--model", "fraud", "--trials", "0", "--seed", "3",
            "--params", str(params), "--threads", "2", "--json"]
    plan = cli_in_process(monkeypatch, capsys, env, *args[3:], "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["steps"] == list(STEPS)
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    steps: dict = {}
    while time.monotonic() < deadline and "challenger" not in steps:
        rows = asyncio.run(_fetch(model.dsn, "SELECT steps FROM sira_retrain_runs WHERE inputs->>'seed' = '3'"))
        steps = json.loads(rows[0]["steps"]) if rows else {}
        assert process.poll() is None or "challenger" in steps, process.communicate()[1]
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # after the challenger is registered, before the run finishes
    process.wait()
    registered = versions(model)
    done = cli_in_process(monkeypatch, capsys, env, *args[3:])  # the next run (in this process: no Ray start)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["attempts"] == 2 and report["challenger"] == steps["challenger"]["version"]
    assert versions(model) == registered  # resumed: no second challenger
    run = asyncio.run(_fetch(model.dsn, "SELECT status, attempts FROM sira_retrain_runs WHERE id = $1",
                             report["run"]))[0]
    assert run == {"status": "succeeded", "attempts": 2}


def test_bad_retrain_input_is_refused(model):
    with pytest.raises(InvalidInput):
        retrain(model, seed=4, trials=-1)
    for bad in ({"seed": -1}, {"seed": 7, "test_days": float("nan")}):  # refused before the drift step runs
        with pytest.raises(InvalidInput) as caught:
            retrain(model, **bad)
        assert caught.value.code == "invalid_option"
    runs = asyncio.run(_fetch(model.dsn, "SELECT id FROM sira_retrain_runs"))
    with pytest.raises(InvalidInput, match="unknown parameter num_leave"):  # was trained as if it were not there
        retrain(model, seed=8, params={**FAST, "num_leave": 2})
    assert asyncio.run(_fetch(model.dsn, "SELECT id FROM sira_retrain_runs")) == runs  # refused before the drift step
    with pytest.raises(InvalidInput) as caught:  # a policy is checked when it is set, not when it is used
        asyncio.run(_policy(model, {"min_ap_gian": 0.1}))
    assert caught.value.code == "invalid_policy" and "min_ap_gian" in caught.value.message


def test_a_champion_trained_on_part_of_the_held_out_window_is_no_fair_comparison(model):
    """The champion was judged on rows it had trained on (nothing compared its training window with the
    challenger's test window): its AP flattered, a better challenger rejected. A window reaching back into
    the champion's training data now holds the decision and says how to move it past."""
    asyncio.run(_policy(model, {"min_ap_gain": -1.0, "block_on_drift": "never"}))
    report = retrain(model, seed=11, test_days=20)
    assert report["decision"] == "hold" and report["evaluation"]["champion_overlap"], (report["reasons"], report["blockers"])
    assert any("trained on part of the evaluation window" in r for r in report["reasons"]), report["reasons"]


def test_the_held_out_window_can_be_the_newest_usable_days(model):
    asyncio.run(_policy(model, {"min_ap_gain": 0.9}))
    report = retrain(model, seed=5, test_days=5)
    window = report["evaluation"]["window"]
    (newest,) = asyncio.run(_fetch(model.dsn, "SELECT max(occurred_at) AS t FROM sira_events"))[0].values()
    # labels are cut at the time of training (now): weeks after the simulated history, every event is
    # usable (docs/windows.md), so the window ends at the newest one
    end = newest + timedelta(microseconds=1)
    assert datetime.fromisoformat(window["to"]) == end
    assert datetime.fromisoformat(window["from"]) == end - timedelta(days=5)
    assert report["inputs"]["test_days"] == 5


def test_a_backtests_drift_reads_nothing_after_its_cut_off(model):
    """`sira retrain --as-of` evaluated on a window before its cut-off, but its drift step measured the newest
    week of events, after it, and that verdict went into the policy. The drift window now ends by the cut-off,
    and the step and the report name it."""
    asyncio.run(_policy(model, {"min_ap_gain": 0.9, "block_on_drift": "alert"}))
    (newest,) = asyncio.run(_fetch(model.dsn, "SELECT max(occurred_at) AS t FROM sira_events"))[0].values()
    as_of = newest - timedelta(days=6)
    report = retrain(model, seed=17, as_of=as_of)
    drift = report["drift"]
    assert drift["status"] == "ran", drift
    stored = asyncio.run(_fetch(model.dsn, "SELECT DISTINCT window_start, window_end FROM sira_data_drift "
                                           "WHERE job_id = $1", drift["job_id"]))
    assert len(stored) == 1 and stored[0]["window_end"] <= as_of, (stored, as_of)
    assert stored[0]["window_end"] - stored[0]["window_start"] == timedelta(days=7)
    window = drift["window"]
    assert [datetime.fromisoformat(window[k]) for k in ("from", "to")] == [stored[0]["window_start"],
                                                                          stored[0]["window_end"]]
    assert f"before {as_of:%Y-%m-%d %H:%M}" in window["rule"], window
    md = Path(report["files"]["markdown"]).read_text()
    assert (f"Drift of {window['from'][:16]}..{window['to'][:16]} against the challenger's reference: "
            f"{drift['verdict']}") in md, md
    assert datetime.fromisoformat(report["evaluation"]["window"]["to"]) <= as_of


@pytest.fixture(scope="module")
def v1_model(create_database, workspace, ray_session, tmp_path_factory):
    """A champion trained on payments@1 (the history engine) whose model has since moved to payments@2."""
    built = served_model(create_database, workspace, tmp_path_factory, name="sira_retrain_v1", days=16, customers=200,
                         params=FAST, feature_set_version=1)

    async def move() -> None:
        pool = await db.create_pool(built.dsn, built.settings)
        try:
            async with db.transaction(pool) as conn:
                await registry.update_model(conn, Identity("t-admin", frozenset({"admin"})), "fraud",
                                            feature_set_version=2, promotion_policy={"block_on_drift": "never"})
        finally:
            await pool.close()

    asyncio.run(move())
    return built


def test_a_champion_on_another_feature_set_is_scored_on_its_own_features(v1_model):
    """The held-out rows were built in the challenger's feature set only: a payments@1 champion was scored on
    payments@2 features (same names, other window rules), a comparison of nothing, without a word."""
    import pyarrow as pa

    from sira.features.definitions import PAYMENTS_V1
    from sira.monitoring.retrain import recorded_windows
    from sira.serving.scoring import ModelRuntime
    from sira.training.datasets import build_feature_dataset
    from sira.training.evaluation import evaluate

    request = RetrainRequest(model="fraud", trials=0, params=FAST, num_threads=2, seed=3)
    report = asyncio.run(run_retrain(v1_model.settings, request, SCIENTIST))
    champion = report["evaluation"]["champion"]
    assert champion["version"] == v1_model.version

    async def rows():
        pool = await db.create_pool(v1_model.dsn, v1_model.settings)
        try:
            async with pool.acquire() as conn:
                return {v: dict(await registry.get_version(conn, "fraud", v)) for v in (v1_model.version,
                                                                                       report["challenger"])}
        finally:
            await pool.close()

    versions = asyncio.run(rows())
    from sira.core import artifacts

    challenger = versions[report["challenger"]]
    assert challenger["feature_set_version"] == 2 and versions[v1_model.version]["feature_set_version"] == 1
    windows = recorded_windows(artifacts.load_artifact(v1_model.settings, artifacts.ArtifactRef(
        challenger["artifact_uri"], challenger["artifact_sha256"])).manifest)
    ds, split = build_feature_dataset(v1_model.dsn, PAYMENTS_V1, windows, test_only=True)
    test = ds.matrix.rows(split.test)
    runtime = ModelRuntime.load(v1_model.settings, {**versions[v1_model.version], "model_name": "fraud"})
    scores = runtime.predict(runtime.table_matrix(pa.table({n: test.X[:, j] for j, n in enumerate(test.names)})))
    expected = evaluate(test.y, scores, runtime.thresholds)
    assert champion["n"] == expected["n"]
    assert champion["average_precision"] == pytest.approx(expected["average_precision"])
    # each read its own rows: this small champion happens to score the same on both sets' features (its trees
    # split on none of the features the engines compute apart), so the record says which it read
    assert (champion["feature_set"], report["evaluation"]["challenger"]["feature_set"]) == ("payments@1", "payments@2")


async def test_the_input_key_moves_with_labels_targets_and_maturity(clean_db, settings):
    """A retrain answered an earlier run's report after a label was reversed (with a known_at older than the
    newest: neither the labels' count nor their newest known_at moved), the model's decision targets changed
    (they choose the thresholds) or its label maturity (it decides which events are labelled)."""
    from datetime import timezone

    admin = Identity("t-admin", frozenset({"admin"}))
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    events = [(f"k-{i}", start + timedelta(hours=i), f"c{i % 5}", 10.0 + i % 13) for i in range(24 * 30)]
    await clean_db.executemany("INSERT INTO sira_events (event_id, occurred_at, customer_id, amount) "
                               "VALUES ($1, $2, $3, $4)", events)
    await clean_db.executemany("INSERT INTO sira_feedback (event_id, label, known_at, source) "
                               "VALUES ($1, true, $2, 'chargeback')",
                               [(e, at + timedelta(days=3)) for e, at, _, _ in events[3::10]])
    async with db.transaction(clean_db) as conn:
        await registry.create_model(conn, admin, "fraud", model_type="fraud_detection", label_maturity_days=10)

    async def key() -> str:
        plan = await run_retrain(settings, RetrainRequest(model="fraud", trials=0, dry_run=True), SCIENTIST)
        return plan["input_key"]

    first = await key()
    assert await key() == first  # the same inputs, the same key
    reversed_event, _, _, _ = events[3]  # its positive was known on day 3, long before the newest label
    await clean_db.execute("UPDATE sira_feedback SET label = false, known_at = $2 WHERE event_id = $1",
                           reversed_event, start + timedelta(days=4))
    after_reversal = await key()
    assert after_reversal != first
    async with db.transaction(clean_db) as conn:
        await registry.update_model(conn, admin, "fraud", decision_targets={"review_rate": 0.05})
    after_targets = await key()
    assert after_targets != after_reversal
    async with db.transaction(clean_db) as conn:
        await registry.update_model(conn, admin, "fraud", label_maturity_days=12)
    assert await key() != after_targets


@pytest.mark.slow
def test_sigterm_while_the_challenger_trains_records_both_runs_and_ends_in_one_line(model, tmp_path, monkeypatch,
                                                                                     capsys):
    """`sira retrain` ended by SIGTERM (`ray job stop`, Kubernetes) died with Python's default action: its retrain
    run and the challenger's training run both stayed "running" for ever, with no line saying why. Its dry run
    did not show the gap between the training and held-out windows that `sira train --dry-run` shows."""
    from tests.conftest import cli_in_process

    slow = tmp_path / "slow.yaml"  # still training when the signal comes
    slow.write_text("num_boost_round: 1000000\nearly_stopping_rounds: 0\nlearning_rate: 0.0001\nnum_leaves: 63\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": model.dsn, "SIRA_WORKSPACE": str(model.settings.workspace),
                "SIRA_API_KEY": model.keys["data_scientist"], "SIRA_RAY_NUM_CPUS": "1"})
    args = [sys.executable, "-m", "sira", "retrain", "--model", "fraud", "--trials", "0", "--seed", "13",
            "--params", str(slow), "--threads", "1"]
    plan = cli_in_process(monkeypatch, capsys, env, *args[3:], "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["gap"]["set_by"].startswith("default: 7 days"), plan.stdout
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not asyncio.run(_fetch(model.dsn, "SELECT 1 FROM sira_training_runs WHERE status = 'running'")):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        time.sleep(1.5)  # inside LightGBM's rounds
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted: retrain of fraud stopped by SIGTERM during its challenger step: "
                           "run ") and last.endswith("run it again to resume from that step"), stderr
    assert "Traceback" not in stderr, stderr
    (run,) = asyncio.run(_fetch(model.dsn, "SELECT status, error, finished_at FROM sira_retrain_runs "
                                           "WHERE inputs->>'seed' = '13'"))
    assert (run["status"], run["error"]) == ("failed", "terminated by SIGTERM") and run["finished_at"], run
    assert not asyncio.run(_fetch(model.dsn, "SELECT 1 FROM sira_training_runs WHERE status = 'running'"))
