"""Feature engine v2's stored state: one packed value per entity, daily checkpoints, and the writers.

- ``sira_entity_states``: per (feature set, entity), the packed state (:mod:`sira.features.packing`) after
  the newest event folded in, with a revision bumped on every write.
- ``sira_state_checkpoints``: per entity and UTC day D it changed, its state holding every event before D
  and every label known before D. A training window or a cold entity starts from the latest checkpoint at
  or before its first day plus the events since, instead of re-reading weeks of the log.

Writers of the same entity (two stream consumers, a consumer and a replica's recorder, ingest) serialise on
a transaction-scoped advisory lock per entity, taken in one global order (the lock key's value), so no
update is lost and two writers never deadlock; the lock is held from reading the state to committing the
new one.

Late events (older than an entity's newest folded event) are folded by rebuilding that entity from the log
(its latest checkpoint before the event plus the events since), so they get the vector the offline path
gives them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from sira.core import db
from sira.features.columns import read_events, read_labels
from sira.features.daily import Checkpoints, kept_from
from sira.features.engine import Engine, EventColumns, engine_of
from sira.features.hashing import MISSING, value_hash
from sira.features.store import from_us, log_positions, set_watermark, to_us

if TYPE_CHECKING:
    from sira.core.db import Connection
    from sira.features.definitions import FeatureSet

DAY = timedelta(days=1)


def day_of(value: datetime) -> datetime:
    """The UTC midnight at or before ``value``."""
    value = value.astimezone(timezone.utc)
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


# -- locks, reads, writes ---------------------------------------------------------------------------------------


async def lock_entities(conn: Connection, fs: FeatureSet, entities: Sequence[tuple[str, str]]) -> None:
    """Hold each (entity type, id)'s write lock until the transaction ends, taken in key order."""
    if entities:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended($1 || ':' || t || ':' || i, 0)"
            " AS k FROM unnest($2::text[], $3::text[]) AS u(t, i) ORDER BY 1) AS keys",
            f"{fs.name}@{fs.version}", [t for t, _ in entities], [i for _, i in entities])


async def read_stored(conn: Connection, fs: FeatureSet, entity: str, keys: Sequence[str]
                      ) -> dict[str, tuple[bytes, int]]:
    """Stored states with their revisions (a serving replica's cache follows the revisions)."""
    rows = await conn.fetch(
        "SELECT entity_id, state, revision FROM sira_entity_states WHERE feature_set = $1"
        " AND feature_set_version = $2 AND entity_type = $3 AND entity_id = ANY($4::text[])",
        fs.name, fs.version, entity, list(keys))
    return {r["entity_id"]: (r["state"], r["revision"]) for r in rows}


async def read_states(conn: Connection, fs: FeatureSet, entity: str, keys: Sequence[str]) -> dict[str, bytes]:
    return {k: state for k, (state, _) in (await read_stored(conn, fs, entity, keys)).items()}


STATES_CHANNEL = "sira_states"
_NOTIFY_CHUNK = 100  # (id, revision) pairs per notification: Postgres caps a payload at 8000 bytes
_NOTIFY_MAX = 5_000  # beyond this many, one "every state of this type changed" notification


