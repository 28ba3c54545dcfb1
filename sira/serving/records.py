"""Prediction records: written to ``sira_predictions`` (idempotent), stored by the recorder off the
request path, and read back as the answer they were."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from sira.core import db
from sira.features.definitions import get_feature_set
from sira.serving.idempotency import DIGEST
from sira.serving.replica import SERVING_SERVER_SETTINGS, Replica
from sira.serving.resilience import BackgroundLoop
from sira.serving.spool import Spool

log = logging.getLogger(__name__)

# What PostgreSQL refuses for good: retrying the same record cannot help.
REFUSED_FOR_GOOD = db.REFUSED


async def read_version_row(conn: asyncpg.Connection, model: str, version: int) -> dict[str, Any] | None:
    """What :meth:`ModelRuntime.load` needs of a registered version (None: no such version)."""
    row = await conn.fetchrow(
        """SELECT m.id AS model_id, m.name AS model_name, v.version, v.artifact_uri, v.artifact_sha256,
                  v.thresholds, v.threshold_set
             FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id
            WHERE m.name = $1 AND v.version = $2""", model, version)
    return dict(row) if row is not None else None


async def version_row(dsn: str, model: str, version: int) -> dict[str, Any] | None:
    """:func:`read_version_row` on a connection of its own."""
    conn = await db.connect(dsn)
    try:
        return await read_version_row(conn, model, version)
    finally:
        await conn.close()


async def store_records(pool: asyncpg.Pool, records: list[dict[str, Any]]) -> None:
    """Spooled records into Postgres in one transaction: predictions, then the events to record (folded
    into features and snapshots by the ingestion code). Idempotent: a replay stores nothing twice."""
    from sira.ingest.bulk import record_normalized

    predictions = [r for r in records if r.get("kind") == "prediction"]
    events = [r for r in records if r.get("kind") == "event"]
    async with pool.acquire(timeout=5) as conn:
        async with conn.transaction():
            by_fs: dict[tuple[str, int, str | None], list[dict[str, Any]]] = {}
            for r in events:
                by_fs.setdefault((r["feature_set"], r["feature_set_version"], r.get("origin")), []).append(r["row"])
            for (name, version, origin), rows in by_fs.items():
                unique = list({r["event_id"]: {**r, "occurred_at": datetime.fromisoformat(r["occurred_at"])}
                               for r in rows}.values())
                await record_normalized(conn, get_feature_set(name, version), unique, origin=origin)
            if events:  # the answer to an event the erasure gate refused (its person erased since) goes too
                gone = {r["event_id"] for r in await conn.fetch(
                    """SELECT i.event_id FROM unnest($1::text[]) AS i (event_id)
                        WHERE EXISTS (SELECT 1 FROM sira_erased_subjects)
                          AND NOT EXISTS (SELECT 1 FROM sira_events e WHERE e.event_id = i.event_id)""",
                    list({r["row"]["event_id"] for r in events}))}
                predictions = [p for p in predictions if p.get("event_id") not in gone]
            if predictions:
                await write_predictions(conn, predictions)


class Recorder:
    """Stores spooled records with connections of its own. In a replica it runs as a Ray actor
    owned by the replica (a process of its own, gone with the replica); elsewhere on a
    :class:`BackgroundLoop`."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.pool: asyncpg.Pool | None = None

    async def store(self, records: list[dict[str, Any]], timeout_s: float = 30.0) -> int:
        """Store ``records``; a store that takes longer than ``timeout_s`` is abandoned (``TimeoutError``:
        the spool keeps them)."""
        async with asyncio.timeout(timeout_s):
            if self.pool is None:
                self.pool = await db.create_pool(self.dsn, min_size=1, max_size=2, timeout=10, command_timeout=60,
                                                 server_settings=SERVING_SERVER_SETTINGS)
            await store_records(self.pool, records)
        return len(records)

    async def close(self) -> None:
        """Close the connections; those a wedged store still holds are cut."""
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), timeout=5)
            except Exception:  # noqa: BLE001 - TimeoutError: connections never released
                self.pool.terminate()


