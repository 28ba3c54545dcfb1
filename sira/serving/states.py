"""Feature engine v2's entity states as a replica reads, folds and caches them.

A state comes from the replica's LRU, else Redis, else ``sira_entity_states``; an entity with none starts
empty. A batch folds its events into copies (one compiled call per event and entity); the copies of the
entities whose events are recorded replace the cached ones after the answer.

Coherence. Every write of a state (a stream consumer, bulk ingest, ``sira features materialize``, a replica's
recorder) bumps its revision and is notified on ``sira_states`` with the writer's origin
(:func:`sira.features.states.write_states`). Each cached state remembers the stored revision it derives
from. A write by this replica's own recorder on top of that revision holds nothing the cached state lacks
(the recorder folded the events this replica folded, and maybe fewer): the entry is kept and now derives
from the new revision. Any other newer write drops it, and Redis values older than it are ignored. A process
trusts no Redis value read before it began listening (nor caches a state until then): a restarted or added
replica has been told of no write yet, and a value read before it started may have been written over since.

Events this replica recorded that its recorder has not stored yet (the spool's flush confirms them) are
folded again onto a state read from Redis or PostgreSQL, so a re-read loses none of them; if one no longer
folds (the stored state has moved past it), the state serves that batch without being cached.

Late events (older than the state's newest, or its newest scored again): a cached state keeps the stored
state it started from (its base, packed) and the events folded since (its tail, up to :data:`TAIL`); an
event newer than the base is folded exactly from them. An older one is answered from the log: the entity's
latest checkpoint before the event's day, the events stored since and the batch's events of that entity,
folded by the offline path (:func:`sira.features.states.log_vectors`). Either way: the vector a training
set gives the event.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from sira.core import db
from sira.features import states as stored_states
from sira.features.definitions import FeatureSet, get_feature_set, parse_duration
from sira.features.engine import Engine, engine_of
from sira.features.hashing import MISSING, value_hash
from sira.features.store import to_us
from sira.serving.replica import Replica
from sira.serving.resilience import LRU
from sira.serving.schemas import Item

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (entity type, entity id)
CacheKey = tuple[str, int, str, str]  # (feature set, version, entity type, entity id)
MAX_UNSTORED = 200_000  # recorded events awaiting the spool's flush: beyond, forget them and the cache

# SET a state unless a newer one is there (the same revision read again refreshes its time): values are
# b"<rank>|<wall time>|<packed state>", rank = 2 * revision + 1
_SET_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local rank = tonumber(string.match(current, '^(%d+)|'))
  if rank and rank > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3], 'EX', ARGV[4])
return 1
"""


# Redis values carry the wall time of the PostgreSQL read they come from (v1 histories: of their write), by another
# process's clock maybe, on another host: one from up to this much before a process began listening (or before
# a state was written over) is not trusted as newer
CLOCK_SKEW_S = 0.5

TAIL = 32  # events an entry keeps after its base: a late event within them folds exactly, in the replica


@dataclass
class Cached:
    """A state in the replica's cache, packed (a terminal's is ~47 KB unpacked, a few KB packed): ``packed`` =
    ``base`` with the ``tail`` events folded in, in (time, order)."""

    packed: bytes  # every event this replica folded into it
    revision: int  # the stored revision it derives from (0: none stored); advanced by its own recorder's writes
    read_at: float  # wall time its stored base was read
    base: bytes  # the state before the tail
    tail: list[dict[str, Any]]  # events folded since ``base``, in (time, order)


@dataclass
class Entry:
    """A state a batch folds into: unpacked from a :class:`Cached` (``source``) or read from Redis or
    PostgreSQL; the same parts."""

    state: np.ndarray
    revision: int
    read_at: float
    base: bytes
    tail: list[dict[str, Any]]
    source: Cached | None = None  # its revision follows this replica's own writes while the batch runs

    @property
    def derives_from(self) -> int:
        return self.source.revision if self.source is not None else self.revision


@dataclass
class FoldedState:
    """A batch's fold of one entity (the key is (entity type, entity id, "name@version"))."""

    fs: FeatureSet
    entry: Entry


def _newest(entry: Entry) -> int | None:
    newest = int(entry.state[0, 1])
    return None if newest == MISSING else newest


def _recorded_events(records: Iterable[dict[str, Any]]) -> Iterable[tuple[FeatureSet, Key, dict[str, Any]]]:
    """(feature set, entity key, spooled event row) of each v2 entity of each recorded event."""
    for record in records:
        if record.get("kind") != "event":
            continue
        fs = get_feature_set(record["feature_set"], record["feature_set_version"])
        if fs.engine == "tiles":
            row = record["row"]
            for spec in fs.entities:
                if row.get(spec.key_column) is not None:
                    yield fs, (spec.entity, row[spec.key_column]), row