async def write_states(conn: Connection, fs: FeatureSet, entity: str, states: Mapping[str, tuple[bytes, datetime]],
                       origin: str | None = None, unless_changed_since: Mapping[str, int] | None = None) -> int:
    """Upsert packed states (key -> (bytes, newest event time)); each write bumps the row's revision (1 when
    inserted) and is notified on :data:`STATES_CHANNEL` at commit, with ``origin`` (the writer: a serving
    replica's recorder names its replica) so replicas caching states know which changed and by whom.
    ``unless_changed_since`` (key -> the revision read, absent: none was stored): a writer that holds no entity
    lock (a rebuild) leaves a state another writer changed meanwhile; returns the states written."""
    if not states:
        return 0
    keys = list(states)
    guard, seen = "", []
    if unless_changed_since is not None:  # on the row as it is when written (after any writer holding it)
        guard = " WHERE t.revision IS NOT DISTINCT FROM ($7::jsonb ->> EXCLUDED.entity_id)::bigint"
        seen = [{k: unless_changed_since[k] for k in keys if k in unless_changed_since}]
    rows = await conn.fetch(
        f"""INSERT INTO sira_entity_states AS t (feature_set, feature_set_version, entity_type, entity_id, state,
                                                newest_at)
            SELECT $1, $2, $3, k, s, n FROM unnest($4::text[], $5::bytea[], $6::timestamptz[]) AS u(k, s, n)
            ON CONFLICT (feature_set, feature_set_version, entity_type, entity_id) DO UPDATE
               SET state = EXCLUDED.state, newest_at = EXCLUDED.newest_at, revision = t.revision + 1{guard}
            RETURNING entity_id, revision""",
        fs.name, fs.version, entity, keys, [s for s, _ in states.values()], [n for _, n in states.values()], *seen)
    await notify_states(conn, fs, entity, [(r["entity_id"], r["revision"]) for r in rows], origin)
    return len(rows)


async def notify_states(conn: Connection, fs: FeatureSet, entity: str, changes: Sequence[tuple[str, int]],
                        origin: str | None) -> None:
    """``{"f": name, "v": version, "t": entity type, "o": origin, "e": [[id, revision], ...]}`` in chunks, or
    ``"all": true`` instead of ``"e"`` for a rebuild-sized write (or ids too long for a payload)."""
    import orjson

    head = {"f": fs.name, "v": fs.version, "t": entity, "o": origin}
    everything = orjson.dumps({**head, "all": True}).decode()
    if len(changes) > _NOTIFY_MAX:
        payloads = [everything]
    else:
        payloads = [orjson.dumps({**head, "e": [list(c) for c in changes[i: i + _NOTIFY_CHUNK]]}).decode()
                    for i in range(0, len(changes), _NOTIFY_CHUNK)]
    for payload in payloads:
        await conn.execute("SELECT pg_notify($1, $2)", STATES_CHANNEL,
                           payload if len(payload.encode()) < 7_900 else everything)


async def drop_cached(conn: Connection, entity: str) -> None:
    """Every replica drops what it cached of an entity type (its states in each feature set keyed on it, its
    v1 histories) after a change that removed or rewrote them wholesale (an erasure, a re-keying); the
    notifications name no entity."""
    import orjson

    from sira.features.definitions import FEATURE_SETS
    from sira.features.store import SNAPSHOT_CHANNEL

    for fs in FEATURE_SETS.values():
        if any(spec.entity == entity for spec in fs.entities):
            await conn.execute("SELECT pg_notify($1, $2)", STATES_CHANNEL,
                               orjson.dumps({"f": fs.name, "v": fs.version, "t": entity, "all": True}).decode())
    await conn.execute("SELECT pg_notify($1, $2)", SNAPSHOT_CHANNEL, orjson.dumps({"t": entity, "all": True}).decode())


async def clear_checkpoints(conn: Connection, fs: FeatureSet, entity: str, since: datetime,
                            entities: Collection[str] | None) -> None:
    """Delete the checkpoints as of ``since`` and later of ``entities`` (None: every entity of the type, a
    rebuild): what a refold from ``since`` writes again."""
    await conn.execute(
        "DELETE FROM sira_state_checkpoints WHERE feature_set = $1 AND feature_set_version = $2 AND entity_type = $3"
        " AND as_of >= $4 AND ($5 OR entity_id = ANY($6::text[]))",
        fs.name, fs.version, entity, since, entities is None, sorted(entities or ()))


