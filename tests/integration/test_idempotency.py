"""Idempotency answered from the replica and Redis first: PostgreSQL is asked only when Redis may not hold an
answer given within the window (a new Redis, one that lost its keys, a replica that could not write its
answers, a Redis that evicts), and a retry is never scored twice either way."""
from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import httpx
import pytest

from sira.http.app import create_app
from sira.serving.config import ServingConfig
from sira.serving.service import ScoringService
from tests.conftest import unique_id
from tests.integration.test_scoring_service import event, score


@contextlib.asynccontextmanager
async def replica(fraud_model, tmp_path, redis_url, **config):
    settings = fraud_model.settings.model_copy(update={"redis_url": redis_url})
    service = ScoringService(settings, ServingConfig(models=["fraud"], spool_dir=tmp_path, **config))
    app = create_app(settings, scoring=service)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            yield client, service


def count_lookups(service: ScoringService) -> list[int]:
    """Calls of the PostgreSQL lookup of earlier answers (the real one, counted): the scoring path's, which
    claims the ids it does not find."""
    calls = [0]
    real = service.idempotency._claim_stored

    async def counted(keys, digests):
        calls[0] += 1
        return await real(keys, digests)

    service.idempotency._claim_stored = counted
    return calls


async def until(condition, seconds: float = 15.0) -> None:
    """Wait for a write made after the answer (a loaded machine has taken over 5 s: the whole fast suite ran
    alongside once)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def answered_in_redis(service, redis_client, request_id: str) -> None:
    key = service.idempotency._key("fraud", request_id)
    await until(lambda: redis_client.exists(key))


async def test_a_redis_holding_the_whole_window_answers_without_postgres(fraud_model, tmp_path, redis_url,
                                                                         redis_client):
    async with replica(fraud_model, tmp_path, redis_url) as (client, service):
        answers = service.idempotency
        ttl = service.config.idempotency_ttl_s
        redis_client.set(answers.marker_key, repr(time.time() - ttl - 1))  # a Redis up for longer than the window
        lookups = count_lookups(service)
        warm = {"model": "fraud", "request_id": unique_id("w"), "event": event(fraud_model, 21), "record": False}
        assert (await score(client, fraud_model, warm)).status_code == 200
        await until(lambda: answers.evicting is False)  # the machine's Redis evicts nothing
        before = lookups[0]
        body = {"model": "fraud", "request_id": unique_id("new"), "event": event(fraud_model, 22), "record": False}
        first = (await score(client, fraud_model, body)).json()
        assert not first["replayed"] and not first["degraded"]
        assert lookups[0] == before  # a miss in a complete Redis is a new request
        await answered_in_redis(service, redis_client, body["request_id"])
        service.answers.clear()  # another replica
        again = (await score(client, fraud_model, body)).json()
        assert again["replayed"] and again["prediction_id"] == first["prediction_id"]
        assert lookups[0] == before
        await service.flush()
        assert await service.pool.fetchval("SELECT count(*) FROM sira_predictions WHERE request_id = $1",
                                           body["request_id"]) == 1


async def test_a_fresh_marker_is_trusted_once_postgres_holds_no_answer_before_it(fraud_model, tmp_path, redis_url,
                                                                                  redis_client, monkeypatch):
    """A new Redis (no marker): PostgreSQL is asked until it says no answer of the model was given in the window
    before the marker; a model with answers there keeps asking until the newest leaves the window."""
    monkeypatch.setattr("sira.serving.idempotency.Answers.settle_s", lambda self: 0.0)
    async with replica(fraud_model, tmp_path, redis_url) as (client, service):
        answers = service.idempotency
        redis_client.delete(answers.marker_key)
        lookups = count_lookups(service)
        body = {"model": "fraud", "request_id": unique_id("f"), "event": event(fraud_model, 23), "record": False}
        await score(client, fraud_model, body)
        assert lookups[0] == 1  # no marker: PostgreSQL, and the marker is written
        await until(lambda: redis_client.exists(answers.marker_key))
        since = float(redis_client.get(answers.marker_key))
        await score(client, fraud_model, {**body, "request_id": unique_id("f")})
        await until(lambda: ("fraud", since) in answers._trusted_from)
        newest = await service.pool.fetchval(
            "SELECT max(scored_at) FROM sira_predictions WHERE model_name = 'fraud' AND role = 'production' "
            "AND scored_at < to_timestamp($1)", since)
        expected = since if newest is None else newest.timestamp() + service.config.idempotency_ttl_s
        assert answers._trusted_from[("fraud", since)] == pytest.approx(expected)
        before = lookups[0]
        await score(client, fraud_model, {**body, "request_id": unique_id("f")})
        assert (lookups[0] == before) == (expected <= time.time())


async def test_answers_redis_did_not_take_move_the_marker_and_are_found_in_postgres(fraud_model, tmp_path, redis_url,
                                                                                  redis_client):
    """Redis unreachable when the answer was given: once back, the replica moves the marker first, and a retry at
    another replica finds the answer in PostgreSQL (not scored twice)."""
    async with replica(fraud_model, tmp_path, redis_url) as (client, service):
        answers = service.idempotency
        redis_client.set(answers.marker_key, repr(time.time() - service.config.idempotency_ttl_s - 1))
        body = {"model": "fraud", "request_id": unique_id("gap"), "event": event(fraud_model, 24), "record": False}
        breaker = service.replica.redis_breaker
        for _ in range(10):
            breaker.failed(ConnectionError("test: Redis unreachable"))
        assert not breaker.available
        first = (await score(client, fraud_model, body)).json()
        assert "cache_unavailable" in first["degraded_reasons"]
        assert answers.gaps == 1
        await service.flush()
        breaker.succeeded()
        moved_from = time.time()
        other = {"model": "fraud", "request_id": unique_id("next"), "event": event(fraud_model, 25), "record": False}
        await score(client, fraud_model, other)  # its answer's pipeline moves the marker first
        await answered_in_redis(service, redis_client, other["request_id"])
        assert float(redis_client.get(answers.marker_key)) >= moved_from
        assert answers._gaps_covered == answers.gaps
        assert not redis_client.exists(answers._key("fraud", body["request_id"]))
        service.answers.clear()  # another replica
        lookups = count_lookups(service)
        again = (await score(client, fraud_model, body)).json()
        assert again["replayed"] and again["prediction_id"] == first["prediction_id"] and lookups[0] == 1
        assert await service.pool.fetchval("SELECT count(*) FROM sira_predictions WHERE request_id = $1",
                                           body["request_id"]) == 1


async def test_a_replica_that_could_not_write_its_answers_tells_the_others(fraud_model, tmp_path, redis_url,
                                                                         redis_client):
    async with replica(fraud_model, tmp_path, redis_url) as (client, service), \
            replica(fraud_model, tmp_path / "b", redis_url) as (_other_client, other):
        redis_client.set(service.idempotency.marker_key, repr(time.time() - service.config.idempotency_ttl_s - 1))
        for _ in range(10):
            service.replica.redis_breaker.failed(ConnectionError("test: Redis unreachable from this replica"))
        body = {"model": "fraud", "request_id": unique_id("told"), "event": event(fraud_model, 26),
                "record": False}
        await score(client, fraud_model, body)
        await until(lambda: other.idempotency.distrust_until > time.time())  # NOTIFY sira_answers
        assert not other.idempotency._complete(redis_client.get(other.idempotency.marker_key), {"fraud"})


async def test_a_redis_that_may_evict_keys_is_never_taken_as_complete(fraud_model, tmp_path, redis_url, redis_client):
    config = redis_client.config_get("maxmemory*")
    try:
        redis_client.config_set("maxmemory", "2gb")
        redis_client.config_set("maxmemory-policy", "allkeys-lru")
        async with replica(fraud_model, tmp_path, redis_url) as (client, service):
            answers = service.idempotency
            redis_client.set(answers.marker_key, repr(time.time() - service.config.idempotency_ttl_s - 1))
            await answers._check_eviction()
            assert answers.evicting is True
            assert not answers._complete(redis_client.get(answers.marker_key), {"fraud"})
            redis_client.config_set("maxmemory-policy", "noeviction")
            await answers._check_eviction()
            assert answers.evicting is False
    finally:
        redis_client.config_set("maxmemory", config.get("maxmemory", "0"))
        redis_client.config_set("maxmemory-policy", config.get("maxmemory-policy", "noeviction"))


async def test_a_prediction_id_cannot_be_computed_without_the_installations_secret(fraud_model, tmp_path,
                                                                                    redis_url):
    """The id a client's request id names was uuid5 of a namespace written in SIRA's source, the model, the
    request id and the day: any other service key could compute it from an order number and read that
    prediction's explanation summary. Keyed by the installation's secret, every replica still names it alike."""
    from sira.serving.idempotency import idempotency_epoch, prediction_id_for, prediction_namespace

    request_id = f"order-{uuid.uuid4().hex[:8]}"
    async with replica(fraud_model, tmp_path, redis_url) as (client, service):
        windows = {idempotency_epoch(service.config.idempotency_ttl_s)}
        r = await score(client, fraud_model, {"model": "fraud", "request_id": request_id, "record": False,
                                              "event": event(fraud_model, 41)})
        windows.add(idempotency_epoch(service.config.idempotency_ttl_s))
    assert r.status_code == 200, r.text
    given = r.json()["prediction_id"]
    in_the_source = uuid.UUID("5b0f5d2e-6c1e-4b8e-9a57-2f0c3d4e5a61")
    assert given not in {str(uuid.uuid5(in_the_source, f"fraud\x00{request_id}\x00{w}")) for w in windows}
    namespace = prediction_namespace(fraud_model.settings.secret("auth_secret"))
    assert given in {prediction_id_for(namespace, "fraud", request_id, True, w) for w in windows}
