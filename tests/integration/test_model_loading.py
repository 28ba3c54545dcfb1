"""A registered version a replica cannot load (its artifact fails its checksum), in process: the service starts
anyway and says so (503 ``model_unavailable``, not ready, alive, one audit row), keeps the version it served if
it had one, and loads the version by itself, with backoff, once the file is right again."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from sira.core import db
from sira.core.artifacts import ArtifactRef
from sira.core.auth import Identity
from sira.http.app import create_app
from sira.registry import models as registry
from sira.serving.config import ServingConfig
from sira.serving.service import ScoringService
from tests.conftest import promote_for_tests
from tests.integration.test_scoring_service import event, score

ADMIN = Identity("test-admin", frozenset({"admin"}))
pytestmark = pytest.mark.timeout(900)  # the session builds the served model first


async def production_row(dsn: str):
    conn = await db.connect(dsn)
    try:
        return await conn.fetchrow(
            """SELECT v.* FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id
                WHERE m.name = 'fraud' AND v.status = 'production'""")
    finally:
        await conn.close()


async def audit_count(pool, action: str, target: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM sira_audit_log WHERE action = $1 AND target_id = $2",
                               action, target)


async def until(check, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


def app_for(fraud_model, tmp_path: Path):
    service = ScoringService(fraud_model.settings, ServingConfig(models=["fraud"], spool_dir=tmp_path,
                                                                 flush_interval_s=0.05, poll_interval_s=1.0))
    return service, create_app(fraud_model.settings, scoring=service)


async def test_no_loadable_production_version_answers_503_and_is_loaded_once_the_file_is_fixed(fraud_model, tmp_path):
    row = await production_row(fraud_model.dsn)
    target = f"fraud:v{row['version']}"
    model_file = Path(row["artifact_uri"]) / "model.txt"
    good = model_file.read_bytes()
    model_file.write_bytes(good + b"\n# tampered\n")
    try:
        service, app = app_for(fraud_model, tmp_path)
        conn = await db.connect(fraud_model.dsn)  # the session's model: other tests may have audited it already
        try:
            failed_before, recovered_before = [await conn.fetchval(
                "SELECT count(*) FROM sira_audit_log WHERE action = $1 AND target_id = $2", action, target)
                for action in ("model.load_failed", "model.load_recovered")]
        finally:
            await conn.close()
        async with app.router.lifespan_context(app):  # starts: a bad artifact does not stop the service
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
                r = await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 1)})
                assert r.status_code == 503, r.text
                error = r.json()["error"]
                assert error["code"] == "model_unavailable"
                assert error["details"]["model"] == "fraud" and error["details"]["version"] == row["version"]
                assert error["details"]["reason"] == "artifact_checksum_mismatch"
                assert (await client.get("/healthz")).status_code == 200  # alive: do not restart it
                ready = await client.get("/readyz")
                assert ready.status_code == 503 and ready.json()["error"]["code"] == "model_unavailable"
                assert ready.json()["error"]["details"]["models"]["fraud"]["reason"] == "artifact_checksum_mismatch"

                async def retried() -> bool:
                    return service.load_failures[("fraud", "production")].attempts >= 3
                await until(retried)  # retried with backoff (1 s, 2 s, ...): one audit row for the streak
                assert await audit_count(service.pool, "model.load_failed", target) == failed_before + 1
                failed = await service.pool.fetchrow(
                    "SELECT actor_kind, outcome, details FROM sira_audit_log WHERE action = 'model.load_failed' "
                    "AND target_id = $1 ORDER BY id DESC LIMIT 1", target)
                assert failed["outcome"] == "failed" and failed["details"]["role"] == "production"
                assert failed["details"]["reason"] == "artifact_checksum_mismatch"

                model_file.write_bytes(good)

                async def answers() -> bool:
                    r = await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 2)})
                    return r.status_code == 200
                await until(answers)  # no registry change, no restart: the replica's own retry
                assert (await client.get("/readyz")).status_code == 200
                assert not service.load_failures
                assert await audit_count(service.pool, "model.load_recovered", target) == recovered_before + 1
                assert await audit_count(service.pool, "model.load_failed", target) == failed_before + 1
    finally:
        model_file.write_bytes(good)


async def test_a_new_version_that_cannot_load_leaves_the_old_one_serving_until_it_can(fraud_model, tmp_path):
    old = await production_row(fraud_model.dsn)
    copy = Path(old["artifact_uri"]).with_name(f"copy-{uuid.uuid4().hex[:8]}")
    shutil.copytree(old["artifact_uri"], copy)
    service, app = app_for(fraud_model, tmp_path)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            assert service.slots["fraud"].production.version == old["version"]
            async with db.transaction(service.pool) as conn:
                model = await conn.fetchrow("SELECT * FROM sira_models WHERE name = 'fraud'")
                new = await registry.register_candidate(
                    conn, model, run_id=None, artifact=ArtifactRef(str(copy), old["artifact_sha256"]),
                    feature_schema=old["feature_schema"], params=old["params"], metrics=old["metrics"],
                    thresholds=old["thresholds"], feature_set_version=old["feature_set_version"],
                    actor=ADMIN.actor())
                await registry.validate_version(conn, fraud_model.settings, ADMIN, "fraud", new)
            good = (copy / "model.txt").read_bytes()
            (copy / "model.txt").write_bytes(good + b"\n# tampered\n")  # after validation, before production
            try:
                from sira.core.artifacts import ArtifactTampered

                with pytest.raises(ArtifactTampered):  # the registry re-verifies the files before production
                    async with db.transaction(service.pool) as conn:
                        await promote_for_tests(conn, fraud_model.settings, "fraud", new, "load test")
                async with db.transaction(service.pool) as conn:  # past the registry: what a replica still guards
                    await conn.execute("UPDATE sira_model_versions SET status = 'archived' WHERE id = $1", old["id"])
                    await conn.execute("UPDATE sira_model_versions SET status = 'production' WHERE model_id = $1"
                                       " AND version = $2", old["model_id"], new)

                async def refused() -> bool:
                    failure = service.load_failures.get(("fraud", "production"))
                    return failure is not None and failure.version == new
                await until(refused)  # LISTEN/NOTIFY: the replica tried at once
                r = await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 3)})
                assert r.status_code == 200 and r.json()["version"] == old["version"], r.text
                assert (await client.get("/readyz")).status_code == 200  # it serves: the old version
                assert await audit_count(service.pool, "model.load_failed", f"fraud:v{new}") == 1

                (copy / "model.txt").write_bytes(good)

                async def swapped() -> bool:
                    return service.slots["fraud"].production.version == new
                await until(swapped)
                r = await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 4)})
                assert r.status_code == 200 and r.json()["version"] == new
                assert not service.load_failures
            finally:
                async with db.transaction(service.pool) as conn:  # as it was, past the registry as it was changed
                    await conn.execute("UPDATE sira_model_versions SET status = 'archived' WHERE model_id = $1"
                                       " AND version = $2", old["model_id"], new)
                    await conn.execute("UPDATE sira_model_versions SET status = 'production' WHERE id = $1", old["id"])
