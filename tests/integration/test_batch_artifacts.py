"""Batch scoring when the artifact cannot be loaded: tampered with, or in an S3 store that is away or refuses
the credentials. Each is one line naming the problem, checked by the driver before Ray starts; one that only a
scoring actor meets (its node has no credentials) is unwrapped from Ray's ActorDiedError."""

from __future__ import annotations

import os
from asyncio import run as run_sync
from contextlib import contextmanager
from datetime import timedelta

import pytest

from sira.core.errors import ConfigError, InvalidInput, NotFound, ServiceUnavailable, SiraError, sira_cause
from sira.monitoring.batch import BatchRequest, run_batch_score

AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def moto_server():
    """An S3 of its own (moto's server) with a bucket ``models``; yields its endpoint."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    saved = {k: os.environ.get(k) for k in AWS}
    os.environ.update(AWS)
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="models")
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def register_copy(fraud_model, name: str, settings) -> dict:
    """fraud's production artifact saved again in ``settings``' artifact store and registered as ``name`` v1 (a
    candidate on the same feature set): its artifact folder's uri and manifest sha256."""
    from sira.core import artifacts, db
    from sira.core.auth import Identity
    from sira.registry import models as registry
    from tests.conftest import fetch_rows

    row = run_sync(fetch_rows(fraud_model.dsn, """SELECT v.* FROM sira_model_versions v JOIN sira_models m
        ON m.id = v.model_id WHERE m.name = 'fraud' AND v.status = 'production'"""))[0]
    loaded = artifacts.load_artifact(fraud_model.settings, artifacts.ArtifactRef(row["artifact_uri"],
                                                                                 row["artifact_sha256"]))
    manifest = {k: v for k, v in loaded.manifest.items() if k != "files"}
    ref = artifacts.save_artifact(settings, f"{name}/runs/r1", loaded.files, manifest)
    admin = Identity("test-admin", frozenset({"admin"}))

    async def register() -> None:
        import json

        pool = await db.create_pool(fraud_model.dsn, fraud_model.settings)
        try:
            async with db.transaction(pool) as conn:
                await registry.create_model(conn, admin, name, model_type="fraud_detection", feature_set="payments",
                                            feature_set_version=row["feature_set_version"], label_maturity_days=10)
                model = await conn.fetchrow("SELECT * FROM sira_models WHERE name = $1", name)
                await registry.register_candidate(
                    conn, model, run_id=None, artifact=ref, feature_schema=json.loads(row["feature_schema"]),
                    params={}, metrics={}, thresholds=json.loads(row["thresholds"]),
                    feature_set_version=row["feature_set_version"], actor=admin.actor())
        finally:
            await pool.close()

    run_sync(register())
    return {"uri": ref.uri, "sha256": ref.sha256}


def _first_event(fraud_model):
    from tests.conftest import fetch_rows

    return run_sync(fetch_rows(fraud_model.dsn, "SELECT min(occurred_at) AS lo FROM sira_events"))[0]["lo"]


def test_a_tampered_artifact_is_one_clear_error_on_ray_data_too(fraud_model, tmp_path, capfd):
    """In process the runtime's load said `artifact_checksum_mismatch`; on Ray Data (every Ray job) a scoring
    actor died of it and the run failed as `internal: ActorDiedError` under 93 lines of Ray Data's traceback."""
    from pathlib import Path

    from sira.core.artifacts import ArtifactTampered
    from tests.conftest import fetch_rows

    ref = register_copy(fraud_model, "tampered", fraud_model.settings)
    model_file = Path(ref["uri"]) / "model.txt"
    model_file.write_text(model_file.read_text().replace("num_leaves=", "num_leaves=1", 1))
    lo = _first_event(fraud_model)
    capfd.readouterr()
    with pytest.raises(ArtifactTampered) as caught:
        run_sync(run_batch_score(fraud_model.settings, BatchRequest(
            model="tampered", version=1, out=tmp_path / "o.parquet", time_from=lo, time_to=lo + timedelta(days=2),
            local_below=0)))
    assert "model.txt does not match its sha256" in caught.value.message
    assert "Traceback" not in capfd.readouterr().err
    audited = run_sync(fetch_rows(fraud_model.dsn, """SELECT outcome, details->>'error' AS error FROM sira_audit_log
        WHERE action = 'batch.score' AND target_id = 'tampered:v1' ORDER BY id DESC LIMIT 1"""))
    assert audited == [{"outcome": "failed", "error": "artifact_checksum_mismatch"}]


