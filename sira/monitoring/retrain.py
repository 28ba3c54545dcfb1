"""The retraining pipeline: a challenger trained on the latest data, judged against the champion, staged by policy.

    sira retrain --model fraud [--trials 16] [--time-budget 600] [--dry-run]
    sira jobs submit retrain -- --model fraud --json      (a Ray job: docs/cluster.md)

Steps, each recorded in ``sira_retrain_runs`` as it completes:

1. ``challenger``: the training set from the latest window (new feedback labels
   included), a search within the budget, training, registration as a candidate;
2. ``evaluate``: challenger and champion (the production version) scored on the
   same, most recent held-out window (the challenger's test window), plus what
   serving stored for that window (production and shadow predictions);
3. ``drift``: the last week (before the cut-off, with ``as_of``) against the challenger's training reference;
4. ``policy``: the model's promotion policy (:mod:`sira.registry.policy`) decides; a
   challenger that passes goes to ``staging`` (shadow scoring); production still
   needs the model's approvals unless ``required_approvals`` is 0;
5. ``report``: Markdown and JSON in ``<workspace>/reports/``.

The inputs (model and the settings that decide its training and policy, champion,
events, the label history up to the cut-off, search settings) make a key: a re-run
with the same inputs reports the finished run instead of training again, and a run
that stopped part-way resumes after its last completed step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from sira.core import audit, db
from sira.core.artifacts import canonical_json, json_finite
from sira.core.auth import Identity, authorize
from sira.core.config import Settings
from sira.core.errors import Conflict, InvalidInput
from sira.ingest.pii import redactor_for
from sira.registry import models as registry
from sira.registry.policy import drift_not_run
from sira.training.windows import Windows

log = logging.getLogger(__name__)

STEPS = ("challenger", "evaluate", "drift", "policy", "report")
LOCK_NAMESPACE = 7402  # advisory locks: one runner per (model, inputs) at a time


@dataclass(frozen=True)
class RetrainRequest:
    model: str
    trials: int = 16  # 0: no search, train the given (or default) parameters
    time_budget_s: float | None = 600.0
    seed: int | None = None  # None: the params' seed, else 42 (sira.training.trainer.seed_and_threads)
    params: dict[str, Any] | None = None
    label_delay_days: float = 7.0
    num_threads: int | None = None  # None: the params', else every CPU
    drift_days: float = 7.0
    # the held-out window: these many days up to the newest usable events (None: the training default,
    # the newest quarter of the usable history; docs/windows.md)
    test_days: float | None = None
    train_days: float | None = None  # the training window: these days before the gap (None: all the history)
    as_of: datetime | None = None  # the label cut-off (default: now)
    dry_run: bool = False


@dataclass
class RunState:
    id: int
    model: dict[str, Any]
    key: str
    inputs: dict[str, Any]
    steps: dict[str, Any] = field(default_factory=dict)
    attempts: int = 1


async def _inputs(conn: Any, model: Any, req: RetrainRequest) -> dict[str, Any]:
    """Everything the outcome depends on: the same inputs, the same challenger."""
    champion = await conn.fetchrow(
        "SELECT version, artifact_sha256 FROM sira_model_versions WHERE model_id = $1 AND status = 'production'",
        model["id"])
    events = await conn.fetchrow("SELECT count(*) AS n, max(occurred_at) AS until FROM sira_events")
    if not events["n"]:
        raise InvalidInput("the feature store has no events; run `sira ingest` first", code="empty_input")
    labels = await conn.fetchrow(
        "SELECT count(*) AS n, max(known_at) AS until FROM sira_feedback WHERE label_name = $1", model["label_name"])
    # Every label a training set may read, as the history holds it (sql/029): a label written, changed (a
    # reversal, even one dated before the newest known_at) or erased moves the count or the newest id, which
    # sira_feedback's count and newest known_at did not. With --as-of, only what was known by then counts.
    said = await conn.fetchrow(
        """SELECT count(*) AS n, coalesce(max(id), 0) AS last FROM sira_feedback_history
            WHERE label_name = $1 AND ($2::timestamptz IS NULL OR known_at <= $2)""", model["label_name"], req.as_of)
    return {
        "model": model["name"], "champion": champion["version"] if champion else None,
        "champion_sha256": champion["artifact_sha256"] if champion else None,
        "events": events["n"], "events_until": events["until"].isoformat(),
        "labels": labels["n"], "labels_until": labels["until"].isoformat() if labels["until"] else None,
        "label_history": {"rows": said["n"], "last_id": said["last"]},
        "feature_set": model["feature_set"], "feature_set_version": model["feature_set_version"],
        # the model's settings that decide the challenger (its labels, thresholds) and the policy's outcome
        "label_name": model["label_name"], "label_maturity_days": model["label_maturity_days"],
        "decision_targets": model["decision_targets"] or {}, "required_approvals": model["required_approvals"],
        "trials": req.trials, "time_budget_s": req.time_budget_s, "seed": req.seed, "params": req.params or {},
        **({"num_threads": req.num_threads} if req.num_threads else {}),
        "label_delay_days": req.label_delay_days, "test_days": req.test_days,
        **({"train_days": req.train_days} if req.train_days else {}),
        "policy": model["promotion_policy"] or {},
        # the cut-off is now unless set: with the same labels and events, now and later give the same set
        **({"as_of": req.as_of.isoformat()} if req.as_of else {}),
    }


def input_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(inputs)).hexdigest()


async def run_retrain(settings: Settings, req: RetrainRequest, identity: Identity,
                      progress: Any = lambda _m: None) -> dict[str, Any]:
    """Run (or resume, or report) the retraining of ``req.model``; returns the report."""
    from sira.registry.policy import PromotionPolicy
    from sira.training.runs import TrainRequest, check_request
    from sira.training.trainer import seed_and_threads

    authorize(identity, "models.write")
    authorize(identity, "promotion.request")
    if req.trials < 0:
        raise InvalidInput("--trials must be 0 (no search) or more", code="invalid_input")
    chosen = seed_and_threads(req.params, seed=req.seed, num_threads=req.num_threads)
    req = dataclasses.replace(req, seed=chosen.seed, num_threads=chosen.num_threads)
    progress(f"retrain: {chosen.describe()}")
    check_request(TrainRequest(model=req.model, seed=req.seed, test_days=req.test_days, train_days=req.train_days,
                               label_delay_days=req.label_delay_days, as_of=req.as_of,
                               params=req.params))  # before the drift step
    async with db.open_pool(settings) as pool:
        async with pool.acquire() as conn:
            model = dict(await registry.get_model(conn, req.model))
            if not model["feature_set"]:
                raise InvalidInput(f"{req.model} is trained on a table of its own; retraining reads the feature "
                                   "store", code="invalid_input")
            policy = PromotionPolicy.from_mapping(model["promotion_policy"])
            inputs = await _inputs(conn, model, req)
            key = input_key(inputs)
            row = await conn.fetchrow("SELECT * FROM sira_retrain_runs WHERE model_id = $1 AND input_key = $2",
                                      model["id"], key)
        if req.dry_run:
            from sira.training.datasets import events_without_vectors
            from sira.training.runs import checked_windows, gap_of

            done = list(row["steps"]) if row else []
            plan = ("nothing: a run with these inputs finished" if row and row["status"] == "succeeded"
                    else f"resume after {done[-1]}" if done else "run every step")
            train = TrainRequest(model=req.model, label_delay_days=req.label_delay_days, test_days=req.test_days,
                                 train_days=req.train_days, as_of=req.as_of)
            async with pool.acquire() as conn:
                windows, counts = await checked_windows(conn, train, model["label_maturity_days"], model["label_name"])
                feature_rows = await events_without_vectors(conn, req.model, windows.to_dict())
            return {"model": req.model, "dry_run": True, "input_key": key, "inputs": inputs, "plan": plan,
                    "steps": [s for s in STEPS if s not in done], "policy": policy.to_dict(),
                    "windows": windows.to_dict(), "counts": counts, "gap": gap_of(train, windows),
                    "feature_rows": feature_rows,
                    "previous_run": row["id"] if row else None}
        if row is not None and row["status"] == "succeeded":
            progress(f"retrain: run {row['id']} already finished with these inputs; nothing to do")
            return {**row["report"], "reused": True}
        async with pool.acquire() as lock:
            if not await lock.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_NAMESPACE, key):
                raise Conflict(f"a retrain of {req.model} with the same inputs is running now", code="retrain_running")
            try:
                from sira.training.runs import sigterm_cancels

                state = await _claim(pool, model, key, inputs, identity)
                with sigterm_cancels(f"retrain of {req.model}"):
                    return await _run_steps(settings, pool, req, identity, policy, state, progress)
            finally:
                await lock.execute("SELECT pg_advisory_unlock($1, hashtext($2))", LOCK_NAMESPACE, key)


async def _claim(pool: Any, model: dict[str, Any], key: str, inputs: dict[str, Any], identity: Identity) -> RunState:
    """The run's row: a new one, or the unfinished one of the same inputs (resumed)."""
    async with db.transaction(pool) as conn:
        row = await conn.fetchrow(
            """INSERT INTO sira_retrain_runs (model_id, input_key, inputs, champion_version, started_by)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (model_id, input_key) DO UPDATE
                  SET status = 'running', error = NULL, attempts = sira_retrain_runs.attempts + 1
               RETURNING id, steps, attempts""",
            model["id"], key, inputs, inputs["champion"], identity.name)
        await audit.record(conn, identity.actor(), "retrain.start", target_type="model", target_id=model["name"],
                           details={"run": row["id"], "attempt": row["attempts"], "resumes_after":
                                    list(row["steps"])[-1] if row["steps"] else None})
    return RunState(row["id"], model, key, inputs, dict(row["steps"]), row["attempts"])


