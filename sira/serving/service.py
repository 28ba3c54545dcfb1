"""Online scoring: the per-replica service behind ``POST /v1/score``.

One process-local :class:`ScoringService` per replica does the work; the
FastAPI application (:func:`sira.http.app.create_app`) exposes it, and
:class:`sira.http.deployment.SiraIngress` runs that application as a Ray Serve ingress. Batching
happens inside the ingress replica (``@serve.batch``): a second deployment hop
measured twice a no-op's latency here (MEASURED.md).

Per batch: earlier answers for the request ids (idempotency), entity
histories (in-replica LRU → Redis → Postgres snapshot → event log), feature
vectors by the offline code, one ``predict`` per model version, reason codes
inline for review/block (and on request), decisions, then one append of the
batch's records to the local spool *before* answering. A flusher writes the
spool to ``sira_predictions`` and records the scored events into the feature
pipeline. Reasons not computed inline (approvals, by default) are exact and
reproducible from the stored features and version: reading the prediction
computes them (``pred_contrib`` costs ~180x a predict; serving does not pay it). Shadow (staging) versions score
the same inputs after the answer.

Models follow the registry: ``LISTEN sira_registry`` (the migration's trigger, and an operator's reload)
and polling as a fallback; a replica loads and verifies the new artifact and
swaps a single reference, so a batch is scored by exactly one version.

Degraded modes (stated in every answer): Redis unreachable → Postgres;
Postgres unreachable → request and cached features only, predictions spooled
and flushed when it returns. Circuit breakers keep a dead dependency from
costing every request a timeout.
"""


from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime, timezone
from typing import Any

from sira.core.config import Settings
from sira.core.errors import Conflict, InvalidInput, ServiceUnavailable
from sira.features import store as feature_store
from sira.features.states import STATES_CHANNEL
from sira.serving.answers import ShadowJob, score_items, score_shadows
from sira.serving.config import ServingConfig
from sira.serving.histories import Histories
from sira.serving.idempotency import ANSWERS_CHANNEL, Answers, ClaimedElsewhere, idempotency_epoch, replay
from sira.serving.intake import prepare
from sira.serving.notifications import REGISTRY_CHANNEL, Listener
from sira.serving.records import PredictionWriter
from sira.serving.replica import Replica
from sira.serving.resilience import _in_replica, _replica_name
from sira.serving.schemas import Item, ScoreItem
from sira.serving.slots import ModelSlots
from sira.serving.spool import Spool

log = logging.getLogger(__name__)


