"""Idempotency: the prediction id a client's request id names within a window, the request's digest,
and an earlier answer replayed (or refused as a conflict)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from typing import Any

import orjson

from sira.core import db
from sira.core.errors import Conflict
from sira.serving.replica import Replica
from sira.serving.resilience import LRU
from sira.serving.schemas import Item

log = logging.getLogger(__name__)

_PREDICTION_IDS = uuid.UUID("5b0f5d2e-6c1e-4b8e-9a57-2f0c3d4e5a61")


def prediction_id_for(model: str, request_id: str, client_chosen: bool, epoch: int = 0) -> str:
    """A client's request id names the same prediction id within an idempotency window (``epoch``: which
    one, :func:`idempotency_epoch`): two replicas racing on a retry (before either answer is stored) give
    the same answer, and the audit trail keeps one row. A request id reused after the window names
    another prediction (stored, not dropped as a duplicate of the old one)."""
    if not client_chosen:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_PREDICTION_IDS, f"{model}\x00{request_id}\x00{epoch}"))


def idempotency_epoch(ttl_s: float) -> int:
    """The idempotency window a request falls in (wall clock: the same on every replica)."""
    return int(time.time() // ttl_s)


DIGEST = "request_sha256"  # kept with an answer (and in its stored flags), never sent


def request_digest(model: str, payload: Any) -> str:
    """What a request asked, as a digest: of the redacted event (or the features), never of raw input."""
    return hashlib.sha256(orjson.dumps([model, payload], option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:32]


def public(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != DIGEST} if DIGEST in answer else answer


def replay(earlier: dict[str, Any], item: Item) -> dict[str, Any]:
    """The earlier answer to the item's request id, unless the id was used for something else (409)."""
    if item.digest and earlier.get(DIGEST) and earlier[DIGEST] != item.digest:
        raise Conflict(f"request_id {item.request_id!r} was used for a different "
                       f"{'event' if item.event is not None else 'feature vector'} within the idempotency window; "
                       "send a new request_id for a new request", code="idempotency_conflict",
                       details={"field": "request_id"})
    return {**public(earlier), "replayed": True}


def answer_from_row(row: Any) -> dict[str, Any]:
    """A stored prediction as the answer it was (idempotent replays, GET /v1/predictions/{id}); the digest of
    the request, when stored, under :data:`DIGEST` (dropped by :func:`public`)."""
    flags = dict(row["flags"] or {})
    digest = flags.pop(DIGEST, None)
    degraded_reasons = flags.pop("degraded_reasons", [])
    deferred = bool(flags.pop("reasons_deferred", False))
    return {
        "prediction_id": str(row["prediction_id"]), "request_id": row["request_id"], "model": row["model_name"],
        "version": row["version"], "score": row["score"], "decision": row["decision"], "reasons": row["reasons"],
        "reasons_deferred": deferred, "flags": flags, "degraded": row["degraded"], "degraded_reasons": degraded_reasons,
        "latency_ms": row["latency_ms"], "scored_at": row["scored_at"].isoformat(), "event_id": row["event_id"],
        "replayed": False, **({DIGEST: digest} if digest else {}),
    }


def _answer_key(model: str, request_id: str) -> str:
    return f"sira:answer:{model}:{request_id}"


class Answers:
    """The answers given to clients' request ids within the idempotency window: in this replica (an LRU,
    and the requests being scored now, so a retry waits for the first answer instead of scoring twice),
    in Redis (written as each answer is given: another replica sees a retry at once) and in
    ``sira_predictions`` (what Redis lost)."""

    def __init__(self, replica: Replica):
        self.replica = replica
        self.recent = LRU(100_000, replica.config.idempotency_ttl_s)
        self._inflight: dict[tuple[str, str], asyncio.Future] = {}

    async def once(self, item: Item, score: Any) -> dict[str, Any]:
        """``score(item)``'s answer, unless this replica has answered (or is answering) the request id."""
        key = (item.runtime.model_name, item.request_id)
        if item.client_request_id:
            earlier = self.recent.get(key)
            if earlier is not None:
                return replay(earlier, item)
            pending = self._inflight.get(key)
            if pending is not None:
                try:
                    return replay(await asyncio.shield(pending), item)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if not pending.cancelled() or (task is not None and task.cancelling()):
                        raise  # this caller's own cancellation
                    # the first caller went away before its answer: answer this one (from the cache
                    # when that answer was given meanwhile)
                    return await self.once(item, score)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await score(item)
            if isinstance(result, BaseException):
                raise result
            future.set_result(result)
            return public(result)
        except asyncio.CancelledError:
            future.cancel()  # a waiter with the same request id sees this, not a cancellation of its own
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        finally:
            if self._inflight.get(key) is future:
                self._inflight.pop(key, None)

    async def earlier(self, items: list[Item], degraded: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
        """Answers already given to these request ids by any replica: Redis and ``sira_predictions``, asked
        at the same time."""
        if not items:
            return {}
        r = self.replica
        keys = [(i.runtime.model_name, i.request_id) for i in items]
        stored = asyncio.ensure_future(self._stored(keys))
        cached: dict[tuple[str, str], dict[str, Any]] | None = None
        if r.redis is not None:
            if r.redis_breaker.available:
                try:
                    values = await r.redis.mget([_answer_key(m, q) for m, q in keys])
                    r.redis_breaker.succeeded()
                    cached = {k: orjson.loads(v) for k, v in zip(keys, values) if v is not None}
                except Exception as exc:  # noqa: BLE001
                    r.redis_breaker.failed(exc)
            if cached is None:
                degraded.add("cache_unavailable")
        found = await stored
        if found is None:
            if cached is None:  # neither could say: answered anyway (flagged)
                degraded.add("database_unavailable")
            found = {}
        return {**found, **(cached or {})}

    async def _stored(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]] | None:
        """The production answers of these (model, request id) within the idempotency window in
        ``sira_predictions``; None when Postgres is unavailable."""
        r = self.replica
        if not r.pg.available:
            return None
        found: dict[tuple[str, str], dict[str, Any]] = {}
        try:
            async with r.pool.acquire(timeout=r.config.db_timeout_s) as conn:
                for model in sorted({m for m, _ in keys}):
                    rows = await conn.fetch(
                        """SELECT prediction_id, request_id, model_name, version, event_id, score, decision, reasons,
                                  flags, degraded, latency_ms, scored_at
                             FROM sira_predictions
                            WHERE model_name = $1 AND request_id = ANY($2::text[]) AND role = 'production'
                              AND scored_at > now() - make_interval(secs => $3)""",
                        model, [q for m, q in keys if m == model], float(r.config.idempotency_ttl_s),
                        timeout=r.config.db_timeout_s,
                    )
                    for row in rows:
                        found[(model, row["request_id"])] = answer_from_row(row)
            r.pg.succeeded()
        except db.UNAVAILABLE as exc:
            r.pg.failed(exc)
            return None
        return found

    def remember(self, answered: list[tuple[Item, dict[str, Any]]]) -> None:
        """New answers to clients' request ids, for a retry reaching this replica."""
        for item, answer in answered:
            if item.client_request_id:
                self.recent.put((item.runtime.model_name, item.request_id), answer)

    def queue(self, pipe: Any, answered: list[tuple[Item, dict[str, Any]]]) -> None:
        """The same into a Redis pipeline (sent after answering), for a retry reaching another replica."""
        for item, answer in answered:
            if item.client_request_id:
                pipe.set(_answer_key(item.runtime.model_name, item.request_id), orjson.dumps(answer),
                         ex=self.replica.config.idempotency_ttl_s, nx=True)