async def _run_steps(settings: Settings, pool: Any, req: RetrainRequest, identity: Identity, policy: Any,
                     state: RunState, progress: Any) -> dict[str, Any]:
    from sira.training.runs import TERMINATED, Terminated, terminated

    handlers = {"challenger": _challenger, "evaluate": _evaluate, "drift": _drift, "policy": _policy,
                "report": _report}
    step = STEPS[0]
    try:
        for step in STEPS:
            if step in state.steps:
                progress(f"retrain: {step} already done (run {state.id}); skipping")
                continue
            progress(f"retrain: {step}")
            started = time.perf_counter()
            output = await handlers[step](settings, pool, req, identity, policy, state)
            output["seconds"] = round(time.perf_counter() - started, 2)
            state.steps[step] = json_finite(output)
            async with pool.acquire() as conn:
                await conn.execute("UPDATE sira_retrain_runs SET steps = $2, challenger_version = $3 WHERE id = $1",
                                   state.id, state.steps, (state.steps.get("challenger") or {}).get("version"))
    except BaseException as exc:
        stopped = terminated(exc) or isinstance(exc, Terminated)  # between steps, or in the challenger's training
        async with pool.acquire() as conn:
            await conn.execute("UPDATE sira_retrain_runs SET status = 'failed', error = $2, finished_at = now() "
                               "WHERE id = $1", state.id, TERMINATED if stopped else
                               redactor_for(settings).scrub_text(f"{type(exc).__name__}: {exc}"[:2000]))
        if stopped:
            raise Terminated(f"retrain of {req.model} stopped by SIGTERM during its {step} step: run {state.id} is "
                             f"recorded as failed ({TERMINATED}); run it again to resume from that step",
                             details={"run": state.id, "step": step}) from None
        raise
    report = state.steps["report"]["report"]
    async with pool.acquire() as conn:
        await conn.execute("""UPDATE sira_retrain_runs SET status = 'succeeded', decision = $2, report = $3,
                                     finished_at = now() WHERE id = $1""",
                           state.id, state.steps["policy"]["outcome"], report)
    return {**report, "reused": False}


