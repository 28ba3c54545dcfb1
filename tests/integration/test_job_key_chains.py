"""A job's key never mints another one, never outlives its submitter's key, and stops working with it; a chain
minted before that was refused resolves to its person however long it is (sql/034)."""

from datetime import datetime, timedelta, timezone

import pytest

from sira.core import db
from sira.core.auth import Identity, authenticate, create_job_key, create_key, principals
from sira.core.errors import PermissionDenied, Unauthenticated
from sira.core.ray_runtime import JOBS

PEPPER = "test-pepper"
TRAIN = JOBS["train"].actions


async def _people(pool, **expires):
    async with db.transaction(pool) as conn:
        root_key, _ = await create_key(conn, name="root", roles=["admin"], pepper=PEPPER, creator=None)
        root = await authenticate(conn, root_key, pepper=PEPPER)
        keys = {"root": root_key}
        for name in ("dana", "olga"):
            keys[name], _ = await create_key(conn, name=name, roles=["data_scientist", "operator"], pepper=PEPPER,
                                             creator=root, expires_at=expires.get(name))
    return keys


async def test_a_job_key_cannot_mint_another(clean_db):
    keys = await _people(clean_db)
    async with db.transaction(clean_db) as conn:
        dana = await authenticate(conn, keys["dana"], pepper=PEPPER)
        job_key, _ = await create_job_key(conn, dana, actions=TRAIN, job_name="t1", ttl=timedelta(hours=1),
                                          pepper=PEPPER)
    with pytest.raises(PermissionDenied, match="cannot mint another job's key") as refused:
        async with db.transaction(clean_db) as conn:  # its refusal audited after the rollback
            job = await authenticate(conn, job_key, pepper=PEPPER)
            await create_job_key(conn, job, actions=TRAIN, job_name="t2", ttl=timedelta(days=7), pepper=PEPPER)
    assert refused.value.code == "job_key_cannot_mint" and refused.value.http_status == 403
    assert await clean_db.fetchval("SELECT count(*) FROM sira_api_keys WHERE name = 'job-t2'") == 0
    denied = await clean_db.fetchrow("SELECT actor, outcome, details FROM sira_audit_log "
                                     "WHERE action = 'key.create' AND outcome <> 'success'")
    assert denied is not None and denied["actor"] == "job-t1"


async def test_a_job_key_lives_no_longer_than_its_submitters_key(clean_db):
    soon = datetime.now(timezone.utc) + timedelta(minutes=3)
    keys = await _people(clean_db, olga=soon)
    async with db.transaction(clean_db) as conn:
        olga = await authenticate(conn, keys["olga"], pepper=PEPPER)
        job_key, info = await create_job_key(conn, olga, actions=TRAIN, job_name="t1", ttl=timedelta(days=7),
                                             pepper=PEPPER)
        jwt_person = Identity("jwt:jane", frozenset({"data_scientist"}), "jwt", expires_at=soon)
        _, by_jwt = await create_job_key(conn, jwt_person, actions=TRAIN, job_name="t2", ttl=timedelta(days=7),
                                         pepper=PEPPER)
    assert datetime.fromisoformat(info["expires_at"]) == soon
    assert datetime.fromisoformat(by_jwt["expires_at"]) == soon
    async with clean_db.acquire() as conn:
        assert (await authenticate(conn, job_key, pepper=PEPPER)).expires_at == soon


@pytest.mark.parametrize("ended", ["revoked", "expired"])
async def test_a_job_key_stops_working_with_its_submitters_key(clean_db, ended):
    keys = await _people(clean_db)
    async with db.transaction(clean_db) as conn:
        olga = await authenticate(conn, keys["olga"], pepper=PEPPER)
        job_key, _ = await create_job_key(conn, olga, actions=TRAIN, job_name="t1", ttl=timedelta(hours=1),
                                          pepper=PEPPER)
        assert (await authenticate(conn, job_key, pepper=PEPPER)).name == "job-t1"
    if ended == "revoked":
        await clean_db.execute("UPDATE sira_api_keys SET revoked_at = now(), revoked_by = 'root' WHERE name = 'olga'")
    else:  # as an expiry reached is (the key's row as time leaves it)
        await clean_db.execute("UPDATE sira_api_keys SET expires_at = now() - interval '1 second' WHERE name = 'olga'")
    async with clean_db.acquire() as conn:
        with pytest.raises(Unauthenticated, match=f"acts for olga, whose key {'was revoked' if ended == 'revoked' else 'has expired'}"):
            await authenticate(conn, job_key, pepper=PEPPER)


