"""A shortened `make demo`, so CI covers what the demo does."""

import json
import os
import select
import signal
import subprocess
import sys

import httpx
import pyarrow.parquet as pq

from sira.cli.common import err
from sira.cli.demo import render
from sira.demo.story import DemoReport
from tests.conftest import assert_quiet


def test_short_demo_runs_end_to_end(create_database, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": create_database(), "SIRA_WORKSPACE": str(tmp_path / "ws"), "DEMO_SCALE": "0.15"})
    # --keep-serving: the service stays up after the report until the demo is stopped (the process exited
    # at once, and its local Ray and the service with it)
    with open(tmp_path / "stderr", "w+") as stderr:
        demo = subprocess.Popen([sys.executable, "-m", "sira", "demo", "--days", "12", "--keep-serving", "--json"],
                                env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            ready, _, _ = select.select([demo.stdout], [], [], 600)
            line = demo.stdout.readline() if ready else ""
            assert line, f"no report after 600 s: {(tmp_path / 'stderr').read_text()[-3000:]}"
            report = json.loads(line)
            assert demo.poll() is None and httpx.get(f"{report['serving']['url']}/healthz", timeout=30).status_code \
                == 200, "the service did not stay up"
        finally:
            demo.send_signal(signal.SIGTERM)
            rest, _ = demo.communicate(timeout=120)
        stderr.seek(0)
        said = stderr.read()
    assert demo.returncode == 0, said
    assert rest == "", f"stdout must be one JSON line: {rest[:2000]!r}"
    assert_quiet(said)  # no Ray Data progress log, Tune box, Optuna or Serve chatter
    assert said.rstrip().endswith("stopping SIRA serving")
    assert_the_report_reads_as_it_should(report)
    assert [s["step"] for s in report["steps"]][:5] == ["migrate", "simulate", "ingest", "labels", "materialize"]
    assert report["database"]["schema_version"] >= 5
    events = pq.read_table(report["simulation"]["events_path"])
    assert events.num_rows == report["simulation"]["events"] > 0
    assert report["simulation"]["fraud_events"] > 0
    live = next(s["held_back_for_serving"] for s in report["steps"] if s["step"] == "simulate")
    assert live > 0 and report["ingest"]["accepted"] == events.num_rows - live
    # the held-back payments arrive as live scoring requests and are recorded into the pipeline
    assert report["tables"]["sira_events"] == events.num_rows
    # feature engine v2 (payments@2): one packed state per entity and daily checkpoints, no per-event rows
    assert report["tables"]["sira_features"] == 0 and report["tables"]["sira_state_checkpoints"] > 0
    assert report["labels"]["inserted"] == report["simulation"]["labels"]
    assert report["tables"]["sira_feedback"] == report["simulation"]["labels"] + 1  # + one chargeback posted live
    assert report["tables"]["sira_feature_snapshots"] == 0
    assert report["tables"]["sira_entity_states"] >= sum(report["snapshots"]["entities"].values()) > 0
    assert report["example_features"]["features"]["customer_count_30d"] >= 1
    training = report["training"]
    assert training["version"] == 1 and training["status"] == "candidate" and training["search"]["completed"] == 8
    assert training["metrics"]["test"]["roc_auc"] > 0.6  # a tiny demo; model quality is tested elsewhere
    governance = report["governance"]
    assert [d["outcome"] for d in governance["decisions"]] == ["pending", "approved"]
    assert governance["history"][-1]["to"] == 1 and governance["history"][-1]["actor"] == "demo-bob"
    assert governance["history"][-1]["reason"] == "demo: first model"
    # the keys file says which role each key holds
    stored_keys = json.loads((tmp_path / "ws" / "secrets" / "demo_keys.json").read_text())
    assert stored_keys["demo-ann"]["roles"] == ["approver"] and stored_keys["demo-svc"]["key"]
    serving = report["serving"]
    first, later = live // 2, live - live // 2  # half before the retrain, half after
    assert serving["scored"] == first and serving["failed"] == 0 and serving["versions"] == [1]
    assert report["tables"]["sira_predictions"] >= live  # + the staging version's shadow scores, if staged
    assert serving["feedback"]["status"] == "recorded" and serving["examples"]
    assert serving["explained"] is None or serving["explained"]["reasons_deferred"] is False
    # the riskiest payment's explanation report, as its payer would read it (with what would have changed a
    # review or block, when a change of amount or hour would have)
    assert serving["report"]["main_factors"] and serving["report"]["human_review"]["how_to_ask"]
    assert serving["report"]["decision"] != "approve" or serving["report"]["what_would_change_it"] is None
    # then the whole history is batch-scored, and drift and live performance are measured and stored
    batch = report["batch"]
    assert batch["rows"] == events.num_rows - later and batch["version"] == 1
    assert pq.read_table(batch["out"]).num_rows == batch["rows"]
    drift = report["drift"]
    assert drift["verdict"] in ("ok", "warn", "alert") and drift["reference_sample"]
    assert {r["feature"] for r in drift["features"]} >= {"amount", "customer_count_1d", "__score__"}
    assert report["tables"]["sira_data_drift"] >= len(drift["features"]) + 1  # the retrain checks drift too
    performance = report["performance"]
    pairs = [(r["version"], r["role"]) for r in performance["results"]]
    if report["retrain"]["decision"] == "stage":  # the closing comparison: champion, and challenger in shadow
        assert pairs[0] == (1, "production") and (2, "shadow") in pairs
    else:
        assert pairs == [(1, "production")]
    assert sum(w["n"] for w in performance["results"][0]["windows"]) > 0
    assert report["tables"]["sira_model_performance"] >= 1
    steps = [s["step"] for s in report["steps"]]
    assert steps[steps.index("batch_score"):][:4] == ["batch_score", "drift", "performance", "retrain"]
    # and a challenger is trained on the latest data and judged against the champion by the policy
    retrain = report["retrain"]
    assert retrain["champion"] == 1 and retrain["challenger"] == 2 and retrain["decision"] in ("stage", "reject", "hold")
    assert retrain["evaluation"]["champion"]["version"] == 1 and retrain["reasons"]
    assert report["tables"]["sira_retrain_runs"] == 1
    # the rest of the live payments arrive after it: shadow-scored by a staged challenger, which is then
    # approved and swapped in while serving; or, without one, simply scored
    assert report["shadow"]["scored"] == later and report["shadow"]["failed"] == 0
    if retrain["decision"] == "stage":
        assert steps[-3:] == ["shadow", "hot_swap", "performance_after"]
        assert report["swap"]["seconds"] is not None and report["swap"]["version"] == 2
        change = report["swap"]["promotion"]["history"][-1]
        assert change["to"] == 2 and change["reason"] != "demo: first model" and "v2" in change["reason"]
    else:
        assert steps[-1] == "live" and report["shadow"]["versions"] == [1]
    # The live performance counts the fraud labels of the payments it covers (the labels were imported
    # before the payments arrived live: they wait, pending, for their event). Staged: the closing
    # comparison, on the later live payments; else the operator's run, on the first ones, which also
    # hold the chargeback posted live.
    ordered = events.sort_by([("occurred_at", "ascending"), ("event_id", "ascending")])
    held = ordered.slice(ordered.num_rows - live)
    first_ids = set(held.slice(0, first).column("event_id").to_pylist())
    later_ids = set(held.slice(first).column("event_id").to_pylist())
    labels = pq.read_table(report["simulation"]["labels_path"]).to_pylist()
    fraud = {r["event_id"] for r in labels if r["label"]}
    if retrain["decision"] == "stage":
        expected = fraud & later_ids
    else:
        expected = (fraud & first_ids) | {serving["feedback"]["event_id"]}
        assert expected  # at least the posted chargeback: a comparison saying "0 fraud" fails here
    for result in report["performance"]["results"]:
        assert sum(w["n_positive"] for w in result["windows"]) == len(expected), (result, len(expected))


def assert_the_report_reads_as_it_should(report):
    """What the demo's human report says of this run: the held-back payments, a feature set that keeps no row
    per event, and, last, what to do next (it ended on a table of row counts)."""
    with err.capture() as captured:
        render(DemoReport(**report))
    text = " ".join(captured.get().split())  # as one line: rich folds table cells
    held = report["simulation"]["held_back_for_serving"]
    assert held > 0 and f"the newest {held:,} of the {report['simulation']['events']:,} simulated are held back" in text
    assert "feature rows │ none: feature set payments@2 keeps one packed state per entity" in text
    ending = captured.get().rstrip().split("\nNext ", 1)[1].splitlines()
    assert ending[0].startswith("(the README's five-minute tour")
    assert any(line.strip().startswith("export SIRA_API_KEY=") and "demo_keys.json" in line for line in ending)
    assert any(f"stays up at {report['serving']['url']}" in line for line in ending)
    assert not any("sira db stop" in line for line in ending)  # an external database: not the demo's to stop


def test_a_sigterm_part_way_through_ends_the_demo_in_one_line_and_leaves_no_process(create_database, tmp_path):
    """`sira demo` (or any command that sets no handler of its own) stopped by SIGTERM while it tunes died
    with Python's default action: Ray's core worker printed a C++ stack, and nothing it had started was shut
    down in order. Now the command unwinds (its Ray shut down) and says so in one line, exit 143."""
    import psutil

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIRA_", "RAY_"))}
    env.update({"SIRA_DATABASE_URL": create_database(), "SIRA_WORKSPACE": str(tmp_path / "ws"),
                "SIRA_RAY_NUM_CPUS": "1"})
    demo = subprocess.Popen([sys.executable, "-m", "sira", "demo", "--scale", "0.05", "--days", "12", "--no-serve"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    said = []
    try:
        for line in demo.stderr:
            said.append(line)
            if line.startswith("tune:"):
                break
        assert demo.poll() is None, "".join(said)
        children = psutil.Process(demo.pid).children(recursive=True)
        assert children, "no Ray started"
        demo.send_signal(signal.SIGTERM)
        code = demo.wait(timeout=120)
        rest = demo.stderr.read()
        assert code == 128 + signal.SIGTERM, "".join(said) + rest
    finally:
        if demo.poll() is None:
            demo.kill()
    assert rest.endswith("\nerror: interrupted: demo stopped by SIGTERM\n") or \
        rest == "error: interrupted: demo stopped by SIGTERM\n", rest[-3000:]
    assert "Traceback" not in rest and "SIGTERM received" not in rest, rest[-3000:]
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [(p.pid, p.name()) for p in alive]