# -- the steps ------------------------------------------------------------------------------------------


async def _challenger(settings: Settings, pool: Any, req: RetrainRequest, identity: Identity, policy: Any,
                      state: RunState) -> dict[str, Any]:
    """Train and register the challenger, unless an earlier attempt registered it before stopping."""
    from sira.training.runs import TrainRequest, run_training

    async with pool.acquire() as conn:
        earlier = await conn.fetchrow(
            """SELECT v.version, v.run_id, v.metrics FROM sira_model_versions v
                 JOIN sira_training_runs r ON r.run_id = v.run_id
                WHERE v.model_id = $1 AND r.params->>'retrain_key' = $2""", state.model["id"], state.key)
    if earlier is not None:
        return {"version": earlier["version"], "run_id": str(earlier["run_id"]), "recovered": True,
                "test": (earlier["metrics"] or {}).get("test")}
    request = TrainRequest(model=req.model, trials=req.trials or None, time_budget_s=req.time_budget_s,
                           seed=req.seed, params=req.params, label_delay_days=req.label_delay_days,
                           retrain_key=state.key, test_days=req.test_days, train_days=req.train_days,
                           as_of=req.as_of,
                           **({"num_threads": req.num_threads} if req.num_threads else {}))
    result = await run_training(settings, request, actor=identity.actor())
    return {"version": result["version"], "run_id": result["run_id"], "recovered": False,
            "test": result["metrics"]["test"], "search": result.get("search")}


