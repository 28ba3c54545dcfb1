"""POST /v1/events over real HTTP machinery (ASGI, lifespan, real Postgres)."""

import httpx
import pytest

from sira.http.app import create_app


@pytest.fixture
async def client(clean_db, settings):
    from sira.core import db
    from sira.core.auth import create_key

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
    # in the batch's order, each with its index (an event without an id is known by its index alone)
    assert [(x["index"], x["event_id"], x["status"], x.get("code")) for x in data["results"]] == [
        (0, "h1", "accepted", None), (1, "h2", "rejected", "invalid_number"), (2, "h1", "duplicate", None),
        (3, None, "rejected", "missing_field")]
    again = (await client.post("/v1/events", json={"events": [event(1)]})).json()
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    assert await clean_db.fetchval("SELECT count(*) FROM sira_events") == 1
    assert await clean_db.fetchval("SELECT count(*) FROM sira_entity_states") == 1  # the customer, online


async def test_a_retried_invalid_event_is_rejected_again_and_dead_lettered_once(client, clean_db):
    """Each retry of the same invalid event added a dead letter (4 posts, 4 rows), where a file, the stream and
    Kafka store one once. Now the API's dead letters are keyed as theirs are (source, position, payload): a retry
    is answered as the first post was, and its dead letter is a repeat; another invalid event is one of its own."""
    for _ in range(4):
        data = (await client.post("/v1/events", json={"events": [event(2, amount=-1)]})).json()
        assert (data["accepted"], data["duplicates"], data["rejected"], data["results"][0]["code"]) == \
            (0, 0, 1, "invalid_field"), data
    assert await clean_db.fetchval("SELECT count(*) FROM sira_rejected_events") == 1
    await client.post("/v1/events", json={"events": [event(2, amount=-2)]})
    assert await clean_db.fetch("SELECT stream_position, payload->>'amount' AS amount FROM sira_rejected_events"
                                " ORDER BY id") == [("POST /v1/events", "-1"), ("POST /v1/events", "-2")]


async def test_an_event_id_sent_again_for_another_payment_is_set_aside_not_a_duplicate(client, clean_db):
    """A copy of an event_id whose time, amount, currency, type or entity keys contradict the first copy's (in
    the batch, or stored) is another payment under a reused id: it was counted as a plain duplicate and dropped.
    Now it is rejected as event_id_reused and dead-lettered; a copy that only adds a field is a duplicate."""
    await client.post("/v1/events", json={"events": [event(1)]})
    data = (await client.post("/v1/events", json={"events": [
        event(1, amount=999), event(1, terminal_id="t9"), event(5), event(5, customer_id="c2")]})).json()
    assert [(x["status"], x.get("code")) for x in data["results"]] == [
        ("rejected", "event_id_reused"), ("duplicate", None), ("accepted", None), ("rejected", "event_id_reused")]
    assert (data["accepted"], data["duplicates"], data["rejected"]) == (1, 1, 2)
    assert "amount differ" in data["results"][0]["reason"] and "customer_id differ" in data["results"][3]["reason"]
    stored = await clean_db.fetch("SELECT event_id, reason_code, payload FROM sira_rejected_events ORDER BY id")
    assert [(r["event_id"], r["reason_code"], r["payload"]["amount"]) for r in stored] == [
        ("h1", "event_id_reused", 999.0), ("h5", "event_id_reused", 15.0)]
    assert await clean_db.fetchval("SELECT amount FROM sira_events WHERE event_id = 'h1'") == 11  # the first kept
    await client.post("/v1/events", json={"events": [event(1, amount=999)]})  # retried: the same dead letter
    assert await clean_db.fetchval("SELECT count(*) FROM sira_rejected_events") == 2


