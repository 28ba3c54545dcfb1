"""Monitoring a model trained on a table of its own (scored from ready ``features``, no event): labels by
prediction, live performance from them, and what the monitoring reads over HTTP say about the run they show."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import httpx
import numpy as np
import pandas as pd
import pytest

from sira.core.auth import Identity, authenticate, create_key
from sira.http.app import create_app
from sira.ingest.labels import import_label_files
from sira.monitoring.performance import PerformanceRequest, run_performance
from sira.registry import models as registry
from sira.serving.config import ServingConfig
from sira.serving.service import ScoringService
from sira.training.runs import TrainRequest, run_training
from tests.conftest import promote_for_tests

ADMIN = Identity("t-admin", frozenset({"admin"}))
SERVICE = Identity("t-service", frozenset({"service"}))


def rows(n: int, seed: int) -> pd.DataFrame:
    """Payments with a yes/no flag (30% yes) and an amount; fraud follows both."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"flag": (rng.random(n) < 0.3).astype(int), "amount": rng.lognormal(3, 1, n)})
    table["fraud"] = (rng.random(n) < np.where(table.flag == 1, 0.3, 0.03) * np.where(table.amount > 40, 2, 1)
                      ).astype(int)
    return table


@pytest.fixture
async def crafted(clean_db, settings, tmp_path):
    """``crafted`` v1, trained on a table, in production; keys; the application with a scoring service."""
    rows(3_000, 0).to_csv(tmp_path / "table.csv", index=False)
    trained = await run_training(settings, TrainRequest(model="crafted", data=[tmp_path / "table.csv"], label="fraud",
                                                        num_threads=1,
                                                        params={"num_boost_round": 30, "early_stopping_rounds": 10}))
    async with clean_db.acquire() as conn:
        async with conn.transaction():
            await promote_for_tests(conn, settings, "crafted", trained["version"], "monitoring tests")
            pepper = settings.secret("auth_secret")
            keys = {"admin": (await create_key(conn, name="t-admin", roles=["admin"], pepper=pepper, creator=None))[0]}
            root = await authenticate(conn, keys["admin"], pepper=pepper)
            for role in ("service", "viewer"):
                keys[role], _ = await create_key(conn, name=f"t-{role}", roles=[role], pepper=pepper, creator=root)
    service = ScoringService(settings, ServingConfig(models=["crafted"], spool_dir=tmp_path / "spool",
                                                     flush_interval_s=0.05, poll_interval_s=1.0))
    app = create_app(settings, scoring=service)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            yield SimpleNamespace(client=client, service=service, settings=settings, pool=clean_db,
                                  headers={role: {"Authorization": f"Bearer {key}"} for role, key in keys.items()})


async def score_and_label(crafted, tmp_path, n: int = 240) -> tuple[list[str], np.ndarray]:
    """Score ``n`` rows from ready features; label the first half over HTTP and the rest from a file, both by
    prediction id alone (the predictions have no event)."""
    table = rows(n, 1)
    ids = []
    for start in range(0, n, 120):
        part = table.iloc[start:start + 120]
        r = await crafted.client.post("/v1/score/batch", headers=crafted.headers["service"], json={
            "model": "crafted", "requests": [{"features": {"flag": int(f), "amount": float(a)}}
                                             for f, a in zip(part.flag, part.amount)]})
        assert r.status_code == 200, r.text
        assert all(a["event_id"] is None for a in r.json()["results"])
        ids += [a["prediction_id"] for a in r.json()["results"]]
    await crafted.service.flush()
    labels = table.fraud.to_numpy().astype(bool)
    half = n // 2
    for prediction_id, label in zip(ids[:half], labels[:half]):
        r = await crafted.client.post("/v1/feedback", headers=crafted.headers["service"],
                                      json={"prediction_id": prediction_id, "label": bool(label),
                                            "source": "chargeback"})
        assert r.status_code == 200 and r.json()["status"] == "recorded", r.text
    pd.DataFrame({"prediction_id": ids[half:], "label": labels[half:].astype(int),
                  "known_at": datetime.now(timezone.utc).isoformat()}).to_csv(tmp_path / "labels.csv", index=False)
    imported = await import_label_files(crafted.settings, [tmp_path / "labels.csv"], source="chargeback",
                                        who=SERVICE, created_by="t-service")
    assert (imported.inserted, imported.rejected) == (n - half, 0), imported.to_dict()
    return ids, labels


