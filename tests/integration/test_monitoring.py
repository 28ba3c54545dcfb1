"""Drift and live performance on a real trained model: stored events, stored predictions, matured labels."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow.parquet as pq
import pytest

from sira.core import db
from sira.core.errors import InvalidInput
from sira.monitoring.batch import BatchRequest, run_batch_score
from sira.monitoring.drift import DATASET, SCORE, DriftRequest, run_drift
from sira.monitoring.performance import PerformanceRequest, run_performance
from sira.serving.records import write_predictions
from sira.training.evaluation import average_precision, decide
from tests.conftest import assert_quiet
from tests.conftest import fetch_rows as _fetch


@pytest.fixture(scope="module")
def served(fraud_model, tmp_path_factory):
    """Predictions stored as serving stores them, for the first three weeks of events (labels matured):
    production's true scores, and a shadow that ranks them backwards."""
    (lo,) = asyncio.run(_fetch(fraud_model.dsn, "SELECT min(occurred_at) AS lo FROM sira_events"))[0].values()
    out = tmp_path_factory.mktemp("monitoring") / "weeks.parquet"
    asyncio.run(run_batch_score(fraud_model.settings, BatchRequest(model="fraud", out=out, time_from=lo,
                                                                   time_to=lo + timedelta(days=21),
                                                                   keep_columns=True)))
    table = pq.read_table(out)
    names = [f["name"] for f in fraud_model.trained["feature_schema"]]
    thresholds = fraud_model.trained["thresholds"]
    now = datetime.now(timezone.utc)
    features = table.select(names).to_pylist()
    scores = table.column("score").to_numpy()
    records = []
    for role, values in (("production", scores), ("shadow", 1.0 - scores)):
        for event_id, vector, score, decision in zip(table.column("event_id").to_pylist(), features, values,
                                                     decide(values, thresholds).tolist()):
            records.append({"prediction_id": str(uuid.uuid4()), "scored_at": now.isoformat(), "request_id": None,
                            "model_id": 1, "model_name": "fraud", "version": fraud_model.version, "role": role,
                            "event_id": event_id, "features": vector, "score": float(score), "decision": decision,
                            "reasons": [], "flags": {}, "degraded": False, "latency_ms": 1.0})

    async def store():
        pool = await db.create_pool(fraud_model.dsn, fraud_model.settings)
        try:
            async with db.transaction(pool) as conn:
                model_id = await conn.fetchval("SELECT id FROM sira_models WHERE name = 'fraud'")
                for r in records:
                    r["model_id"] = model_id
                await write_predictions(conn, records)
        finally:
            await pool.close()

    asyncio.run(store())
    return {"lo": lo, "hi": lo + timedelta(days=21), "rows": table.num_rows, "table": table}


def test_drift_of_recent_events_is_stored_with_the_job_and_a_verdict(fraud_model):
    result = asyncio.run(run_drift(fraud_model.settings, DriftRequest(model="fraud", days=7)))
    names = {f["name"] for f in fraud_model.trained["feature_schema"]}
    features = result["features"]
    assert {r["feature"] for r in features} == names | {SCORE}
    assert result["reference_sample"] and result["n_current"] >= 100
    assert all(r["ks_statistic"] is not None for r in features if r["kind"] in ("numeric", "score"))
    severities = [r["severity"] for r in features]
    assert severities == sorted(severities, key=["alert", "warn", "ok"].index)
    stored = asyncio.run(_fetch(fraud_model.dsn, "SELECT feature, severity, n_current, window_end - window_start AS span "
                                                 "FROM sira_data_drift WHERE job_id = $1", result["job_id"]))
    assert len(stored) == len(features) + 1
    dataset = next(r for r in stored if r["feature"] == DATASET)
    assert dataset["severity"] == result["verdict"] and dataset["span"] == timedelta(days=7)
    # a window someone chose is marked so: it is not the model's drift now (sira.monitoring.drift.AD_HOC_SQL)
    window = result["window"]
    chosen = asyncio.run(run_drift(fraud_model.settings, DriftRequest(
        model="fraud", time_from=datetime.fromisoformat(window["from"]), time_to=datetime.fromisoformat(window["to"]))))
    marks = asyncio.run(_fetch(fraud_model.dsn, "SELECT job_id, (details->>'ad_hoc')::boolean AS ad_hoc FROM sira_data_drift "
                                                "WHERE feature = $1 AND job_id = ANY($2::text[])", DATASET,
                               [result["job_id"], chosen["job_id"]]))
    assert {r["job_id"]: r["ad_hoc"] for r in marks} == {result["job_id"]: False, chosen["job_id"]: True}