async def test_a_chain_minted_before_resolves_to_its_person_and_is_refused(clean_db):
    keys = await _people(clean_db)
    async with db.transaction(clean_db) as conn:
        root = await authenticate(conn, keys["root"], pepper=PEPPER)
        await create_job_key(conn, root, actions=TRAIN, job_name="c1", ttl=timedelta(hours=1),
                             pepper=PEPPER)
        # what a chain of job keys was before minting with one was refused: job-c2..c7 each minted by the one before
        for n in range(2, 8):
            await conn.execute(
                """INSERT INTO sira_api_keys (name, key_prefix, key_hash, roles, created_by, expires_at)
                   VALUES ($1, $2, 'x', '{data_scientist}', $3, now() + interval '7 days')""",
                f"job-c{n}", f"{n:012x}", f"job-c{n - 1}")
        jwt_person = Identity("jwt:jane", frozenset({"data_scientist"}), "jwt")
        await create_job_key(conn, jwt_person, actions=TRAIN, job_name="j1", ttl=timedelta(hours=1), pepper=PEPPER)
        assert await principals(conn, "job-c7", "job-c2", "job-j1", "jwt:jane", "dana") == \
            ["root", "root", "jane", "jane", "dana"]
    # a key of such a chain no longer works (its hash is a real one here)
    async with db.transaction(clean_db) as conn:
        dana = await authenticate(conn, keys["dana"], pepper=PEPPER)
        chained, _ = await create_job_key(conn, dana, actions=TRAIN, job_name="c8", ttl=timedelta(hours=1),
                                          pepper=PEPPER)
        await conn.execute("UPDATE sira_api_keys SET created_by = 'job-c7' WHERE name = 'job-c8'")
    async with clean_db.acquire() as conn:
        with pytest.raises(Unauthenticated, match="minted by another job's key"):
            await authenticate(conn, chained, pepper=PEPPER)


async def test_the_cli_refuses_a_runtime_env_asked_with_a_job_key(clean_db, settings, monkeypatch, capsys):
    """The review's reproduction: `sira jobs runtime-env train --key-ttl 1` run with the previous job's key minted
    another 7-day key, without end. Now one line, exit 2."""
    import asyncio
    from pathlib import Path

    import yaml

    from tests.conftest import cli_in_process

    pepper = settings.secret("auth_secret")
    async with db.transaction(clean_db) as conn:
        root_key, _ = await create_key(conn, name="root", roles=["admin"], pepper=pepper, creator=None)
        root = await authenticate(conn, root_key, pepper=pepper)
        dana_key, _ = await create_key(conn, name="dana", roles=["data_scientist"], pepper=pepper, creator=root)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    env = {"SIRA_DATABASE_URL": settings.database_url.get_secret_value(), "SIRA_WORKSPACE": str(settings.workspace)}
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, {**env, "SIRA_API_KEY": dana_key},
                                   "jobs", "runtime-env", "train", "--key-ttl", "1")
    assert done.returncode == 0, done.stderr
    job_key = yaml.safe_load(done.stdout)["env_vars"]["SIRA_API_KEY"]
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, {**env, "SIRA_API_KEY": job_key},
                                   "jobs", "runtime-env", "train", "--key-ttl", "168")
    assert done.returncode == 2 and done.stderr.startswith("error: job_key_cannot_mint: "), done.stderr
    assert await clean_db.fetchval("SELECT count(*) FROM sira_api_keys WHERE name LIKE 'job-%'") == 1