async def copy_checkpoints(conn: Connection, fs: FeatureSet, entity: str, marks: Checkpoints, keep: np.ndarray) -> int:
    """Write ``marks`` (those ``keep`` selects) by one binary ``COPY`` (after :func:`clear_checkpoints`)."""
    chosen = np.flatnonzero(keep)
    if not chosen.size:
        return 0
    ids = [marks.keys[e] for e in marks.entity[chosen].tolist()]
    days = {int(t): from_us(int(t)) for t in np.unique(marks.as_of[chosen]).tolist()}
    # the partitions of the months these rows fall in, not of every month between the first and the last: a
    # history from 1990 to now made ~440 (each of ten locks, in one transaction) for a handful of rows
    months = sorted({day.replace(day=1) for day in days.values()})
    await conn.execute("SELECT sira_ensure_month_partitions('sira_state_checkpoints', m, m)"
                       " FROM unnest($1::timestamptz[]) AS m", months)
    head = (fs.name, fs.version, entity)
    await conn.copy_records_to_table(
        "sira_state_checkpoints", columns=["feature_set", "feature_set_version", "entity_type", "entity_id", "as_of",
                                           "state"],
        records=[(*head, key, days[t], marks.state(m)) for m, key, t in zip(chosen.tolist(), ids,
                                                                             marks.as_of[chosen].tolist())])
    return int(chosen.size)


async def read_checkpoints(conn: Connection, fs: FeatureSet, entity: str, as_of: datetime,
                           keys: Sequence[str] | None = None) -> dict[str, bytes]:
    """Each entity's latest checkpoint at or before ``as_of`` (all entities of the type when ``keys`` is None)."""
    rows = await conn.fetch(
        """SELECT DISTINCT ON (entity_id) entity_id, state FROM sira_state_checkpoints
            WHERE feature_set = $1 AND feature_set_version = $2 AND entity_type = $3 AND as_of <= $4
              AND ($5::text[] IS NULL OR entity_id = ANY($5::text[]))
            ORDER BY entity_id, as_of DESC""",
        fs.name, fs.version, entity, as_of, None if keys is None else list(keys))
    return {r["entity_id"]: r["state"] for r in rows}


# -- from the log -------------------------------------------------------------------------------------------


async def starting_states(conn: Connection, engine: Engine, day: datetime,
                          keys: Mapping[str, Sequence[str]] | None = None) -> tuple[datetime, dict]:
    """Where a fold of the log from ``day`` (UTC midnight) starts: (the time to read events and labels from,
    the starting states per entity type). With checkpoints: each entity's latest at or before ``day`` (an
    entity unchanged since its checkpoint has that state at ``day``) and the log from ``day``. Without:
    empty states and the log from a horizon before ``day`` (the vectors from ``day`` on are the same)."""
    start: dict[str, dict[str, np.ndarray]] = {}
    found = False
    if await _checkpoints_stale(conn, engine.fs, day):
        return day - timedelta(microseconds=engine.horizon_us), {}
    for spec in engine.fs.entities:
        wanted = None if keys is None else keys.get(spec.key_column, [])
        packed = await read_checkpoints(conn, engine.fs, spec.entity, day, wanted)
        found = found or bool(packed)
        start[spec.entity] = {k: engine.decode(spec.entity, v) for k, v in packed.items()}
    if found:
        return day, start
    return day - timedelta(microseconds=engine.horizon_us), {}


# A label written since the checkpoints (``f.id`` past their watermark: an update takes a new id) that can change
# a state: a positive from when it was known, or one updated since first written (it may have been positive, or
# known at another time: from its event's time on).
_CHANGED_LABEL = "(f.label OR f.updated_at IS NOT NULL)"
_LABEL_FROM = ("CASE WHEN f.updated_at IS NULL THEN greatest(f.known_at, e.occurred_at)"
               " ELSE e.occurred_at END")


def _watermark_job(fs: FeatureSet) -> str:
    return f"checkpoints:{fs.name}@{fs.version}"


async def _checkpoints_stale(conn: Connection, fs: FeatureSet, day: datetime) -> bool:
    """Whether an event or label stored after the checkpoints were written lies before ``day`` (the
    checkpoints up to ``day`` do not hold it: a window must read the log instead)."""
    rows = await conn.fetch("SELECT job, position FROM sira_job_watermarks WHERE job = ANY($1::text[])",
                            [f"{_watermark_job(fs)}:events", f"{_watermark_job(fs)}:labels"])
    marks: dict[str, int] = {r["job"]: r["position"] for r in rows}
    events, labels = marks.get(f"{_watermark_job(fs)}:events"), marks.get(f"{_watermark_job(fs)}:labels")
    if events is None or labels is None:
        return False  # never written: there are no checkpoints to trust or distrust
    return bool(await conn.fetchval(
        f"""SELECT EXISTS (SELECT 1 FROM sira_events WHERE seq > $1 AND occurred_at < $3)
               OR EXISTS (SELECT 1 FROM sira_feedback f JOIN sira_events e ON e.event_id = f.event_id
                           WHERE f.id > $2 AND f.label_name = $4 AND {_CHANGED_LABEL}
                             AND {_LABEL_FROM} < $3)""",
        events, labels, day, fs.label_name))


