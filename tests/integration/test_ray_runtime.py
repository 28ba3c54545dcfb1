"""Ray workers receive SIRA's installation through runtime_env, including the database."""

import asyncio

import ray

from sira.core import db
from sira.core.ray_runtime import worker_env


@ray.remote(num_cpus=0.1)
def _worker_view() -> dict:
    from sira.core.config import Settings

    settings = Settings()

    async def schema_version() -> int:
        conn = await db.connect(settings.database_url.get_secret_value())
        try:
            return await conn.fetchval("SELECT max(version) FROM sira_schema_migrations")
        finally:
            await conn.close()

    return {
        "workspace": str(settings.workspace),
        "artifacts": settings.artifact_location,
        "schema_version": asyncio.run(schema_version()),
    }


def test_workers_share_the_drivers_database_and_workspace(ray_session, settings):
    view = ray.get(_worker_view.remote(), timeout=120)
    assert view["workspace"] == str(settings.workspace)
    assert view["artifacts"] == settings.artifact_location
    assert view["schema_version"] >= 5


@ray.remote(num_cpus=0.1)
def _serve_ports() -> dict:
    import os

    return {name: os.environ.get(name) for name in ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
                                                    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")}


def test_the_local_rays_fallback_proxy_port_is_its_own(ray_session):
    """The processes of the local Ray (Serve's controller among them) have the fallback proxy's ports init_ray
    chose, not Serve's 8500 and 9500 that every local Serve shared, and Serve's fallback proxy listens there;
    this process keeps none of them, so a SIRA started from it (a child `sira serve`) chooses its own rather
    than taking them for set ones."""
    import os
    import socket

    from ray import serve

    from tests.conftest import ephemeral_port, wait_until

    ports = ray.get(_serve_ports.remote(), timeout=120)
    assert all(port and int(port) not in (8500, 9500) for port in ports.values()), ports
    assert not set(ports) & set(os.environ)

    def listening(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    serve.start(http_options={"host": "127.0.0.1", "port": ephemeral_port()})
    try:
        wait_until(lambda: listening(int(ports["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"])), timeout=60,
                   what="Serve's fallback proxy on the port chosen for it")
    finally:
        serve.shutdown()


def test_worker_env_never_carries_secret_values(settings, monkeypatch, tmp_path):
    key_file = tmp_path / "pii"
    key_file.write_text("very-secret")
    carried = worker_env(settings.model_copy(update={"pii_key_file": key_file}), "postgresql://x@h/db")
    assert carried["SIRA_PII_KEY_FILE"] == str(key_file)
    assert "very-secret" not in " ".join(carried.values())
    assert not any(k in carried for k in ("SIRA_PII_KEY", "SIRA_AUTH_SECRET"))


def test_worker_env_carries_the_artifact_stores_endpoint(settings):
    """An S3-compatible store (MinIO, ...): its endpoint reaches workers and jobs with the bucket's URI (it did
    not, and they went to AWS's default endpoint; .env, in .gitignore, is not uploaded with a working dir)."""
    from sira.core.ray_runtime import job_env_vars

    minio = settings.model_copy(update={"artifact_uri": "s3://models/sira", "s3_endpoint_url": "http://minio:9000"})
    for env in (worker_env(minio, "postgresql://x@h/db"), job_env_vars(minio, "postgresql://x@h/db", None)):
        assert (env["SIRA_ARTIFACT_URI"], env["SIRA_S3_ENDPOINT_URL"]) == ("s3://models/sira", "http://minio:9000")


def test_a_submitted_stream_job_connects_as_its_submitter_configured(settings, tmp_path):
    """The Kafka security settings and the stream's retention and metrics port did not reach a submitted job:
    `sira jobs submit stream -- --kafka ...` with SASL_SSL configured talked PLAINTEXT to the brokers."""
    from sira.core.ray_runtime import job_env_vars

    password = tmp_path / "sasl"
    password.write_text("kafka-s3cret")
    configured = settings.model_copy(update={
        "kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": "sira",
        "kafka_sasl_password_file": password, "stream_retention_s": 3600.0, "stream_metrics_port": 9191})
    env = job_env_vars(configured, "postgresql://x@h/db", None)
    assert (env["SIRA_KAFKA_SECURITY_PROTOCOL"], env["SIRA_KAFKA_SASL_MECHANISM"], env["SIRA_KAFKA_SASL_USERNAME"]) \
        == ("SASL_SSL", "SCRAM-SHA-512", "sira")
    assert env["SIRA_KAFKA_SASL_PASSWORD_FILE"] == str(password) and "kafka-s3cret" not in " ".join(env.values())
    assert (env["SIRA_STREAM_RETENTION_S"], env["SIRA_STREAM_METRICS_PORT"]) == ("3600.0", "9191")
    from sira.core.config import Settings

    assert Settings(**{k[5:].lower(): v for k, v in env.items() if k.startswith("SIRA_KAFKA")}).kafka_sasl_mechanism \
        == "SCRAM-SHA-512"  # what the job's settings read back
    assert "SIRA_KAFKA_SECURITY_PROTOCOL" not in job_env_vars(settings, "postgresql://x@h/db", None)  # defaults: unsaid


def test_a_driver_joining_a_cluster_lists_no_password(ray_session, tmp_path):
    """`sira train --trials`, `sira ingest`, `sira score`, ... with SIRA_RAY_ADDRESS join a cluster as a driver
    whose runtime env anyone who can list jobs reads (`ray list jobs --detail`, the dashboard): it carried
    the database's and Redis's passwords (a submitted job's env never did)."""
    import json
    import os
    import subprocess
    import sys
    import textwrap

    secret = tmp_path / "redis-password"
    secret.write_text("R3disPw\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_") and k != "RAY_ADDRESS"}
    env.update({"SIRA_RAY_ADDRESS": ray.get_runtime_context().gcs_address, "SIRA_WORKSPACE": str(tmp_path),
                "SIRA_DATABASE_URL": "postgresql://sira:S3cretPw@db.internal:5432/sira?sslpassword=K3yPw",
                "SIRA_REDIS_URL": "redis://redis.internal:6379/0", "SIRA_REDIS_PASSWORD_FILE": str(secret)})
    driver = textwrap.dedent("""
        import json, ray
        from ray._private.worker import global_worker
        from sira.core.config import get_settings
        from sira.core.ray_runtime import init_ray
        settings = get_settings()
        init_ray(settings, settings.database_url.get_secret_value())
        mine = ray.get_runtime_context().get_job_id()
        # the job table in the GCS: what `ray list jobs --detail` and the dashboard show of a driver
        jobs = global_worker.gcs_client.get_all_job_info()
        listed = [j.config.runtime_env_info.serialized_runtime_env for i, j in jobs.items() if i.hex() == mine]
        print(json.dumps({"listed": listed}))
    """)
    done = subprocess.run([sys.executable, "-c", driver], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = json.loads(done.stdout.strip().splitlines()[-1])["listed"]
    assert listed and "sira@db.internal" in listed[0], listed  # the env is listed: without the passwords
    assert not any(s in listed[0] for s in ("S3cretPw", "K3yPw", "R3disPw")), listed
