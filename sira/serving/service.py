"""Online scoring: the service behind ``POST /v1/score``, and its Ray Serve deployment.

One process-local :class:`ScoringService` per replica does the work; the
FastAPI application (:func:`sira.http.app.create_app`) exposes it, and
:class:`SiraIngress` runs that application as a Ray Serve ingress. Batching
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

Models follow the registry: ``LISTEN sira_registry`` (the migration's trigger)
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
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson
from ray import serve

from sira.core import db
from sira.core.config import Settings
from sira.core.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from sira.features import store as feature_store
from sira.features.definitions import ENTITY_COLUMNS, EntityFeatures, FeatureSet, History, parse_duration
from sira.ingest.events import Rejection, event_row
from sira.serving.config import ServingConfig
from sira.serving.histories import CachedHistory, _holds_state, _touches
from sira.serving.idempotency import DIGEST, idempotency_epoch, prediction_id_for, public, replay, request_digest
from sira.serving.metrics import ServingMetrics
from sira.serving.records import (
    REFUSED_FOR_GOOD,
    SERVING_SERVER_SETTINGS,
    LookupConnection,
    Recorder,
    answer_from_row,
    recorder_actor,
    version_row,
)
from sira.serving.resilience import LRU, BackgroundLoop, Breaker, _in_replica, _replica_name
from sira.serving.schemas import Item, ScoreItem
from sira.serving.scoring import ModelRuntime, event_vectors
from sira.serving.slots import LOAD_RETRY_FIRST_S, LoadFailure, Slot, _load_error

log = logging.getLogger(__name__)





class ScoringService:
    """The per-replica scoring engine (see the module docstring)."""

    def __init__(self, settings: Settings, config: ServingConfig):
        self.settings, self.config = settings, config
        self.pool: asyncpg.Pool | None = None
        self.redis: Any = None
        self.redactor: Any = None
        self.slots: dict[str, Slot] = {}
        self.runtimes: dict[tuple[str, int], ModelRuntime] = {}  # for deferred reasons of recent versions
        self.histories = LRU(config.cache_max_entries, config.cache_ttl_s)
        self.answers = LRU(100_000, config.idempotency_ttl_s)
        self.identities = LRU(10_000, config.auth_cache_ttl_s)
        self._invalidated: dict[tuple[str, str], float] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future] = {}
        self.pg = Breaker("PostgreSQL", config.breaker_open_s)
        self.redis_breaker = Breaker("Redis", config.breaker_open_s)
        spool_dir = config.spool_dir or settings.workspace / "spool"
        from sira.serving.spool import Spool

        self.spool = Spool(spool_dir, fsync=config.spool_fsync)
        self.metrics: ServingMetrics | None = None
        self._tasks: set[asyncio.Task] = set()
        self._reload_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._batch_lock = asyncio.Lock()
        self._listener: asyncpg.Connection | None = None
        self.recorder: Any = None  # a Recorder actor (in a replica) or a Recorder on `self.writer`'s loop
        self.writer: BackgroundLoop | None = None
        self._in_replica = _in_replica()
        self.swaps: list[dict[str, Any]] = []
        self.load_failures: dict[tuple[str, str], LoadFailure] = {}  # (model, role) -> what cannot be loaded
        self.rejected_config: dict[str, str] | None = None  # the last user_config refused, while it stands
        self.started = False
        self._batched = self._batcher(config)

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

        self.redactor = redactor_for(self.settings)
        self.pool = await asyncpg.create_pool(
            db.resolve_dsn(self.settings), min_size=1, max_size=self.settings.db_pool_max,
            command_timeout=max(self.config.db_timeout_s * 5, 5), init=db._init_connection, timeout=10,
            server_settings=SERVING_SERVER_SETTINGS, connection_class=LookupConnection,
        )
        if self.settings.redis_url:
            import redis.asyncio as aioredis

            self.redis = aioredis.Redis.from_url(self.settings.redis_url, socket_timeout=0.25,
                                                 socket_connect_timeout=0.25)
        try:
            import ray

            if ray.is_initialized() and self.config.metrics:
                self.metrics = ServingMetrics()
        except Exception:  # noqa: BLE001 - metrics must never stop serving
            log.exception("metrics unavailable")
        self.spool.open()
        # Storing the spool is CPU work (folding recorded events into features): in a replica a
        # process of its own does it; even a thread held the GIL the request loop needs.
        if self._in_replica:
            self.recorder = recorder_actor().remote(db.resolve_dsn(self.settings))
        else:
            self.writer = BackgroundLoop("sira-writer")
            self.recorder = Recorder(db.resolve_dsn(self.settings))
        await self.refresh_models("start")
        self._spawn(self._listen_forever(), "listener")
        self._spawn(self._poll_forever(), "poller")
        self._spawn(self._flush_forever(), "flusher")
        self.started = True

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), timeout=10)
        if self.metrics:
            with contextlib.suppress(Exception):
                self.metrics.publish()
        self.spool.close()
        if self.writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.run(self.recorder.close()), timeout=5)
            self.writer.close()
        elif self.recorder is not None:
            import ray

            with contextlib.suppress(Exception):
                ray.kill(self.recorder)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=2)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), timeout=5)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=f"sira-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def reconfigure(self, data: dict[str, Any]) -> None:
        """Apply a new ``user_config`` (batching, caches, models) without a restart.

        A config that does not validate is refused here, never raised: Ray Serve restarts a replica whose
        ``reconfigure`` raises, which took the service down until a good file was deployed. The replica
        keeps its last good config; ``/readyz``, the log and ``sira_config_rejected`` say what was refused.
        """
        try:
            config = ServingConfig.from_dict({**self.config.model_dump(exclude={"spool_dir"}), **(data or {})})
        except InvalidInput as exc:
            self.rejected_config = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                    "error": exc.message}
            log.warning("user_config refused, serving with the last good one: %s", exc.message)
            if self.metrics:
                self.metrics.count(self.metrics.config_rejected)
            return
        self.rejected_config = None
        models_changed = config.models != self.config.models
        self.config = config
        self._batched.set_max_batch_size(config.max_batch_size)
        self._batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.histories.max_entries, self.histories.ttl_s = config.cache_max_entries, config.cache_ttl_s
        self.identities.ttl_s = config.auth_cache_ttl_s
        self.answers.ttl_s = config.idempotency_ttl_s
        self.spool.fsync = config.spool_fsync  # production.yaml turns it on in user_config
        self.pg.open_s = self.redis_breaker.open_s = config.breaker_open_s
        if models_changed and self.started:
            await self.refresh_models("reconfigure")

    # -- the registry -------------------------------------------------------------------

    async def refresh_models(self, reason: str) -> list[dict[str, Any]]:
        """Load what the registry says each served model runs now; swap what changed."""
        async with self._reload_lock:
            async with self.pool.acquire(timeout=5) as conn:
                rows = await conn.fetch(
                    """SELECT m.id AS model_id, m.name AS model_name, m.entity_type, v.version, v.status,
                              v.artifact_uri, v.artifact_sha256, v.thresholds
                         FROM sira_models m
                         LEFT JOIN sira_model_versions v ON v.model_id = m.id AND v.status IN ('production', 'staging')
                        WHERE m.name = ANY($1::text[])""",
                    self.config.models,
                )
            changes = []
            for name in self.config.models:
                mine = [r for r in rows if r["model_name"] == name]
                if not mine:
                    self.slots.pop(name, None)
                    continue
                current = self.slots.get(name)
                wanted = {r["status"]: r for r in mine if r["status"]}
                loaded: dict[str, ModelRuntime | None] = {}
                for role, status in (("production", "production"), ("shadow", "staging")):
                    row = wanted.get(status)
                    have = getattr(current, role) if current else None
                    if row is None:
                        loaded[role] = None
                    elif have is not None and (have.version, have.artifact_sha256) == (row["version"], row["artifact_sha256"]):
                        loaded[role] = have
                    else:
                        loaded[role] = await self._load_served(name, role, dict(row), have)
                    failure = self.load_failures.get((name, role))
                    if failure is not None and (row is None or (failure.version, failure.artifact_sha256)
                                                != (row["version"], row["artifact_sha256"])):
                        del self.load_failures[(name, role)]  # the registry moved on: nothing to retry
                slot = Slot(name, mine[0]["model_id"], mine[0]["entity_type"], loaded["production"], loaded["shadow"])
                before = (current.production.version if current and current.production else None,
                          current.shadow.version if current and current.shadow else None)
                after = (slot.production.version if slot.production else None,
                         slot.shadow.version if slot.shadow else None)
                self.slots[name] = slot  # one assignment: a batch sees the old slot or the new one
                if before != after:
                    change = {"model": name, "production": after[0], "shadow": after[1], "from": before[0],
                              "reason": reason, "at": time.time()}
                    self.swaps.append(change)
                    changes.append(change)
                    log.warning("serving %s: production v%s, shadow v%s (%s)", name, after[0], after[1], reason)
                if self.metrics:
                    self.metrics.version.set(after[0] or 0, tags={"model": name, "role": "production"})
                    self.metrics.version.set(after[1] or 0, tags={"model": name, "role": "shadow"})
                    for role in ("production", "shadow"):
                        self.metrics.load_failing.set(int((name, role) in self.load_failures),
                                                      tags={"model": name, "role": role})
            while len(self.runtimes) > 8:  # keep recent versions for deferred reasons, not all of history
                self.runtimes.pop(next(iter(self.runtimes)))
            if self.load_failures and not any(t.get_name() == "sira-load-retry" for t in self._tasks):
                self._spawn(self._retry_loads(), "load-retry")
            return changes

    async def _load_served(self, name: str, role: str, row: dict[str, Any],
                           have: ModelRuntime | None) -> ModelRuntime | None:
        """Load a registered version; when it cannot be loaded, what the role is served with meanwhile:
        production keeps the version it had (a shadow, none: it may be the production version by now)."""
        key = (name, role)
        failure = self.load_failures.get(key)
        same = failure is not None and (failure.version, failure.artifact_sha256) == (row["version"],
                                                                                      row["artifact_sha256"])
        keep = have if role == "production" else None
        if same and time.monotonic() < failure.retry_at:
            return keep  # backing off
        try:
            runtime = await asyncio.to_thread(ModelRuntime.load, self.settings, row)
        except Exception as exc:  # noqa: BLE001 - a version that cannot load must not take the replica down
            reason, message = _load_error(exc)
            if self.metrics:
                self.metrics.count(self.metrics.load_failures, model=name, role=role, reason=reason)
            if same:
                failure.failed_again()
                log.warning("%s v%s (%s) still cannot be loaded (attempt %d): %s", name, row["version"], role,
                            failure.attempts, message)
                return keep
            failure = LoadFailure(name, role, int(row["version"]), row["artifact_sha256"], reason, message,
                                  retry_at=time.monotonic() + LOAD_RETRY_FIRST_S)
            self.load_failures[key] = failure
            log.error("%s v%s (%s) cannot be loaded: %s; %s", name, row["version"], role, message,
                      f"still serving v{keep.version}" if keep else "answering 503 model_unavailable")
            await self._audit_load("model.load_failed", failure, "failed",
                                   serving=keep.version if keep else None)
            return keep
        self.runtimes[(name, runtime.version)] = runtime
        if same:
            del self.load_failures[key]
            log.warning("%s v%s (%s) loaded after %d failed attempts", name, runtime.version, role, failure.attempts)
            await self._audit_load("model.load_recovered", failure, "success")
        return runtime

    async def _audit_load(self, action: str, failure: LoadFailure, outcome: str, **details: Any) -> None:
        """One audit row per failure streak (and its end), not per retry; never fails the refresh."""
        from sira.core import audit

        try:
            async with self.pool.acquire(timeout=2) as conn:
                await audit.record(
                    conn, audit.Actor(f"serving:{_replica_name()}", "system"), action, target_type="model_version",
                    target_id=f"{failure.model}:v{failure.version}", outcome=outcome,
                    details={**failure.public(), "message": failure.message, **details})
        except Exception as exc:  # noqa: BLE001 - the log line above says it already
            log.warning("audit row %s not written: %s", action, type(exc).__name__)

    async def _retry_loads(self) -> None:
        """Try the versions that failed to load again when their backoff is over, until none is left."""
        while self.load_failures:
            due = min(f.retry_at for f in self.load_failures.values())
            await asyncio.sleep(max(due - time.monotonic(), LOAD_RETRY_FIRST_S))
            await self._refresh_quietly("retry")

    def unavailable_models(self) -> dict[str, dict[str, Any]]:
        """Served models without a production version to answer with because it cannot be loaded (readiness)."""
        out = {}
        for (name, role), failure in list(self.load_failures.items()):
            slot = self.slots.get(name)
            if role == "production" and (slot is None or slot.production is None):
                out[name] = failure.public()
        return out

    async def _listen_forever(self) -> None:
        """LISTEN for registry and snapshot changes; reconnect after an outage (and resync)."""
        delay = 0.5
        while True:
            conn = None
            try:
                conn = await db.connect(db.resolve_dsn(self.settings))
                self._listener = conn
                await conn.add_listener("sira_registry", self._on_registry)
                await conn.add_listener(feature_store.SNAPSHOT_CHANNEL, self._on_snapshots)
                conn.add_termination_listener(self._on_listener_lost)
                self.pg.succeeded()
                if delay > 0.5:  # we were disconnected: notifications may have been missed
                    self.histories.clear()
                    await self.refresh_models("reconnect")
                delay = 0.5
                while not conn.is_closed():
                    await asyncio.sleep(0.5)
                raise ConnectionError("listener connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening whatever happens
                log.debug("listener: %s", exc)
                delay = min(delay * 2, 5.0)
                await asyncio.sleep(delay)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.remove_termination_listener(self._on_listener_lost)  # closed by us: no outage
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=1)

    def _on_listener_lost(self, _conn: Any) -> None:
        """The notification connection ended: Postgres is going away (stopped, crashed, restarting) or the
        link to it is; the first sign of an outage even when every request is served from caches."""
        self.pg.failed(ConnectionError("the notification connection to PostgreSQL was lost"))

    def _on_registry(self, _conn: Any, _pid: int, _channel: str, _payload: str) -> None:
        self._spawn(self._refresh_quietly("notify"), "refresh")

    async def _refresh_quietly(self, reason: str) -> None:
        try:
            await self.refresh_models(reason)
        except Exception:  # noqa: BLE001 - the poller retries
            log.exception("model refresh failed (%s)", reason)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval_s)
            await self._refresh_quietly("poll")

    def _on_snapshots(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        entity_type = message.get("t")
        now = time.time()  # wall clock: compared with the write times of Redis entries too
        if message.get("all"):
            self.histories.clear(lambda k: k[0] == entity_type)
            self._invalidated[(entity_type, "*")] = now
            return
        stale = []
        spec = self._entity_spec(entity_type)
        lookback = spec.lookback_seconds * 1_000_000 if spec else None
        for entity_id, last_event_id, n_events, labelled in message.get("e", []):
            key = (entity_type, entity_id)
            cached: CachedHistory | None = self.histories.get(key, allow_expired=True)
            if cached is not None and lookback is not None and _holds_state(cached.history, last_event_id,
                                                                              n_events, labelled, lookback):
                continue  # that state, or a newer one of it: this replica folded those events in itself
            self.histories.pop(key)
            self._invalidated[key] = now
            stale.append(key)
        if len(self._invalidated) > 100_000:
            self._invalidated.clear()
        if stale and self.redis is not None and self.redis_breaker.available:
            self._spawn(self._redis_forget(stale), "redis-forget")

    def _entity_spec(self, entity_type: str) -> EntityFeatures | None:
        """The served feature sets' definition of an entity type (None: no served model uses it)."""
        for slot in self.slots.values():
            fs = slot.production.feature_set if slot.production else None
            if fs is not None and any(e.entity == entity_type for e in fs.entities):
                return fs.entity(entity_type)
        return None

    async def _redis_forget(self, keys: list[tuple[str, str]]) -> None:
        with contextlib.suppress(Exception):
            await self.redis.delete(*(self._redis_history_key(k) for k in keys))

    # -- entry points -------------------------------------------------------------------

    def slot(self, model: str) -> Slot:
        slot = self.slots.get(model)
        if slot is None:
            if model not in self.config.models:
                raise NotFound(f"model {model!r} is not served here (served: {', '.join(self.config.models)})",
                               code="unknown_model", details={"field": "model", "model": model})
            raise NotFound(f"unknown model {model!r}", code="unknown_model", details={"field": "model"})
        if slot.production is None:
            failure = self.load_failures.get((model, "production"))
            if failure is not None:
                raise ServiceUnavailable(
                    f"model {model!r} is unavailable: its production version v{failure.version} cannot be loaded "
                    f"({failure.reason}); this replica retries by itself", code="model_unavailable",
                    details={"model": model, **failure.public()})
            raise Conflict(f"model {model!r} has no production version", code="no_production_version",
                           details={"model": model})
        return slot

    def prepare(self, model: str, body: ScoreItem, started: float, prefix: str = "") -> Item:
        """Validate one request against the served version; redact its event (``started``: its arrival)."""
        slot = self.slot(model)
        runtime = slot.production
        request_id = body.request_id or f"auto-{uuid.uuid4()}"
        if self.redactor is not None and body.request_id:
            request_id = self.redactor.scrub_value(body.request_id)
        if runtime.feature_set is not None:
            if body.event is None:
                raise InvalidInput(f"{prefix}event: {model} is a feature-store model: send the event",
                                   code="missing_field", details={"field": f"{prefix}event"})
            event = body.event
            key = ENTITY_COLUMNS.get(slot.entity_type)
            if key and getattr(event, key) is None and not (key == "card_token" and event.card_number):
                raise InvalidInput(f"{prefix}event.{key}: required to score {model} (its entity is {slot.entity_type})",
                                   code="missing_entity_key", details={"field": f"{prefix}event.{key}"})
            # validated by the request model already: redacted into a row without validating again
            row = event_row(event, self.redactor, "score", event.attributes)
            if isinstance(row, Rejection):
                raise InvalidInput(f"{prefix}event.{row.field or ''}: {row.reason}", code=row.reason_code,
                                   details={"field": f"{prefix}event.{row.field}" if row.field else f"{prefix}event"})
            digest = None
            if body.request_id is not None:  # occurred_at left to the server is "now": not part of what was asked
                digest = request_digest(model, {**row, "occurred_at": row["occurred_at"]
                                                if "occurred_at" in event.model_fields_set else None})
            return Item(runtime, slot.shadow, request_id, body.request_id is not None, row, None, body.record,
                        body.explain, started, digest=digest)
        if body.features is None:
            raise InvalidInput(f"{prefix}features: {model} takes ready features, not an event",
                               code="missing_field", details={"field": f"{prefix}features"})
        try:
            missing = runtime.check_features(body.features)
        except InvalidInput as exc:
            exc.message = prefix + exc.message
            exc.details = {"field": prefix + exc.details.get("field", "")}
            raise
        return Item(runtime, slot.shadow, request_id, body.request_id is not None, None, dict(body.features), False,
                    body.explain, started, missing,
                    digest=request_digest(model, body.features) if body.request_id is not None else None)

    async def score(self, item: Item) -> dict[str, Any]:
        """Score one prepared request (batched with its neighbours); the same request id answers once."""
        key = (item.runtime.model_name, item.request_id)
        if item.client_request_id:
            earlier = self.answers.get(key)
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
                    return await self.score(item)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._batched(item)
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

    # -- the batch ---------------------------------------------------------------------

    async def _score_batch(self, items: list[Item]) -> list[dict[str, Any] | BaseException]:
        async with self._batch_lock:
            return await self._score_batch_locked(items)

    async def _score_batch_locked(self, items: list[Item]) -> list[dict[str, Any] | BaseException]:
        degraded: set[str] = set()
        if self.metrics:
            self.metrics.batch_size.observe(len(items))
        # The lookup of earlier answers waits on Redis/Postgres while features are computed here.
        lookup = asyncio.ensure_future(self._earlier_answers([i for i in items if i.client_request_id], degraded))
        await asyncio.sleep(0)  # let the lookup send its query before the CPU work below
        out: list[dict[str, Any] | BaseException | None] = [None] * len(items)
        todo = list(range(len(items)))
        vectors: dict[int, dict[str, Any]] = {}
        flags: dict[int, dict[str, Any]] = {}
        folded_all: dict[tuple[str, str], History] = {}
        by_fs: dict[FeatureSet, list[int]] = {}
        for n in todo:
            item = items[n]
            if item.runtime.feature_set is None:
                vectors[n] = item.features or {}
                flags[n] = {"missing_features": item.missing} if item.missing else {}
            else:
                by_fs.setdefault(item.runtime.feature_set, []).append(n)
        for fs, members in by_fs.items():
            try:
                v, f, folded = await self._event_inputs(fs, [items[n] for n in members], degraded)
            except Exception as exc:  # noqa: BLE001 - one feature set failing must not fail the others
                log.exception("feature assembly failed")
                for n in members:
                    out[n] = exc
                continue
            for n, vector, flag in zip(members, v, f):
                vectors[n], flags[n] = vector, flag
            folded_all.update(folded)
        try:
            earlier = await lookup
        except Exception:  # noqa: BLE001 - idempotency lookup failing must not fail the batch
            log.exception("looking up earlier answers failed")
            degraded.add("idempotency_unchecked")
            earlier = {}
        if self.pg.failing:
            # Postgres unreachable since this replica last saw it fail (a lookup, the notification connection,
            # the flusher), even when this batch read nothing from it: cached histories may lack other
            # replicas' events, and the predictions are in the spool only.
            degraded.add("database_unavailable")
        for n, item in enumerate(items):
            prior = earlier.get((item.runtime.model_name, item.request_id))
            if prior is not None:
                try:
                    out[n] = replay(prior, item)
                except Conflict as exc:
                    out[n] = exc
                folded_all = {k: v for k, v in folded_all.items() if not _touches(item, k)}
        todo = [n for n in todo if not (isinstance(out[n], Conflict) or isinstance(out[n], dict) and out[n].get("replayed"))]
        records: list[dict[str, Any]] = []
        shadow_jobs: list[tuple[Item, dict[str, Any], str, str]] = []
        by_runtime: dict[int, list[int]] = {}
        for n in todo:
            if out[n] is None:
                by_runtime.setdefault(id(items[n].runtime), []).append(n)
        now = datetime.now(timezone.utc)
        epoch = idempotency_epoch(self.config.idempotency_ttl_s)
        for members in by_runtime.values():
            runtime = items[members[0]].runtime
            X = runtime.matrix([vectors[n] for n in members])
            scores = runtime.predict(X)
            decisions = runtime.decide(scores)
            inline = [j for j, n in enumerate(members)
                      if items[n].explain or self.config.reasons == "all" or decisions[j] != "approve"]
            reasons: dict[int, list[dict[str, Any]]] = {}
            if inline:
                contrib = runtime.contributions(X[inline])
                for k, j in enumerate(inline):
                    reasons[j] = runtime.reasons(X[j], contrib[k])
            for j, n in enumerate(members):
                item = items[n]
                prediction_id = prediction_id_for(runtime.model_name, item.request_id, item.client_request_id,
                                                  epoch)
                event_id = item.event["event_id"] if item.event else None
                latency = (time.perf_counter() - item.started) * 1000
                answer = {
                    "prediction_id": prediction_id, "request_id": item.request_id, "model": runtime.model_name,
                    "version": runtime.version, "score": float(scores[j]), "decision": decisions[j],
                    "reasons": reasons.get(j, []), "reasons_deferred": j not in reasons, "flags": flags[n],
                    "degraded": bool(degraded), "degraded_reasons": sorted(degraded),
                    "latency_ms": round(latency, 3), "scored_at": now.isoformat(), "event_id": event_id,
                    "replayed": False, **({DIGEST: item.digest} if item.digest else {}),
                }
                records.append(self._prediction_record(answer, runtime, vectors[n], "production"))
                out[n] = answer
                if self.metrics:
                    self.metrics.count(self.metrics.decisions, model=runtime.model_name, decision=decisions[j])
                if item.shadow is not None and self.config.shadow:
                    shadow_jobs.append((item, vectors[n], decisions[j], item.request_id))
        recorded = [items[n].event for n in todo if items[n].record and items[n].event is not None
                    and isinstance(out[n], dict)]
        fs_of = {items[n].event["event_id"]: items[n].runtime.feature_set for n in todo
                 if items[n].event is not None and items[n].runtime.feature_set is not None}
        for event in recorded:
            fs = fs_of[event["event_id"]]
            records.append({"kind": "event", "feature_set": fs.name, "feature_set_version": fs.version,
                            "row": {**event, "occurred_at": event["occurred_at"].isoformat()}})
        try:
            self.spool.append(records)  # before answering: an answered prediction is never lost
        except OSError as exc:
            log.exception("spool write failed")
            failure = ServiceUnavailable(f"cannot record predictions locally: {exc}", code="spool_unavailable")
            return [failure if isinstance(out[n], dict) and not out[n].get("replayed") else out[n]
                    for n in range(len(items))]
        # caches: the folded histories (when the events are recorded), the answers
        for key, history in folded_all.items():
            self.histories.put(key, CachedHistory(history))
        for n in todo:
            if isinstance(out[n], dict) and items[n].client_request_id:
                self.answers.put((items[n].runtime.model_name, items[n].request_id), out[n])
        if self.redis is not None and self.redis_breaker.available:
            self._spawn(self._redis_store(items, out, todo, folded_all), "redis-store")
        if shadow_jobs:
            self._spawn(self._shadow(shadow_jobs), "shadow")
        for reason in degraded:
            if self.metrics:
                self.metrics.count(self.metrics.degraded, len(items), reason=reason)
        return out  # type: ignore[return-value]

    def _prediction_record(self, answer: dict[str, Any], runtime: ModelRuntime, vector: dict[str, Any],
                           role: str) -> dict[str, Any]:
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
        }

    async def _shadow(self, jobs: list[tuple[Item, dict[str, Any], str, str]]) -> None:
        """Staging versions score the same inputs; stored beside production's, never returned."""
        try:
            by_runtime: dict[int, list[tuple[Item, dict[str, Any], str, str]]] = {}
            for job in jobs:
                by_runtime.setdefault(id(job[0].shadow), []).append(job)
            records = []
            now = datetime.now(timezone.utc).isoformat()
            epoch = idempotency_epoch(self.config.idempotency_ttl_s)
            for group in by_runtime.values():
                runtime = group[0][0].shadow
                X = runtime.matrix([g[1] for g in group])
                scores = runtime.predict(X)
                decisions = runtime.decide(scores)
                for (item, vector, prod_decision, request_id), score, decision in zip(group, scores.tolist(), decisions):
                    answer = {"prediction_id": prediction_id_for(runtime.model_name, f"{request_id}:shadow:v{runtime.version}",
                                                                 item.client_request_id, epoch),
                              "scored_at": now, "request_id": request_id,
                              "event_id": item.event["event_id"] if item.event else None, "score": float(score),
                              "decision": decision, "reasons": [], "reasons_deferred": True,
                              "flags": {"production_decision": prod_decision}, "degraded": False,
                              "degraded_reasons": [], "latency_ms": 0.0}
                    records.append(self._prediction_record(answer, runtime, vector, "shadow"))
                    if self.metrics:
                        self.metrics.count(self.metrics.shadow, model=runtime.model_name,
                                           agreement="same" if decision == prod_decision else "differs")
            self.spool.append(records)
        except Exception:  # noqa: BLE001 - shadow scoring never affects serving
            log.exception("shadow scoring failed")

    # -- idempotency ---------------------------------------------------------------------

    async def _earlier_answers(self, items: list[Item], degraded: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
        """Answers already given to these request ids by any replica: Redis (written as each answer is
        given, so it sees a retry on another replica at once) and ``sira_predictions`` (what Redis lost:
        evicted, restarted, or not written while its breaker was open), asked at the same time."""
        if not items:
            return {}
        keys = [(i.runtime.model_name, i.request_id) for i in items]
        stored = asyncio.ensure_future(self._stored_answers(keys))
        cached: dict[tuple[str, str], dict[str, Any]] | None = None
        if self.redis is not None:
            if self.redis_breaker.available:
                try:
                    values = await self.redis.mget([f"sira:answer:{m}:{r}" for m, r in keys])
                    self.redis_breaker.succeeded()
                    cached = {k: orjson.loads(v) for k, v in zip(keys, values) if v is not None}
                except Exception as exc:  # noqa: BLE001
                    self.redis_breaker.failed(exc)
            if cached is None:
                degraded.add("cache_unavailable")
        found = await stored
        if found is None:
            if cached is None:  # neither could say: answered anyway (flagged)
                degraded.add("database_unavailable")
            found = {}
        return {**found, **(cached or {})}

    async def _stored_answers(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]] | None:
        """The production answers of these (model, request id) within the idempotency window in
        ``sira_predictions``; None when Postgres is unavailable."""
        if not self.pg.available:
            return None
        found: dict[tuple[str, str], dict[str, Any]] = {}
        try:
            async with self.pool.acquire(timeout=self.config.db_timeout_s) as conn:
                for model in sorted({m for m, _ in keys}):
                    rows = await conn.fetch(
                        """SELECT prediction_id, request_id, model_name, version, event_id, score, decision, reasons,
                                  flags, degraded, latency_ms, scored_at
                             FROM sira_predictions
                            WHERE model_name = $1 AND request_id = ANY($2::text[]) AND role = 'production'
                              AND scored_at > now() - make_interval(secs => $3)""",
                        model, [r for m, r in keys if m == model], float(self.config.idempotency_ttl_s),
                        timeout=self.config.db_timeout_s,
                    )
                    for row in rows:
                        found[(model, row["request_id"])] = answer_from_row(row)
            self.pg.succeeded()
        except db.UNAVAILABLE as exc:
            self.pg.failed(exc)
            return None
        return found

    async def _redis_store(self, items: list[Item], out: list[Any], todo: list[int],
                           folded: dict[tuple[str, str], History]) -> None:
        """Answers (for other replicas' idempotency) and folded histories into Redis, after answering."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            for n in todo:
                if isinstance(out[n], dict) and items[n].client_request_id:
                    pipe.set(f"sira:answer:{items[n].runtime.model_name}:{items[n].request_id}",
                             orjson.dumps(out[n]), ex=self.config.idempotency_ttl_s, nx=True)
            for key, history in folded.items():
                spec = self._entity_spec(key[0])
                if spec is not None:
                    state = feature_store.state_from_history(spec, history, int(history.ts[-1]))
                    pipe.set(self._redis_history_key(key), orjson.dumps({"s": state, "w": time.time()}),
                             ex=self.config.redis_ttl_s)
            await pipe.execute()
            self.redis_breaker.succeeded()
        except Exception as exc:  # noqa: BLE001
            self.redis_breaker.failed(exc)

    # -- features ---------------------------------------------------------------------------

    def _redis_history_key(self, key: tuple[str, str]) -> str:
        return f"sira:history:{key[0]}:{key[1]}"

    async def _event_inputs(self, fs: FeatureSet, items: list[Item], degraded: set[str]
                            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[tuple[str, str], History]]:
        """Feature vectors for the batch's events, the per-request flags, and the folded histories to cache."""
        events = [i.event for i in items]
        keys = sorted({(spec.entity, e[spec.key_column]) for spec in fs.entities for e in events
                       if e.get(spec.key_column) is not None})
        found, status = await self._histories(fs, keys, degraded)
        inputs = event_vectors(fs, events, {k: v.history for k, v in found.items()})
        flags: list[dict[str, Any]] = []
        for item, vector in zip(items, inputs.vectors):
            flag: dict[str, list[str]] = {}
            for spec in fs.entities:
                value = item.event.get(spec.key_column)
                if value is None:
                    flag.setdefault("missing_entities", []).append(spec.entity)
                    continue
                state = status.get((spec.entity, value))
                if state == "unavailable":
                    flag.setdefault("unavailable_entities", []).append(spec.entity)
                    for name in spec.names():
                        vector[name] = None  # unknown history: missing, not "first event ever"
                elif state == "new":
                    flag.setdefault("new_entities", []).append(spec.entity)
                elif self._stale(found.get((spec.entity, value)), item.event["occurred_at"], fs):
                    flag.setdefault("stale_entities", []).append(spec.entity)
            flags.append(flag)
        recorded = {(spec.entity, i.event[spec.key_column]) for i in items if i.record for spec in fs.entities
                    if i.event.get(spec.key_column) is not None}
        folded = {k: h for k, h in inputs.folded.items()
                  if k in recorded and status.get(k) != "unavailable"}
        return inputs.vectors, flags, folded

    async def _histories(self, fs: FeatureSet, keys: list[tuple[str, str]], degraded: set[str]
                         ) -> tuple[dict[tuple[str, str], CachedHistory], dict[tuple[str, str], str]]:
        """Entity histories: in-replica LRU, then Redis, then Postgres (snapshot, else the event log)."""
        found: dict[tuple[str, str], CachedHistory] = {}
        status: dict[tuple[str, str], str] = {}
        missing = []
        for key in keys:
            cached = self.histories.get(key)
            if cached is not None:
                found[key] = cached
            else:
                missing.append(key)
        self._count_cache("memory", len(found), len(missing))
        if missing and self.redis is not None:
            if self.redis_breaker.available:
                try:
                    values = await self.redis.mget([self._redis_history_key(k) for k in missing])
                    self.redis_breaker.succeeded()
                    still = []
                    for key, raw in zip(missing, values):
                        entry = orjson.loads(raw) if raw is not None else None
                        if entry is not None and entry["w"] > self._invalidated_at(key):
                            spec = fs.entity(key[0])
                            history = feature_store.history_from_state(spec, entry["s"])
                            found[key] = CachedHistory(history)
                            self.histories.put(key, found[key])
                        else:
                            still.append(key)
                    self._count_cache("redis", len(missing) - len(still), len(still))
                    missing = still
                except Exception as exc:  # noqa: BLE001
                    self.redis_breaker.failed(exc)
                    degraded.add("cache_unavailable")
            else:
                degraded.add("cache_unavailable")
        if not missing:
            return found, status
        if not self.pg.available:
            degraded.add("database_unavailable")
            return found, {**status, **{k: "unavailable" for k in missing}}
        read_at = time.time()
        try:
            async with self.pool.acquire(timeout=self.config.db_timeout_s) as conn:
                rows = await conn.fetch(
                    """SELECT s.entity_type, s.entity_id, s.as_of, s.state
                         FROM unnest($1::text[], $2::text[]) AS k(entity_type, entity_id)
                         JOIN sira_feature_snapshots s USING (entity_type, entity_id)
                        WHERE s.feature_set = $3 AND s.feature_set_version = $4""",
                    [k[0] for k in missing], [k[1] for k in missing], fs.name, fs.version,
                    timeout=self.config.db_timeout_s,
                )
                for row in rows:
                    key = (row["entity_type"], row["entity_id"])
                    history = feature_store.history_from_state(fs.entity(key[0]), row["state"])
                    found[key] = CachedHistory(history)
                absent = [k for k in missing if k not in found]
                for entity in sorted({k[0] for k in absent}):
                    spec = fs.entity(entity)
                    ids = [k[1] for k in absent if k[0] == entity]
                    horizon = datetime.now(timezone.utc) - timedelta(seconds=spec.lookback_seconds)
                    loaded = await feature_store.load_histories(conn, spec, ids, horizon,
                                                                datetime(2200, 1, 1, tzinfo=timezone.utc),
                                                                fs.label_name)
                    for entity_id in ids:
                        history = loaded.get(entity_id)
                        if history is None or len(history) == 0:
                            status[(entity, entity_id)] = "new"
                            history = History.from_rows([], spec.categorical_columns)
                        found[(entity, entity_id)] = CachedHistory(history)
            self.pg.succeeded()
        except db.UNAVAILABLE as exc:
            self.pg.failed(exc)
            degraded.add("database_unavailable")
            return found, {**status, **{k: "unavailable" for k in missing if k not in found}}
        for key in missing:
            if key in found and self._invalidated_at(key) < read_at:
                self.histories.put(key, found[key])
        return found, status

    @staticmethod
    def _stale(cached: CachedHistory | None, occurred_at: datetime, fs: FeatureSet) -> bool:
        """The entity's newest known event is older than the feature set's TTL at the scored event's time:
        its windows are still evaluated correctly, but a source that bypasses the snapshots may be lagging."""
        if cached is None or len(cached.history) == 0:
            return False
        return (feature_store.to_us(occurred_at) - int(cached.history.ts[-1])) > parse_duration(fs.ttl) * 1_000_000

    def _count_cache(self, layer: str, hits: int, misses: int) -> None:
        if self.metrics is None:
            return
        self.metrics.count(self.metrics.cache, hits, layer=layer, outcome="hit")
        self.metrics.count(self.metrics.cache, misses, layer=layer, outcome="miss")

    def _invalidated_at(self, key: tuple[str, str]) -> float:
        return max(self._invalidated.get(key, 0.0), self._invalidated.get((key[0], "*"), 0.0))

    # -- the flusher -------------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        delay = 0.0  # at start, at once: replay what a dead replica left in the spool
        last_orphan_scan = 0.0
        failing = False
        while True:
            await asyncio.sleep(delay)
            try:
                scan = time.monotonic() - last_orphan_scan > 5.0
                if scan or self.spool.pending:
                    if await self.flush():
                        self.pg.succeeded()
                    if scan:
                        last_orphan_scan = time.monotonic()
                delay, failing = self.config.flush_interval_s, False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried with backoff; the spool keeps everything
                if db.is_unavailable(exc):
                    self.pg.failed(exc)
                if not failing:
                    log.warning("storing the spool failed (%s: %s); retrying with backoff", type(exc).__name__,
                                " ".join(str(exc).split())[:300])
                delay, failing = min(max(delay * 2, 0.5), 5.0), True
            if self.metrics:
                self.metrics.spooled.set(self.spool.pending)
                self.metrics.publish()

    async def flush(self) -> int:
        """Write every closed spool segment to Postgres (this replica's and any left by a dead one)."""
        async with self._flush_lock:
            self.spool.rotate()
            written = 0
            for segment in self.spool.claim():
                records = segment.read()
                try:
                    await self._write_records(records)
                except REFUSED_FOR_GOOD:  # (through Ray, an instance of its cause too)
                    written += await self._write_one_by_one(segment, records)
                    continue
                self.spool.done(segment)
                written += len(records)
            return written

    async def _write_one_by_one(self, segment: Any, records: list[dict[str, Any]]) -> int:
        """A segment Postgres refused: store its records one at a time and set aside those it refuses
        (retrying them would block every segment after this one). Other errors propagate: retried."""
        refused = []
        for record in records:
            try:
                await self._write_records([record])
            except REFUSED_FOR_GOOD as exc:
                refused.append(record)
                log.error("PostgreSQL refused a spooled %s record (%s); set aside", record.get("kind"),
                          type(exc).__name__)
        if not refused:
            self.spool.done(segment)
            return len(records)
        self.spool.set_aside(segment, refused)
        if self.metrics:
            self.metrics.refused.inc(len(refused))
        return len(records) - len(refused)

    async def flush_quietly(self) -> int:
        """:meth:`flush`, logging a failure instead of raising it (the flusher retries on its own)."""
        try:
            return await self.flush()
        except Exception:  # noqa: BLE001 - the spool keeps the records; the flusher tries again
            log.exception("spool flush failed")
            return 0

    async def _write_records(self, records: list[dict[str, Any]]) -> None:
        if self.writer is None:
            await self.recorder.store.remote(records)
        else:
            await self.writer.run(self.recorder.store(records))

    def explain(self, model: str, version: int, features: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Reason codes of a stored prediction whose reasons were deferred: exact, from its stored features."""
        runtime = self.runtimes.get((model, version)) or self._load_version(model, version)
        if runtime is None:
            return None
        X = runtime.matrix([features])
        return runtime.reasons(X[0], runtime.contributions(X)[0])

    def _load_version(self, model: str, version: int) -> ModelRuntime | None:
        """A version no longer served (spool replayed after a swap or a restart), loaded for its reasons."""
        try:
            row = asyncio.run(version_row(db.resolve_dsn(self.settings), model, version))
            if row is None:
                return None
            runtime = ModelRuntime.load(self.settings, dict(row))
            self.runtimes[(model, version)] = runtime
            return runtime
        except Exception:  # noqa: BLE001 - the prediction is stored without reasons rather than lost
            log.exception("cannot load %s v%s for deferred reasons", model, version)
            return None