def _score_psi(a: np.ndarray, b: np.ndarray) -> float:
    from sira.core import stats

    edges = np.linspace(0.0, 1.0, 21)
    return stats.psi(np.histogram(b, edges)[0], np.histogram(a, edges)[0])


async def _evaluate(settings: Settings, pool: Any, req: RetrainRequest, identity: Identity, policy: Any,
                    state: RunState) -> dict[str, Any]:
    """Challenger and champion on the challenger's held-out window; what serving stored for that window."""
    import asyncio

    import pyarrow as pa

    from sira.core.ray_runtime import init_ray
    from sira.features.definitions import get_feature_set
    from sira.serving.scoring import ModelRuntime
    from sira.training.datasets import build_feature_dataset
    from sira.training.evaluation import evaluate

    version = state.steps["challenger"]["version"]
    async with pool.acquire() as conn:
        rows = {"challenger": await registry.get_version(conn, req.model, version)}
        if state.inputs["champion"] is not None:
            rows["champion"] = await registry.get_version(conn, req.model, state.inputs["champion"])
    runtimes = {}
    for role, row in rows.items():
        runtimes[role] = await asyncio.to_thread(ModelRuntime.load, settings, {**dict(row), "model_name": req.model})
    from sira.core import artifacts

    manifests = {role: artifacts.load_artifact(settings, artifacts.ArtifactRef(row["artifact_uri"],
                                                                              row["artifact_sha256"])).manifest
                 for role, row in rows.items()}
    windows = recorded_windows(manifests["challenger"])
    assert windows is not None  # a retrain reads the feature store
    dsn = db.resolve_dsn(settings)
    init_ray(settings, dsn)
    # the held-out rows in each version's own feature set: scored on the challenger's (payments@2), a champion
    # trained on payments@1 was judged on features it had never seen, without a word
    tests: dict[tuple[str, int], Any] = {}
    for row in rows.values():
        key = (row["feature_set"], row["feature_set_version"])
        if key not in tests:
            ds, split = await asyncio.to_thread(build_feature_dataset, dsn, get_feature_set(*key), windows,
                                                label_name=state.model["label_name"], test_only=True)
            tests[key] = ds.matrix.rows(split.test)
    own_key = {role: (row["feature_set"], row["feature_set_version"]) for role, row in rows.items()}
    own = {role: tests[key] for role, key in own_key.items()}
    out: dict[str, Any] = {"window": {"from": windows.test_from.isoformat(), "to": windows.test_to.isoformat()},
                           "rows": int(own["challenger"].y.size), "positives": int(own["challenger"].y.sum())}
    scores = {}
    for role, runtime in runtimes.items():
        test = own[role]
        table = pa.table({name: test.X[:, j] for j, name in enumerate(test.names)})
        scores[role] = runtime.predict(runtime.table_matrix(table), threads=2)
        metrics = evaluate(test.y, scores[role], runtime.thresholds)
        out[role] = {"version": runtime.version, "feature_set": "{}@{}".format(*own_key[role]), **{k: metrics[k] for k in (
            "n", "positives", "average_precision", "roc_auc", "recall_at_1pct_fpr", "brier",
            "expected_calibration_error", "decisions")}}
    out["score_psi"] = _score_psi(scores["challenger"], scores["champion"]) if "champion" in scores else None
    champion_windows = recorded_windows(manifests["champion"]) if "champion" in manifests else None
    if champion_windows is not None and champion_windows.train_to > windows.test_from:
        out["champion_overlap"] = (f"v{runtimes['champion'].version} trained on events until "
                                   f"{champion_windows.train_to:%Y-%m-%d %H:%M}, the window starts "
                                   f"{windows.test_from:%Y-%m-%d %H:%M}; a shorter --test-days moves it past")
    out["live"] = await _live(pool, state.model, windows.test_from, windows.test_to, windows.cutoff)
    return out


