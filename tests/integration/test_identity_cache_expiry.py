"""A serving replica's identity cache never answers a key past its expiry (nor a job key past its submitter's):
an expired key kept working for up to auth_cache_ttl_s (2026-12-07 review)."""

import dataclasses
from datetime import datetime, timedelta, timezone

from sira.core import db
from sira.core.auth import Identity, create_key
from sira.http.deps import IdentityCache
from sira.serving.config import ServingConfig

ADMIN = Identity("test-admin", frozenset({"admin"}))


async def test_a_cached_key_is_refused_once_it_has_expired(client_and_keys, settings, tmp_path):
    client, _ = client_and_keys
    app = client._transport.app
    config = ServingConfig(models=["fraud"], spool_dir=tmp_path, auth_cache_ttl_s=600)
    app.state.identities = IdentityCache(lambda: config)  # a serving replica's (create_app with a scoring service)
    async with db.transaction(app.state.pool) as conn:
        key, _ = await create_key(conn, name="svc", roles=["service"], pepper=settings.secret("auth_secret"),
                                  creator=ADMIN, expires_at=datetime.now(timezone.utc) + timedelta(hours=1))
    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/v1/me", headers=headers)).status_code == 200
    cache = app.state.identities.lru
    deadline, cached = cache._data[key]
    assert cached.expires_at is not None  # the cache knows when the key stops working
    # the key's expiry passes while its cache entry is fresh (600 s): as the table and the cached identity say
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    await app.state.pool.execute("UPDATE sira_api_keys SET expires_at = $1 WHERE name = 'svc'", past)
    cache._data[key] = (deadline, dataclasses.replace(cached, expires_at=past))
    answer = await client.get("/v1/me", headers=headers)
    assert answer.status_code == 401 and "expired" in answer.json()["error"]["message"]
    assert cache.get(key, allow_expired=True) is None