class ScoringService:
    """The per-replica scoring engine (see the module docstring): its parts share one :class:`Replica`."""

    def __init__(self, settings: Settings, config: ServingConfig):
        self.replica = Replica.of(settings, config)
        self.models = ModelSlots(self.replica)
        self.origin = f"{_replica_name()}:{uuid.uuid4().hex[:8]}"  # names this replica's writes of v2 states
        self.history = Histories(self.replica, self.models, self.origin)
        self.idempotency = Answers(self.replica)
        self.writer = PredictionWriter(self.replica, Spool(config.spool_dir or settings.workspace / "spool",
                                                           fsync=config.spool_fsync))
        self.writer.on_stored = self.history.states.stored
        self.redactor: Any = None
        self.rejected_config: dict[str, str] | None = None  # the last user_config refused, while it stands
        self.started = False
        self.listener = Listener(self.replica, {REGISTRY_CHANNEL: self._on_registry,
                                                feature_store.SNAPSHOT_CHANNEL: self.history.on_snapshots,
                                                STATES_CHANNEL: self.history.states.on_states,
                                                ANSWERS_CHANNEL: self.idempotency.on_gap},
                                 self._reconnected, self.history.listening)
        self._in_replica = _in_replica()
        self._batch_lock = asyncio.Lock()
        self._batched = self._batcher(config)

    # what the HTTP layer, the deployment and tests read of the parts
    settings = property(lambda self: self.replica.settings)
    config = property(lambda self: self.replica.config)
    pool = property(lambda self: self.replica.pool)
    redis = property(lambda self: self.replica.redis)
    metrics = property(lambda self: self.replica.metrics)
    pg = property(lambda self: self.replica.pg)
    slots = property(lambda self: self.models.slots)
    load_failures = property(lambda self: self.models.load_failures)
    swaps = property(lambda self: self.models.swaps)
    histories = property(lambda self: self.history.cache)
    answers = property(lambda self: self.idempotency.recent)
    spool = property(lambda self: self.writer.spool)

    def _batcher(self, config: ServingConfig) -> Any:
        """How a request reaches :meth:`_score_batch`.

        In a Serve replica: straight in, as a batch of one, when no batch is being scored
        (an idle replica answers without ``@serve.batch``'s queue hop, ~0.3 ms); while one
        is, through ``@serve.batch``, which gathers the requests arriving meanwhile into the
        next batch. Outside a replica (``sira api``, tests) each request is its own batch.
        Batches run one at a time either way (``_batch_lock``): two batches folding events
        into the same entity's cached history must not interleave.
        """
        queued = None
        if self._in_replica:
            from ray import serve

            queued = serve.batch(max_batch_size=config.max_batch_size,
                                 batch_wait_timeout_s=config.batch_wait_timeout_s)(self._score_batch)

        async def score_one(item: Item) -> Any:
            if queued is None or not self._batch_lock.locked():
                return (await self._score_batch([item]))[0]
            return await queued(item)

        score_one.set_max_batch_size = (  # type: ignore[attr-defined]
            queued.set_max_batch_size if queued is not None else lambda _n: None)
        score_one.set_batch_wait_timeout_s = (  # type: ignore[attr-defined]
            queued.set_batch_wait_timeout_s if queued is not None else lambda _s: None)
        return score_one

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        from sira.ingest.bulk import redactor_for

        self.redactor = redactor_for(self.replica.settings)
        await self.replica.open()
        self.writer.open(self._in_replica)
        await self.models.refresh("start")
        self.replica.spawn(self.listener.listen_forever(), "listener")
        # caches are kept only while writes are heard of: answer the first requests with them when PostgreSQL
        # is there (without, they read past the caches until the listener connects)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.listener.listening.wait(), timeout=max(2.0, 2 * self.replica.config.db_timeout_s))
        self.replica.spawn(self._poll_forever(), "poller")
        self.replica.spawn(self.writer.flush_forever(), "flusher")
        self.started = True

    async def stop(self) -> None:
        """Background tasks first, then the spool's last flush, the listener, the connections."""
        await self.replica.cancel_tasks()
        await self.writer.close()
        await self.listener.close()
        await self.replica.close()

    async def reconfigure(self, data: dict[str, Any]) -> None:
        """Apply a new ``user_config`` (batching, caches, models) without a restart.

        A config that does not validate is refused here, never raised: Ray Serve restarts a replica whose
        ``reconfigure`` raises, which took the service down until a good file was deployed. The replica
        keeps its last good config; ``/readyz``, the log and ``sira_config_rejected`` say what was refused.
        """
        r = self.replica
        try:
            config = ServingConfig.from_dict({**r.config.model_dump(exclude={"spool_dir"}), **(data or {})})
        except InvalidInput as exc:
            self.rejected_config = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                    "error": exc.message}
            log.warning("user_config refused, serving with the last good one: %s", exc.message)
            r.count("config_rejected")
            return
        self.rejected_config = None
        models_changed = config.models != r.config.models
        r.config = config
        self._batched.set_max_batch_size(config.max_batch_size)
        self._batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        for cache in (self.histories, self.history.states.cache):
            cache.max_entries, cache.ttl_s = config.cache_max_entries, config.cache_ttl_s
        self.answers.ttl_s = config.idempotency_ttl_s
        self.spool.fsync = config.spool_fsync  # production.yaml turns it on in user_config
        r.pg.open_s = r.redis_breaker.open_s = config.breaker_open_s
        if models_changed and self.started:  # never raises: Serve would restart the replica (the poller retries)
            await self.models.refresh_quietly("reconfigure")

    # -- following the registry and the snapshots -------------------------------------

    async def refresh_models(self, reason: str) -> list[dict[str, Any]]:
        """Load what the registry says each served model runs now; swap what changed."""
        return await self.models.refresh(reason)

    async def reload(self) -> dict[str, dict[str, int | None]]:
        """Re-read the registry now (an operator's reload); what this replica serves then, per model."""
        await self.models.refresh("reload")
        return {name: {"production": slot.production.version if slot.production else None,
                       "shadow": slot.shadow.version if slot.shadow else None}
                for name, slot in sorted(self.models.slots.items())}

    def unavailable_models(self) -> dict[str, dict[str, Any]]:
        return self.models.unavailable()

    async def _reconnected(self) -> None:
        """The listener was away: registry, snapshot and erasure notifications may have been missed."""
        self.histories.clear()
        self.history.states.clear()
        self.idempotency.forget()  # an erasure's: its person's answers must not be given again (memory, Redis)
        await self.models.refresh("reconnect")

    def _on_registry(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self.replica.spawn(self.models.refresh_quietly("notify"), "refresh")

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.replica.config.poll_interval_s)
            await self.models.refresh_quietly("poll")

    # -- entry points -------------------------------------------------------------------

    def prepare(self, model: str, body: ScoreItem, started: float, prefix: str = "") -> Item:
        """Validate one request against the served version; redact its event (``started``: its arrival)."""
        return prepare(self.models.slot(model), self.redactor, model, body, started, prefix)

    async def score(self, item: Item) -> dict[str, Any]:
        """Score one prepared request (batched with its neighbours); the same request id answers once."""
        return await self.idempotency.once(item, lambda i: self._batched(i))

    async def flush(self) -> int:
        return await self.writer.flush()

    async def flush_quietly(self) -> int:
        return await self.writer.flush_quietly()

    def explain(self, model: str, version: int, features: dict[str, Any]) -> list[dict[str, Any]] | None:
        return self.models.explain(model, version, features)

    # -- the batch ---------------------------------------------------------------------

    async def _score_batch(self, items: list[Item]) -> list[dict[str, Any] | BaseException]:
        async with self._batch_lock:
            return await self._score_batch_locked(items)

    async def _score_batch_locked(self, items: list[Item]) -> list[dict[str, Any] | BaseException]:
        r = self.replica
        degraded: set[str] = set()
        if r.metrics:
            r.metrics.batch_size.observe(len(items))
        # The lookup of earlier answers waits on Redis/Postgres while features are computed here.
        lookup = asyncio.ensure_future(self.idempotency.earlier([i for i in items if i.client_request_id], degraded))
        await asyncio.sleep(0)  # let the lookup send its query before the CPU work below
        out: list[Any] = [None] * len(items)
        vectors, flags, folded = await self.history.batch_inputs(items, out, degraded)
        try:
            earlier = await lookup
        except Exception:  # noqa: BLE001 - idempotency lookup failing must not fail the batch
            log.exception("looking up earlier answers failed")
            degraded.add("idempotency_unchecked")
            earlier = {}
        if r.pg.failing:
            # Postgres unreachable since this replica last saw it fail (a lookup, the notification connection,
            # the flusher), even when this batch read nothing from it: cached histories may lack other
            # replicas' events, and the predictions are in the spool only.
            degraded.add("database_unavailable")
        for n, item in enumerate(items):
            prior = earlier.get((item.runtime.model_name, item.request_id))
            if prior is not None:
                try:
                    out[n] = replay(prior, item)
                except (Conflict, ClaimedElsewhere) as exc:  # (being scored elsewhere: `once` waits for it)
                    out[n] = exc
                folded = self.history.discard(item, folded)
        todo = [n for n in range(len(items)) if out[n] is None]
        scored = score_items(items, todo, vectors, flags, degraded, reasons=r.config.reasons, shadow=r.config.shadow,
                             scored_at=datetime.now(timezone.utc).isoformat(),
                             ids=self.idempotency.ids(idempotency_epoch(r.config.idempotency_ttl_s)))
        for n, given in scored.answers.items():
            out[n] = given
        for (model, decision), count in scored.decisions.items():
            r.count("decisions", count, model=model, decision=decision)
        records, shadow_jobs = scored.records, scored.shadow_jobs
        for n in todo:
            item = items[n]
            if item.record and item.event is not None:
                fs = item.runtime.feature_set
                records.append({"kind": "event", "feature_set": fs.name, "feature_set_version": fs.version,
                                "origin": self.origin,
                                "row": {**item.event, "occurred_at": item.event["occurred_at"].isoformat()}})
        try:
            self.writer.spool.append(records)  # before answering: an answered prediction is never lost
        except OSError as exc:
            log.exception("spool write failed")
            failure = ServiceUnavailable(f"cannot record predictions locally: {exc}", code="spool_unavailable")
            fresh = set(todo)
            return [failure if n in fresh else out[n] for n in range(len(items))]
        answered = [(items[n], out[n]) for n in todo]
        self.history.states.recorded(records)
        self.history.keep(folded)
        self.idempotency.remember(answered)
        if r.redis_available:
            r.spawn(self.history.store_in_redis(self.idempotency, answered, folded), "redis-store")
        elif r.redis is not None:
            self.idempotency.sent(answered, None)  # answers Redis will not hold: the marker moves when it is back
        if shadow_jobs:
            r.spawn(self._shadow(shadow_jobs), "shadow")
        # each answer given degraded once, under its reasons together ("database_unavailable+idempotency_unchecked"):
        # one count per reason made an answer with two count twice in the alert's ratio (before 2026-12-07)
        if degraded:
            r.count("degraded", len(scored.answers), reason="+".join(sorted(degraded)))
        return out

    async def _shadow(self, jobs: list[ShadowJob]) -> None:
        """Staging versions score the same inputs after the answer; stored beside production's, never returned."""
        try:
            records, agreement = score_shadows(jobs, scored_at=datetime.now(timezone.utc).isoformat(),
                                               ids=self.idempotency.ids(
                                                   idempotency_epoch(self.replica.config.idempotency_ttl_s)))
            for (model, same), n in agreement.items():
                self.replica.count("shadow", n, model=model, agreement=same)
            self.writer.spool.append(records)
        except Exception:  # noqa: BLE001 - shadow scoring never affects serving
            log.exception("shadow scoring failed")