@dataclass
class Rebuilt:
    feature_set: str
    version: int
    days: int = 0
    events: int = 0
    labels: int = 0
    entities: dict[str, int] = field(default_factory=dict)
    checkpoints: int = 0
    seconds: float = 0.0
    kept_from: datetime | None = None  # retention removed the log before: folded from the checkpoints as of it
    newest: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)  # (entity, key) -> newest event

    def to_dict(self) -> dict[str, Any]:
        return {"feature_set": f"{self.feature_set}@{self.version}", "days": self.days, "events": self.events,
                "labels": self.labels, "entities": self.entities, "checkpoints": self.checkpoints,
                "seconds": round(self.seconds, 3), "kept_from": self.kept_from,
                "events_per_second": round(self.events / self.seconds) if self.seconds else None}


async def rebuild(conn: Connection, fs: FeatureSet, *, checkpoints: bool = True) -> Rebuilt:
    """Every entity's state and daily checkpoints from the whole event log (what ``sira features rebuild``
    runs so an installation can switch to ``fs``): one read of the log and one replay per entity, its state
    packed at every midnight after a day that changed it (:mod:`sira.features.daily`). Once retention removed
    events, from the checkpoints it kept (:func:`kept_from`) and the log after them, brought up to date first."""
    started = time.perf_counter()
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"rebuild:{fs.name}@{fs.version}")
    kept = await kept_from(conn, fs)
    if kept is not None and await _checkpoints_stale(conn, fs, kept):
        await advance(conn, fs)  # events stored since that the checkpoints before ``kept`` lack
    marks = await _log_marks(conn)  # what the checkpoints hold (see starting_states)
    # The states as they are now: an online writer (it holds the entity's lock, which a rebuild does not take)
    # that folds an event into one after this point keeps its state, not overwritten by this fold read before
    # its event; that event is past the marks, so the next advance refolds the entity.
    seen = {spec.entity: {r["entity_id"]: r["revision"] for r in await conn.fetch(
        "SELECT entity_id, revision FROM sira_entity_states WHERE feature_set = $1 AND feature_set_version = $2"
        " AND entity_type = $3", fs.name, fs.version, spec.entity)} for spec in fs.entities}
    lo, hi = await _log_span(conn, fs)
    result = Rebuilt(fs.name, fs.version)
    packed: dict[str, dict[str, bytes]] = {spec.entity: {} for spec in fs.entities}
    if kept is not None:  # the history before it is in the checkpoints only
        packed = {spec.entity: await read_checkpoints(conn, fs, spec.entity, kept) for spec in fs.entities}
        lo, hi, result.kept_from = kept, max(hi or kept, kept - DAY), kept
    if lo is not None and hi is not None:
        packed = await _fold_range(conn, engine_of(fs), day_of(lo), day_of(hi), packed, None, checkpoints, result)
    await _finish(conn, fs, packed, marks if checkpoints else None, result, seen)
    result.seconds = time.perf_counter() - started
    return result


