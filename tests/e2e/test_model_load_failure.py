"""A production artifact that fails its checksum under a real Ray Serve: the replica that cannot load it stays
up and says so (503 ``model_unavailable``, not ready, alive) instead of being restarted in a loop while every
client call times out; fixing the file brings it back by itself. Run alone: it trains a model and starts Serve."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from sira.core import db
from tests.conftest import run_sync
from tests.e2e.test_serving import deploy, event, free_port, headers, replica_pids

pytestmark = pytest.mark.timeout(900)
APP = "loadfail"
CALL_TIMEOUT_S = 10.0  # generous: an answer, even a refusal, takes milliseconds


async def production_model_file(dsn: str) -> Path:
    conn = await db.connect(dsn)
    try:
        uri = await conn.fetchval(
            """SELECT v.artifact_uri FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id
                WHERE m.name = 'fraud' AND v.status = 'production'""")
    finally:
        await conn.close()
    return Path(uri) / "model.txt"


async def audit_rows(dsn: str, action: str) -> int:
    conn = await db.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM sira_audit_log WHERE action = $1", action)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def serve_url(fraud_model, ray_session):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def outcome(client: httpx.Client, path: str, fraud_model, i: int) -> tuple[str, float]:
    started = time.monotonic()
    try:
        r = client.post(f"{path}/v1/score", json={"model": "fraud", "event": event(fraud_model, i), "record": False},
                        headers=headers(fraud_model))
    except httpx.TimeoutException:
        return "timeout", time.monotonic() - started
    except httpx.TransportError as exc:
        return f"transport:{type(exc).__name__}", time.monotonic() - started
    if r.status_code == 200:
        return "200", time.monotonic() - started
    try:
        code = r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):  # not SIRA's answer: Serve's proxy, with no replica to ask
        code = "proxy:" + r.text[:60].replace("\n", " ")
    return f"{r.status_code} {code}".strip(), time.monotonic() - started


def test_a_replica_whose_production_artifact_is_tampered_answers_503_and_recovers(serve_url, fraud_model, tmp_path):
    model_file = run_sync(production_model_file(fraud_model.dsn))
    good = model_file.read_bytes()
    failed_before = run_sync(audit_rows(fraud_model.dsn, "model.load_failed"))
    deploy(APP, f"/{APP}", fraud_model.settings, fraud_model.dsn, tmp_path / "spool")
    path = f"/{APP}"
    try:
        with httpx.Client(base_url=serve_url, timeout=CALL_TIMEOUT_S) as client:
            assert outcome(client, path, fraud_model, 0)[0] == "200"
            model_file.write_bytes(good + b"\n# tampered\n")
            pids = replica_pids(APP)
            assert len(pids) == 1
            os.kill(pids[0], signal.SIGKILL)  # its successor has to load the tampered file
            killed = time.monotonic()
            results: list[tuple[float, str, float]] = []
            refusing_since = None  # calls go on for 5 s after the first refusal (at most 60 s in all)
            while time.monotonic() - killed < 60 and (refusing_since is None or
                                                      time.monotonic() - refusing_since < 5):
                status, took = outcome(client, path, fraud_model, len(results) + 1)
                results.append((time.monotonic() - killed, status, took))
                if status == "503 model_unavailable" and refusing_since is None:
                    refusing_since = time.monotonic()
            counts = Counter(s for _, s, _ in results)
            first_503 = next((t for t, s, _ in results if s == "503 model_unavailable"), None)
            refused = [took for _, s, took in results if s == "503 model_unavailable"]
            print(f"\nartifact tampered, replica killed: {len(results)} calls over {results[-1][0]:.0f} s: {dict(counts)}; "
                  f"first 503 model_unavailable after {first_503 if first_503 is None else round(first_503, 1)} s; "
                  f"slowest 503 {max(refused, default=0) * 1000:.0f} ms; replicas now {replica_pids(APP)}")
            assert first_503 is not None, dict(counts)
            after = [s for t, s, _ in results if t > first_503]
            assert after and all(s == "503 model_unavailable" for s in after), Counter(after)
            assert len(replica_pids(APP)) == 1  # alive, not restarted in a loop
            assert client.get(f"{path}/healthz").status_code == 200
            ready = client.get(f"{path}/readyz")
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "model_unavailable", ready.text
            assert "fraud" in ready.json()["error"]["details"]["models"]
            assert run_sync(audit_rows(fraud_model.dsn, "model.load_failed")) > failed_before

            model_file.write_bytes(good)  # fixed: the replica's own retries load it
            fixed = time.monotonic()
            status = ""
            while time.monotonic() - fixed < 120 and status != "200":
                status, _ = outcome(client, path, fraud_model, 0)
                if status != "200":
                    time.sleep(0.5)
            print(f"file fixed -> answering again after {time.monotonic() - fixed:.1f} s")
            assert status == "200"
            assert client.get(f"{path}/readyz").status_code == 200
    finally:
        model_file.write_bytes(good)
        from ray import serve

        serve.delete(APP)
