"""After an erasure nothing answers for the person from before: a live replica's in-memory answer cache, the
claims of their request ids (``sira_request_claims``), the model files trained on their events (listed), the
reason's personal data. A private database: the session's shared one is left alone."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from sira.core import db
from sira.core.config import reset_settings
from tests.conftest import private_installation, scoring_client

NOW = datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture(scope="module")
def installation(create_database, fraud_model, redis_url):
    return private_installation(create_database, fraud_model, "sira_erasure_answers", redis_url)


def payment(customer: str, k: int) -> dict:
    return {"event_id": f"ev-{customer}-{k}", "occurred_at": (NOW - timedelta(hours=5 - k)).isoformat(),
            "customer_id": customer, "card_token": f"tok_{customer}", "device_id": f"dev-{customer}",
            "terminal_id": "t-answers", "amount": 40.0 + k, "currency": "EUR", "country": "FR", "channel": "web"}


async def _fetch(dsn: str, sql: str, *args):
    conn = await db.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


@pytest.fixture
def sira(installation, monkeypatch, capsys):
    """The command line as one of the installation's keys, in a thread (it runs its own event loop)."""
    from sira.cli.main import main

    monkeypatch.setenv("SIRA_DATABASE_URL", installation.dsn)
    monkeypatch.setenv("SIRA_WORKSPACE", str(installation.settings.workspace))
    monkeypatch.setenv("SIRA_REDIS_URL", installation.redis_url)

    async def run(who: str, *args: str):
        monkeypatch.setenv("SIRA_API_KEY", installation.keys[who])
        reset_settings()
        try:
            return await asyncio.to_thread(main, list(args)), capsys.readouterr()
        finally:
            reset_settings()

    yield run
    reset_settings()
    os.environ.pop("SIRA_API_KEY", None)


async def _forget(sira, customer: str, reason: str, spool) -> dict:
    code, out = await sira("admin", "subject", "forget", "--customer", customer, "--reason", reason, "--json")
    assert code == 0, out.err
    request = json.loads(out.out)
    code, out = await sira("admin-b", "subject", "forget", "--customer", customer, "--approve",
                           str(request["request_id"]), "--spool-dir", str(spool), "--json")
    assert code == 0, out.err
    return json.loads(out.out)


async def test_a_replayed_request_id_of_an_erased_person_is_not_answered_from_before(installation, sira, tmp_path):
    """The serving replica kept the person's answer in memory (its LRU, for the idempotency window) and gave it
    again to a replay of the request id after the erasure; the claim of the request id (model, request id,
    digest of their request) stayed in sira_request_claims until its sweep. Both go now: the replay is scored
    afresh."""
    inst = installation
    run = uuid.uuid4().hex[:8]
    person = f"cus-answers-{run}"
    headers = {"Authorization": f"Bearer {inst.keys['service']}"}
    async with scoring_client(inst, tmp_path / "spool") as (client, service):
        stored = await client.post("/v1/events", json={"events": [payment(person, 0), payment(person, 1)]},
                                   headers=headers)
        assert stored.status_code == 200, stored.text
        request = {"model": "fraud", "request_id": f"req-{run}", "event": payment(person, 2)}
        first = (await client.post("/v1/score", json=request, headers=headers)).json()
        assert "prediction_id" in first, first
        again = (await client.post("/v1/score", json=request, headers=headers)).json()
        assert again["replayed"] is True and again["scored_at"] == first["scored_at"]
        await service.flush()
        # a claim of the request id, when the lookup went to PostgreSQL (a Redis marker not trusted yet)
        claimed = await _fetch(inst.dsn, "SELECT 1 FROM sira_request_claims WHERE request_id = $1", f"req-{run}")
        assert claimed  # (the test relies on it)

        done = await _forget(sira, person, "the person asked", tmp_path / "spool")
        assert done["counts"]["predictions"] >= 1 and done["counts"]["request_claims"] == len(claimed)
        assert not await _fetch(inst.dsn, "SELECT 1 FROM sira_request_claims WHERE request_id = $1", f"req-{run}")
        for _ in range(200):  # the erasure's notification reaches the replica's listener
            if not len(service.answers):
                break
            await asyncio.sleep(0.05)
        replayed = (await client.post("/v1/score", json=request, headers=headers)).json()
    assert "prediction_id" in replayed, replayed
    assert replayed["replayed"] is False and replayed["scored_at"] != first["scored_at"]