async def advance(conn: Connection, fs: FeatureSet) -> Rebuilt:
    """Fold what was stored since the last rebuild or advance into states and checkpoints (``sira features
    materialize`` of a v2 feature set, e.g. daily): the entities that new events or new positive labels touch
    are refolded from their latest checkpoint before the earliest new day to the end of the log, under their
    write locks, so late events and labels land in every checkpoint after them. Never rebuilt: a rebuild."""
    job = _watermark_job(fs)
    held = {r["job"]: r["position"] for r in await conn.fetch(
        "SELECT job, position FROM sira_job_watermarks WHERE job = ANY($1::text[])", [f"{job}:events",
                                                                                      f"{job}:labels"])}
    if len(held) < 2:
        return await rebuild(conn, fs)
    started = time.perf_counter()
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"rebuild:{fs.name}@{fs.version}")
    marks = await _log_marks(conn)
    engine = engine_of(fs)
    columns = [db.quote_ident(c) for c in engine.key_columns]
    found = await conn.fetchrow(  # the earliest time and the keys of what is new, aggregated in the database
        f"""WITH new AS (
                SELECT e.occurred_at AS at, {", ".join(f"e.{c}" for c in columns)} FROM sira_events e
                 WHERE e.seq > $1 AND e.seq <= $2
                UNION ALL
                SELECT {_LABEL_FROM}, {", ".join(f"e.{c}" for c in columns)}
                  FROM sira_feedback f JOIN sira_events e USING (event_id)
                 WHERE f.id > $3 AND f.id <= $4 AND f.label_name = $5 AND {_CHANGED_LABEL})
            SELECT min(at) AS first,
                   {", ".join(f"coalesce(array_agg(DISTINCT {c}) FILTER (WHERE {c} IS NOT NULL), '{{}}')"
                              f" AS {c}" for c in columns)}
              FROM new""",
        held[f"{job}:events"], marks["events"], held[f"{job}:labels"], marks["labels"], fs.label_name)
    result = Rebuilt(fs.name, fs.version)
    if found is not None and found["first"] is not None:
        touched: dict[str, Sequence[str]] = {spec.key_column: sorted(found[spec.key_column]) for spec in fs.entities}
        await lock_entities(conn, fs, [(spec.entity, k) for spec in fs.entities for k in touched[spec.key_column]])
        first = day_of(found["first"])
        _, last = await _log_span(conn, fs)
        last = last or found["first"]  # never None: the log holds what was found new
        packed = {spec.entity: await read_checkpoints(conn, fs, spec.entity, first, touched[spec.key_column])
                  for spec in fs.entities}
        packed = await _fold_range(conn, engine, first, day_of(last), packed, touched, True, result)
        await _finish(conn, fs, packed, marks, result)
    else:
        await _finish(conn, fs, {spec.entity: {} for spec in fs.entities}, marks, result)
    result.seconds = time.perf_counter() - started
    return result


async def _log_span(conn: Connection, fs: FeatureSet) -> tuple[datetime | None, datetime | None]:
    """The first event's time and the last event's or positive label's: the days a fold of the log covers."""
    row = await conn.fetchrow(
        "SELECT min(occurred_at), greatest(max(occurred_at), (SELECT max(known_at) FROM sira_feedback"
        " WHERE label_name = $1 AND label)) FROM sira_events", fs.label_name)
    return (row[0], row[1]) if row else (None, None)


async def _log_marks(conn: Connection) -> dict[str, int]:
    events, labels = await log_positions(conn)
    return {"events": events, "labels": labels}


CHUNK_EVENTS = 2_000_000  # events read and replayed at once (whole days): bounds a rebuild's memory on a large log


async def _fold_range(conn: Connection, engine: Engine, first: datetime, last: datetime,
                      packed: dict[str, dict[str, bytes]], keys: dict[str, Sequence[str]] | None, checkpoints: bool,
                      result: Rebuilt) -> dict[str, dict[str, bytes]]:
    """Fold the log from UTC midnight ``first`` on (``last``: the last day it holds) into ``packed`` (entity ->
    key -> starting state; updated and returned), writing the checkpoints of every day that changed an entity:
    the range read in spans of whole days of at most ~:data:`CHUNK_EVENTS` events, each entity replayed once per
    span (:meth:`Engine.checkpoints`) from its state at the span's first midnight. ``keys`` (key column -> ids):
    only those entities are read, folded and kept (another entity an event names is folded from what it holds
    and dropped); None: every entity."""
    fs = engine.fs
    wanted = None if keys is None else {spec.entity: set(keys[spec.key_column]) for spec in fs.entities}
    if checkpoints:  # what the refold writes again (a longer log marks every day a shorter one did)
        for spec in fs.entities:
            await clear_checkpoints(conn, fs, spec.entity, first + DAY, None if wanted is None else wanted[spec.entity])
    result.days += (last - first) // DAY + 1
    for lo, hi in await _spans(conn, first):
        events = await read_events(conn, engine, lo, hi, keys)
        labels = await read_labels(conn, engine, lo, hi, keys)
        result.events += len(events)
        result.labels += len(labels)
        start = {entity: _Unpacked(engine, entity, held) for entity, held in packed.items()}
        for entity, marks in engine.checkpoints(events, labels, start).items():
            keep = np.ones(len(marks), dtype=bool) if wanted is None else \
                np.isin(np.array(marks.keys, dtype=object)[marks.entity], list(wanted[entity]))
            if checkpoints:
                result.checkpoints += await copy_checkpoints(conn, fs, entity, marks, keep)
            for m in marks.last():
                if keep[m]:
                    key = marks.keys[marks.entity[m]]
                    packed[entity][key] = marks.state(m)
                    result.newest[(entity, key)] = int(marks.newest[m])
    return packed


