"""Online scoring: the service behind ``POST /v1/score``, and its Ray Serve deployment.

One process-local :class:`ScoringService` per replica does the work; the
FastAPI application (:func:`sira.api.create_app`) exposes it, and
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
import functools
import hashlib
import logging
import math
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import asyncpg
import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from fastapi import APIRouter, Request
from fastapi.responses import Response
from ray import serve

from sira import db, feature_store
from sira.api import errors, require
from sira.auth import Identity
from sira.config import Settings
from sira.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, PermissionDenied, ServiceUnavailable
from sira.events import EventIn, Rejection, event_row, max_string_length, value_problem
from sira.features import ENTITY_COLUMNS, EntityFeatures, FeatureSet, History, get_feature_set, parse_duration
from sira.scoring import ModelRuntime, event_vectors

log = logging.getLogger(__name__)

# What PostgreSQL refuses for good (bad data, a violated constraint): retrying the same record cannot help.
REFUSED_FOR_GOOD = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


# -- configuration ---------------------------------------------------------------------


class ServingConfig(BaseModel):
    """What a serving deployment serves and how (``user_config`` / ``args`` in serve_configs/*.yaml)."""

    model_config = ConfigDict(extra="forbid")

    models: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]] = Field(
        default_factory=lambda: ["fraud"], min_length=1, description="Model names this deployment serves.")
    max_batch_size: Annotated[int, Field(ge=1, le=1024)] = 16
    batch_wait_timeout_s: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_batch_rows: Annotated[int, Field(ge=1, le=10_000)] = 256
    reasons: Literal["risky", "all"] = Field(
        "risky", description="risky: reasons inline for review/block; for approve they are computed when the stored "
                 "prediction is read. all: always inline.")
    shadow: bool = True
    cache_ttl_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    cache_max_entries: Annotated[int, Field(ge=0, le=10_000_000)] = 100_000
    redis_ttl_s: Annotated[int, Field(ge=1, le=86_400)] = 600
    idempotency_ttl_s: Annotated[int, Field(ge=60, le=30 * 86_400)] = 86_400
    auth_cache_ttl_s: Annotated[float, Field(ge=0, le=3600)] = 10.0
    # Postgres down: callers seen this long before still get answers (a revoked key never does).
    auth_outage_grace_s: Annotated[float, Field(ge=0, le=86_400)] = 900.0
    spool_dir: Path | None = None
    spool_fsync: bool = False
    flush_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.2
    poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    breaker_open_s: Annotated[float, Field(gt=0, le=300)] = 2.0
    db_timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    metrics: bool = Field(True, description="Export Ray metrics (latency, batch sizes, cache, decisions, ...).")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ServingConfig":
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidInput(f"serving config {where}: {first['msg']}", code="invalid_config") from None


# -- small building blocks ----------------------------------------------------------------


class Breaker:
    """A circuit breaker: after a failure, skip the dependency for a while instead of waiting on it.

    ``failing``: from a failure until the next success, however long the breaker has been open (open,
    it is not tried; tried again, it may still fail)."""

    def __init__(self, name: str, open_s: float):
        self.name, self.open_s = name, open_s
        self.open_until = 0.0
        self.failing = False

    @property
    def available(self) -> bool:
        return time.monotonic() >= self.open_until

    def failed(self, exc: BaseException) -> None:
        if self.available:
            log.warning("%s unavailable (%s: %s); degraded for %.1fs", self.name, type(exc).__name__, exc,
                        self.open_s)
        self.open_until = time.monotonic() + self.open_s
        self.failing = True

    def succeeded(self) -> None:
        self.open_until = 0.0
        self.failing = False


class LRU:
    """A bounded mapping with a time to live, in insertion/access order."""

    def __init__(self, max_entries: int, ttl_s: float):
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any, *, allow_expired: bool = False, stale_for: float = 0.0) -> Any:
        """The value, unless expired (``allow_expired``: whatever its age; ``stale_for``: expired
        for at most that many seconds)."""
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires + stale_for < time.monotonic() and not allow_expired:
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        if self.max_entries <= 0:
            return
        self._data[key] = (time.monotonic() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def pop(self, key: Any) -> None:
        self._data.pop(key, None)

    def clear(self, predicate: Any = None) -> None:
        if predicate is None:
            self._data.clear()
        else:
            for key in [k for k in self._data if predicate(k)]:
                del self._data[key]

    def __len__(self) -> int:
        return len(self._data)


def _in_replica() -> bool:
    try:
        serve.get_replica_context()
    except Exception:  # noqa: BLE001 - RayServeException: not in a Serve replica
        return False
    return True


def _replica_name() -> str:
    """This replica (or process) as the audit log names it."""
    import socket

    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - not in a Serve replica
        return f"{socket.gethostname()}:{os.getpid()}"


class BackgroundLoop:
    """An event loop in a thread of its own: where a :class:`Recorder` works outside a Serve replica
    (``sira api``, tests), off the loop that answers requests."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    async def run(self, coro: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@dataclass
class CachedHistory:
    history: History


def _touches(item: "Item", key: tuple[str, str]) -> bool:
    """Whether a request's event belongs to an entity's history (its folded history must not be cached
    when the request turned out to be a replay)."""
    if item.event is None:
        return False
    column = ENTITY_COLUMNS.get(key[0])
    return column is not None and item.event.get(column) == key[1]


def _holds_state(history: History, last_event_id: str, n_events: int, labelled: int, lookback_us: int) -> bool:
    """Whether a cached history holds the snapshot state a notification describes: the state's newest
    event is in it, with as many events within the lookback up to it and as many labels.

    It may hold newer events too: folded by this replica after the ones its recorder has just
    stored (a busy entity, a terminal, always has some). Dropping it then would make the next
    request read a snapshot that lacks them: behind, not fresher. Another writer's event, a
    late one, a label or a rematerialisation changes the counts or the newest event: dropped.
    """
    if not len(history):
        return False
    at = np.flatnonzero(history.event_id == last_event_id)
    if at.size != 1:
        return False
    upto = int(at[0]) + 1
    ts = history.ts[:upto]
    known = history.label_known_at
    labels = 0 if known is None else int(np.count_nonzero(np.isfinite(known[:upto])))
    return int(np.count_nonzero(ts > int(ts[-1]) - lookback_us)) == n_events and labels == labelled


class ServingMetrics:
    """Ray metrics (exported by Ray's Prometheus endpoint, aggregated across replicas)."""

    def __init__(self) -> None:
        from ray.util import metrics

        ms = [0.5, 1, 2, 3, 5, 8, 13, 20, 30, 50, 100, 250, 1000]
        self.latency = metrics.Histogram("sira_request_latency_ms", "Server-side latency of SIRA routes (ms).",
                                         boundaries=ms, tag_keys=("route", "model"))
        self.batch_size = metrics.Histogram("sira_batch_size", "Requests per scoring batch.",
                                            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256])
        self.cache = metrics.Counter("sira_feature_cache_lookups", "Entity history lookups by layer and outcome.",
                                     tag_keys=("layer", "outcome"))
        self.decisions = metrics.Counter("sira_decisions", "Decisions by model and outcome.",
                                         tag_keys=("model", "decision"))
        self.degraded = metrics.Counter("sira_degraded_requests", "Requests answered in a degraded mode.",
                                        tag_keys=("reason",))
        self.shadow = metrics.Counter("sira_shadow_scores", "Shadow scores, and whether the decision differed.",
                                      tag_keys=("model", "agreement"))
        self.version = metrics.Gauge("sira_model_version_served", "Version served, by model and role.",
                                     tag_keys=("model", "role"))
        self.spooled = metrics.Gauge("sira_spool_pending_records", "Answered records not yet in Postgres.")
        self.refused = metrics.Counter("sira_spool_refused_records",
                                       "Spooled records PostgreSQL refused, set aside in the spool's refused/ folder.")
        self.load_failures = metrics.Counter("sira_model_load_failures",
                                             "Failed loads of a registered version (each attempt), by reason.",
                                             tag_keys=("model", "role", "reason"))
        self.load_failing = metrics.Gauge("sira_model_load_failing",
                                          "1 while the version the registry names for a role cannot be loaded.",
                                          tag_keys=("model", "role"))
        self.config_rejected = metrics.Counter("sira_config_rejected",
                                               "user_config updates refused (the replica kept its last good one).")
        self.pending_labels = metrics.Counter("sira_feedback_pending_labels",
                                              "Labels recorded for an event not stored (yet).")
        self._counts: dict[tuple[Any, tuple[tuple[str, str], ...]], int] = {}

    def count(self, counter: Any, n: int = 1, **tags: str) -> None:
        """Add to a counter here; :meth:`publish` hands the sums to Ray. A Ray counter's ``inc`` is a
        call into Ray's C++ core (~2% of a replica's CPU at concurrency 32 for the counts of each
        request); a sum here is a dict update."""
        if n <= 0:  # nothing to count (Ray counters refuse 0)
            return
        key = (counter, tuple(tags.items()))
        self._counts[key] = self._counts.get(key, 0) + n

    def publish(self) -> None:
        """The counts added since the last call, into Ray's counters (the flusher calls this every
        ``flush_interval_s``; Prometheus scrapes far less often)."""
        counts, self._counts = self._counts, {}
        for (counter, tags), n in counts.items():
            counter.inc(n, tags=dict(tags))


# -- requests and answers ------------------------------------------------------------------


def _reject_unstorable(value: Any) -> Any:
    """NaN and infinity, over-long strings and field names, NUL characters, integers beyond 64 bits and
    deep nesting are refused wherever they hide in a free-form field, each under its code (JSON parsers
    accept them; the audit trail could not store them; the redactor need not scan them)."""
    _reject_non_finite(value)
    problem = value_problem(value, max_string_length())
    if problem:
        raise problem.error()
    return value


def _reject_non_finite(value: Any, path: str = "") -> Any:
    """NaN and infinity are refused wherever they hide (JSON parsers accept them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("non_finite", "{where}must be finite (NaN and infinity are not accepted)",
                                  {"where": f"{path}: " if path else ""})
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_non_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_non_finite(v, f"{path}.{i}" if path else str(i))
    return value


class ScoreEvent(EventIn):
    """The event to score: the fields of an ingested event; anything else goes in ``attributes``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, coerce_numbers_to_str=True)

    occurred_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    attributes: dict[str, Any] = Field(default_factory=dict, max_length=64)

    @field_validator("amount", "attributes", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        return _reject_unstorable(value)


class ScoreItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="Idempotency key: the same request id returns the same answer without scoring again.")
    event: ScoreEvent | None = None
    features: dict[str, Any] | None = Field(None, description="Ready features (bring-your-own-table models).")
    record: bool = Field(True, description="Also record the event in the feature pipeline.")
    explain: bool = Field(False, description="Reason codes inline whatever the decision.")

    @field_validator("features", mode="before")
    @classmethod
    def _finite_features(cls, value: Any) -> Any:
        return _reject_unstorable(value)

    @field_validator("request_id", mode="before")
    @classmethod
    def _storable_request_id(cls, value: Any) -> Any:
        return _reject_unstorable(value)

    @model_validator(mode="after")
    def _one_input(self) -> "ScoreItem":
        if (self.event is None) == (self.features is None):
            raise ValueError("send either event (feature-store models) or features (bring-your-own models)")
        return self


class ScoreRequest(ScoreItem):
    model: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]


class BatchScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
    requests: list[ScoreItem] = Field(..., min_length=1)


class Reason(BaseModel):
    code: str
    feature: str
    value: Any
    contribution: float
    direction: str
    text: str


class ScoreResponse(BaseModel):
    prediction_id: str
    request_id: str
    model: str
    version: int
    score: float
    decision: Literal["approve", "review", "block"]
    reasons: list[Reason]
    reasons_deferred: bool = False
    flags: dict[str, Any] = {}
    degraded: bool = False
    degraded_reasons: list[str] = []
    latency_ms: float
    scored_at: str
    event_id: str | None = None
    replayed: bool = False


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: uuid.UUID | None = None
    event_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    label: bool
    label_name: Annotated[str, Field(min_length=1, max_length=64)] = "fraud"
    known_at: datetime | None = None
    source: Annotated[str, Field(min_length=1, max_length=100)] = "api"

    @field_validator("event_id", "label_name", "source", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return _reject_unstorable(value)

    @model_validator(mode="after")
    def _target(self) -> "FeedbackRequest":
        if self.prediction_id is None and self.event_id is None:
            raise ValueError("name the prediction_id or the event_id the label is about")
        return self


@dataclass
class Item:
    """A validated request on its way through a batch."""

    runtime: ModelRuntime
    shadow: ModelRuntime | None
    request_id: str
    client_request_id: bool
    event: dict[str, Any] | None  # normalized (redacted) event
    features: dict[str, Any] | None
    record: bool
    explain: bool
    started: float
    missing: list[str] = field(default_factory=list)
    digest: str | None = None  # of what was asked (a client's request id): the same id with other input conflicts


@dataclass(frozen=True)
class Slot:
    """What a model is served with right now (replaced as a whole on a registry change)."""

    model_name: str
    model_id: int
    entity_type: str
    production: ModelRuntime | None
    shadow: ModelRuntime | None


LOAD_RETRY_FIRST_S = 1.0  # a version that failed to load is tried again after 1 s, 2 s, 4 s, ... at most
LOAD_RETRY_MAX_S = 60.0


@dataclass
class LoadFailure:
    """A registered version this replica cannot load (artifact tampered, missing, unreadable): served around
    (the last good version, or 503 ``model_unavailable``) and tried again with backoff, never raised out of the
    replica, which Serve would restart in a loop while every request waits."""

    model: str
    role: str
    version: int
    artifact_sha256: str
    reason: str  # a stable code: artifact_checksum_mismatch, artifact_missing, artifact_unreadable, ...
    message: str  # may name the artifact's location: for logs and the audit log, not for callers
    since: float = field(default_factory=time.time)
    attempts: int = 1
    retry_at: float = 0.0

    def failed_again(self) -> None:
        self.attempts += 1
        self.retry_at = time.monotonic() + min(LOAD_RETRY_FIRST_S * 2 ** (self.attempts - 1), LOAD_RETRY_MAX_S)

    def public(self) -> dict[str, Any]:
        return {"version": self.version, "role": self.role, "reason": self.reason, "attempts": self.attempts,
                "since": datetime.fromtimestamp(self.since, timezone.utc).isoformat()}


def _load_error(exc: BaseException) -> tuple[str, str]:
    """A failed load's stable reason code and message."""
    from sira.errors import SiraError

    if isinstance(exc, SiraError):
        return exc.code, exc.message
    if isinstance(exc, OSError):
        return "artifact_unreadable", f"{type(exc).__name__}: {exc}"
    return "artifact_invalid", f"{type(exc).__name__}: {exc}"


# -- the service ---------------------------------------------------------------------------


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
        from sira.spool import Spool

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
        from sira.ingest import redactor_for

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
        from sira import audit

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


# The hot-path lookups touch a partitioned table: planning a custom plan for every call cost
# ~0.4 ms more than running the generic one (measured: 0.49 vs 0.18 ms per lookup). A start-up
# parameter, not a SET: the pool's reset (``RESET ALL``) would undo a SET at the first release.
SERVING_SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}


class LookupConnection(asyncpg.Connection):  # type: ignore[misc]
    """A connection of the scoring hot path's pool, returned to it without a reset round trip.

    asyncpg resets a released connection with ``SELECT pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`` (~0.3 ms, inside the request: measured 0.59 vs 0.29 ms per
    acquire + ``SELECT 1`` + release). This pool runs lookups and the feedback route's one
    transaction: no session state, cursor, advisory lock or LISTEN to undo (the registry
    listener has a connection of its own). An open transaction is still rolled back and
    listener callbacks dropped: asyncpg does that whatever this returns.
    """

    def get_reset_query(self) -> str:
        return ""


_PREDICTION_IDS = uuid.UUID("5b0f5d2e-6c1e-4b8e-9a57-2f0c3d4e5a61")


async def version_row(dsn: str, model: str, version: int) -> dict[str, Any] | None:
    """What :meth:`ModelRuntime.load` needs of a registered version (None: no such version)."""
    conn = await db.connect(dsn)
    try:
        row = await conn.fetchrow(
            """SELECT m.id AS model_id, m.name AS model_name, v.version, v.artifact_uri, v.artifact_sha256,
                      v.thresholds
                 FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id
                WHERE m.name = $1 AND v.version = $2""", model, version)
        return dict(row) if row is not None else None
    finally:
        await conn.close()


async def store_records(pool: asyncpg.Pool, records: list[dict[str, Any]]) -> None:
    """Spooled records into Postgres in one transaction: predictions, then the events to record (folded
    into features and snapshots by the ingestion code). Idempotent: a replay stores nothing twice."""
    from sira.ingest import record_normalized

    predictions = [r for r in records if r.get("kind") == "prediction"]
    events = [r for r in records if r.get("kind") == "event"]
    async with pool.acquire(timeout=5) as conn:
        async with conn.transaction():
            if predictions:
                await write_predictions(conn, predictions)
            by_fs: dict[tuple[str, int], list[dict[str, Any]]] = {}
            for r in events:
                by_fs.setdefault((r["feature_set"], r["feature_set_version"]), []).append(r["row"])
            for (name, version), rows in by_fs.items():
                unique = list({r["event_id"]: {**r, "occurred_at": datetime.fromisoformat(r["occurred_at"])}
                               for r in rows}.values())
                await record_normalized(conn, get_feature_set(name, version), unique)


class Recorder:
    """Stores spooled records with connections of its own. In a replica it runs as a Ray actor
    owned by the replica (a process of its own, gone with the replica); elsewhere on a
    :class:`BackgroundLoop`."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.pool: asyncpg.Pool | None = None

    async def store(self, records: list[dict[str, Any]]) -> int:
        if self.pool is None:
            self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2, init=db._init_connection,
                                                  server_settings=SERVING_SERVER_SETTINGS, timeout=10,
                                                  command_timeout=60)
        await store_records(self.pool, records)
        return len(records)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()


@functools.cache
def recorder_actor() -> Any:
    """The :class:`Recorder` actor class (made on first use)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=-1)(Recorder)


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


PREDICTION_COLUMNS = ("prediction_id", "scored_at", "request_id", "model_id", "model_name", "version", "role",
                      "event_id", "features", "score", "decision", "reasons", "flags", "degraded", "latency_ms")


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
                     bool(p["degraded"]), float(p["latency_ms"])))
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
    return int(status.split()[-1])


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


# -- HTTP ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _connection(service: ScoringService) -> Any:
    """A connection of the service's pool for a route (Postgres away: 503 ``database_unavailable``, by the
    application's exception handler)."""
    async with service.pool.acquire(timeout=5) as conn:
        yield conn


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def scoring_router() -> Any:
    """``/v1/score``, ``/v1/score/batch``, ``/v1/predictions/{id}``, ``/v1/feedback`` (the service is app state)."""
    router = APIRouter(prefix="/v1", tags=["scoring"])

    def service_of(request: Request) -> ScoringService:
        return request.app.state.scoring

    def timed(service: ScoringService, route: str, model: str, started: float) -> None:
        if service.metrics:
            service.metrics.latency.observe((time.perf_counter() - started) * 1000, tags={"route": route, "model": model})

    # 404: a model not served here; 409: one without a production version
    @router.post("/score", response_model=ScoreResponse, responses=errors(404, 409, body=True),
                 summary="Score one event")
    async def score(body: ScoreRequest, request: Request, who: Identity = require("score")) -> Any:
        started = time.perf_counter()
        service = service_of(request)
        answer = await service.score(service.prepare(body.model, body, started))
        timed(service, "score", body.model, started)
        return _json(answer)

    @router.post("/score/batch", responses=errors(404, 409, body=True), summary="Score many events in one call")
    async def score_batch(body: BatchScoreRequest, request: Request, who: Identity = require("score")) -> Any:
        started = time.perf_counter()
        service = service_of(request)
        if len(body.requests) > service.config.max_batch_rows:
            raise PayloadTooLarge(f"a batch holds at most {service.config.max_batch_rows} requests, "
                                  f"got {len(body.requests)}", details={"max": service.config.max_batch_rows})
        items = [service.prepare(body.model, r, started, prefix=f"requests.{i}.") for i, r in enumerate(body.requests)]
        answers = await asyncio.gather(*(service.score(i) for i in items))
        timed(service, "score_batch", body.model, started)
        return _json({"model": body.model, "results": answers})

    @router.get("/predictions/{prediction_id}", responses=errors(404),
                summary="A stored prediction and its explanation")
    async def get_prediction(prediction_id: uuid.UUID, request: Request,
                             who: Identity = require("predictions.read")) -> Any:
        service = service_of(request)
        async with _connection(service) as conn:
            row = await conn.fetchrow(
                """SELECT prediction_id, request_id, model_name, version, role, event_id, features, score, decision,
                          reasons, flags, degraded, latency_ms, scored_at
                     FROM sira_predictions WHERE prediction_id = $1""", prediction_id)
            if row is None:
                raise NotFound(f"no stored prediction {prediction_id} (predictions are stored within a second)",
                               code="unknown_prediction", details={"prediction_id": str(prediction_id)})
            shadows = await conn.fetch(
                """SELECT version, score, decision FROM sira_predictions
                    WHERE model_name = $1 AND request_id = $2 AND role = 'shadow' AND scored_at BETWEEN $3::timestamptz - interval '1 hour'
                      AND $3::timestamptz + interval '1 hour'""",
                row["model_name"], row["request_id"], row["scored_at"])
        answer = public(answer_from_row(row))
        if answer["reasons_deferred"]:
            reasons = await asyncio.to_thread(service.explain, row["model_name"], row["version"], row["features"])
            if reasons is not None:
                answer.update(reasons=reasons, reasons_deferred=False)
        return _json({**answer, "role": row["role"], "features": row["features"],
                               "shadow": [dict(s) for s in shadows]})

    @router.post("/feedback", responses=errors(404, body=True), summary="Record a label for a prediction or an event")
    async def feedback(body: FeedbackRequest, request: Request, who: Identity = require("feedback.write")) -> Any:
        from sira.feedback import record_labels

        service = service_of(request)
        source = body.source
        if not who.roles & {"service", "admin"}:
            # a person's label is theirs: it never overwrites a system's (chargebacks, ...)
            if "source" in body.model_fields_set and body.source != f"analyst:{who.name}":
                raise PermissionDenied("only service keys name the source of a label; an analyst's labels are "
                                       f"recorded as analyst:{who.name}", details={"field": "source"})
            source = f"analyst:{who.name}"[:100]
        event_id = body.event_id and service.redactor.scrub_value(body.event_id)
        if body.prediction_id is not None:
            lookup = "SELECT event_id FROM sira_predictions WHERE prediction_id = $1"
            async with _connection(service) as conn:
                stored = await conn.fetchval(lookup, body.prediction_id)
            # answered moments ago and still in this replica's spool (group commit): store it now, holding
            # no connection of the scoring pool meanwhile
            if stored is None and service.spool.pending and await service.flush_quietly():
                async with _connection(service) as conn:
                    stored = await conn.fetchval(lookup, body.prediction_id)
            if stored is None:
                raise NotFound(f"no stored prediction {body.prediction_id}", code="unknown_prediction",
                               details={"field": "prediction_id"})
            if event_id is not None and event_id != stored:
                raise InvalidInput("event_id does not match the prediction's event", code="invalid_field",
                                   details={"field": "event_id"})
            event_id = stored
        async with _connection(service) as conn:
            if body.known_at is None:  # a resent label keeps the time it first became known
                same = await conn.fetchval(
                    "SELECT label = $4 FROM sira_feedback WHERE event_id = $1 AND label_name = $2 AND source = $3",
                    event_id, body.label_name, service.redactor.scrub_text(source), body.label)  # stored redacted
                if same:
                    return _json({"event_id": event_id, "label_name": body.label_name, "label": body.label,
                                  "status": "unchanged"})
            async with conn.transaction():
                summary = await record_labels(
                    conn, [{"event_id": event_id, "label": body.label, "label_name": body.label_name,
                            "known_at": body.known_at or datetime.now(timezone.utc), "source": source,
                            "prediction_id": str(body.prediction_id) if body.prediction_id else None}],
                    redactor=service.redactor, source=source, created_by=who.name,
                    pending_ttl_days=service.settings.pending_label_ttl_days)
        if summary.rejected:
            raise InvalidInput(f"label rejected: {', '.join(summary.reasons)}", code="invalid_feedback")
        if summary.pending_event and service.metrics:
            service.metrics.count(service.metrics.pending_labels)
        # pending_event: kept, and used once its event arrives (it expires if it never does)
        status = ("pending_event" if summary.pending_event else "recorded" if summary.inserted
                  else "updated" if summary.updated else "unchanged")
        return _json({"event_id": event_id, "label_name": body.label_name, "label": body.label,
                               "status": status})

    return router


# -- Ray Serve -----------------------------------------------------------------------------


@serve.deployment(name="sira", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64, health_check_period_s=5)
@serve.ingress()
class SiraIngress:
    """The Serve ingress: SIRA's FastAPI application with this replica's scoring service."""

    def __init__(self, config: dict[str, Any] | None = None):
        import sys

        from sira.config import get_settings

        # A replica runs Serve's loop and the user-code loop in two threads of one process: let a
        # thread waiting for the GIL get it within 1 ms rather than Python's default 5 ms.
        sys.setswitchinterval(0.001)
        self.settings = get_settings()
        self.service = ScoringService(self.settings, ServingConfig.from_dict(config))

    def __serve_build_asgi_app__(self) -> Any:
        from sira.api import create_app

        return create_app(self.settings, scoring=self.service)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self.service.reconfigure(user_config)

    async def check_health(self) -> None:
        if self.service.started and not any(t.get_name() == "sira-flusher" for t in self.service._tasks):
            raise RuntimeError("the spool flusher stopped")


def build_app(args: dict[str, Any] | None = None) -> Any:
    """``import_path: sira.serving:build_app`` — the Serve application; ``args`` is a ServingConfig."""
    ServingConfig.from_dict(args)  # fail at deploy time, not in every replica
    return SiraIngress.bind(args or {})


LOCAL_CONFIG = Path(__file__).resolve().parent.parent / "serve_configs" / "local.yaml"
DEPLOYMENT_OPTIONS = ("num_replicas", "autoscaling_config", "max_ongoing_requests", "max_queued_requests",
                      "ray_actor_options", "user_config", "graceful_shutdown_timeout_s", "graceful_shutdown_wait_loop_s",
                      "health_check_period_s", "health_check_timeout_s", "logging_config")


@dataclass(frozen=True)
class ServeSpec:
    """What a serve_configs/*.yaml file asks for, checked."""

    host: str
    port: int
    args: dict[str, Any]
    options: dict[str, Any]
    route_prefix: str = "/"

    @classmethod
    def from_file(cls, path: Path) -> "ServeSpec":
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise InvalidInput(f"no Serve config at {path}", code="invalid_config") from None
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{path} is not valid YAML: {exc}", code="invalid_config") from None
        apps = (data or {}).get("applications") or []
        sira_apps = [a for a in apps if a.get("import_path") == "sira.serving:build_app"]
        if len(sira_apps) != 1:
            raise InvalidInput(f"{path}: expected one application with import_path sira.serving:build_app",
                               code="invalid_config")
        app = sira_apps[0]
        deployments = app.get("deployments") or [{}]
        options = {k: v for k, v in deployments[0].items() if k != "name"}
        unknown = sorted(set(options) - set(DEPLOYMENT_OPTIONS))
        if unknown:
            raise InvalidInput(f"{path}: unknown deployment option(s) {', '.join(unknown)}", code="invalid_config")
        ServingConfig.from_dict(app.get("args"))
        ServingConfig.from_dict(options.get("user_config"))
        http = data.get("http_options") or {}
        return cls(http.get("host", "127.0.0.1"), int(http.get("port", 8000)), dict(app.get("args") or {}), options,
                   app.get("route_prefix", "/"))

    @classmethod
    def local(cls) -> "ServeSpec":
        """The repository's serve_configs/local.yaml, or the same built in when SIRA is installed without it."""
        return cls.from_file(LOCAL_CONFIG) if LOCAL_CONFIG.exists() else cls.default()

    @classmethod
    def default(cls) -> "ServeSpec":
        """serve_configs/local.yaml's shape, for an installation without the repository's configs."""
        return cls("127.0.0.1", 8000, {"models": ["fraud"]}, {
            "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.5},
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
            "user_config": ServingConfig().model_dump(exclude={"spool_dir"}),
        })

    def application(self, **overrides: Any) -> Any:
        """The bound Serve application with this spec's deployment options (``overrides`` win)."""
        ServingConfig.from_dict(self.args)
        options = {**self.options, **overrides}
        if "num_replicas" in options and "autoscaling_config" in options:
            options.pop("autoscaling_config" if options["num_replicas"] != "auto" else "num_replicas")
        return SiraIngress.options(**options).bind(self.args)


def run_local(settings: Settings, spec: ServeSpec, *, host: str | None = None, port: int | None = None,
              progress: Any = print) -> str:
    """Start SIRA's Serve application on the local Ray (HAProxy ingress: see ``init_ray``) and return its URL."""
    from sira.ray_runtime import init_ray, metrics_url

    init_ray(settings, db.resolve_dsn(settings))
    host, port = host or spec.host, port or spec.port
    # serve.run after serve.start logs "Connecting to existing Serve app ... New http_options will not be
    # applied" (they were: serve.start applied them), and INFO lines SIRA says better below.
    serve_log = logging.getLogger("ray.serve")
    level = serve_log.level
    serve_log.setLevel(logging.WARNING)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(spec.application(), name="sira", route_prefix=spec.route_prefix, blocking=False)
    finally:
        serve_log.setLevel(level)
    url = f"http://{host}:{port}"
    progress(f"SIRA is serving at {url} (OpenAPI: {url}/docs)")
    metrics = metrics_url()
    if metrics:  # not a route of the service: Ray's metrics agent exports the replicas' metrics, prefixed
        progress(f"metrics: {metrics} (Prometheus text; SIRA's series are named ray_sira_*)")
    return url