def _order(event: Mapping[str, Any]) -> tuple[int, int]:
    return to_us(event["occurred_at"]), value_hash(event["event_id"])


def fold_order(event: Mapping[str, Any] | None) -> tuple[int, int]:
    """Where an event folds among others (time, then its id's hash; no event: first)."""
    return _order(event) if event and event.get("occurred_at") is not None and "event_id" in event else (0, 0)


def _append(engine: Engine, entity: str, entry: Entry, event: dict[str, Any]) -> None:
    """``event`` was just folded into ``entry.state``: it joins the tail; a tail longer than :data:`TAIL`
    hands its older half to the base."""
    entry.tail.append(event)
    _trim(engine, entity, entry)


def _trim(engine: Engine, entity: str, entry: Entry) -> None:
    if len(entry.tail) > TAIL:
        base = engine.decode(entity, entry.base)
        older, entry.tail = entry.tail[:TAIL // 2], entry.tail[TAIL // 2:]
        for e in older:
            engine.event_vector(e, {entity: base})
        entry.base = engine.encode(entity, base)


def _fold_within_tail(engine: Engine, entity: str, entry: Entry, event: dict[str, Any]) -> np.ndarray | None:
    """An event the state refused as late, folded exactly when it is newer than the entry's base: the base,
    the tail's events before it, the event (its features: returned), then the tail's events after it; the
    entry's state and tail then hold it. An event scored again replaces itself. None: older than the base."""
    base = engine.decode(entity, entry.base)
    at = _order(event)
    if base[0, 1] != MISSING and at <= (int(base[0, 1]), int(base[0, 2])):
        return None
    tail = [e for e in entry.tail if e["event_id"] != event["event_id"]]
    before = [e for e in tail if _order(e) < at]
    for e in before:
        engine.event_vector(e, {entity: base})
    vector, _ = engine.event_vector(event, {entity: base})
    after = tail[len(before):]
    for e in after:
        engine.event_vector(e, {entity: base})
    entry.state, entry.tail = base, [*before, event, *after]
    _trim(engine, entity, entry)
    return vector[engine.slices[entity]]


def _cache_key(fs: FeatureSet, key: Key) -> CacheKey:
    return (fs.name, fs.version, key[0], key[1])


class EntityStates:
    """The v2 entity states one replica scores with (see the module docstring)."""

    def __init__(self, replica: Replica, origin: str):
        self.replica, self.origin = replica, origin
        self.cache = LRU(replica.config.cache_max_entries, replica.config.cache_ttl_s)
        self.unstored: dict[CacheKey, dict[str, dict[str, Any]]] = {}  # recorded, not yet stored: event id -> event
        self.notified: dict[CacheKey, int] = {}  # the newest revision another writer was notified to write
        self.cleared: dict[tuple[str, int, str], float] = {}  # (set, version, entity) -> when all changed
        # when every state may have changed unnoticed (notifications missed, or not followed yet: a new
        # process trusts no Redis value read before it listened, nor caches a state, until it listens)
        self.epoch = math.inf
        self.pending = 0  # events in `unstored`
        self._set_newer: Any = None
        self.namespace = replica.namespace

    def _redis_key(self, fs: FeatureSet, key: Key) -> str:
        return f"sira:state:{self.namespace}:{fs.name}@{fs.version}:{key[0]}:{key[1]}"

    # -- a batch ---------------------------------------------------------------------------------------------

    async def event_inputs(self, fs: FeatureSet, items: list[Item], degraded: set[str]
                           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[tuple[str, str, str], Any]]:
        """The batch's vectors and flags, and the folded states of its recorded entities (to :meth:`keep`)."""
        engine = engine_of(fs)
        events = [i.event for i in items]
        keys = sorted({(spec.entity, e[spec.key_column]) for spec in fs.entities for e in events
                       if e.get(spec.key_column) is not None})
        found, status, uncached = await self.lookup(fs, keys, degraded)
        newest = {k: _newest(e) for k, e in found.items()}  # before this batch (staleness)
        working = found  # unpacked for this batch: the cached entries stay as they are until :meth:`keep`
        rows = np.full((len(events), len(engine.names)), np.nan)
        rebuilt: dict[Key, dict[str, np.ndarray] | None] = {}
        for key in sorted(uncached):  # a recorded event the stored state moved past: the log, with it
            rebuilt[key] = await self._from_log(engine, key, events, degraded)
            if rebuilt[key] is None:
                status[key] = "unavailable"
        for i in sorted(range(len(events)), key=lambda i: _order(events[i])):
            event = events[i]
            mine = {}
            for spec in fs.entities:
                key = (spec.entity, event.get(spec.key_column))
                if key[1] is not None and key in working and key not in rebuilt:
                    mine[spec.entity] = working[key].state
            rows[i], late = engine.event_vector(event, mine)
            for spec in fs.entities:
                key = (spec.entity, event.get(spec.key_column))
                if spec.entity in mine and spec.entity not in late:
                    _append(engine, spec.entity, working[key], event)
            for entity in late:
                key = (entity, event[fs.entity(entity).key_column])
                part = _fold_within_tail(engine, entity, working[key], event)
                if part is not None:
                    rows[i, engine.slices[entity]] = part
                    continue
                rebuilt[key] = await self._from_log(engine, key, events, degraded)
                if rebuilt[key] is None:
                    status[key] = "unavailable"
        vectors, flags = self._answers(engine, events, rows, newest, status, rebuilt)
        recorded = {(spec.entity, i.event[spec.key_column]) for i in items if i.record for spec in fs.entities
                    if i.event.get(spec.key_column) is not None}
        folded: dict[tuple[str, str, str], Any] = {}
        for key in recorded:
            if key in working and key not in rebuilt and key not in uncached and status.get(key) != "unavailable":
                folded[(*key, f"{fs.name}@{fs.version}")] = FoldedState(fs, working[key])
            else:
                self.cache.pop(_cache_key(fs, key))  # its recorded events are not in the cached state
        return vectors, flags, folded

    @staticmethod
    def _answers(engine: Engine, events: list[dict[str, Any]], rows: np.ndarray, newest: Mapping[Key, int | None],
                 status: Mapping[Key, str], rebuilt: Mapping[Key, dict[str, np.ndarray] | None]
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Vectors (None: undefined or unknown) and flags; "stale": the entity's newest known event is older
        than the feature set's TTL at the event's time (windows are still exact; a source may be lagging)."""
        vectors, flags = [], []
        ttl_us = parse_duration(engine.fs.ttl) * 1_000_000
        for i, event in enumerate(events):
            flag: dict[str, list[str]] = {}
            for spec in engine.fs.entities:
                value = event.get(spec.key_column)
                key = (spec.entity, value)
                part = engine.slices[spec.entity]
                if value is None:
                    flag.setdefault("missing_entities", []).append(spec.entity)
                elif status.get(key) == "unavailable":
                    flag.setdefault("unavailable_entities", []).append(spec.entity)
                    rows[i, part] = np.nan  # unknown history: missing, not "first event ever"
                    continue
                elif status.get(key) == "new":
                    flag.setdefault("new_entities", []).append(spec.entity)
                elif newest.get(key) is not None and \
                        to_us(event["occurred_at"]) - newest[key] > ttl_us:  # type: ignore[operator]
                    flag.setdefault("stale_entities", []).append(spec.entity)
                from_log = rebuilt.get(key)
                if from_log is not None:
                    rows[i, part] = from_log[event["event_id"]]
            flags.append(flag)
            vectors.append({name: None if v != v else v for name, v in zip(engine.names, rows[i].tolist())})
        return vectors, flags

    async def _from_log(self, engine: Engine, key: Key, events: list[dict[str, Any]], degraded: set[str]
                        ) -> dict[str, np.ndarray] | None:
        """The entity's features of the batch's events, folded with the log and the events this replica recorded
        that are not stored yet (None: PostgreSQL unavailable)."""
        r = self.replica
        column = engine.fs.entity(key[0]).key_column
        mine = [e for e in events if e.get(column) == key[1]]
        batch = {e["event_id"] for e in mine}
        mine += [e for eid, e in self.unstored.get(_cache_key(engine.fs, key), {}).items() if eid not in batch]
        if not r.pg.available:
            degraded.add("database_unavailable")
            return None
        try:
            async with r.pool.acquire(timeout=r.config.db_timeout_s) as conn:
                _, rows = await stored_states.log_vectors(conn, engine, key[0], key[1],
                                                          min(e["occurred_at"] for e in mine), mine)
            r.pg.succeeded()
        except db.UNAVAILABLE as exc:
            r.pg.failed(exc)
            degraded.add("database_unavailable")
            return None
        r.count("late", len(mine), entity=key[0])
        return rows

    def keep(self, folded: Mapping[tuple[str, str, str], FoldedState]) -> None:
        """States this replica folded the batch's recorded events into (unless written over meanwhile)."""
        for (entity, entity_id, _), fold in folded.items():
            done = fold.entry
            self._put(fold.fs, (entity, entity_id), Entry(done.state, done.derives_from, done.read_at, done.base,
                                                          done.tail), packed=None)

    def forget(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Folds not kept (the batch's request was a replay): the cached states lack recorded events."""
        for entity, entity_id, tag in keys:
            name, version = tag.split("@")
            self.cache.pop((name, int(version), entity, entity_id))

    def recorded(self, records: Iterable[dict[str, Any]]) -> None:
        """Events just spooled to be recorded: folded again onto re-read states until their flush."""
        for fs, key, event in _recorded_events(records):
            pending = self.unstored.setdefault(_cache_key(fs, key), {})
            if event["event_id"] not in pending:
                pending[event["event_id"]] = {**event, "occurred_at": datetime.fromisoformat(event["occurred_at"])}
                self.pending += 1
        if self.pending > MAX_UNSTORED:  # PostgreSQL away for long
            log.warning("more than %d recorded events not stored yet: states cached from before are dropped",
                        MAX_UNSTORED)
            self.unstored.clear()
            self.pending = 0
            self.cache.clear()
            self.epoch = time.time()

    def stored(self, records: Iterable[dict[str, Any]]) -> None:
        """The spool's flush stored these records."""
        for fs, key, event in _recorded_events(records):
            pending = self.unstored.get(_cache_key(fs, key))
            if pending is not None and pending.pop(event["event_id"], None) is not None:
                self.pending -= 1
                if not pending:
                    del self.unstored[_cache_key(fs, key)]

    # -- reading ---------------------------------------------------------------------------------------------

    async def lookup(self, fs: FeatureSet, keys: list[Key], degraded: set[str]
                     ) -> tuple[dict[Key, Entry], dict[Key, str], set[Key]]:
        """Entries of ``keys`` (none when unavailable); "new" or "unavailable" for the keys that are; the keys
        whose entries must not be cached (a recorded event no longer folds onto the stored state)."""
        engine = engine_of(fs)
        found: dict[Key, Entry] = {}
        missing = []
        for key in keys:
            cached: Cached | None = self.cache.get(_cache_key(fs, key))
            if cached is not None:
                found[key] = Entry(engine.decode(key[0], cached.packed), cached.revision, cached.read_at,
                                   cached.base, list(cached.tail), cached)
            else:
                missing.append(key)
        self._count("memory", len(found), len(missing))
        read: dict[Key, Entry] = {}
        status: dict[Key, str] = {}
        if missing and self.replica.redis is not None:
            missing = await self._from_redis(fs, missing, read, degraded)
        if missing:
            await self._from_postgres(fs, missing, read, status, degraded)
        uncached: set[Key] = set()
        for key, entry in read.items():
            if self._refold_unstored(engine, fs, key, entry):
                entry.source = self._put(fs, key, entry, packed=None if entry.tail else entry.base)
            else:
                uncached.add(key)
        found.update(read)
        return found, status, uncached

    def _refold_unstored(self, engine: Engine, fs: FeatureSet, key: Key, entry: Entry) -> bool:
        pending = self.unstored.get(_cache_key(fs, key))
        if not pending:
            return True
        for event in sorted(pending.values(), key=_order):
            _, late = engine.event_vector(event, {key[0]: entry.state})
            if late:
                return False
            _append(engine, key[0], entry, event)
        return True

    def _put(self, fs: FeatureSet, key: Key, entry: Entry, packed: bytes | None) -> Cached | None:
        """Cache ``entry`` (``packed``: its state's bytes, when known), unless written over since it was read."""
        cache_key = _cache_key(fs, key)
        if self.notified.get(cache_key, 0) > entry.revision or self._cleared_at(cache_key) >= entry.read_at:
            return None
        cached = Cached(packed or engine_of(fs).encode(key[0], entry.state), entry.revision, entry.read_at,
                        entry.base, list(entry.tail))
        self.cache.put(cache_key, cached)
        return cached

    async def _from_redis(self, fs: FeatureSet, missing: list[Key], found: dict[Key, Entry], degraded: set[str]
                          ) -> list[Key]:
        r = self.replica
        if not r.redis_breaker.available:
            degraded.add("cache_unavailable")
            return missing
        try:
            values = await r.redis.mget([self._redis_key(fs, k) for k in missing])
            r.redis_breaker.succeeded()
        except Exception as exc:  # noqa: BLE001
            r.redis_breaker.failed(exc)
            degraded.add("cache_unavailable")
            return missing
        engine = engine_of(fs)
        still = []
        for key, raw in zip(missing, values):
            entry = None
            if raw is not None:
                rank, wall, packed = raw.split(b"|", 2)
                revision, written = (int(rank) - 1) // 2, float(wall)
                cache_key = _cache_key(fs, key)
                if (revision >= self.notified.get(cache_key, 0)
                        and written > self._cleared_at(cache_key) + CLOCK_SKEW_S):
                    entry = Entry(engine.decode(key[0], packed), revision, written, packed, [])
            if entry is None:
                still.append(key)
            else:
                found[key] = entry
        self._count("redis", len(missing) - len(still), len(still))
        return still

    async def _from_postgres(self, fs: FeatureSet, missing: list[Key], found: dict[Key, Entry],
                             status: dict[Key, str], degraded: set[str]) -> None:
        r = self.replica
        if not r.pg.available:
            degraded.add("database_unavailable")
            status.update({k: "unavailable" for k in missing})
            return
        engine = engine_of(fs)
        read_at = time.time()
        packed: dict[Key, tuple[bytes, int]] = {}
        try:
            async with r.pool.acquire(timeout=r.config.db_timeout_s) as conn:
                for entity in sorted({k[0] for k in missing}):
                    rows = await stored_states.read_stored(conn, fs, entity, [k[1] for k in missing if k[0] == entity])
                    packed.update({(entity, k): v for k, v in rows.items()})
            r.pg.succeeded()
        except db.UNAVAILABLE as exc:
            r.pg.failed(exc)
            degraded.add("database_unavailable")
            status.update({k: "unavailable" for k in missing})
            return
        for key in missing:
            state, revision = packed.get(key, (None, 0))
            decoded = engine.decode(key[0], state)
            found[key] = Entry(decoded, revision, read_at, state or engine.encode(key[0], decoded), [])
            if state is None:
                status[key] = "new"
        if packed and r.redis_available:
            r.spawn(self._to_redis(fs, packed, read_at), "redis-states")

    async def _to_redis(self, fs: FeatureSet, packed: Mapping[Key, tuple[bytes, int]], read_at: float) -> None:
        """States read from PostgreSQL, for the other replicas (never over a newer one)."""
        r = self.replica
        if self._set_newer is None:
            self._set_newer = r.redis.register_script(_SET_NEWER)

        async def queue(pipe: Any) -> None:
            for key, (state, revision) in packed.items():
                if self.notified.get(_cache_key(fs, key), 0) <= revision:
                    await self._set_newer(keys=[self._redis_key(fs, key)], client=pipe,
                                          args=[2 * revision + 1, repr(read_at), state, r.config.redis_ttl_s])

        await r.in_redis(queue)

    # -- notifications ---------------------------------------------------------------------------------------

    def on_states(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        """``NOTIFY`` of written states (see the module docstring)."""
        try:
            message = orjson.loads(payload)
            kind = (message["f"], int(message["v"]), message["t"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        if message.get("all"):
            self.cleared[kind] = time.time()
            self.cache.clear(lambda k: k[:3] == kind)
            return
        own = message.get("o") == self.origin
        for entity_id, revision in message.get("e", []):
            key = (*kind, entity_id)
            self.notified[key] = max(self.notified.get(key, 0), revision)  # older states in Redis: stale
            entry: Cached | None = self.cache.get(key, allow_expired=True)
            if own and entry is not None and entry.revision == revision - 1:
                entry.revision = revision  # this replica's recorder stored what the entry folded
            elif entry is not None and entry.revision < revision:
                self.cache.pop(key)
        if len(self.notified) > 200_000:  # forgotten: reads and Redis values from before now are not trusted
            self.notified.clear()  # (cached entries were checked when their writes were notified)
            self.epoch = time.time()

    def clear(self) -> None:
        """Notifications may have been missed (the listener reconnected)."""
        self.cache.clear()
        self.epoch = time.time()

    def listening(self) -> None:
        """Notifications are followed from now (see :meth:`Histories.listening`)."""
        self.epoch = time.time()

    def _cleared_at(self, key: CacheKey) -> float:
        return max(self.cleared.get(key[:3], 0.0), self.epoch)

    def _count(self, layer: str, hits: int, misses: int) -> None:
        self.replica.count("cache", hits, layer=layer, outcome="hit")
        self.replica.count("cache", misses, layer=layer, outcome="miss")