class _Unpacked(Mapping[str, np.ndarray]):
    """Packed states read as dense ones when a replay asks for one (only the entities a span names are)."""

    def __init__(self, engine: Engine, entity: str, packed: Mapping[str, bytes]) -> None:
        self.engine, self.entity, self.packed = engine, entity, packed

    def __getitem__(self, key: str) -> np.ndarray:
        return self.engine.decode(self.entity, self.packed[key])

    def __contains__(self, key: object) -> bool:
        return key in self.packed

    def __iter__(self) -> Iterator[str]:
        return iter(self.packed)

    def __len__(self) -> int:
        return len(self.packed)


async def _spans(conn: Connection, first: datetime) -> list[tuple[datetime, datetime]]:
    """Spans of whole UTC days from ``first`` to the end of time, each holding at most ~:data:`CHUNK_EVENTS`
    events (one day more when a day alone holds more); the last is open-ended (labels known later)."""
    days = await conn.fetch(
        "SELECT date_trunc('day', occurred_at, 'UTC') AS day, count(*) AS n FROM sira_events"
        " WHERE occurred_at >= $1 GROUP BY 1 ORDER BY 1", first)
    cuts, held = [], 0
    for row in days:
        if held and held + row["n"] > CHUNK_EVENTS:
            cuts.append(row["day"])
            held = 0
        held += row["n"]
    bounds = [first, *cuts, datetime.max.replace(tzinfo=timezone.utc)]
    return list(zip(bounds[:-1], bounds[1:]))


async def _finish(conn: Connection, fs: FeatureSet, packed: dict[str, dict[str, bytes]],
                  marks: dict[str, int] | None, result: Rebuilt,
                  seen: dict[str, dict[str, int]] | None = None) -> None:
    """Write the folded states (their newest event time from the state) and, when checkpoints were
    written, the log positions they hold. ``seen`` (entity -> key -> revision read before the fold, by a
    writer holding no entity lock): states another writer changed since are left as it wrote them."""
    engine = engine_of(fs)
    for spec in fs.entities:
        states = {}
        for key, value in packed[spec.entity].items():
            newest = result.newest.get((spec.entity, key))
            if newest is None:  # a checkpoint nothing since changed
                newest = int(engine.decode(spec.entity, value)[0, 1])
            states[key] = (value, from_us(newest))
        await write_states(conn, fs, spec.entity, states,  # notified: every replica drops what it cached
                           unless_changed_since=None if seen is None else seen[spec.entity])
        result.entities[spec.entity] = len(states)
    if marks is not None:
        for kind in ("events", "labels"):
            await set_watermark(conn, f"{_watermark_job(fs)}:{kind}", marks[kind])


# -- folding new events ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Folded:
    vectors: np.ndarray  # one row per event, in the order given
    late: int  # events folded by rebuilding their entity from the log
    states: int  # entity states written
    rebuilt: frozenset[tuple[str, str]] = frozenset()  # (entity, key) folded from the log, its labels with it


