"""Entity histories as a replica reads and caches them: in-replica LRU, then Redis, then PostgreSQL
(the snapshot, else the event log); dropped when a snapshot notification says they changed, unless
a cached one still holds that state."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson

from sira.core import db
from sira.features import store as feature_store
from sira.features.definitions import ENTITY_COLUMNS, FeatureSet, parse_duration
from sira.features.history import History
from sira.serving.replica import Replica
from sira.serving.resilience import LRU
from sira.serving.schemas import Item
from sira.serving.scoring import event_vectors
from sira.serving.slots import ModelSlots
from sira.serving.states import CLOCK_SKEW_S, EntityStates


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


Key = tuple[str, str]  # (entity type, entity id)
log = logging.getLogger(__name__)


def _redis_key(namespace: str, key: Key) -> str:
    """The installation's (its database's digest, as answers and states are keyed): installations sharing a
    Redis never read each other's histories (they did: keys named only the entity)."""
    return f"sira:history:{namespace}:{key[0]}:{key[1]}"


class Histories:
    """The entity histories a replica scores events with (see the module docstring)."""

    def __init__(self, replica: Replica, models: ModelSlots, origin: str):
        self.replica, self.models = replica, models
        self.cache = LRU(replica.config.cache_max_entries, replica.config.cache_ttl_s)
        self._invalidated: dict[Key, float] = {}
        # when this process began hearing of snapshot writes: a Redis value written before may have been
        # written over meanwhile unnoticed (another process's, or this one's before a restart)
        self.listening_since = math.inf
        self.states = EntityStates(replica, origin)  # feature engine v2's (engine="tiles")

    def listening(self) -> None:
        """Notifications are followed (again) from now: values read or written from now on can be trusted
        until a notification says otherwise."""
        self.listening_since = time.time()
        self.states.listening()

    async def batch_inputs(self, items: list[Item], out: list[Any], degraded: set[str]
                           ) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]], dict[Any, Any]]:
        """Each request's feature vector and flags (events: from the entities' histories, or v2 states), and
        the histories and states folded with the batch's recorded events (keyed (entity type, id) and (entity
        type, id, feature set) respectively). A feature set that fails fails its requests only (``out[n]`` is
        set to the error)."""
        vectors: dict[int, dict[str, Any]] = {}
        flags: dict[int, dict[str, Any]] = {}
        folded: dict[Any, Any] = {}
        by_fs: dict[FeatureSet, list[int]] = {}
        for n, item in enumerate(items):
            if item.runtime.feature_set is None:
                vectors[n] = item.features or {}
                flags[n] = {"missing_features": item.missing} if item.missing else {}
            else:
                by_fs.setdefault(item.runtime.feature_set, []).append(n)
        for fs, members in by_fs.items():
            try:
                inputs = self.states.event_inputs if fs.engine == "tiles" else self.event_inputs
                v, f, more = await inputs(fs, [items[n] for n in members], degraded)
            except Exception as exc:  # noqa: BLE001 - one feature set failing must not fail the others
                log.exception("feature assembly failed")
                for n in members:
                    out[n] = exc
                continue
            for n, vector, flag in zip(members, v, f):
                vectors[n], flags[n] = vector, flag
            folded.update(more)
        return vectors, flags, folded

    async def event_inputs(self, fs: FeatureSet, items: list[Item], degraded: set[str]
                           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[Key, History]]:
        """Feature vectors for the batch's events, the per-request flags, and the folded histories to cache."""
        events = [i.event for i in items]
        keys = sorted({(spec.entity, e[spec.key_column]) for spec in fs.entities for e in events
                       if e.get(spec.key_column) is not None})
        found, status = await self.lookup(fs, keys, degraded)
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
                elif _stale(found.get((spec.entity, value)), item.event["occurred_at"], fs):
                    flag.setdefault("stale_entities", []).append(spec.entity)
            flags.append(flag)
        recorded = {(spec.entity, i.event[spec.key_column]) for i in items if i.record for spec in fs.entities
                    if i.event.get(spec.key_column) is not None}
        folded = {k: h for k, h in inputs.folded.items() if k in recorded and status.get(k) != "unavailable"}
        return inputs.vectors, flags, folded

    async def lookup(self, fs: FeatureSet, keys: list[Key], degraded: set[str]
                     ) -> tuple[dict[Key, CachedHistory], dict[Key, str]]:
        """Entity histories: in-replica LRU, then Redis, then Postgres (snapshot, else the event log)."""
        found: dict[Key, CachedHistory] = {}
        missing = []
        for key in keys:
            cached = self.cache.get(key)
            if cached is not None:
                found[key] = cached
            else:
                missing.append(key)
        self._count("memory", len(found), len(missing))
        if missing and self.replica.redis is not None:
            missing = await self._from_redis(fs, missing, found, degraded)
        if not missing:
            return found, {}
        return await self._from_postgres(fs, missing, found, degraded)

    async def _from_redis(self, fs: FeatureSet, missing: list[Key], found: dict[Key, CachedHistory],
                          degraded: set[str]) -> list[Key]:
        r = self.replica
        if not r.redis_breaker.available:
            degraded.add("cache_unavailable")
            return missing
        try:
            values = await r.redis.mget([_redis_key(r.namespace, k) for k in missing])
            r.redis_breaker.succeeded()
        except Exception as exc:  # noqa: BLE001
            r.redis_breaker.failed(exc)
            degraded.add("cache_unavailable")
            return missing
        still = []
        for key, raw in zip(missing, values):
            entry = orjson.loads(raw) if raw is not None else None
            if entry is not None and entry["w"] > self._invalidated_at(key) + CLOCK_SKEW_S:
                found[key] = CachedHistory(feature_store.history_from_state(fs.entity(key[0]), entry["s"]))
                self.cache.put(key, found[key])
            else:
                still.append(key)
        self._count("redis", len(missing) - len(still), len(still))
        return still

    async def _from_postgres(self, fs: FeatureSet, missing: list[Key], found: dict[Key, CachedHistory],
                             degraded: set[str]) -> tuple[dict[Key, CachedHistory], dict[Key, str]]:
        r = self.replica
        status: dict[Key, str] = {}
        if not r.pg.available:
            degraded.add("database_unavailable")
            return found, {k: "unavailable" for k in missing}
        read_at = time.time()
        try:
            async with r.pool.acquire(timeout=r.config.db_timeout_s) as conn:
                rows = await conn.fetch(
                    """SELECT s.entity_type, s.entity_id, s.as_of, s.state
                         FROM unnest($1::text[], $2::text[]) AS k(entity_type, entity_id)
                         JOIN sira_feature_snapshots s USING (entity_type, entity_id)
                        WHERE s.feature_set = $3 AND s.feature_set_version = $4""",
                    [k[0] for k in missing], [k[1] for k in missing], fs.name, fs.version,
                    timeout=r.config.db_timeout_s,
                )
                for row in rows:
                    key = (row["entity_type"], row["entity_id"])
                    found[key] = CachedHistory(feature_store.history_from_state(fs.entity(key[0]), row["state"]))
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
            r.pg.succeeded()
        except db.UNAVAILABLE as exc:
            r.pg.failed(exc)
            degraded.add("database_unavailable")
            return found, {**status, **{k: "unavailable" for k in missing if k not in found}}
        for key in missing:
            if key in found and self._invalidated_at(key) < read_at:
                self.cache.put(key, found[key])
        return found, status

    def keep(self, folded: dict[Any, Any]) -> None:
        """Histories and v2 states this replica folded the batch's recorded events into."""
        self.states.keep({k: v for k, v in folded.items() if len(k) == 3})
        for key, history in folded.items():
            if len(key) == 2:
                self.cache.put(key, CachedHistory(history))

    def discard(self, item: Item, folded: dict[Any, Any]) -> dict[Any, Any]:
        """``folded`` without the folds of the entities ``item``'s event belongs to (it turned out to be a replay):
        not kept, and a v2 state they came from no longer cached (it lacks the batch's other recorded events)."""
        dropped = [k for k in folded if _touches(item, k)]
        self.states.forget(k for k in dropped if len(k) == 3)
        return {k: v for k, v in folded.items() if k not in dropped}

    def queue(self, pipe: Any, folded: dict[Any, Any]) -> None:
        """The histories into a Redis pipeline (sent after answering), as snapshot states (v2 states go to
        Redis as they are read from PostgreSQL, with their revisions: see :mod:`sira.serving.states`)."""
        for key, history in folded.items():
            if len(key) != 2:
                continue
            spec = self.models.entity_spec(key[0])
            if spec is not None:
                state = feature_store.state_from_history(spec, history, int(history.ts[-1]))
                pipe.set(_redis_key(self.replica.namespace, key), orjson.dumps({"s": state, "w": time.time()}),
                         ex=self.replica.config.redis_ttl_s)

    async def store_in_redis(self, answers: Any, answered: list[tuple[Item, dict[str, Any]]],
                             folded: dict[Any, Any]) -> None:
        """Answers (for other replicas' idempotency: ``answers`` queues them) and folded histories into Redis,
        in one round trip after answering."""
        covers = 0

        async def queue(pipe: Any) -> None:
            nonlocal covers
            covers = answers.queue(pipe, answered)
            self.queue(pipe, folded)

        answers.sent(answered, covers if await self.replica.in_redis(queue) else None)

    def on_snapshots(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        """``NOTIFY`` of changed snapshots: drop the cached histories that do not hold the new state."""
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        entity_type = message.get("t")
        now = time.time()  # wall clock: compared with the write times of Redis entries too
        if message.get("all"):
            self.cache.clear(lambda k: k[0] == entity_type)
            self._invalidated[(entity_type, "*")] = now
            return
        stale = []
        spec = self.models.entity_spec(entity_type)
        lookback = spec.lookback_seconds * 1_000_000 if spec else None
        for entity_id, last_event_id, n_events, labelled in message.get("e", []):
            key = (entity_type, entity_id)
            cached: CachedHistory | None = self.cache.get(key, allow_expired=True)
            if cached is not None and lookback is not None and _holds_state(cached.history, last_event_id,
                                                                              n_events, labelled, lookback):
                continue  # that state, or a newer one of it: this replica folded those events in itself
            self.cache.pop(key)
            self._invalidated[key] = now
            stale.append(key)
        if len(self._invalidated) > 100_000:
            self._invalidated.clear()
        if stale and self.replica.redis_available:
            self.replica.spawn(self._forget_in_redis(stale), "redis-forget")

    async def _forget_in_redis(self, keys: list[Key]) -> None:
        with contextlib.suppress(Exception):
            await self.replica.redis.delete(*(_redis_key(self.replica.namespace, k) for k in keys))

    def _count(self, layer: str, hits: int, misses: int) -> None:
        self.replica.count("cache", hits, layer=layer, outcome="hit")
        self.replica.count("cache", misses, layer=layer, outcome="miss")

    def _invalidated_at(self, key: Key) -> float:
        return max(self._invalidated.get(key, 0.0), self._invalidated.get((key[0], "*"), 0.0), self.listening_since)


def _stale(cached: CachedHistory | None, occurred_at: datetime, fs: FeatureSet) -> bool:
    """The entity's newest known event is older than the feature set's TTL at the scored event's time:
    its windows are still evaluated correctly, but a source that bypasses the snapshots may be lagging."""
    if cached is None or len(cached.history) == 0:
        return False
    return (feature_store.to_us(occurred_at) - int(cached.history.ts[-1])) > parse_duration(fs.ttl) * 1_000_000