def recorded_windows(manifest: dict[str, Any]) -> Windows | None:
    """The feature-store windows a version's run recorded in its manifest (None: trained on a table)."""
    w = (manifest.get("dataset") or {}).get("windows")
    if not w:
        return None
    w = w.get("train", w)  # the split records the windows it was built from under "train"
    if "train_to" not in w:  # a table's split: event times, not windows
        return None
    return Windows(*(datetime.fromisoformat(w[k]) for k in ("train_from", "train_to", "test_from", "test_to",
                                                            "cutoff")), float(w["maturity_days"]))


async def _live(pool: Any, m: dict[str, Any], lo: datetime, hi: datetime, now: datetime) -> list[dict[str, Any]]:
    """Stored production and shadow predictions of the window, against their labels known by the training
    set's cut-off (as serving answered)."""
    from sira.monitoring.performance import evaluate_windows, read_labelled

    model = m["name"]
    maturity_days = float(m["label_maturity_days"])
    async with pool.acquire() as conn:
        read = await read_labelled(conn, model, lo, hi, m["label_name"], now, maturity_days)
        out = []
        for (version, role), labelled in sorted(read.groups.items()):
            v = await registry.get_version(conn, model, version)
            evaluated = evaluate_windows(labelled, lo=lo, hi=hi, window_days=(hi - lo).total_seconds() / 86400,
                                         cutoff=now, maturity_days=maturity_days,
                                         thresholds={k: float(x) for k, x in v["thresholds"].items()},
                                         train_ap=None, margin=0.0, min_segment_size=10**9)
            # no labelled prediction yet (every event younger than the label maturity): counted, no AP
            whole = evaluated[0] if evaluated else {"n": 0, "n_positive": 0, "average_precision": None}
            out.append({"version": version, "role": role, "n": whole["n"], "positives": whole["n_positive"],
                        "average_precision": whole["average_precision"]})
    return out


async def _drift(settings: Settings, pool: Any, req: RetrainRequest, identity: Identity, policy: Any,
                 state: RunState) -> dict[str, Any]:
    """The newest ``drift_days`` of events before the cut-off against the challenger's reference: a backtest
    (``--as-of``) judged drift on the newest events, after its cut-off, and the policy blocked on them."""
    from sira.monitoring.drift import DriftRequest, run_drift

    try:
        result = await run_drift(settings, DriftRequest(model=req.model, version=state.steps["challenger"]["version"],
                                                        days=req.drift_days, until=req.as_of), actor=identity.actor())
    except InvalidInput as exc:
        if exc.code not in ("insufficient_data", "empty_input"):
            raise
        return {"status": "not_run", "verdict": None, "reason": exc.message,
                **({"until": req.as_of.isoformat()} if req.as_of else {})}
    missing = [r["feature"] for r in result["features"] if (r["details"] or {}).get("missing_rate_current") == 1.0]
    return {"status": "ran", "verdict": result["verdict"], "job_id": result["job_id"], "severities": result["severities"],
            "window": {k: result["window"][k] for k in ("from", "to", "rule")},
            "worst": [{k: r[k] for k in ("feature", "severity", "psi")} for r in result["features"][:5]],
            "missing_features": missing}


async def _policy(settings: Settings, pool: Any, req: RetrainRequest, identity: Identity, policy: Any,
                  state: RunState) -> dict[str, Any]:
    from sira.registry.policy import evidence_of

    decision = policy.decide(evidence_of(state.steps["evaluate"], state.steps["drift"]))
    version = state.steps["challenger"]["version"]
    staged, promotion = False, None
    async with db.transaction(pool) as conn:
        await audit.record(conn, identity.actor(), "retrain.decision", target_type="model_version",
                           target_id=f"{req.model}:v{version}", details={"run": state.id, **decision.to_dict()})
        if decision.outcome == "stage" and policy.auto_stage:
            await registry.stage_version(conn, settings, identity, req.model, version,
                                         reason=f"retrain run {state.id}: the promotion policy passed")
            staged = True
            if "production" in policy.auto_statuses(decision, required_approvals=state.model["required_approvals"]):
                # request_promotion asks the model's policy again (this decision, its current settings)
                promotion = await registry.request_promotion(conn, settings, identity, req.model, version,
                                                             reason=f"retrain run {state.id}: policy, no approvals",
                                                             decision=decision)
    if staged:  # its events (version.stage, promotion.request, production.change) were written to the outbox
        await _deliver_events(pool, settings)
    return {**decision.to_dict(), "version": version, "staged": staged,
            "promotion": {k: promotion[k] for k in ("status",) if k in promotion} if promotion else None}


