"""POST /v1/events over real HTTP machinery (ASGI, lifespan, real Postgres)."""

import httpx
import pytest

from sira.api import create_app


@pytest.fixture
async def client(clean_db, settings):
    from sira import db
    from sira.auth import create_key

    async with db.transaction(clean_db) as conn:
        key, _ = await create_key(conn, name="wallet", roles=["admin"], pepper=settings.secret("auth_secret"),
                                  creator=None)
    app = create_app(settings.model_copy(update={"events_max_batch": 5}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sira",
                                     headers={"Authorization": f"Bearer {key}"}) as c:
            yield c


def event(i, **extra):
    return {"event_id": f"h{i}", "occurred_at": "2026-09-01T10:00:00Z", "customer_id": "c1", "amount": 10 + i, **extra}


async def test_batch_returns_per_event_results(client, clean_db):
    body = {"events": [event(1), event(2, amount="x"), event(1), {"occurred_at": "2026-09-01"}]}
    r = await client.post("/v1/events", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert (data["accepted"], data["duplicates"], data["rejected"]) == (1, 1, 2)
    by_status = sorted((x["status"], x.get("code")) for x in data["results"])
    assert by_status == [("accepted", None), ("duplicate", None), ("rejected", "invalid_field"),
                         ("rejected", "missing_field")]
    again = (await client.post("/v1/events", json={"events": [event(1)]})).json()
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    assert await clean_db.fetchval("SELECT count(*) FROM sira_events") == 1
    assert await clean_db.fetchval("SELECT count(*) FROM sira_feature_snapshots") == 1  # the customer, online


async def test_bad_requests_get_stable_error_codes(client):
    r = await client.post("/v1/events", json={"events": [event(i) for i in range(6)]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "batch_too_large"
    r = await client.post("/v1/events", json={"events": []})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert "events" in r.json()["error"]["message"]
    r = await client.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


async def test_events_need_a_key(client):
    r = await client.post("/v1/events", json={"events": [event(1)]}, headers={"Authorization": ""})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).json()["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "schema": "ok"}
