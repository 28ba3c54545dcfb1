"""API keys against the real database: bootstrap once, hashed at rest, revocation, expiry, audit."""

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from sira.core import db
from sira.core.auth import authenticate, create_key, list_keys, revoke_key
from sira.core.errors import Conflict, InvalidInput, PermissionDenied, Unauthenticated

PEPPER = "test-pepper"


async def test_bootstrap_then_admin_only(clean_db):
    async with db.transaction(clean_db) as conn:
        with pytest.raises(InvalidInput, match="first key must hold the admin role"):
            await create_key(conn, name="first", roles=["viewer"], pepper=PEPPER, creator=None)
    async with db.transaction(clean_db) as conn:
        root_key, info = await create_key(conn, name="root", roles=["admin"], pepper=PEPPER, creator=None)
    assert info["roles"] == ["admin"] and root_key.startswith("sira_")
    async with db.transaction(clean_db) as conn:
        with pytest.raises(Unauthenticated, match="keys exist already"):
            await create_key(conn, name="sneaky", roles=["admin"], pepper=PEPPER, creator=None)
    async with clean_db.acquire() as conn:
        root = await authenticate(conn, root_key, pepper=PEPPER)
    async with db.transaction(clean_db) as conn:
        viewer_key, _ = await create_key(conn, name="alice", roles=["viewer"], pepper=PEPPER, creator=root)
    async with clean_db.acquire() as conn:
        alice = await authenticate(conn, viewer_key, pepper=PEPPER)
        with pytest.raises(PermissionDenied):
            await list_keys(conn, alice)
        assert [k["name"] for k in await list_keys(conn, root)] == ["root", "alice"]
    async with db.transaction(clean_db) as conn:
        with pytest.raises(Conflict, match="exists already"):
            await create_key(conn, name="alice", roles=["viewer"], pepper=PEPPER, creator=root)
    audit = await clean_db.fetch("SELECT actor, actor_kind, action, target_id FROM sira_audit_log ORDER BY id")
    assert [(a["actor"], a["actor_kind"], a["action"], a["target_id"]) for a in audit] == [
        ("bootstrap", "bootstrap", "key.create", "root"), ("root", "api_key", "key.create", "alice")]
    # The keys themselves are nowhere in the database.
    dump = await clean_db.fetchval("SELECT string_agg(t::text, ' ') FROM sira_api_keys t")
    assert root_key not in dump and viewer_key not in dump


async def test_concurrent_bootstraps_create_one_admin(clean_db):
    async def attempt(i):
        try:
            async with db.transaction(clean_db) as conn:
                await create_key(conn, name=f"admin{i}", roles=["admin"], pepper=PEPPER, creator=None)
            return True
        except Unauthenticated:
            return False

    assert sum(await asyncio.gather(*(attempt(i) for i in range(6)))) == 1


async def test_invalid_revoked_and_expired_keys_are_refused(clean_db):
    async with db.transaction(clean_db) as conn:
        root_key, _ = await create_key(conn, name="root", roles=["admin"], pepper=PEPPER, creator=None)
        root = await authenticate(conn, root_key, pepper=PEPPER)
        old_key, _ = await create_key(conn, name="old", roles=["service"], pepper=PEPPER, creator=root,
                                      expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
        svc_key, _ = await create_key(conn, name="svc", roles=["service"], pepper=PEPPER, creator=root)
    async with clean_db.acquire() as conn:
        for bad, message in ((None, "missing credentials"), ("nonsense", "invalid API key"),
                             (root_key[:-1] + ("A" if root_key[-1] != "A" else "B"), "invalid API key"),
                             (old_key, "expired")):
            with pytest.raises(Unauthenticated, match=message):
                await authenticate(conn, bad, pepper=PEPPER)
        with pytest.raises(Unauthenticated, match="invalid API key"):
            await authenticate(conn, root_key, pepper="another-pepper")
        assert (await authenticate(conn, svc_key, pepper=PEPPER)).roles == {"service"}
    async with db.transaction(clean_db) as conn:
        await revoke_key(conn, root, "svc")
    async with clean_db.acquire() as conn:
        with pytest.raises(Unauthenticated, match="revoked"):
            await authenticate(conn, svc_key, pepper=PEPPER)


async def test_the_last_active_admin_key_cannot_be_revoked(clean_db):
    """The only admin could revoke its own key, and nothing could recover without SQL: a revoked key still
    counts as "keys exist", which closes the bootstrap. Revoking the last admin key that still works (not
    revoked, not expired) is refused with 409 last_admin; with another working admin key it goes through."""
    async with db.transaction(clean_db) as conn:
        root_key, _ = await create_key(conn, name="root", roles=["admin"], pepper=PEPPER, creator=None)
        root = await authenticate(conn, root_key, pepper=PEPPER)
        await create_key(conn, name="old-admin", roles=["admin", "viewer"], pepper=PEPPER, creator=root,
                         expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
        await create_key(conn, name="svc", roles=["service"], pepper=PEPPER, creator=root)
    for name in ("root",):
        async with db.transaction(clean_db) as conn:
            with pytest.raises(Conflict, match="last admin key") as refused:
                await revoke_key(conn, root, name)
        assert refused.value.code == "last_admin" and refused.value.http_status == 409
    async with db.transaction(clean_db) as conn:
        await revoke_key(conn, root, "old-admin")  # expired already: not a working admin key
        await revoke_key(conn, root, "svc")
        await create_key(conn, name="second", roles=["admin"], pepper=PEPPER, creator=root)
    async with db.transaction(clean_db) as conn:
        await revoke_key(conn, root, "root")  # another admin key works: allowed
    async with clean_db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sira_api_keys WHERE revoked_at IS NULL") == 1