def test_drift_of_served_predictions_reads_what_production_answered(fraud_model, served, monkeypatch):
    import sira.monitoring.drift

    monkeypatch.setattr(sira.monitoring.drift, "PREDICTION_CHUNK_ROWS", 97)  # read in many chunks: all rows, in order
    request = DriftRequest(model="fraud", source="predictions", days=3650)
    result = asyncio.run(run_drift(fraud_model.settings, request))
    assert result["n_current"] >= served["rows"]  # production's rows only, not the shadow's
    (stored,) = asyncio.run(_fetch(fraud_model.dsn, "SELECT count(*) AS n FROM sira_predictions WHERE role = "
                                                    "'production' AND model_name = 'fraud' AND version = $1",
                                   fraud_model.version))[0].values()
    assert result["n_current"] == stored
    score = next(r for r in result["features"] if r["feature"] == SCORE)
    assert score["n_current"] == result["n_current"]


def test_a_window_longer_than_the_cap_is_compared_on_an_even_sample(fraud_model, served, monkeypatch):
    """A window was held whole in the driver (a week of a busy production: GBs): beyond MAX_ROWS every k-th
    row is kept, in stored order, so the same window gives the same sample and the same result."""
    import sira.monitoring.drift

    monkeypatch.setattr(sira.monitoring.drift, "MAX_ROWS", 150)
    monkeypatch.setattr(sira.monitoring.drift, "PREDICTION_CHUNK_ROWS", 97)
    for request in (DriftRequest(model="fraud", source="predictions", days=3650), DriftRequest(model="fraud", days=7)):
        first, again = (asyncio.run(run_drift(fraud_model.settings, request)) for _ in range(2))
        assert first["window_rows"] > 150 and 100 <= first["n_current"] <= 150, (request.source, first["window_rows"])
        assert first["n_current"] == -(-first["window_rows"] // sira.monitoring.drift.every(first["window_rows"])) \
            or request.source == "events"  # events: the stride is set by the window's event count
        assert [(r["feature"], r["psi"]) for r in first["features"]] == [(r["feature"], r["psi"]) for r in again["features"]]
    (stored,) = asyncio.run(_fetch(fraud_model.dsn, "SELECT details->>'window_rows' AS n FROM sira_data_drift "
                                                    "WHERE job_id = $1 AND feature = $2", again["job_id"], DATASET))
    assert int(stored["n"]) == again["window_rows"]


def test_performance_joins_matured_labels_per_window_segment_and_role(fraud_model, served):
    request = PerformanceRequest(model="fraud", time_from=served["lo"], time_to=served["hi"], window_days=7,
                                 min_segment_size=50, ap_margin=0.5)
    result = asyncio.run(run_performance(fraud_model.settings, request))
    by_role = {r["role"]: r for r in result["results"]}
    assert set(by_role) == {"production", "shadow"}
    production, shadow = by_role["production"], by_role["shadow"]
    assert len(production["windows"]) == 3 and production["segments"] > 0
    assert sum(w["n"] for w in production["windows"]) > 0
    assert all(w["n_positive"] > 0 for w in production["windows"])
    assert not any(w["flagged"] for w in production["windows"])  # AP within 0.5 of training's
    assert all(w["flagged"] for w in shadow["windows"])  # ranked backwards: AP collapses
    # the stored AP of a window is the AP of its labelled predictions (labels as the job read them)
    first = production["windows"][0]
    rows = asyncio.run(_fetch(fraud_model.dsn, """
        SELECT p.score, (EXISTS (SELECT 1 FROM sira_feedback f WHERE f.event_id = p.event_id AND f.label
                                  AND f.known_at <= $3))::int AS y
          FROM sira_predictions p JOIN sira_events e ON e.event_id = p.event_id
         WHERE p.role = 'production' AND e.occurred_at >= $1 AND e.occurred_at < $2""",
        datetime.fromisoformat(first["window_start"]), datetime.fromisoformat(first["window_end"]),
        datetime.fromisoformat(result["as_of"])))
    assert len(rows) == first["n"]  # every event of the window is mature (older than the maturity)
    expected = average_precision(np.array([r["y"] for r in rows]), np.array([r["score"] for r in rows]))
    assert first["average_precision"] == pytest.approx(expected, abs=1e-12)
    stored = asyncio.run(_fetch(fraud_model.dsn, "SELECT role, segment, flagged FROM sira_model_performance "
                                                 "WHERE job_id = $1", result["job_id"]))
    assert {r["segment"] for r in stored} >= {"all", "country", "channel"}
    assert any(r["flagged"] for r in stored if r["role"] == "shadow")


def test_monitoring_refuses_what_it_cannot_measure(fraud_model):
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(run_drift(fraud_model.settings, DriftRequest(model="fraud", time_from=datetime(2001, 1, 1,
                                                                 tzinfo=timezone.utc), time_to=datetime(2001, 1, 2,
                                                                 tzinfo=timezone.utc))))
    assert caught.value.code == "insufficient_data"
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(run_drift(fraud_model.settings, DriftRequest(model="fraud", source="nope")))
    assert caught.value.code == "invalid_input"
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(run_performance(fraud_model.settings, PerformanceRequest(model="fraud", version=1,
                                                                             window_days=0)))
    assert "window" in caught.value.message


def test_the_window_limit_counts_the_windows_of_the_range_read(fraud_model, served):
    """--days was checked even when --from/--to set the range: 100 windows of a day were refused ("got 2800",
    from the default --days 28) and seven years of 0.01-day windows with --days 10 were allowed (255,000
    windows, 2,263 rows written: past the limit)."""
    lo = served["lo"]
    day = asyncio.run(run_performance(fraud_model.settings, PerformanceRequest(
        model="fraud", time_from=lo, time_to=lo + timedelta(days=1), window_days=0.01, min_segment_size=50)))
    assert 0 < len(day["results"][0]["windows"]) <= 100
    with pytest.raises(InvalidInput, match=r"the range .* holds 255,\d{3} windows of --window-days 0.01: at most "
                                           r"1000 windows") as caught:
        asyncio.run(run_performance(fraud_model.settings, PerformanceRequest(
            model="fraud", time_from=datetime(2020, 1, 1, tzinfo=timezone.utc),
            time_to=datetime(2027, 1, 1, tzinfo=timezone.utc), window_days=0.01)))
    assert caught.value.code == "invalid_option"
    with pytest.raises(InvalidInput, match="days cannot be given with from and to") as caught:  # set twice
        asyncio.run(run_performance(fraud_model.settings, PerformanceRequest(
            model="fraud", time_from=lo, time_to=lo + timedelta(days=1), days=10)))
    assert caught.value.code == "invalid_window" and caught.value.details["field"] == "days"


def drift_and_performance(fraud_model, served):
    """A drift run over the served predictions and a performance run over their matured labels."""
    drift = asyncio.run(run_drift(fraud_model.settings, DriftRequest(model="fraud", source="predictions",
                                                                     days=3650)))
    performance = asyncio.run(run_performance(fraud_model.settings, PerformanceRequest(
        model="fraud", time_from=served["lo"], time_to=served["hi"], min_segment_size=50)))
    return drift, performance


def get(fraud_model, *requests):
    """``GET path`` with the key of ``role`` (None: no key) for each (path, role), from one application."""
    import httpx

    from sira.http.app import create_app

    async def read():
        app = create_app(fraud_model.settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
                return [await client.get(path, headers={"Authorization": f"Bearer {fraud_model.keys[role]}"}
                                         if role else {}) for path, role in requests]

    return asyncio.run(read())


def test_viewers_read_the_latest_drift_and_performance_over_http(fraud_model, served):
    drift, performance = drift_and_performance(fraud_model, served)
    d, p, missing = get(fraud_model, ("/v1/models/fraud/drift", "viewer"), ("/v1/models/fraud/performance", "viewer"),
                        ("/v1/models/nope/drift", "viewer"))
    assert d.status_code == 200 and p.status_code == 200
    assert d.json()["latest"]["job_id"] == drift["job_id"] and d.json()["latest"]["verdict"] == drift["verdict"]
    assert [f["feature"] for f in d.json()["latest"]["features"]] == [f["feature"] for f in drift["features"]]
    latest = p.json()["latest"]
    assert latest["job_id"] == performance["job_id"] and latest["flagged"] == performance["flagged"]
    assert {(r["role"], r["segment"]) for r in latest["rows"]} >= {("production", "all"), ("shadow", "all")}
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_model"  # as POST /v1/score says


@pytest.mark.slow
def test_monitoring_commands_need_an_operator_and_name_what_is_wrong(fraud_model, monkeypatch, capsys):
    import os
    import subprocess
    import sys

    from tests.conftest import cli_in_process

    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": fraud_model.dsn, "SIRA_WORKSPACE": str(fraud_model.settings.workspace)})

    def sira(*args: str, role: str = "operator") -> subprocess.CompletedProcess:
        """In this process (refusals need no process of their own); the run that works below has one."""
        return cli_in_process(monkeypatch, capsys, {**env, "SIRA_API_KEY": fraud_model.keys[role]}, *args)

    cases = [
        (("drift", "--model", "nope"), "error: unknown_model: unknown model 'nope'"),
        (("performance", "--model", "nope"), "error: unknown_model: unknown model 'nope'"),
        (("drift", "--model", "fraud", "--version", "99"), "error: not_found: model 'fraud' has no version 99"),
        (("drift", "--model", "fraud", "--source", "files"), "error: invalid_input: --source must be one of"),
        (("drift", "--model", "fraud", "--from", "2001-01-01", "--to", "2001-01-02"), "error: insufficient_data:"),
    ]
    for args, line in cases:
        done = sira(*args)
        assert done.returncode == 2 and done.stderr.startswith(line) and done.stderr.count("\n") == 1, (args, done.stderr)
    denied = sira("drift", "--model", "fraud", role="data_scientist")
    assert denied.returncode == 2 and denied.stderr.startswith("error: forbidden:")
    # a run that works: one JSON object on stdout, and none of Ray's chatter on stderr (issue #19.17)
    done = subprocess.run([sys.executable, "-m", "sira", "drift", "--model", "fraud", "--json"],
                          env={**env, "SIRA_API_KEY": fraud_model.keys["operator"]}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and json.loads(done.stdout)["window"]["rule"]
    assert_quiet(done.stderr)



def test_prometheus_reads_the_served_versions_and_the_last_drift_and_performance_runs(fraud_model, served):
    """``GET /metrics`` (open without a key, as CONVENTIONS says; a key sent changes nothing): the same numbers
    as the JSON API, in Prometheus's format."""
    from prometheus_client.parser import text_string_to_metric_families

    drift_and_performance(fraud_model, served)

    async def dead_letter() -> None:  # what a rejected event leaves (the ingest tests cover how it gets there)
        conn = await db.connect(fraud_model.dsn)
        try:
            await conn.execute("INSERT INTO sira_rejected_events (source, reason_code, reason) "
                               "VALUES ('metrics-test', 'invalid_value', 'amount must be a number')")
        finally:
            await conn.close()

    asyncio.run(dead_letter())
    metrics, drift, performance, anonymous, service = get(
        fraud_model, ("/metrics", "viewer"), ("/v1/models/fraud/drift", "viewer"),
        ("/v1/models/fraud/performance", "viewer"), ("/metrics", None), ("/metrics", "service"))
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert anonymous.status_code == 200 and service.status_code == 200
    series = {}
    for family in text_string_to_metric_families(metrics.text):
        for sample in family.samples:
            series.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value

    def value(name, **labels):
        return series[name][tuple(sorted((k, str(v)) for k, v in labels.items()))]

    assert value("sira_model_version_info", model="fraud", model_type="fraud_detection", version=fraud_model.version,
                 status="production") == 1
    latest = drift.json()["latest"]
    for f in latest["features"]:
        if f["psi"] is not None:
            assert value("sira_drift_psi", model="fraud", version=latest["version"], feature=f["feature"]) \
                == pytest.approx(f["psi"])
    assert value("sira_drift_severity", model="fraud", version=latest["version"], feature=DATASET) \
        == {"ok": 0, "warn": 1, "alert": 2}[latest["verdict"]]
    rows = [r for r in performance.json()["latest"]["rows"] if r["segment"] == "all"]
    for role in ("production", "shadow"):
        newest = max((r for r in rows if r["role"] == role), key=lambda r: r["window_end"])
        labels = {"model": "fraud", "version": newest["version"], "role": role}
        assert value("sira_live_average_precision", **labels) == pytest.approx(newest["average_precision"])
        assert value("sira_live_window_predictions", **labels, label="1") == newest["n_positive"]
        assert value("sira_live_performance_flagged", **labels) == float(newest["flagged"])
        if role == "production" or newest["metrics"].get("expected_calibration_error") is not None:
            assert value("sira_live_calibration_error", **labels) == pytest.approx(
                newest["metrics"]["expected_calibration_error"])
            assert value("sira_live_brier_score", **labels) == pytest.approx(newest["metrics"]["brier"])
    now = datetime.now(timezone.utc).timestamp()
    for job in ("drift", "performance"):
        assert now - 600 < value("sira_job_last_success_timestamp_seconds", model="fraud", kind=job) <= now + 1
    # A newer window that is provisional (events younger than the label maturity: only their chargebacks
    # count, AP flattering, never flagged) was what the series showed, so the page alert could not fire.
    production = max((r for r in rows if r["role"] == "production"), key=lambda r: r["window_end"])

    async def provisional(add: bool) -> None:
        conn = await db.connect(fraud_model.dsn)
        try:
            if add:
                await conn.execute(
                    """INSERT INTO sira_model_performance (model_id, version, role, window_start, window_end, n,
                                                           n_positive, average_precision, metrics, flagged, job_id)
                       SELECT id, $1, 'production', $2::timestamptz, $2::timestamptz + interval '7 days', 10, 9, 0.99,
                              '{"provisional": true}', false, 'provisional-test' FROM sira_models WHERE name = 'fraud'""",
                    production["version"], datetime.fromisoformat(production["window_end"]))
            else:
                await conn.execute("DELETE FROM sira_model_performance WHERE job_id = 'provisional-test'")
        finally:
            await conn.close()

    asyncio.run(provisional(True))
    try:
        (metrics,) = get(fraud_model, ("/metrics", "viewer"))
        exported = {tuple(sorted(s.labels.items())): s.value for f in text_string_to_metric_families(metrics.text)
                    for s in f.samples if s.name == "sira_live_average_precision"}
        labels = {"model": "fraud", "version": str(production["version"]), "role": "production"}
        assert exported[tuple(sorted(labels.items()))] == pytest.approx(production["average_precision"])
    finally:
        asyncio.run(provisional(False))
    # training and batch scoring (the fixtures trained the model and batch-scored three weeks)
    (runs,) = asyncio.run(_fetch(fraud_model.dsn, """
        SELECT (SELECT extract(epoch FROM max(finished_at)) FROM sira_training_runs WHERE status = 'succeeded')::float8
                   AS train,
               (SELECT extract(epoch FROM max(occurred_at)) FROM sira_audit_log
                 WHERE action = 'batch.score' AND target_id LIKE 'fraud:%'
                   AND outcome = 'success')::float8 AS batch_score"""))
    for kind in ("train", "batch_score"):
        assert value("sira_job_last_success_timestamp_seconds", model="fraud", kind=kind) == pytest.approx(runs[kind])
    # ingest: the log's arrival counter, dead letters by source, the newest bulk load (the fixture loaded files)
    (log,) = asyncio.run(_fetch(fraud_model.dsn, "SELECT max(seq)::float8 AS seq FROM sira_events"))
    assert value("sira_events_stored_total") == log["seq"] > 0
    for r in asyncio.run(_fetch(fraud_model.dsn, "SELECT split_part(source, ':', 1) AS source, count(*)::float8 AS n "
                                                 "FROM sira_rejected_events GROUP BY 1")):
        assert value("sira_events_rejected_total", source=r["source"]) == r["n"]
    assert value("sira_events_rejected_total", source="metrics-test") >= 1
    (load,) = asyncio.run(_fetch(fraud_model.dsn, "SELECT extract(epoch FROM max(occurred_at))::float8 AS at "
                                                  "FROM sira_audit_log WHERE action = 'events.ingest'"))
    assert value("sira_ingest_last_load_timestamp_seconds") == pytest.approx(load["at"])


def test_the_dashboards_histories_of_drift_performance_and_traffic(fraud_model, served):
    """What the dashboard draws over time: each drift run's PSI by feature, each performance window, production's
    answers per minute, from the rows the jobs and the replicas stored."""
    drift, _ = drift_and_performance(fraud_model, served)
    history, performance, traffic, refused = get(
        fraud_model, ("/v1/models/fraud/drift/history?days=366", "viewer"),
        ("/v1/models/fraud/performance/history?days=366", "viewer"), ("/v1/models/fraud/traffic?minutes=1440", "viewer"),
        ("/v1/models/fraud/traffic?minutes=0", "viewer"))
    run = next(r for r in history.json()["runs"] if r["run"] == drift["job_id"])
    assert run["verdict"] == drift["verdict"] and run["version"] == fraud_model.version
    psi = {f["feature"]: f["psi"] for f in drift["features"] if f["psi"] is not None}
    assert psi and all(run["features"][name]["psi"] == pytest.approx(value) for name, value in psi.items())
    windows = performance.json()["windows"]
    stored = asyncio.run(_fetch(fraud_model.dsn, """SELECT DISTINCT version, role, window_start, window_end
                                                     FROM sira_model_performance WHERE segment = 'all'"""))
    assert len(windows) == len(stored) and {w["role"] for w in windows} == {"production", "shadow"}
    assert [w["window_end"] for w in windows] == sorted(w["window_end"] for w in windows)
    assert all(isinstance(w["provisional"], bool) for w in windows)
    (answered,) = asyncio.run(_fetch(fraud_model.dsn, """SELECT count(*) AS n FROM sira_predictions WHERE model_name =
                                     'fraud' AND role = 'production' AND scored_at >= now() - interval '1 day'"""))
    minutes = traffic.json()["per_minute"]
    assert answered["n"] > 0 and sum(m["answers"] for m in minutes) == answered["n"]
    assert all(m["approve"] + m["review"] + m["block"] == m["answers"] for m in minutes)
    assert all(m["p50_ms"] <= m["p95_ms"] <= m["p99_ms"] for m in minutes if m["p50_ms"] is not None)
    assert refused.status_code == 422


def test_threshold_what_if_matches_an_independent_recomputation(fraud_model, served):
    """Each candidate threshold's numbers on the labelled window, against scikit-learn's on the same answers."""
    from urllib.parse import urlencode

    from sklearn.metrics import confusion_matrix, precision_score, recall_score

    from sira.monitoring.thresholds import labelled_window

    query = urlencode({"version": fraud_model.version, "from": served["lo"].isoformat(), "to": served["hi"].isoformat()})
    path = f"/v1/models/fraud/thresholds?{query}"
    answer, refused, page, year_one = get(fraud_model, (path, "analyst"), (path, "service"),
                                          (f"{path}&format=html", "viewer"),
                                          ("/v1/models/fraud/thresholds?to=0001-01-10T00:00:00Z", "viewer"))
    assert answer.status_code == 200, answer.text
    assert refused.status_code == 403
    # a window that would start before year 1: was a 500 (OverflowError)
    assert year_one.status_code == 422 and year_one.json()["error"]["code"] == "invalid_field", year_one.text
    result = answer.json()
    # the page: one chart (precision, recall, share flagged; the current thresholds marked) and one row each
    assert page.headers["content-type"].startswith("text/html") and page.text.count("<polyline") == 3
    assert page.text.count("<tr><td>") == len(result["thresholds"]) and "current block" in page.text

    async def window():
        conn = await db.connect(fraud_model.dsn)
        try:
            model = await conn.fetchrow("SELECT label_name, label_maturity_days FROM sira_models WHERE name = 'fraud'")
            return await labelled_window(conn, "fraud", fraud_model.version, served["lo"], served["hi"],
                                         model["label_name"], datetime.now(timezone.utc),
                                         float(model["label_maturity_days"]))
        finally:
            await conn.close()

    y, p, amount = asyncio.run(window())
    assert result["labelled"] == y.size > 0 and result["positives"] == int(y.sum()) > 0
    thresholds = {r["threshold"] for r in result["thresholds"]}
    assert set(result["current"].values()) <= thresholds and set(result["meets_targets"].values()) <= thresholds
    assert len(result["thresholds"]) >= 8
    for row in result["thresholds"]:
        flagged = (p >= row["threshold"]).astype(int)
        tn, fp, fn, tp = confusion_matrix(y, flagged, labels=[0, 1]).ravel()
        assert row["flagged"] == tp + fp and row["false_alarms"] == fp and row["missed_fraud"] == fn
        if tp + fp:
            assert row["precision"] == pytest.approx(precision_score(y, flagged, zero_division=0))
        assert row["recall"] == pytest.approx(recall_score(y, flagged))
        caught = float(amount[(flagged == 1) & (y == 1)].sum())  # the simulator's payments are in several currencies
        assert sum(row["fraud_amount_caught_by_currency"].values()) == pytest.approx(caught)
        assert row["fraud_amount_caught"] == (pytest.approx(caught) if len(result["fraud_amount_by_currency"]) == 1
                                              else None)
        assert row["total_cost"] == pytest.approx(fp * result["targets"]["cost_false_alarm"]
                                                  + fn * result["targets"]["cost_missed_fraud"])


def test_a_threshold_change_carries_the_what_if_at_its_values_as_evidence(fraud_model, served):
    """Asking for new thresholds stores what they, and the current ones, did on the labelled window: the same
    rows as the what-if table at those values (asked in a transaction rolled back: the shared model's
    thresholds stay)."""
    from sira.core.auth import Identity
    from sira.monitoring.thresholds import apply, what_if

    scientist = Identity("monitoring-scientist", frozenset({"data_scientist"}))

    class Undo(Exception):
        pass

    async def ask():
        conn = await db.connect(fraud_model.dsn)
        try:
            async with conn.transaction():
                window = {"time_from": served["lo"], "time_to": served["hi"]}
                table = await what_if(conn, scientist, "fraud", version=fraud_model.version, also=(0.2, 0.7),
                                      **window)  # before: this model needs no approval, so asking applies them
                asked = await apply(conn, scientist, "fraud", fraud_model.version, review=0.2, block=0.7,
                                    reason="evidence test", **window)
                raise Undo((asked, table))
        except Undo as undo:
            return undo.args[0]
        finally:
            await conn.close()

    asked, table = asyncio.run(ask())
    rows = {r["threshold"]: r for r in table["thresholds"]}
    evidence = asked["evidence"]
    assert evidence["labelled"] == table["labelled"] > 0 and evidence["window"] == table["window"]
    assert evidence["provisional"] is table["provisional"] is False  # the window's events are all mature

    async def recent():  # the same window read a day after its end: its events are younger than the maturity
        conn = await db.connect(fraud_model.dsn)
        try:
            return await what_if(conn, scientist, "fraud", version=fraud_model.version, time_from=served["lo"],
                                 time_to=served["hi"], now=served["hi"] + timedelta(days=1))
        finally:
            await conn.close()

    young = asyncio.run(recent())
    assert young["provisional"] is True and young["mature_until"] < young["window"]["to"]
    assert evidence["requested"] == {"review": rows[0.2], "block": rows[0.7]}
    assert evidence["current"] == {k: rows[v] for k, v in table["current"].items()}
    assert asked["status"] == ("active" if asked["required_approvals"] == 0 else "pending")


def test_an_explanation_report_ranks_the_exact_treeshap_contributions(fraud_model, served):
    """One decision explained: every factor is LightGBM's pred_contrib for the stored features, ranked by size;
    a service key gets the summary only, a viewer nothing; the same prediction gives the same report."""
    import lightgbm as lgb

    from sira.core.artifacts import ArtifactRef, load_artifact
    from sira.serving.scoring import ModelRuntime

    (row,) = asyncio.run(_fetch(fraud_model.dsn, """SELECT prediction_id, features FROM sira_predictions
                                                     WHERE role = 'production' AND version = $1 AND decision <> 'approve'
                                                     ORDER BY score DESC LIMIT 1""", fraud_model.version))
    path = f"/v1/predictions/{row['prediction_id']}/explanation"
    full, again, summary, refused, markdown, bad, unknown = get(
        fraud_model, (path, "analyst"), (path, "analyst"), (path, "service"), (path, "viewer"), (f"{path}?format=md",
        "analyst"), ("/v1/predictions/not-a-uuid/explanation", "analyst"),
        (f"/v1/predictions/{uuid.uuid4()}/explanation", "analyst"))
    assert full.status_code == 200, full.text
    report = full.json()
    (version,) = asyncio.run(_fetch(fraud_model.dsn, """SELECT v.*, m.name AS model_name FROM sira_model_versions v
                                                         JOIN sira_models m ON m.id = v.model_id WHERE v.version = $1
                                                         AND m.name = 'fraud'""", fraud_model.version))
    loaded = load_artifact(fraud_model.settings, ArtifactRef(version["artifact_uri"], version["artifact_sha256"]))
    plain = lambda v: json.loads(v) if isinstance(v, str) else v  # noqa: E731 - this connection has no JSON codec
    runtime = ModelRuntime.load(fraud_model.settings, {**dict(version), "thresholds": plain(version["thresholds"])})
    x = runtime.matrix([plain(row["features"])])
    contrib = lgb.Booster(model_str=loaded.model_text).predict(x, pred_contrib=True)[0]
    names = runtime.names
    expected = sorted(((names[j], float(c)) for j, c in enumerate(contrib[:-1]) if c != 0.0),
                      key=lambda fc: -abs(fc[1]))
    assert [(f["feature"], f["contribution"]) for f in report["factors"]] == expected
    assert report["expected_value"] == float(contrib[-1])
    assert report["raw_score"] == pytest.approx(float(contrib.sum()))
    assert all(f["direction"] == ("increases_risk" if f["contribution"] > 0 else "decreases_risk")
               for f in report["factors"])
    assert any(f["typical"] for f in report["factors"]) and report["data_categories"]
    assert again.json()["report_id"] == report["report_id"]  # reproducible
    assert summary.status_code == 200 and "factors" not in summary.json() and summary.json()["summary"]["main_factors"]
    assert refused.status_code == 403
    assert markdown.headers["content-type"].startswith("text/markdown") and "## Main factors" in markdown.text
    assert bad.status_code == 422 and unknown.status_code == 404
    issued = asyncio.run(_fetch(fraud_model.dsn, "SELECT count(*) AS n FROM sira_audit_log WHERE action = "
                                                 "'explanation.issue' AND target_id = $1", str(row["prediction_id"])))
    assert issued[0]["n"] == 4  # each report issued is recorded (the refused one is not a report)