async def fold_events(conn: Connection, fs: FeatureSet, events: Sequence[Mapping[str, Any]],
                      origin: str | None = None) -> Folded:
    """Fold events just stored in ``sira_events`` (normalized dicts) into their entities' states, in the
    caller's transaction: lock the entities, read their states, fold in (time, order), write them back
    (notified with ``origin``: see :func:`write_states`). An event older than its entity's newest rebuilds
    that entity from the log (where the event now is)."""
    engine = engine_of(fs)
    entities = sorted({(spec.entity, e[spec.key_column]) for e in events for spec in fs.entities
                       if e.get(spec.key_column) is not None})
    await lock_entities(conn, fs, entities)
    keys: dict[str, list[str]] = defaultdict(list)
    for entity, key in entities:
        keys[entity].append(key)
    states = {}
    for entity, wanted in keys.items():
        stored = await read_states(conn, fs, entity, wanted)
        states.update({(entity, k): engine.decode(entity, stored.get(k)) for k in wanted})
    if not _any_late(engine, events, states):  # the common case: one compiled replay per entity type
        vectors, finals = engine.build(EventColumns.from_events(events, engine.columns), None,
                                       {entity: {k: states[(entity, k)] for k in wanted}
                                        for entity, wanted in keys.items()})
        states.update({(entity, k): state for entity, folded in finals.items() for k, state in folded.items()})
        return Folded(vectors, 0, await _write_folded(conn, fs, engine, keys, states, origin))
    order = sorted(range(len(events)), key=lambda i: (events[i]["occurred_at"], value_hash(events[i]["event_id"])))
    vectors = np.full((len(events), len(engine.names)), np.nan)
    rebuilt: dict[tuple[str, str], dict[str, np.ndarray]] = {}  # entity -> its rows from the log, by event id
    late = 0
    for i in order:
        e = events[i]
        mine = {spec.entity: states[(spec.entity, e[spec.key_column])] for spec in fs.entities
                if e.get(spec.key_column) is not None and (spec.entity, e[spec.key_column]) not in rebuilt}
        vector, refused = engine.event_vector(e, mine)
        for entity in refused:  # rebuilt from the log, which holds this batch's events already
            late += 1
            key = e[fs.entity(entity).key_column]
            states[(entity, key)], rebuilt[(entity, key)] = await log_vectors(conn, engine, entity, key,
                                                                              e["occurred_at"])
        for spec in fs.entities:
            key = e.get(spec.key_column)
            if key is not None and (spec.entity, key) in rebuilt:
                vector[engine.slices[spec.entity]] = rebuilt[(spec.entity, key)][e["event_id"]]
        vectors[i] = vector
    return Folded(vectors, late, await _write_folded(conn, fs, engine, keys, states, origin), frozenset(rebuilt))


def _any_late(engine: Engine, events: Sequence[Mapping[str, Any]], states: Mapping[tuple[str, str], np.ndarray]
              ) -> bool:
    """Whether an event is not after its entity's newest folded event in (time, order), as ``_step`` judges."""
    for e in events:
        at, order = to_us(e["occurred_at"]), None
        for spec in engine.fs.entities:
            key = e.get(spec.key_column)
            if key is None:
                continue
            newest, newest_order = int(states[(spec.entity, key)][0, 1]), int(states[(spec.entity, key)][0, 2])
            if newest == MISSING or at > newest:
                continue
            order = value_hash(e["event_id"]) if order is None else order
            if at < newest or order <= newest_order:
                return True
    return False


async def _write_folded(conn: Connection, fs: FeatureSet, engine: Engine, keys: Mapping[str, Sequence[str]],
                        states: Mapping[tuple[str, str], np.ndarray], origin: str | None) -> int:
    written = 0
    for entity, wanted in keys.items():
        written += await write_states(conn, fs, entity, {k: (engine.encode(entity, states[(entity, k)]),
                                                             from_us(int(states[(entity, k)][0, 1]))) for k in wanted},
                                      origin)
    return written