@functools.cache
def recorder_actor() -> Any:
    """The :class:`Recorder` actor class (made on first use)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=-1)(Recorder)


PREDICTION_COLUMNS = ("prediction_id", "scored_at", "request_id", "model_id", "model_name", "version", "role",
                      "event_id", "features", "score", "decision", "reasons", "flags", "degraded", "latency_ms",
                      "threshold_set")


async def write_predictions(conn: asyncpg.Connection, predictions: Sequence[dict[str, Any]]) -> int:
    """Insert spooled predictions; rows already stored (a replayed spool) are skipped."""
    rows = []
    for p in predictions:
        flags = dict(p.get("flags") or {})
        if p["reasons"] is None:
            flags["reasons_deferred"] = True  # exact reasons are computed from the stored features on read
        if p.get("degraded_reasons"):
            flags["degraded_reasons"] = p["degraded_reasons"]
        rows.append((uuid.UUID(p["prediction_id"]), datetime.fromisoformat(p["scored_at"]), p["request_id"],
                     p["model_id"], p["model_name"], p["version"], p["role"], p["event_id"], p["features"],
                     min(max(float(p["score"]), 0.0), 1.0), p["decision"], p["reasons"] or [], flags,
                     bool(p["degraded"]), float(p["latency_ms"]), p.get("threshold_set")))
    lo, hi = min(r[1] for r in rows), max(r[1] for r in rows)
    await conn.execute("SELECT sira_ensure_month_partitions('sira_predictions', $1, $2)", lo, hi)
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS sira_predictions_stage ON COMMIT DELETE ROWS AS SELECT "
        + ", ".join(PREDICTION_COLUMNS) + " FROM sira_predictions WITH NO DATA"
    )
    await conn.execute("TRUNCATE sira_predictions_stage")
    await conn.copy_records_to_table("sira_predictions_stage", records=rows, columns=list(PREDICTION_COLUMNS))
    # Two replicas may flush the same prediction id (a retried request both answered) at the same time:
    # lock the ids' buckets (in one order: no deadlocks; at most 512 locks, whatever the batch size)
    # so the second sees the first's row and skips its own.
    await conn.execute(
        """SELECT pg_advisory_xact_lock(7401, b) FROM (
               SELECT DISTINCT (hashtext(prediction_id::text) & 511) AS b FROM sira_predictions_stage ORDER BY 1) k"""
    )
    columns = ", ".join(PREDICTION_COLUMNS)
    status = await conn.execute(  # a prediction id is stored once, whatever replica or replay sends it again
        f"""INSERT INTO sira_predictions ({columns})
            SELECT DISTINCT ON (s.prediction_id) {", ".join(f"s.{c}" for c in PREDICTION_COLUMNS)}
              FROM sira_predictions_stage s
             WHERE NOT EXISTS (SELECT 1 FROM sira_predictions p WHERE p.prediction_id = s.prediction_id)
             ORDER BY s.prediction_id, s.scored_at
            ON CONFLICT DO NOTHING"""
    )
    return db.rows_affected(status)


def prediction_record(answer: dict[str, Any], runtime: Any, vector: dict[str, Any], role: str) -> dict[str, Any]:
    """The spool record of an answer (``role``: production or shadow): what ``sira_predictions`` keeps."""
    return {
        "kind": "prediction", "prediction_id": answer["prediction_id"], "scored_at": answer["scored_at"],
        "request_id": answer["request_id"], "model_id": runtime.model_id, "model_name": runtime.model_name,
        "version": runtime.version, "role": role, "event_id": answer["event_id"],
        "features": {k: vector.get(k) for k in runtime.names},
        "score": answer["score"], "decision": answer["decision"],
        "reasons": None if answer["reasons_deferred"] else answer["reasons"],
        "flags": {**answer["flags"], DIGEST: answer[DIGEST]} if DIGEST in answer else answer["flags"],
        "degraded": answer["degraded"],
        "degraded_reasons": answer["degraded_reasons"], "latency_ms": answer["latency_ms"],
        "threshold_set": runtime.threshold_set,
    }


class PredictionWriter:
    """The spool's way into PostgreSQL: answered records are appended to the local spool before the answer
    leaves; a flusher stores closed segments (this replica's, and any a dead replica left) through the
    :class:`Recorder`, retrying with backoff, and sets aside what PostgreSQL refuses for good."""

    def __init__(self, replica: Replica, spool: Spool):
        self.replica, self.spool = replica, spool
        self.recorder: Any = None  # a Recorder actor (in a replica) or a Recorder on `self.writer`'s loop
        self.writer: BackgroundLoop | None = None
        self.lock = asyncio.Lock()
        self.on_stored: Callable[[list[dict[str, Any]]], None] | None = None  # after records are stored
        self.failing_since: float | None = None  # the first failed flush since the last good one
        self.recorder_since = 0.0
        self.replaced = 0  # recorders replaced

    def open(self, in_replica: bool) -> None:
        """Storing the spool is CPU work (folding recorded events into features): in a replica a process of
        its own does it; even a thread held the GIL the request loop needs."""
        self.spool.open()
        if not in_replica:
            self.writer = BackgroundLoop("sira-writer")
        self.recorder = self._new_recorder()

    def _new_recorder(self) -> Any:
        dsn = db.resolve_dsn(self.replica.settings)
        self.recorder_since = time.monotonic()
        return Recorder(dsn) if self.writer is not None else recorder_actor().remote(dsn)

    async def _dispose(self, recorder: Any) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.run(recorder.close()), timeout=10)
        elif recorder is not None:
            import ray

            with contextlib.suppress(Exception):
                ray.kill(recorder)

    async def replace_recorder(self) -> None:
        """A fresh recorder (in a replica: a new process) with connections of its own, for one whose stores
        have failed for ``store_timeout_s`` and may be what is wrong (a wedged process, a pool whose
        connections leaked). Whatever the old one was doing, the spool still holds its records."""
        old, self.recorder = self.recorder, self._new_recorder()
        self.replaced += 1
        await self._dispose(old)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), timeout=10)
        self.spool.close()
        await self._dispose(self.recorder)
        if self.writer is not None:
            self.writer.close()

    async def flush_forever(self) -> None:
        r = self.replica
        delay = 0.0  # at start, at once: replay what a dead replica left in the spool
        last_orphan_scan = 0.0
        while True:
            await asyncio.sleep(delay)
            try:
                scan = time.monotonic() - last_orphan_scan > 5.0
                if scan or self.spool.pending:
                    if await self.flush():
                        r.pg.succeeded()
                    if scan:
                        last_orphan_scan = time.monotonic()
                delay, self.failing_since = r.config.flush_interval_s, None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried with backoff; the spool keeps everything
                await self._failed(exc)
                delay = min(max(delay * 2, 0.5), 5.0)
            if r.metrics:
                r.metrics.spooled.set(self.spool.pending)
                r.metrics.publish()

    async def _failed(self, exc: Exception) -> None:
        """A failed flush: PostgreSQL's breaker told, the first of a streak logged, and the recorder replaced
        once the streak and the recorder are both older than ``store_timeout_s`` (so an outage costs one new
        recorder per ``store_timeout_s``, not one per retry)."""
        r, now = self.replica, time.monotonic()
        if db.is_unavailable(exc):
            r.pg.failed(exc)
        if self.failing_since is None:
            self.failing_since = now
            log.warning("storing the spool failed (%s: %s); retrying with backoff", type(exc).__name__,
                        " ".join(str(exc).split())[:300])
        timeout_s = r.config.store_timeout_s
        if now - self.failing_since >= timeout_s and now - self.recorder_since >= timeout_s:
            log.warning("the spool recorder has failed for %.0fs (last: %s); replacing it",
                        now - self.failing_since, type(exc).__name__)
            await self.replace_recorder()

    async def flush(self) -> int:
        """Write every closed spool segment to Postgres (this replica's and any left by a dead one)."""
        async with self.lock:
            written = 0
            for attempt in range(2):  # then the current segment, which a backlog kept from rotating
                if not self.spool.rotate() and attempt:
                    break
                for segment in self.spool.claim():
                    records = segment.read()
                    try:
                        await self._write(records)
                    except REFUSED_FOR_GOOD:  # (through Ray, an instance of its cause too)
                        written += await self._write_one_by_one(segment, records)
                        continue
                    self.spool.done(segment)
                    written += len(records)
            return written

    async def flush_quietly(self) -> int:
        """:meth:`flush`, logging a failure instead of raising it (the flusher retries on its own)."""
        try:
            return await self.flush()
        except Exception:  # noqa: BLE001 - the spool keeps the records; the flusher tries again
            log.exception("spool flush failed")
            return 0

    async def _write_one_by_one(self, segment: Any, records: list[dict[str, Any]]) -> int:
        """A segment Postgres refused: store its records one at a time and set aside those it refuses
        (retrying them would block every segment after this one). Other errors propagate: retried."""
        refused = []
        for record in records:
            try:
                await self._write([record])
            except REFUSED_FOR_GOOD as exc:
                refused.append(record)
                log.error("PostgreSQL refused a spooled %s record (%s); set aside", record.get("kind"),
                          type(exc).__name__)
        if not refused:
            self.spool.done(segment)
            return len(records)
        self.spool.set_aside(segment, refused)
        if self.replica.metrics:
            self.replica.metrics.refused.inc(len(refused))
        return len(records) - len(refused)

    async def _write(self, records: list[dict[str, Any]]) -> None:
        """Through the recorder, which gives up after ``store_timeout_s``; a recorder that has not answered
        some time after that (a wedged process) is given up on here."""
        timeout_s = self.replica.config.store_timeout_s
        call = (self.recorder.store.remote(records, timeout_s) if self.writer is None
                else self.writer.run(self.recorder.store(records, timeout_s)))
        await asyncio.wait_for(call, timeout=timeout_s + min(timeout_s, 10))
        if self.on_stored is not None:
            self.on_stored(records)
