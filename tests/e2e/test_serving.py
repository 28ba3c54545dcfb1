"""Online scoring on a real Ray Serve over real HTTP: answers, hot swap under load, a replica killed right
after answering, and a Postgres outage (on a Postgres instance of its own)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from sira.core import db
from sira.core.auth import Identity, create_key
from sira.core.config import Settings
from sira.registry import models as registry
from tests.conftest import (
    SCORE_BAD_INPUTS,
    copy_production_model,
    migrate_database,
    promote_for_tests,
    run_sync,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]

ADMIN = Identity("test-admin", frozenset({"admin"}))
NOW = datetime(2026, 10, 9, 12, tzinfo=timezone.utc)
pytestmark = pytest.mark.timeout(600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def event(fraud_model, i: int) -> dict:
    e = fraud_model.entities[i % len(fraud_model.entities)]
    return {"event_id": f"e2e-{uuid.uuid4().hex[:12]}", "occurred_at": (NOW + timedelta(seconds=i)).isoformat(),
            "customer_id": e["customer_id"], "card_token": e["card_token"], "terminal_id": e["terminal_id"],
            "amount": e["amount"], "country": e["country"], "channel": e["channel"]}


def deploy(name: str, prefix: str, settings: Settings, dsn: str, spool: Path, replicas: int = 1, **config):
    import dataclasses

    from ray import serve

    from sira.core.ray_runtime import worker_env
    from sira.http.deployment import ServeSpec

    # the deployment options of serve_configs/local.yaml (the only place they are written), sized for tests
    spec = dataclasses.replace(ServeSpec.local(), args={"models": ["fraud"], "spool_dir": str(spool)})
    user_config = {"models": ["fraud"], "flush_interval_s": 0.1, "poll_interval_s": 2.0, **config}
    app = spec.application(num_replicas=replicas, user_config=user_config,
                           ray_actor_options={"num_cpus": 0.2, "runtime_env": {"env_vars": worker_env(settings, dsn)}})
    serve.run(app, name=name, route_prefix=prefix, blocking=False)


@pytest.fixture(scope="module")
def serving(fraud_model, ray_session, tmp_path_factory):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    spool = tmp_path_factory.mktemp("serve-spool")
    deploy("sira", "/", fraud_model.settings, fraud_model.dsn, spool, replicas=2)
    yield f"http://127.0.0.1:{port}", spool
    serve.shutdown()


def replica_pids(app: str) -> list[int]:
    """Serve replicas of an application (their process title names them; the state API needs a dashboard)."""
    done = subprocess.run(["pgrep", "-f", f"ServeReplica:{app}:sira"], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


def headers(fraud_model, role="service"):
    return {"Authorization": f"Bearer {fraud_model.keys[role]}"}


def replica_log(app: str, pattern: str, last: int = 40) -> str:
    """The last lines of ``app``'s replica logs matching ``pattern``: what a failed fault test shows of what
    the replicas did (their logs are in Ray's session folder, not in the test's output)."""
    import re

    import ray

    folder = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    lines = [line for f in sorted(folder.glob(f"replica_{app}_*.log"))
             for line in f.read_text(errors="replace").splitlines() if re.search(pattern, line)]
    return "\n".join(["replica log:", *lines[-last:]])


async def stored(dsn: str, sql: str, *args):
    conn = await db.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def test_scores_with_reasons_over_http_and_openapi(serving, fraud_model):
    url, _ = serving
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/readyz").status_code == 200
        spec = client.get("/openapi.json").json()
        assert {"/v1/score", "/v1/score/batch", "/v1/feedback", "/v1/predictions/{prediction_id}"} <= set(spec["paths"])
        assert client.get("/docs").status_code == 200
        sent = event(fraud_model, 1)  # a retry sends the same event (another one is an idempotency_conflict)
        r = client.post("/v1/score", json={"model": "fraud", "request_id": "http-1", "event": sent,
                                           "explain": True}, headers=headers(fraud_model))
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["version"] >= 1 and answer["reasons_deferred"] is False and answer["latency_ms"] > 0
        assert all({"code", "feature", "value", "direction", "text"} <= set(x) for x in answer["reasons"])
        for _ in range(50):  # the other replica, before the first one's answer is stored: 409, ask again
            retried = client.post("/v1/score", json={"model": "fraud", "request_id": "http-1", "event": sent},
                                  headers=headers(fraud_model))
            if retried.status_code != 409 or retried.json()["error"]["code"] != "request_in_progress":
                break
            time.sleep(0.1)
        again = retried.json()
        assert again["prediction_id"] == answer["prediction_id"], again  # whichever replica answers
        assert again["score"] == answer["score"] and again["decision"] == answer["decision"]
        # Every spooled record of the request is in Postgres once no spool segment (either replica's, open
        # or closed, or set aside) holds it: a second row written late by the other replica is seen then.
        _, spool = serving
        wait_until(lambda: not any(b'"http-1"' in p.read_bytes() for p in spool.rglob("*") if p.is_file()),
                   timeout=30, what="both replicas flushed the answers to http-1")
        count = "SELECT count(*) FROM sira_predictions WHERE request_id = 'http-1'"
        assert run_sync(stored(fraud_model.dsn, count)) == 1
        r = client.post("/v1/score", json={"model": "fraud", "event": {**event(fraud_model, 1), "amount": "x"}},
                        headers=headers(fraud_model))
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "event.amount"


@pytest.mark.parametrize("mutate, status, code, field", SCORE_BAD_INPUTS)
def test_bad_input_over_http_gets_a_stable_code_naming_the_field(serving, fraud_model, mutate, status, code, field):
    import json

    url, _ = serving
    body = mutate({"model": "fraud", "event": event(fraud_model, 2)})
    r = httpx.post(f"{url}/v1/score", content=json.dumps(body, allow_nan=True), timeout=30,
                   headers={**headers(fraud_model), "content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["details"].get("field") == field


def test_input_bounds_hold_on_a_serve_replica(serving, fraud_model):
    """The body bound is the application's own middleware: a replica applies it as `sira api` does."""
    url, _ = serving
    limit = fraud_model.settings.max_body_bytes
    big = b'{"model": "fraud", "event": {"note": "' + b"x" * limit + b'"}}'

    def chunks():  # no Content-Length: counted as the bytes arrive through the proxy
        for start in range(0, len(big), 65_536):
            yield big[start:start + 65_536]

    json_headers = {**headers(fraud_model), "content-type": "application/json"}
    with httpx.Client(base_url=url, timeout=60, headers=json_headers) as c:
        for content in (big, chunks()):
            r = c.post("/v1/score", content=content)
            assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text[:300]
        r = c.post("/v1/score", json={"model": "fraud", "event": {**event(fraud_model, 3),
                                                                   "attributes": {"note": "x" * 1_000_000}}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "field_too_long", r.text[:300]
        assert c.post("/v1/score", json={"model": "fraud", "event": event(fraud_model, 4)}).status_code == 200


def test_feedback_and_the_stored_explanation_over_http(serving, fraud_model):
    url, _ = serving
    with httpx.Client(base_url=url, timeout=30) as client:
        answer = client.post("/v1/score", json={"model": "fraud", "event": event(fraud_model, 3)},
                             headers=headers(fraud_model)).json()
        for _ in range(50):  # stored within the flush interval
            r = client.get(f"/v1/predictions/{answer['prediction_id']}", headers=headers(fraud_model, "analyst"))
            if r.status_code == 200:
                break
            time.sleep(0.1)
        assert r.status_code == 200 and r.json()["reasons_deferred"] is False
        stored = r.json()
        assert stored["score"] == answer["score"] and stored["version"] == answer["version"]
        # the reasons are LightGBM's exact contributions for the stored features; the decision its thresholds'
        from sira.serving.records import version_row
        from sira.serving.scoring import ModelRuntime

        row = run_sync(version_row(fraud_model.dsn, "fraud", answer["version"]))
        runtime = ModelRuntime.load(fraud_model.settings, row)
        X = runtime.matrix([stored["features"]])
        assert stored["reasons"] == runtime.reasons(X[0], runtime.contributions(X)[0])
        assert runtime.predict(X)[0] == answer["score"]
        assert runtime.decide(runtime.predict(X)) == [answer["decision"]]
        r = client.post("/v1/feedback", json={"prediction_id": answer["prediction_id"], "label": True,
                                              "source": "chargeback"}, headers=headers(fraud_model))
        assert r.status_code == 200 and r.json()["status"] == "recorded"


def test_a_clients_forwarded_for_is_not_taken_for_its_address_through_haproxy(serving, fraud_model):
    """A replica's own HTTP server (HAProxy's target) believed X-Forwarded-For from 127.0.0.1, uvicorn's default,
    and HAProxy passes a client's header on: any client chose the source address the audit log keeps. It
    believes the proxies SIRA_TRUSTED_PROXIES names only, none here."""
    import ipaddress

    url, _ = serving
    r = httpx.post(f"{url}/v1/serving/reload", json={"reason": "forwarded-for through haproxy"}, timeout=30,
                   headers={**headers(fraud_model, "operator"), "X-Forwarded-For": "6.6.6.6"})
    assert r.status_code == 200, r.text
    source = run_sync(stored(fraud_model.dsn, "SELECT source_address FROM sira_audit_log WHERE action = "
                             "'serving.reload' AND details->>'reason' = 'forwarded-for through haproxy'"))
    assert source != "6.6.6.6" and ipaddress.ip_address(source).is_private  # the peer: HAProxy, on this node


def test_metrics_reach_rays_prometheus_endpoint(serving, fraud_model):
    """Replicas' metrics are exported by the node's Ray metrics agent (aggregated by Prometheus, not a route)."""
    import ray

    url, _ = serving
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(5):
            assert client.post("/v1/score", json={"model": "fraud", "event": event(fraud_model, i), "record": False},
                               headers=headers(fraud_model)).status_code == 200
        bad = {k: v for k, v in event(fraud_model, 9).items() if k != "amount"}
        assert client.post("/v1/score", json={"model": "fraud", "event": bad, "record": False},
                           headers=headers(fraud_model)).status_code == 422
    from sira.core.ray_runtime import metrics_url

    port = ray._private.worker.global_worker.node.metrics_export_port
    assert metrics_url().endswith(f":{port}/metrics")  # what `sira serve` prints
    wanted = ("ray_sira_request_latency_ms_bucket", "ray_sira_decisions", "ray_sira_batch_size_bucket",
              "ray_sira_model_version_served", "ray_sira_feature_cache_lookups", "ray_sira_errors_total")
    def refused(body: str) -> bool:  # this test's 422 (earlier tests of the session count other errors)
        return any(line.startswith("ray_sira_errors_total") and 'code="missing_field"' in line
                   and 'route="/v1/score"' in line and 'status="422"' in line for line in body.splitlines())

    body = ""
    deadline = time.time() + 90
    while time.time() < deadline:
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(name in body for name in wanted) and refused(body):
            break
        time.sleep(2)
    missing = [name for name in wanted if name not in body]
    assert not missing, missing
    latency = [line for line in body.splitlines() if line.startswith("ray_sira_request_latency_ms_count")]
    assert any('model="fraud"' in line and 'route="score"' in line for line in latency)
    assert refused(body), [line for line in body.splitlines() if line.startswith("ray_sira_errors_total")]
    # the names docs/observability.md documents are the names scraped (those this traffic produced)
    documented = set(re.findall(r"`(ray_sira_[a-z_]+)`", (ROOT / "docs" / "observability.md").read_text()))
    exported = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line.startswith("ray_sira_")}
    exported |= {name.rsplit("_", 1)[0] for name in exported if name.endswith(("_bucket", "_count", "_sum"))}
    produced = {"ray_sira_request_latency_ms", "ray_sira_batch_size", "ray_sira_model_version_served",
                "ray_sira_spool_pending_records"} | {n for n in exported if n.endswith("_total")}
    assert produced <= documented, produced - documented
    assert {n for n in documented if n in produced} <= exported


def test_a_replica_killed_right_after_answering_loses_nothing(serving, fraud_model):
    """Answers sit in the spool (a long flush interval); the replicas die; their successors replay it."""
    import ray

    url, spool = serving
    deploy("sira", "/", fraud_model.settings, fraud_model.dsn, spool, replicas=2, flush_interval_s=50)
    time.sleep(1.0)  # the reconfigure reaches both replicas
    tag = f"kill-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=url, timeout=30) as client:
        answered = 0
        for i in range(30):
            r = client.post("/v1/score", json={"model": "fraud", "request_id": f"{tag}-{i}", "event": event(fraud_model, i)},
                            headers=headers(fraud_model))
            assert r.status_code == 200, r.text
            answered += 1
    count = f"SELECT count(*) FROM sira_predictions WHERE request_id LIKE '{tag}-%' AND role = 'production'"
    before = run_sync(stored(fraud_model.dsn, count))
    assert before < answered  # still in the spools
    pids = replica_pids("sira")
    assert len(pids) == 2
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 180
    while time.time() < deadline:
        if run_sync(stored(fraud_model.dsn, count)) == answered:
            break
        time.sleep(1)
    assert run_sync(stored(fraud_model.dsn, count)) == answered
    deploy("sira", "/", fraud_model.settings, fraud_model.dsn, spool, replicas=2)
    assert ray.is_initialized()


def test_hot_swap_under_load_fails_no_request_and_each_answer_names_its_version(serving, fraud_model):
    from sira.training.runs import TrainRequest, run_training

    url, _ = serving
    old = run_sync(stored(fraud_model.dsn, """SELECT v.version FROM sira_model_versions v JOIN sira_models m
                                               ON m.id = v.model_id WHERE m.name = 'fraud' AND v.status = 'production'"""))
    new = run_sync(run_training(fraud_model.settings, TrainRequest(
        model="fraud", label_maturity_days=10, label_delay_days=4, num_threads=1, seed=11,
        params={"num_boost_round": 80, "early_stopping_rounds": 20, "num_leaves": 7})))["version"]
    results: list[tuple[float, int, int]] = []  # (time, status, version)
    stop = threading.Event()

    def client_loop(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                r = client.post("/v1/score", json={"model": "fraud", "event": event(fraud_model, k * 1000 + i),
                                                   "record": False}, headers=headers(fraud_model))
                results.append((time.time(), r.status_code, r.json().get("version", -1) if r.status_code == 200 else -1))
                i += 1

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.5)

    async def promote() -> float:
        pool = await db.create_pool(fraud_model.dsn, fraud_model.settings)
        try:
            async with db.transaction(pool) as conn:
                await promote_for_tests(conn, fraud_model.settings, "fraud", new, "hot swap test")
            return time.time()
        finally:
            await pool.close()

    changed_at = run_sync(promote())
    deadline = changed_at + 60
    while time.time() < deadline:
        recent = [v for t, s, v in results if t > time.time() - 1.0]
        if recent and all(v == new for v in recent):
            break
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert results and all(s == 200 for _, s, _ in results), [r for r in results if r[1] != 200][:5]
    assert {v for _, _, v in results} <= {old, new}
    last_old = max((t for t, _, v in results if v == old), default=changed_at)
    print(f"\nregistry change -> every replica serving v{new}: {max(0.0, last_old - changed_at):.2f}s "
          f"over {len(results)} requests")
    assert last_old - changed_at < 30  # LISTEN/NOTIFY: seconds, not the poll interval's minutes
    assert all(v == new for t, _, v in results if t > last_old)

    async def back() -> None:
        pool = await db.create_pool(fraud_model.dsn, fraud_model.settings)
        try:
            async with db.transaction(pool) as conn:
                await registry.rollback(conn, ADMIN, "fraud", "end of the hot swap test", new)
        finally:
            await pool.close()

    run_sync(back())


@pytest.fixture
def own_postgres(fraud_model, tmp_path):
    """A Postgres instance of this test's own (the outage must not touch the shared one), with fraud v1."""
    server = db.EmbeddedPostgres(Settings(workspace=tmp_path / "outage-ws").embedded_pg_data)
    dsn = server.start()
    settings = Settings(database_url=dsn, workspace=fraud_model.settings.workspace)

    async def seed() -> str:
        await migrate_database(dsn)
        await copy_production_model(fraud_model.dsn, fraud_model.version, dsn, settings, "outage test")
        pool = await db.create_pool(dsn, settings)
        try:
            async with db.transaction(pool) as conn:
                key, _ = await create_key(conn, name="svc", roles=["service"], pepper=settings.secret("auth_secret"),
                                          creator=ADMIN)
            return key
        finally:
            await pool.close()

    key = run_sync(seed())
    yield server, dsn, settings, key
    server.stop()
    if os.geteuid() == 0:  # as root the data lives outside tmp_path (see sira.core.config)
        shutil.rmtree(server.data_dir.parent, ignore_errors=True)


def test_a_postgres_outage_loses_no_answered_prediction(serving, fraud_model, own_postgres, tmp_path):
    from ray import serve

    url, _ = serving
    server, dsn, settings, key = own_postgres
    deploy("outage", "/outage", settings, dsn, tmp_path / "spool", breaker_open_s=0.5)
    auth = {"Authorization": f"Bearer {key}"}
    answered = {"up": 0, "down": 0, "back": 0}
    try:
        with httpx.Client(base_url=f"{url}/outage", timeout=30) as client:
            def send(phase: str, n: int) -> list[dict]:
                out = []
                for i in range(n):
                    r = client.post("/v1/score", json={"model": "fraud", "request_id": f"{phase}-{i}",
                                                       "event": event(fraud_model, i % 5)}, headers=auth)
                    assert r.status_code == 200, (phase, r.text)
                    answered[phase] += 1
                    out.append(r.json())
                return out

            send("up", 10)
            server.stop()
            down = send("down", 10)
            assert all(a["degraded"] and "database_unavailable" in a["degraded_reasons"] for a in down[1:])
            server.start()
            send("back", 5)
            total = sum(answered.values())
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    if run_sync(stored(dsn, "SELECT count(*) FROM sira_predictions WHERE role = 'production'")) == total:
                        break
                except Exception:  # noqa: BLE001 - the server is coming back
                    pass
                time.sleep(1)
            assert run_sync(stored(dsn, "SELECT count(*) FROM sira_predictions WHERE role = 'production'")) == total, \
                replica_log("outage", "spool|recorder|PostgreSQL")
            assert run_sync(stored(dsn, "SELECT count(*) FROM sira_predictions WHERE degraded")) >= 9
    finally:
        serve.delete("outage")


def test_a_postgres_crash_and_restart_answers_no_500_and_loses_no_prediction(serving, fraud_model, own_postgres,
                                                                             tmp_path):
    """Postgres crashes (an immediate stop: no shutdown checkpoint) while four clients score, stays down longer
    than a replica trusts a cached key, and restarts: while it recovers from its WAL it refuses connections
    ("the database system is starting up"). Every request is answered (no 500), every answer stored."""
    from collections import Counter

    from ray import serve

    url, _ = serving
    server, dsn, settings, key = own_postgres
    deploy("crash", "/crash", settings, dsn, tmp_path / "spool", breaker_open_s=0.5, auth_cache_ttl_s=1.0)
    auth = {"Authorization": f"Bearer {key}"}
    results: list[tuple[int, str, bool]] = []  # (status, error code or request id, degraded)
    stop = threading.Event()

    def client_loop(k: int) -> None:
        with httpx.Client(base_url=f"{url}/crash", timeout=30) as client:
            i = 0
            while not stop.is_set():
                r = client.post("/v1/score", json={"model": "fraud", "request_id": f"crash-{k}-{i}",
                                                   "event": event(fraud_model, k * 1000 + i)}, headers=auth)
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                results.append((r.status_code, body.get("request_id") or body.get("error", {}).get("code", r.text[:80]),
                                bool(body.get("degraded"))))
                i += 1

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
        server.stop(mode="immediate")
        time.sleep(2.0)  # longer than auth_cache_ttl_s: keys are checked again, and come from the stale cache
        server.start()  # recovers from the WAL first, refusing connections meanwhile
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join()
        statuses = Counter(s for s, _, _ in results)
        print(f"\ncrash and restart: {len(results)} requests, {dict(statuses)}, "
              f"{sum(1 for s, _, d in results if s == 200 and d)} answered degraded")
        assert statuses[500] == 0, Counter(c for s, c, _ in results if s == 500)
        answered = {c for s, c, _ in results if s == 200}
        assert answered and set(statuses) == {200}, statuses
        count = "SELECT count(*) FROM sira_predictions WHERE role = 'production' AND request_id LIKE 'crash-%'"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if run_sync(stored(dsn, count)) == len(answered):
                    break
            except Exception:  # noqa: BLE001 - the server is coming back
                pass
            time.sleep(1)
        assert run_sync(stored(dsn, count)) == len(answered), replica_log("crash", "spool|recorder|PostgreSQL")
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join()
        serve.delete("crash")


def test_every_dashboard_panel_and_alert_reads_series_of_the_live_platform(serving, fraud_model, redis_url, tmp_path):
    """Prometheus, with deploy/prometheus/prometheus.yml's jobs, scrapes the replicas through Ray's metrics
    export, the service's ``/metrics`` through Serve's ingress (a viewer's key) and a stream consumer; after
    traffic that exercises each series (answers, a refused request, a late event, a shadow, answers degraded
    by an unreachable Redis, stream entries and a dead letter, a drift and a performance run), every panel of
    deploy/grafana and every series an alert rule of deploy/prometheus reads has data. Last in this module:
    it stages a shadow version."""
    import asyncio

    import ray
    from ray import serve

    from sira.ingest.stream import GROUP, RedisStreamSource, consume
    from sira.ingest.stream_metrics import StreamMetrics
    from sira.training.runs import TrainRequest, run_training
    from tests import promstack

    url, spool = serving
    secrets = tmp_path / "viewer.key"
    secrets.write_text(fraud_model.keys["viewer"])
    # a shadow: a small version in staging, scored beside production
    shadow = run_sync(run_training(fraud_model.settings, TrainRequest(
        model="fraud", label_maturity_days=10, label_delay_days=4, num_threads=1, seed=5,
        params={"num_boost_round": 20, "num_leaves": 7})))["version"]

    async def registry_and_runs(stage: bool) -> None:
        pool = await db.create_pool(fraud_model.dsn, fraud_model.settings)
        try:
            async with db.transaction(pool) as conn:
                if stage:
                    await registry.stage_version(conn, fraud_model.settings, ADMIN, "fraud", shadow, "metrics test")
                    # what a drift and a performance run store (their jobs are tested in tests/integration)
                    await conn.execute(
                        """INSERT INTO sira_data_drift (model_id, version, feature, window_start, window_end, psi,
                                                        severity, job_id, computed_at)
                           SELECT id, $1, f.feature, now() - interval '7 days', now(), f.psi, f.severity,
                                  'live-metrics-test', now()
                             FROM sira_models, (VALUES ('__dataset__', NULL::float8, 'ok'), ('amount', 0.04, 'ok'))
                                  AS f (feature, psi, severity) WHERE name = 'fraud'""", fraud_model.version)
                    await conn.execute(
                        """INSERT INTO sira_model_performance (model_id, version, role, window_start, window_end, n,
                                                               n_positive, average_precision, metrics, flagged, job_id)
                           SELECT id, $1, 'production', now() - interval '7 days', now(), 500, 20, 0.6,
                                  '{"expected_calibration_error": 0.01, "brier": 0.03}', false, 'live-metrics-test'
                             FROM sira_models WHERE name = 'fraud'""", fraud_model.version)
                else:  # back as it was for the tests after this one
                    await conn.execute("""UPDATE sira_model_versions v SET status = 'validated' FROM sira_models m
                                           WHERE m.id = v.model_id AND m.name = 'fraud' AND v.version = $1""", shadow)
                    for table in ("sira_data_drift", "sira_model_performance"):
                        await conn.execute(f"DELETE FROM {table} WHERE job_id = 'live-metrics-test'")
        finally:
            await pool.close()

    run_sync(registry_and_runs(stage=True))
    # answers degraded by a Redis nobody listens on (the replica answers from PostgreSQL, and says so)
    deploy("degraded", "/degraded", fraud_model.settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"}),
           fraud_model.dsn, tmp_path / "degraded-spool")

    # a stream consumer with its exporter, on a stream of this test's own
    stream = f"sira:events:metrics-test-{uuid.uuid4().hex[:6]}"
    consumer_port, stop = promstack.free_port(), threading.Event()

    def consumer() -> None:
        async def run() -> None:
            metrics = StreamMetrics(stream, GROUP)
            metrics.serve(consumer_port, host="127.0.0.1")
            source = RedisStreamSource(redis_url, stream=stream, consumer="metrics-test")
            await source.start()
            await source.redis.xadd(stream, {"kind": "event", "data": "{not json"})
            for i in range(20):
                await source.redis.xadd(stream, {"kind": "event", "data": json.dumps(
                    {"event_id": f"metrics-stream-{uuid.uuid4().hex[:8]}", "occurred_at": NOW.isoformat(),
                     "customer_id": f"metrics-c{i % 3}", "card_number": "4111111111111111", "amount": 10 + i})})
            pool = await db.create_pool(fraud_model.dsn, fraud_model.settings)
            done = asyncio.Event()
            try:
                watcher = asyncio.ensure_future(asyncio.to_thread(stop.wait))
                watcher.add_done_callback(lambda _: done.set())
                await consume(source, pool, settings=fraud_model.settings, batch=5, block_ms=200, stop=done,
                              metrics=metrics)
            finally:
                await source.redis.delete(stream)
                await source.close()
                await pool.close()

        asyncio.run(run())

    consuming = threading.Thread(target=consumer, daemon=True)
    consuming.start()
    ray_port = ray._private.worker.global_worker.node.metrics_export_port
    prom = promstack.Prometheus(tmp_path, promstack.config(tmp_path, {
        "sira-serving": f"127.0.0.1:{ray_port}", "sira-platform": url.removeprefix("http://"),
        "sira-stream": f"127.0.0.1:{consumer_port}"}, credentials_file=secrets))
    entity = fraud_model.entities[0]
    newest = run_sync(stored(fraud_model.dsn, "SELECT max(occurred_at) FROM sira_events WHERE customer_id = $1",
                             entity["customer_id"]))
    late = {**event(fraud_model, 0), "occurred_at": (newest - timedelta(days=1)).isoformat()}
    auth = headers(fraud_model)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.post("/v1/score", json={"model": "fraud", "event": late}, headers=auth).status_code == 200
            assert client.post("/v1/score", json={"model": "fraud", "event": {"amount": 1}},
                               headers=auth).status_code == 422
            wait_until(lambda: client.post("/degraded/v1/score", json={"model": "fraud", "event": event(fraud_model, 1),
                                                                       "record": False}, headers=auth).status_code
                       == 200, timeout=120, what="the degraded app's replica")

            def traffic_and_gaps() -> list[str]:
                for i in range(10):
                    for prefix in ("", "/degraded"):
                        client.post(f"{prefix}/v1/score", json={"model": "fraud", "event": event(fraud_model, i),
                                                                 "record": False}, headers=auth)
                queries = [(f"{name} panel", expr) for name, expr in promstack.dashboard_queries()]
                queries += [(f"{alert} alert", selector) for alert, selector in promstack.alert_selectors()]
                return [f"{what}: {expr}" for what, expr in queries
                        if not promstack.event_only(expr) and not prom.check(expr)]

            gaps: list[str] = []

            def complete() -> bool:
                gaps[:] = traffic_and_gaps()
                return not gaps

            try:
                wait_until(complete, timeout=120, interval=2.0)
            except AssertionError:
                raise AssertionError("no data after 120 s:\n" + "\n".join(gaps)) from None
        degraded = prom.query("sum by (reason) (ray_sira_degraded_requests_total)")
        assert {r["metric"]["reason"] for r in degraded} >= {"cache_unavailable"}, degraded
        agreement = prom.query('sum by (model) (ray_sira_shadow_scores_total{model="fraud"})')
        assert agreement and float(agreement[0]["value"][1]) > 0
        assert prom.query('sira_model_version_info{status="staging"}')[0]["metric"]["version"] == str(shadow)
        assert prom.query("sum(sira_stream_dead_letters_total)")
    except AssertionError:
        print(prom.log.read_text()[-3000:])
        raise
    finally:
        prom.stop()
        stop.set()
        consuming.join(timeout=30)
        serve.delete("degraded")
        run_sync(registry_and_runs(stage=False))