async def log_vectors(conn: Connection, engine: Engine, entity: str, key: str, since: datetime,
                      extra: Sequence[Mapping[str, Any]] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One entity folded from the log around a late event at ``since``: from its latest checkpoint before that
    day, the events stored since and ``extra`` (events not stored yet, or stored: then they take their stored
    copy's place), its state after all of them and its features of every event from that day on, by event id.
    The fold is the offline one: a late event gets the vector a training set gives it."""
    column = engine.layouts[entity].spec.key_column
    read_from, start = await starting_states(conn, engine, day_of(since), {column: [key]})
    end = datetime.max.replace(tzinfo=timezone.utc)
    events = await read_events(conn, engine, read_from, end, {column: [key]})
    if extra:
        events = events.merged(EventColumns.from_events(extra, engine.columns))
    labels = await read_labels(conn, engine, read_from, end, keys={column: [key]})
    rows, finals = engine.build(events, labels, {entity: start.get(entity, {})})
    return finals[entity][key], dict(zip(events.event_id.tolist(), rows[:, engine.slices[entity]]))


async def rebuild_all(settings: Any, fs: FeatureSet, *, checkpoints: bool = True) -> dict[str, Any]:
    """``sira features rebuild``: states and checkpoints of ``fs`` from the event log, in one transaction."""
    async with db.open_pool(settings) as pool:
        async with db.transaction(pool) as conn:
            result = await rebuild(conn, fs, checkpoints=checkpoints)
    return result.to_dict()


async def advance_all(settings: Any, fs: FeatureSet, *, full: bool = False) -> dict[str, Any]:
    """``sira features materialize`` of a v2 feature set: :func:`advance` (``full``: :func:`rebuild`) in one
    transaction, reported as the history engine's refresh is (feature set, version, entities) and more."""
    started = time.perf_counter()
    async with db.open_pool(settings) as pool:
        async with db.transaction(pool) as conn:
            done = await (rebuild(conn, fs) if full else advance(conn, fs))
    return {"feature_set": fs.name, "version": fs.version, "entities": done.entities, "events": done.events,
            "labels": done.labels, "days": done.days, "checkpoints": done.checkpoints,
            "seconds": round(time.perf_counter() - started, 3)}


# -- either engine ------------------------------------------------------------------------------------------


async def refresh(settings: Any, fs: FeatureSet, *, full: bool = False) -> dict[str, Any]:
    """``sira features materialize`` of any feature set: v2 states and checkpoints (:func:`advance_all`), or
    the history engine's snapshots."""
    if fs.engine == "tiles":
        return await advance_all(settings, fs, full=full)
    from sira.features.store import materialize_all

    return await materialize_all(settings, full=full, fs=fs)


async def online_features(conn: Connection, fs: FeatureSet, entity: str, entity_id: str,
                          now: datetime | None = None) -> Any:
    """One entity's online features and how fresh they are (``sira features show``), of either engine. A v2
    state's are its windows at its newest event's time, that event included (novelty and amount ratios,
    which need an event, are None)."""
    from sira.core.errors import InvalidInput, NotFound
    from sira.features.definitions import parse_duration
    from sira.features.store import OnlineFeatures, read_snapshot

    if fs.engine != "tiles":
        return await read_snapshot(conn, fs, entity, entity_id, now=now)
    if entity not in {spec.entity for spec in fs.entities}:
        raise InvalidInput(f"feature set {fs.name} v{fs.version} has no entity {entity!r}",
                           code="unknown_entity", details={"field": "entity_type"})
    row = await conn.fetchrow(
        "SELECT state, newest_at, revision FROM sira_entity_states WHERE feature_set = $1"
        " AND feature_set_version = $2 AND entity_type = $3 AND entity_id = $4", fs.name, fs.version, entity,
        entity_id)
    if row is None:
        raise NotFound(f"no {entity} state for {entity_id!r} in feature set {fs.name} v{fs.version}")
    engine = engine_of(fs)
    state = engine.decode(entity, row["state"])
    age = ((now or datetime.now(timezone.utc)) - row["newest_at"]).total_seconds()
    return OnlineFeatures(entity, entity_id, engine.features_at(entity, state, int(state[0, 1])), row["newest_at"],
                          age, age > parse_duration(fs.ttl), {"revision": row["revision"], "bytes": len(row["state"])})