async def test_a_replica_that_lost_its_notifications_forgets_the_answers_it_holds(installation, tmp_path):
    """An erasure's notification sent while a replica's listener was away never reached it: it kept the person's
    answers in memory for the idempotency window (it dropped its cached histories and states on reconnecting,
    not its answers)."""
    import asyncpg

    from tests.conftest import with_database

    inst = installation
    run = uuid.uuid4().hex[:8]
    headers = {"Authorization": f"Bearer {inst.keys['service']}"}
    async with scoring_client(inst, tmp_path / "spool") as (client, service):
        request = {"model": "fraud", "request_id": f"req-lost-{run}", "event": payment(f"cus-lost-{run}", 0)}
        assert (await client.post("/v1/score", json=request, headers=headers)).status_code == 200
        assert len(service.answers)
        for _ in range(100):  # the listener is up
            if service.listener.conn is not None and not service.listener.conn.is_closed():
                break
            await asyncio.sleep(0.05)
        old = service.listener.conn
        admin = await asyncpg.connect(with_database(inst.dsn, "postgres"))
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", old.get_server_pid())
        finally:
            await admin.close()
        for _ in range(400):  # it reconnects (after its back-off) and catches up
            if service.listener.conn is not old and service.listener.conn is not None and not len(service.answers):
                break
            await asyncio.sleep(0.05)
        assert service.listener.conn is not old and not len(service.answers)


async def test_an_answer_redis_holds_from_before_an_erasure_is_not_replayed(installation, sira, tmp_path, monkeypatch):
    """The erasure deletes the person's answers from Redis after its commit, and not at all while Redis is down
    (`erasure_incomplete`, retried later): meanwhile a retry of their request id was answered from Redis with the
    old answer. A replica now asks PostgreSQL for an answer Redis gives from before the erasure's notification."""
    from sira.monitoring import erasure

    inst = installation
    run = uuid.uuid4().hex[:8]
    person = f"cus-window-{run}"
    headers = {"Authorization": f"Bearer {inst.keys['service']}"}

    async def redis_down(redis_url, spool_dirs, customer_id, outside):  # the spool is cleaned, Redis is not
        return {"redis": "failed: ConnectionError", "spool": "cleaned"}

    async with scoring_client(inst, tmp_path / "spool") as (client, service):
        assert service.replica.redis is not None  # (the test relies on it)
        request = {"model": "fraud", "request_id": f"req-window-{run}", "event": payment(person, 2)}
        first = (await client.post("/v1/score", json=request, headers=headers)).json()
        assert "prediction_id" in first, first
        await service.flush()
        code, out = await sira("admin", "subject", "forget", "--customer", person, "--reason", "asked", "--json")
        assert code == 0, out.err
        monkeypatch.setattr(erasure, "forget_outside", redis_down)
        code, out = await sira("admin-b", "subject", "forget", "--customer", person, "--approve",
                               str(json.loads(out.out)["request_id"]), "--json")
        assert code == 1 and "erasure_incomplete" in out.err, out.err
        for _ in range(200):  # the erasure's notification reaches the replica's listener
            if not len(service.answers):
                break
            await asyncio.sleep(0.05)
        assert not len(service.answers)
        replayed = (await client.post("/v1/score", json=request, headers=headers)).json()
    assert "prediction_id" in replayed, replayed
    assert replayed["replayed"] is False and replayed["scored_at"] != first["scored_at"]


async def test_a_reconnect_does_not_score_again_an_answer_still_in_a_spool(installation, tmp_path):
    """A replica whose listener reconnected (after any PostgreSQL outage) distrusted every answer Redis held from
    before, as if everyone had been erased: a retry of a request answered during the outage, its answer still in
    a spool, was scored again under the same prediction id with a different score, and the stored row kept the
    first (2026-12-07 fault review: 50 of 2,216 request ids). Only the erased people's request ids are asked of
    PostgreSQL now."""
    inst = installation
    run = uuid.uuid4().hex[:8]
    headers = {"Authorization": f"Bearer {inst.keys['service']}"}
    async with scoring_client(inst, tmp_path / "spool") as (client, service):
        service.replica.config.flush_interval_s = 60  # the answer stays in the spool, as during an outage
        await asyncio.sleep(0.3)  # (the flusher's current wait ends; its next is a minute)
        request = {"model": "fraud", "request_id": f"req-spooled-{run}", "event": payment(f"cus-spooled-{run}", 0)}
        first = (await client.post("/v1/score", json=request, headers=headers)).json()
        assert "prediction_id" in first, first
        assert not await _fetch(inst.dsn, "SELECT 1 FROM sira_predictions WHERE request_id = $1", request["request_id"])
        await service._reconnected()  # what the listener runs when it is back
        await service.idempotency._forgetting
        again = (await client.post("/v1/score", json=request, headers=headers)).json()
        service.replica.config.flush_interval_s = 0.05
        await service.flush()
    assert again["replayed"] is True and again["score"] == first["score"], (first, again)
    assert again["prediction_id"] == first["prediction_id"] and again["scored_at"] == first["scored_at"]