async def test_an_unstorable_event_is_rejected_alone(client, clean_db):
    """A NUL character (PostgreSQL refuses it) in one event: that event is a dead letter, the others land."""
    body = {"events": [event(1), event(2, customer_id="c\x00"), event(3, note="x\x00")]}
    r = await client.post("/v1/events", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert (data["accepted"], data["rejected"]) == (1, 2)
    assert await clean_db.fetchval("SELECT count(*) FROM sira_rejected_events") == 2


async def test_an_unpaired_surrogate_or_a_time_beyond_the_calendar_is_a_dead_letter_not_a_500(client, clean_db):
    """JSON's "\\ud800" decodes to a character with no UTF-8 form, and 0001-01-01 an hour ahead of UTC is no
    UTC time: both made the whole batch a 500 (its good events lost). Now each is a rejection of its own."""
    body = ('{"events": [' + ", ".join([
        '{"event_id": "h1", "occurred_at": "2026-09-01T10:00:00Z", "customer_id": "c1", "amount": 1}',
        '{"event_id": "h\\ud800", "occurred_at": "2026-09-01T10:00:00Z", "customer_id": "c1", "amount": 1}',
        '{"event_id": "h3", "occurred_at": "2026-09-01T10:00:00Z", "customer_id": "c1", "amount": 1, "n": "\\udc00"}',
        '{"event_id": "h4", "occurred_at": "0001-01-01T00:00:00+01:00", "customer_id": "c1", "amount": 1}',
    ]) + "]}")
    r = await client.post("/v1/events", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert (data["accepted"], data["rejected"]) == (1, 3), data
    assert sorted(x.get("code") for x in data["results"] if x["status"] == "rejected") == \
        ["invalid_field", "invalid_value", "invalid_value"]
    assert await clean_db.fetchval("SELECT count(*) FROM sira_rejected_events") == 3
    r = await client.get("/v1/models/fraud/thresholds", params={"from": "0001-01-01T00:00:00+01:00"})
    assert r.status_code in (404, 422), r.text  # a 422 for the time (no model here: at worst a 404), never a 500



async def test_a_null_event_type_is_a_payment_and_a_nan_amount_a_missing_one(client, clean_db):
    """``"event_type": null`` was refused (invalid_field: "Input should be 'payment' or 'usage'") where every other
    optional field takes null; JSON's NaN (the parser takes it) is a missing amount, as in a file; text is no
    number here."""
    at = '"occurred_at": "2026-09-01T10:00:00Z", "customer_id": "c1"'
    body = ('{"events": [' + ", ".join([
        '{"event_id": "h1", "event_type": null, "amount": 1, ' + at + "}",
        '{"event_id": "h2", "amount": NaN, ' + at + "}",
        '{"event_id": "h3", "event_type": "usage", "amount": NaN, ' + at + "}",
        '{"event_id": "h4", "amount": "nan", ' + at + "}",
        '{"event_id": "h5", "amount": Infinity, ' + at + "}",
    ]) + "]}")
    r = await client.post("/v1/events", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert [(x["event_id"], x["status"], x.get("code")) for x in r.json()["results"]] == [
        ("h1", "accepted", None), ("h2", "rejected", "missing_field"), ("h3", "accepted", None),
        ("h4", "rejected", "invalid_number"), ("h5", "rejected", "invalid_field")]
    assert [tuple(r) for r in await clean_db.fetch("SELECT event_id, event_type, amount FROM sira_events ORDER BY 1")] \
        == [("h1", "payment", 1), ("h3", "usage", None)]


async def test_a_value_postgres_refuses_is_a_422_not_a_500(client, clean_db):
    from sira.core import db
    from sira.core.auth import Identity
    from sira.registry import models as registry

    async with db.transaction(clean_db) as conn:
        await registry.create_model(conn, Identity("t-admin", frozenset({"admin"})), "nul_model",
                                    model_type="fraud_detection")
    r = await client.patch("/v1/models/nul_model", json={"description": "x\x00"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_value" and "\\u0000" not in r.text
    r = await client.get("/v1/models/nul_model/versions/3000000000")  # beyond PostgreSQL's integer
    # refused by the route's declared bound, before any query: the field named, the bound stated
    assert r.status_code == 422, r.text
    assert r.json()["error"] == {"code": "invalid_request", "details": {"field": "path.version"},
                                 "message": "path.version: Input should be less than or equal to 2147483647"}


async def test_bad_requests_get_stable_error_codes(client):
    r = await client.post("/v1/events", json={"events": [event(i) for i in range(6)]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "batch_too_large"
    r = await client.post("/v1/events", json={"events": []})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert "events" in r.json()["error"]["message"]
    r = await client.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_body"
    assert r.json()["error"]["details"]["field"] == ""  # never a character offset as a field


async def test_events_need_a_key(client):
    r = await client.post("/v1/events", json={"events": [event(1)]}, headers={"Authorization": ""})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).json()["status"] == "ok"
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "schema": "ok"}
