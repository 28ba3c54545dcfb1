"""The spool's recorder, replaced when it is what fails: a process that no longer answers, or a pool whose
connections leaked. Either way every answer reaches ``sira_predictions`` (the spool kept them meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from datetime import datetime, timezone

from sira.core import db
from sira.serving.config import ServingConfig
from sira.serving.records import PredictionWriter
from sira.serving.replica import Replica
from sira.serving.spool import Spool
from tests.conftest import scoring_client, unique_id
from tests.integration.test_scoring_service import auth, event


async def until_stored(pool, prediction_id: str, within: float) -> None:
    deadline = time.monotonic() + within
    query = "SELECT count(*) FROM sira_predictions WHERE prediction_id = $1"
    while not await pool.fetchval(query, uuid.UUID(prediction_id)):
        assert time.monotonic() < deadline, f"prediction {prediction_id} not stored within {within} s"
        await asyncio.sleep(0.1)


async def test_a_recorder_whose_connections_leaked_is_replaced_and_the_answers_stored(fraud_model, tmp_path):
    async with scoring_client(fraud_model, tmp_path / "spool", store_timeout_s=1.0) as (client, service):
        async def scored(i: int) -> str:
            r = await client.post("/v1/score", headers=auth(fraud_model, "service"),
                                  json={"model": "fraud", "request_id": unique_id("leak"),
                                        "event": event(fraud_model, i)})
            assert r.status_code == 200, r.text
            return r.json()["prediction_id"]

        await until_stored(service.pool, await scored(1), within=10)  # the recorder and its pool exist
        recorder = service.writer.recorder

        async def leak() -> list:  # every connection of its pool checked out and never given back
            return [await recorder.pool.acquire() for _ in range(recorder.pool.get_max_size())]

        held = await service.writer.writer.run(leak())
        await until_stored(service.pool, await scored(2), within=30)
        assert service.writer.replaced >= 1 and service.writer.recorder is not recorder
        assert held and recorder.pool.is_closing()  # the old recorder's connections were cut, not left open


async def test_a_recorder_process_that_stops_answering_is_replaced_and_the_spool_stored(fraud_model, tmp_path):
    """In a replica the recorder is a Ray actor: stopped (SIGSTOP: alive, answering nothing), it is given up on
    after ``store_timeout_s`` and a margin, and a new one stores the spool."""
    replica = Replica.of(fraud_model.settings, ServingConfig(store_timeout_s=1.0, flush_interval_s=0.05))
    writer = PredictionWriter(replica, Spool(tmp_path / "spool"))
    writer.open(in_replica=True)
    flusher = asyncio.create_task(writer.flush_forever())
    pool = await db.create_pool(fraud_model.dsn, fraud_model.settings)
    pid = None
    try:
        model_id = await pool.fetchval("SELECT id FROM sira_models WHERE name = 'fraud'")
        pid = await writer.recorder.__ray_call__.remote(lambda self: os.getpid())
        os.kill(pid, signal.SIGSTOP)
        prediction_id = str(uuid.uuid4())
        writer.spool.append([{
            "kind": "prediction", "prediction_id": prediction_id, "request_id": f"stopped-{prediction_id}",
            "scored_at": datetime.now(timezone.utc).isoformat(), "model_id": model_id, "model_name": "fraud",
            "version": fraud_model.version, "role": "production", "event_id": None, "features": {}, "score": 0.1,
            "decision": "approve", "reasons": [], "flags": {}, "degraded": False, "degraded_reasons": [],
            "latency_ms": 1.0, "threshold_set": None}])
        await until_stored(pool, prediction_id, within=60)
        assert writer.replaced >= 1
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await writer.close()
        await pool.close()