async def _deliver_events(pool: Any, settings: Settings) -> None:
    """Deliver the registry events the run committed, as the CLI's and the API's governed changes do after
    theirs; a delivery that fails is retried by ``sira webhooks deliver`` (scheduled beside the retrain),
    never fails the run."""
    from sira.registry import webhooks

    try:
        await webhooks.deliver_due(pool, settings)
    except Exception as exc:  # noqa: BLE001 - the change is committed; the outbox keeps the events
        log.warning("retrain: webhook delivery failed (%s); `sira webhooks deliver` retries it", type(exc).__name__)


def _drift_line(drift: dict[str, Any]) -> str:
    """The report's line on drift, naming the window it measured (before the cut-off with --as-of)."""
    not_run = drift_not_run(drift)
    verdict = f"not run: {not_run['drift']}" if not_run else str(drift.get("verdict"))
    window = drift.get("window")
    if window:
        return f"Drift of {window['from'][:16]}..{window['to'][:16]} against the challenger's reference: {verdict}"
    if drift.get("until"):
        return f"Drift of the days before the cut-off {drift['until'][:16]} against the challenger's reference: {verdict}"
    # runs recorded before the step kept its window
    return f"Drift of the last days against the challenger's reference: {verdict}"


async def _report(settings: Settings, pool: Any, req: RetrainRequest, identity: Identity, policy: Any,
                  state: RunState) -> dict[str, Any]:
    report = json_finite({
        "model": req.model, "run": state.id, "input_key": state.key, "attempts": state.attempts,
        "champion": state.inputs["champion"], "challenger": state.steps["challenger"]["version"],
        "decision": state.steps["policy"]["outcome"], "staged": state.steps["policy"]["staged"],
        "reasons": state.steps["policy"]["reasons"], "blockers": state.steps["policy"]["blockers"],
        "deciding": state.steps["policy"].get("deciding", []),
        "evaluation": state.steps["evaluate"], "drift": state.steps["drift"], "policy": policy.to_dict(),
        "inputs": state.inputs,
    })
    folder = settings.workspace / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"retrain-{req.model}-{state.id}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, sort_keys=True, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    return {"report": {**report, "files": {"json": str(stem.with_suffix(".json")),
                                           "markdown": str(stem.with_suffix(".md"))}}}


def markdown(report: dict[str, Any]) -> str:
    """The report for people: the comparison, the decision and its reasons."""
    ev = report["evaluation"]

    def cell(role: str, key: str) -> str:
        value = (ev.get(role) or {}).get(key)
        return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = [f"# Retraining {report['model']}: run {report['run']}", "",
             f"**Decision: {report['decision'].upper()}** — challenger v{report['challenger']}"
             + (f" against champion v{report['champion']}" if report["champion"] else " (no champion)")
             + (", staged for shadow scoring" if report["staged"] else ""), "",
             f"Held-out window {ev['window']['from'][:16]} .. {ev['window']['to'][:16]}: {ev['rows']:,} events, "
             f"{ev['positives']:,} positives.", "",
             "| metric | champion | challenger |", "|---|---:|---:|"]
    for key in ("average_precision", "roc_auc", "recall_at_1pct_fpr", "brier", "expected_calibration_error"):
        lines.append(f"| {key.replace('_', ' ')} | {cell('champion', key)} | {cell('challenger', key)} |")
    psi = ev.get("score_psi")
    lines += ["", "Score PSI (challenger vs champion on the window): "
              + (f"{psi:.4f}" if isinstance(psi, float) else "not computed (no champion scores)"),
              _drift_line(report["drift"]), "",
              "## Reasons", ""] + [f"- {r}" for r in report["reasons"]]
    if report["blockers"]:
        lines += ["", "## Blockers", ""] + [f"- {b}" for b in report["blockers"]]
    if ev.get("live"):
        lines += ["", "## What serving stored for the window", "", "| version | role | n | positives | AP |",
                  "|---:|---|---:|---:|---:|"]
        lines += [f"| {x['version']} | {x['role']} | {x['n']} | {x['positives']} | "
                  f"{'—' if x['average_precision'] is None else format(x['average_precision'], '.4f')} |"
                  for x in ev["live"]]
    return "\n".join(lines) + "\n"
