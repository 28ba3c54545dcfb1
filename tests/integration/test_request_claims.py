"""Two replicas (two scoring services in one process) sharing PostgreSQL and Redis: a client's request id is
claimed before it is scored, so one request id gets one answer across replicas: another request with it is
refused (409 idempotency_conflict), the same request replays the answer, and the audit row is that answer."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import pytest

from sira.core.errors import Conflict
from sira.serving.config import ServingConfig
from sira.serving.schemas import ScoreRequest
from sira.serving.service import ScoringService
from tests.conftest import unique_id

NOW = datetime(2026, 10, 8, 12, tzinfo=timezone.utc)
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens


def event(fraud_model, i: int, **overrides):
    e = fraud_model.entities[i % len(fraud_model.entities)]
    return {"event_id": f"claim-{uuid.uuid4().hex[:12]}", "occurred_at": (NOW + timedelta(seconds=i)).isoformat(),
            "customer_id": e["customer_id"], "card_token": e["card_token"], "terminal_id": e["terminal_id"],
            "amount": e["amount"], "country": e["country"], "channel": e["channel"], **overrides}


@asynccontextmanager
async def replicas(fraud_model, tmp_path, redis_url: str):
    settings = fraud_model.settings.model_copy(update={"redis_url": redis_url})
    services = [ScoringService(settings, ServingConfig(models=["fraud"], spool_dir=tmp_path / f"spool-{n}",
                                                       flush_interval_s=0.05, poll_interval_s=1.0))
                for n in range(2)]
    for service in services:
        await service.start()
    try:
        yield services
    finally:
        for service in services:
            await service.stop()


async def outcome(service: ScoringService, body: dict):
    try:
        return await service.score(service.prepare("fraud", ScoreRequest.model_validate(body), 0.0))
    except Conflict as exc:
        return exc


@pytest.mark.parametrize("redis", ["up", "down"])
async def test_one_request_id_sent_to_two_replicas_at_once_is_answered_once(fraud_model, tmp_path, redis,
                                                                              redis_url, redis_client):
    """Before: each replica looked for an earlier answer (none yet: the other's was being scored, or still in
    its spool), scored its own event and answered 200: two answers with one prediction id and two scores,
    one of them in the audit table."""
    async with replicas(fraud_model, tmp_path, redis_url if redis == "up" else DEAD_REDIS) as (a, b):
        for n in range(4):
            request_id = unique_id("twice")
            e = event(fraud_model, 20 + n)
            small = {"model": "fraud", "request_id": request_id, "record": False, "event": {**e, "amount": 50.0}}
            large = {**small, "event": {**e, "amount": 5000.0}}
            results = await asyncio.gather(outcome(a, small), outcome(b, large))
            answers = [r for r in results if isinstance(r, dict)]
            refused = [r for r in results if isinstance(r, Conflict)]
            assert len(answers) == 1 and len(refused) == 1, results
            assert refused[0].code in ("idempotency_conflict", "request_in_progress"), refused[0].code
            if redis == "down":
                assert "cache_unavailable" in answers[0]["degraded_reasons"]
            # the same request again, at both replicas: the one answer, replayed
            winner = small if results[0] is answers[0] else large
            again = await asyncio.gather(outcome(a, winner), outcome(b, winner))
            for r in again:
                assert isinstance(r, dict), r
                assert (r["prediction_id"], r["score"]) == (answers[0]["prediction_id"], answers[0]["score"])
            await a.flush()
            await b.flush()
            rows = await a.pool.fetch("SELECT prediction_id, score FROM sira_predictions WHERE request_id = $1"
                                      " AND role = 'production'", request_id)
            assert [(str(r["prediction_id"]), r["score"]) for r in rows] == [
                (answers[0]["prediction_id"], answers[0]["score"])]
        # one request sent to both at once: one scoring, the other replica replays it
        body = {"model": "fraud", "request_id": unique_id("same"), "record": False,
                "event": event(fraud_model, 30)}
        first, second = await asyncio.gather(outcome(a, body), outcome(b, body))
        assert isinstance(first, dict) and isinstance(second, dict), (first, second)
        assert first["prediction_id"] == second["prediction_id"] and first["score"] == second["score"]
        assert sorted([first["replayed"], second["replayed"]]) == [False, True]