async def test_labels_of_predictions_scored_from_ready_features_make_live_performance(crafted, tmp_path):
    """POST /v1/feedback {"prediction_id"} answered 404 unknown_prediction for a stored prediction of a model
    trained on a table (its event_id is null), and a label file needed an event_id column: `sira performance`
    said empty_window forever. Labels by prediction id are stored, and performance computes AP from them."""
    ids, labels = await score_and_label(crafted, tmp_path)
    again = await crafted.client.post("/v1/feedback", headers=crafted.headers["service"],
                                      json={"prediction_id": ids[0], "label": bool(labels[0]), "source": "chargeback"})
    assert again.status_code == 200 and again.json()["status"] == "unchanged"
    assert again.json()["event_id"] == f"prediction:{ids[0]}"
    named = await crafted.client.post("/v1/feedback", headers=crafted.headers["service"],
                                      json={"prediction_id": ids[0], "event_id": "e-1", "label": True})
    assert named.status_code == 422 and named.json()["error"]["details"]["field"] == "event_id"
    unknown = await crafted.client.post("/v1/feedback", headers=crafted.headers["service"],
                                        json={"prediction_id": "00000000-0000-4000-8000-000000000000", "label": True})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_prediction"
    # the same details as GET /v1/predictions/{id} and the explanation (the field, and which id)
    assert unknown.json()["error"]["details"] == {"field": "prediction_id",
                                                 "prediction_id": "00000000-0000-4000-8000-000000000000"}
    (tmp_path / "stray.csv").write_text("prediction_id,label,known_at\n"
                                        "00000000-0000-4000-8000-000000000000,1,2026-12-01T00:00:00Z\n")
    stray = await import_label_files(crafted.settings, [tmp_path / "stray.csv"], who=SERVICE, created_by="t-service")
    assert stray.rejected == 1 and dict(stray.reasons) == {"unknown_prediction": 1}

    result = await run_performance(crafted.settings, PerformanceRequest(model="crafted"))
    (production,) = result["results"]
    assert production["role"] == "production" and production["version"] == 1
    (window,) = production["windows"]
    assert window["n"] == len(ids) and window["n_positive"] == labels.sum() > 10
    assert window["average_precision"] > labels.mean()  # the flag ranks the frauds first


async def test_drift_of_a_version_the_model_never_had_is_not_found(crafted):
    """GET /v1/models/crafted/drift?version=99 answered 200 {"latest": null} while the CLI said not_found."""
    r = await crafted.client.get("/v1/models/crafted/drift?version=99", headers=crafted.headers["viewer"])
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    assert r.json()["error"]["details"] == {"field": "version", "model": "crafted", "version": 99}
    r = await crafted.client.get("/v1/models/crafted/drift?version=1", headers=crafted.headers["viewer"])
    assert r.status_code == 200 and r.json() == {"model": "crafted", "latest": None}


async def test_the_performance_viewers_read_is_the_current_run_and_says_which_run_it_is(crafted, tmp_path):
    """After `sira performance --as-of ...` (a backtest, its windows provisional) GET /v1/models/{name}/performance
    and the history showed that run's windows as the model's performance, with no as_of and no range. The
    answer names its run, and prefers the newest run that is no backtest."""
    await score_and_label(crafted, tmp_path)
    then = datetime.now(timezone.utc)  # after the labels: a backtest as of then still sees them

    async def latest() -> dict:
        r = await crafted.client.get("/v1/models/crafted/performance", headers=crafted.headers["viewer"])
        assert r.status_code == 200, r.text
        return r.json()["latest"]

    async def history() -> list[dict]:
        r = await crafted.client.get("/v1/models/crafted/performance/history", headers=crafted.headers["viewer"])
        assert r.status_code == 200, r.text
        return r.json()["windows"]

    async def performance_job_ran() -> bool:  # what Prometheus says of the job (sira_job_last_success_...)
        from sira.monitoring.exporter import read

        async with crafted.pool.acquire() as conn:
            return any(r["model"] == "crafted" and r["kind"] == "performance" for r in (await read(conn))["runs"])

    first = await run_performance(crafted.settings, PerformanceRequest(model="crafted", as_of=then))
    assert first["backtest"] is True and not await performance_job_ran()  # a backtest is not the job running
    shown = await latest()  # only a backtest so far: it, marked so
    assert shown["job_id"] == first["job_id"] and shown["backtest"] is True and shown["as_of"] == then.isoformat()
    assert shown["range"] == first["range"]
    current = await run_performance(crafted.settings, PerformanceRequest(model="crafted"))
    assert current["backtest"] is False and await performance_job_ran()
    again = await run_performance(crafted.settings, PerformanceRequest(model="crafted", as_of=then))
    shown = await latest()
    assert shown["job_id"] == current["job_id"] != again["job_id"]
    assert (shown["backtest"], shown["as_of"], shown["range"]) == (False, current["as_of"], current["range"])
    # the backtest's window (its range ends earlier) is there, marked; the current run's is not hidden by it
    assert sorted((w["backtest"], w["as_of"]) for w in await history()) == [(False, current["as_of"]),
                                                                           (True, then.isoformat())]
    # the same windows from a current run and a newer backtest: the window shown is the current run's
    span = {"time_from": datetime.fromisoformat(current["range"]["from"]),
            "time_to": datetime.fromisoformat(current["range"]["to"])}
    await run_performance(crafted.settings, PerformanceRequest(model="crafted", as_of=then, **span))
    assert sorted((w["backtest"], w["as_of"]) for w in await history()) == [(False, current["as_of"]),
                                                                           (True, then.isoformat())]


