"""Keys minted for one Ray job: one role the job needs and the submitter holds, short-lived, revoked at its end."""

from datetime import timedelta

import pytest

from sira.core import db
from sira.core.auth import Identity, authenticate, create_job_key, create_key, job_role, revoke_job_key
from sira.core.config import Settings
from sira.core.errors import InvalidInput, PermissionDenied, Unauthenticated
from sira.core.ray_runtime import JOBS, job_env_vars, without_password

PEPPER = "test-pepper"


def test_a_job_key_gets_one_role_the_job_needs_and_the_submitter_holds():
    both = Identity("dana", frozenset({"data_scientist", "operator"}))
    assert job_role(both, JOBS["train"].actions) == "data_scientist"
    assert job_role(both, JOBS["drift"].actions) == "operator"
    assert job_role(Identity("root", frozenset({"admin"})), JOBS["retrain"].actions) == "data_scientist"
    with pytest.raises(PermissionDenied):
        job_role(Identity("vic", frozenset({"viewer"})), JOBS["train"].actions)


def test_the_runtime_env_carries_no_password_and_no_long_lived_key(tmp_path):
    settings = Settings(workspace=tmp_path, database_url="postgresql://sira:s3cret@db.internal:5432/sira")
    env = job_env_vars(settings, "postgresql://sira:s3cret@db.internal:5432/sira?sslmode=require", "sira_job_key")
    assert env["SIRA_DATABASE_URL"] == "postgresql://sira@db.internal:5432/sira?sslmode=require"
    assert "s3cret" not in repr(env) and env["SIRA_API_KEY"] == "sira_job_key"
    assert without_password("postgresql://postgres@/x?host=/tmp/sock") == "postgresql://postgres@/x?host=/tmp/sock"
    # a password as a query parameter, and Redis's (that Redis holds the raw event stream): none travels
    secret = tmp_path / "redis-password"
    secret.write_text("r3dis/Pass\n")
    settings = Settings(workspace=tmp_path, redis_url="rediss://redis.internal:6380/0", redis_password_file=secret)
    assert settings.redis_url == "rediss://:r3dis%2FPass@redis.internal:6380/0"  # what SIRA's clients connect with
    env = job_env_vars(settings, "postgresql://sira@db.internal/sira?password=s3cretPG&sslmode=require", None)
    assert env["SIRA_DATABASE_URL"] == "postgresql://sira@db.internal/sira?sslmode=require"
    assert env["SIRA_REDIS_URL"] == "rediss://redis.internal:6380/0"
    assert env["SIRA_REDIS_PASSWORD_FILE"] == str(secret)  # the nodes read the password there
    assert "s3cretPG" not in repr(env) and "r3dis" not in repr(env)
    inline = job_env_vars(Settings(workspace=tmp_path, redis_url="redis://:r3disPass@redis.internal:6379/0"),
                          "postgresql://sira@db.internal/sira", None)
    assert inline["SIRA_REDIS_URL"] == "redis://redis.internal:6379/0" and "r3disPass" not in repr(inline)


async def test_minted_expiring_and_revoked_by_the_job_or_its_submitter(clean_db):
    async with db.transaction(clean_db) as conn:
        root_key, _ = await create_key(conn, name="root", roles=["admin"], pepper=PEPPER, creator=None)
        root = await authenticate(conn, root_key, pepper=PEPPER)
        dana_key, _ = await create_key(conn, name="dana", roles=["data_scientist"], pepper=PEPPER, creator=root)
        olga_key, _ = await create_key(conn, name="olga", roles=["operator"], pepper=PEPPER, creator=root)
    async with db.transaction(clean_db) as conn:
        dana = await authenticate(conn, dana_key, pepper=PEPPER)
        olga = await authenticate(conn, olga_key, pepper=PEPPER)
        # a data scientist may mint a key without keys.manage, but only for what she may do herself
        key, info = await create_job_key(conn, dana, actions=JOBS["train"].actions, job_name="sira-train-1",
                                         ttl=timedelta(hours=2), pepper=PEPPER)
        with pytest.raises(PermissionDenied):
            await create_job_key(conn, dana, actions=JOBS["drift"].actions, job_name="sira-drift-1",
                                 ttl=timedelta(hours=2), pepper=PEPPER)
        with pytest.raises(InvalidInput, match="between 1 second and 7 days"):
            await create_job_key(conn, dana, actions=JOBS["train"].actions, job_name="sira-train-2",
                                 ttl=timedelta(days=30), pepper=PEPPER)
    assert info["name"] == "job-sira-train-1" and info["roles"] == ["data_scientist"]
    row = await clean_db.fetchrow("SELECT expires_at - created_at AS life, created_by FROM sira_api_keys "
                                  "WHERE name = 'job-sira-train-1'")
    assert timedelta(hours=1, minutes=59) < row["life"] <= timedelta(hours=2) and row["created_by"] == "dana"
    async with db.transaction(clean_db) as conn:
        job = await authenticate(conn, key, pepper=PEPPER)
        assert job.roles == frozenset({"data_scientist"})
        with pytest.raises(PermissionDenied, match="only the job or its submitter"):
            await revoke_job_key(conn, olga, "job-sira-train-1")
        assert await revoke_job_key(conn, job, "job-sira-train-1") is True  # the job, at its end
        assert await revoke_job_key(conn, dana, "job-sira-train-1") is False  # the submitter, after it
        with pytest.raises(InvalidInput, match="not a job key"):
            await revoke_job_key(conn, root, "dana")
    async with clean_db.acquire() as conn:
        with pytest.raises(Unauthenticated, match="revoked"):
            await authenticate(conn, key, pepper=PEPPER)
    actions = [r["action"] for r in await clean_db.fetch(
        "SELECT action FROM sira_audit_log WHERE target_id = 'job-sira-train-1' ORDER BY id")]
    assert actions == ["key.create", "key.revoke"]