def test_an_error_raised_as_an_actor_starts_is_found_under_actor_died(ray_session):
    """Ray keeps the creation task's error only as ActorDiedError's argument: sira_cause looked at its causes and
    context alone, so the bad input became `internal: ActorDiedError`."""
    import ray

    @ray.remote(num_cpus=0.1)
    class Refuses:
        def __init__(self) -> None:
            raise InvalidInput("nothing to load", code="artifact_missing")

        def ping(self) -> bool:
            return True

    actor = Refuses.remote()
    with pytest.raises(ray.exceptions.ActorDiedError) as caught:
        ray.get(actor.ping.remote(), timeout=120)
    found = sira_cause(caught.value)
    assert isinstance(found, InvalidInput) and found.code == "artifact_missing"


def test_the_s3_store_says_what_is_wrong_in_one_stable_code(tmp_path, monkeypatch):
    """No credentials, a store that does not answer, credentials it refuses, a bucket that does not exist: each was
    `internal: NoCredentialsError` (or EndpointConnectionError, ClientError) with exit 1."""
    import boto3
    from moto import settings as moto_settings

    from sira.core.artifacts import S3Store
    from sira.core.config import Settings
    from tests.conftest import ephemeral_port

    with moto_server() as endpoint:
        store = S3Store("models", "sira", kms_key_id=None, endpoint_url=endpoint)
        store.put("a/model.txt", b"tree\n")
        assert store.get("a/model.txt") == b"tree\n"
        with pytest.raises(NotFound) as missing:
            store.get("a/nothing.txt")
        assert missing.value.code == "artifact_missing"
        with pytest.raises(ConfigError) as no_bucket:
            S3Store("no-such-bucket", "", kms_key_id=None, endpoint_url=endpoint).get("x")
        assert no_bucket.value.code == "config" and "SIRA_ARTIFACT_URI" in no_bucket.value.message

        monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys from now on
        with pytest.raises(ConfigError) as refused:
            store.get("a/model.txt")
        assert refused.value.code == "artifact_store_denied" and refused.value.exit_code == 2
        assert "InvalidAccessKeyId" in refused.value.message and "docs/cluster.md" in refused.value.message
        monkeypatch.undo()

        for name in AWS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # its credentials were found once, and kept
        with pytest.raises(ConfigError) as none:
            S3Store("models", "sira", kms_key_id=None, endpoint_url=endpoint).get("a/model.txt")
        assert none.value.code == "artifact_store_denied" and "no AWS credentials" in none.value.message
        monkeypatch.undo()

    away = f"http://127.0.0.1:{ephemeral_port()}"  # nothing listens there
    for name, value in AWS.items():
        monkeypatch.setenv(name, value)
    settings = Settings(workspace=tmp_path, artifact_uri="s3://models/sira", s3_endpoint_url=away)
    from sira.core.artifacts import ArtifactRef, load_artifact

    with pytest.raises(ServiceUnavailable) as unreachable:
        load_artifact(settings, ArtifactRef("s3://models/sira/fraud/runs/r1", "0" * 64))
    assert unreachable.value.code == "artifact_store_unavailable" and unreachable.value.exit_code == 1


@pytest.mark.slow
def test_a_scoring_actor_without_access_to_the_store_fails_in_one_line(fraud_model, tmp_path, capfd):
    """The driver reads the S3 store; the scoring actors' node cannot (no credentials there, or no route): the run
    fails with the store's own error, not `internal: ActorDiedError` and 136 lines of Ray Data's traceback."""
    with moto_server() as endpoint:
        settings = fraud_model.settings.model_copy(update={"artifact_uri": "s3://models/sira",
                                                           "s3_endpoint_url": endpoint})
        register_copy(fraud_model, "on_s3", settings)
        lo = _first_event(fraud_model)
        capfd.readouterr()
        with pytest.raises(SiraError) as caught:  # the session's Ray workers have neither the keys nor the endpoint
            run_sync(run_batch_score(settings, BatchRequest(
                model="on_s3", version=1, out=tmp_path / "o.parquet", time_from=lo, time_to=lo + timedelta(days=2),
                local_below=0)))
    assert caught.value.code in ("artifact_store_denied", "artifact_store_unavailable"), caught.value
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred in Ray Data" not in err, err[-3000:]