async def test_a_staging_versions_shadow_scores_are_measured_by_the_labels_of_productions_answers(crafted, tmp_path):
    """A shadow score of ready features has no event to share labels by: it takes those of production's answer
    to the same request, so a table-trained challenger is measured too."""
    import asyncio

    from sira.core import db

    rows(3_000, 2).to_csv(tmp_path / "newer.csv", index=False)
    v2 = await run_training(crafted.settings, TrainRequest(model="crafted", data=[tmp_path / "newer.csv"],
                                                           label="fraud", num_threads=1, seed=7,
                                                           params={"num_boost_round": 30, "early_stopping_rounds": 10}))
    async with db.transaction(crafted.pool) as conn:
        await registry.stage_version(conn, crafted.settings, ADMIN, "crafted", v2["version"], "shadow it")
    for _ in range(250):  # LISTEN/NOTIFY: the replica loads it
        if crafted.service.slots["crafted"].shadow is not None:
            break
        await asyncio.sleep(0.02)
    assert crafted.service.slots["crafted"].shadow.version == v2["version"]
    ids, labels = await score_and_label(crafted, tmp_path)
    result = await run_performance(crafted.settings, PerformanceRequest(model="crafted"))
    by_role = {(r["role"], r["version"]): r for r in result["results"]}
    (shadow,) = by_role[("shadow", v2["version"])]["windows"]
    assert shadow["n"] == len(ids) and shadow["n_positive"] == labels.sum()
    assert shadow["average_precision"] > labels.mean()


async def test_a_backtest_run_again_after_labels_changed_since_its_cut_off_gives_the_same_windows(crafted, tmp_path):
    """Finding: live performance read sira_feedback, whose row a source's later word overwrites. A chargeback
    withdrawn after a backtest's --as-of left no label at all at that cut-off (its row's known_at was now after
    it), so the same backtest run again lost those predictions, and a legitimate one later called fraud too.
    A backtest reads what each source had said by its cut-off (the label history, as a training set does); a
    run without --as-of reads the latest word."""
    from datetime import timedelta

    ids, labels = await score_and_label(crafted, tmp_path)
    then = datetime.now(timezone.utc)

    def windows(result: dict) -> list:
        return [(r["role"], r["version"], w["window_start"], w["window_end"], w["n"], w["n_positive"],
                 w["average_precision"], w["roc_auc"]) for r in result["results"] for w in r["windows"]]

    first = await run_performance(crafted.settings, PerformanceRequest(model="crafted", as_of=then))
    frauds = [i for i, fraud in zip(ids, labels) if fraud][:5]
    legit = [i for i, fraud in zip(ids, labels) if not fraud][:3]
    for prediction_id, label in [*((i, False) for i in frauds), *((i, True) for i in legit)]:
        r = await crafted.client.post("/v1/feedback", headers=crafted.headers["service"],
                                      json={"prediction_id": prediction_id, "label": label, "source": "chargeback",
                                            "known_at": (then + timedelta(microseconds=1)).isoformat()})
        assert r.status_code == 200 and r.json()["status"] == "updated", r.text
    again = await run_performance(crafted.settings, PerformanceRequest(model="crafted", as_of=then))
    assert again["range"] == first["range"] and windows(again) == windows(first)
    stored = await crafted.pool.fetch(
        """SELECT job_id, n, n_positive, average_precision FROM sira_model_performance
            WHERE segment = 'all' ORDER BY computed_at, id""")
    assert [tuple(r)[1:] for r in stored if r["job_id"] == again["job_id"]] == \
           [tuple(r)[1:] for r in stored if r["job_id"] == first["job_id"]]
    # the latest word, without --as-of: five frauds fewer, three more
    (window,) = next(r for r in (await run_performance(crafted.settings, PerformanceRequest(model="crafted")))["results"]
                     if r["role"] == "production")["windows"]
    assert (window["n"], window["n_positive"]) == (len(ids), labels.sum() - 5 + 3)
