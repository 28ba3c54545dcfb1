"""The feature store: raw vectors, online snapshots, point-in-time retrieval.

- ``sira_features``: one append-only row per (entity, event), the vector as
  of that event, written when the event is ingested (bulk ``COPY``).
- ``sira_feature_snapshots``: per entity, the latest vector and the state
  needed to fold in the next event (the entity's events within the feature
  set's lookback). Reads report staleness against the feature set's TTL.
- :func:`historical_features`: features of (entity, timestamp) rows as known
  at that time, computed from the event log with the same maths.

Online state rule for late events: an event older than the entity's newest
event but within the lookback is folded into the state in time order and
the snapshot is recomputed as of the newest event; an event older than the
lookback is stored and used by offline computations only.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import asyncpg
import numpy as np

from sira.core import db
from sira.core.errors import InvalidInput, NotFound
from sira.features.definitions import US, EntityFeatures, FeatureSet, parse_duration
from sira.features.history import (
    History,
    entity_features,
    event_features,
    grouped_features,
    vector_to_json,
    vectors_to_json,
)

if TYPE_CHECKING:
    from sira.core.db import Connection

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
EVENT_ENTITY = "event"
_CATEGORY_COLUMNS = {"country", "channel", "currency", "merchant_id", "terminal_id", "device_id", "ip_token",
                     "customer_id", "card_token", "account_id"}


def to_us(value: datetime) -> int:
    """A timestamp as integer microseconds since the epoch (exact)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - EPOCH) // timedelta(microseconds=1)


def from_us(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(value))


# -- histories from the event log ------------------------------------------------


def labels_said_by(cutoff: str, label_name: str, where: str = "") -> str:
    """SQL: what each source last said of each event's label by the cut-off (``cutoff`` and ``label_name`` are
    placeholders such as ``$5``; ``where`` narrows it, e.g. to one event), as rows (event_id, label, known_at).
    Read from the label history (``sira_feedback_history``, sql/029), not from ``sira_feedback``, whose row a
    source's later word overwrites: a chargeback reversed after the cut-off is still a fraud at the cut-off,
    so a backtest with ``--as-of`` gives the same training set whatever was said since."""
    return ("SELECT DISTINCT ON (h.event_id, h.source) h.event_id, h.label, h.known_at FROM sira_feedback_history h"
            f" WHERE h.label_name = {label_name} AND h.known_at <= {cutoff}{where}"
            " ORDER BY h.event_id, h.source, h.known_at DESC, h.id DESC")


def event_label_join(cutoff: str, label_name: str) -> str:
    """SQL: ``LEFT JOIN LATERAL`` of an event ``e``'s label as the sources had said it by the cut-off
    (:func:`labels_said_by`), as ``lab.positive_known_at`` (when the first source said positive; NULL: none did)
    and ``lab.negative_known`` (a source said negative)."""
    return f"""LEFT JOIN LATERAL (
        SELECT min(said.known_at) FILTER (WHERE said.label) AS positive_known_at,
               coalesce(bool_or(NOT said.label), false) AS negative_known
          FROM ({labels_said_by(cutoff, label_name, " AND h.event_id = e.event_id")}) said) lab ON true"""


async def load_histories(
    conn: Connection,
    spec: EntityFeatures,
    entity_ids: Sequence[str],
    start: datetime,
    end: datetime,
    label_name: str,
    label_cutoff: datetime | None = None,
) -> dict[str, History]:
    """Each entity's events with ``start < occurred_at <= end`` (and positive labels' known_at).

    A positive label's known_at is the earliest of the sources saying positive: as they say now
    (``sira_feedback``, what serving and ingest fold), or with ``label_cutoff`` as they had said by then
    (:func:`labels_said_by`, the reading of a training set's label column): a source's later word
    overwrites its ``sira_feedback`` row, and a chargeback withdrawn after a backtest's cut-off moved the
    risk features of its terminal's later events in that backtest.
    """
    if not entity_ids:
        return {}
    for column in spec.categorical_columns:
        if column not in _CATEGORY_COLUMNS:
            raise InvalidInput(f"{column} is not an event column features can use")
    cats = "".join(f", e.{db.quote_ident(c)}" for c in spec.categorical_columns)
    key = db.quote_ident(spec.key_column)
    if spec.label_delay and label_cutoff is not None:
        label_sql = (f"(SELECT min(said.known_at) FROM ({labels_said_by('$5', '$4', ' AND h.event_id = e.event_id')})"
                     " said WHERE said.label)")
        args: tuple[Any, ...] = (list(entity_ids), start, end, label_name, label_cutoff)
    elif spec.label_delay:
        label_sql = (
            "(SELECT min(f.known_at) FROM sira_feedback f"
            " WHERE f.event_id = e.event_id AND f.label_name = $4 AND f.label)"
        )
        args = (list(entity_ids), start, end, label_name)
    else:
        label_sql, args = "NULL::timestamptz", (list(entity_ids), start, end)
    rows = await conn.fetch(
        f"""SELECT e.{key} AS entity_id, e.event_id, e.occurred_at, e.amount::float8 AS amount{cats},
                   {label_sql} AS label_known_at
              FROM sira_events e
             WHERE e.{key} = ANY($1::text[]) AND e.occurred_at > $2 AND e.occurred_at <= $3""",
        *args,
    )
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        grouped[r["entity_id"]].append(
            {
                "ts": to_us(r["occurred_at"]), "amount": r["amount"], "event_id": r["event_id"],
                **{c: r[c] for c in spec.categorical_columns},
                "label_known_at": to_us(r["label_known_at"]) if r["label_known_at"] is not None else None,
            }
        )
    return {k: History.from_rows(v, spec.categorical_columns) for k, v in grouped.items()}


# -- vectors for ingested events ------------------------------------------------


@dataclass(frozen=True)
class FeatureRow:
    entity_type: str
    entity_id: str
    as_of: datetime
    event_id: str
    features: dict[str, float | None]


def event_level_rows(fs: FeatureSet, events: Sequence[dict[str, Any]]) -> list[FeatureRow]:
    """The event's own features (entity type ``event``)."""
    if not events:
        return []
    ts = np.array([to_us(e["occurred_at"]) for e in events], dtype=np.int64)
    amount = np.array([np.nan if e.get("amount") is None else float(e["amount"]) for e in events])
    values = event_features(fs, ts, amount)
    return [
        FeatureRow(EVENT_ENTITY, e["event_id"], e["occurred_at"], e["event_id"], vector)
        for e, vector in zip(events, vectors_to_json(values))
    ]


def rows_for_events(
    spec: EntityFeatures, histories: dict[str, History], events: Iterable[dict[str, Any]]
) -> list[FeatureRow]:
    """Evaluate one entity type's features at each event (found in its entity's history)."""
    entity_ids = list(histories)
    group_of = {entity_id: g for g, entity_id in enumerate(entity_ids)}
    index = {(g, eid): i for g, entity_id in enumerate(entity_ids)
             for i, eid in enumerate(histories[entity_id].event_id.tolist())}
    found = []
    for e in events:
        key = e.get(spec.key_column)
        g = None if key is None else group_of.get(key)
        if g is not None and (g, e["event_id"]) in index:
            found.append((g, index[(g, e["event_id"])], e))
    if not found:
        return []
    groups = np.array([g for g, _, _ in found], dtype=np.int64)
    positions = np.array([p for _, p, _ in found], dtype=np.int64)
    at = np.array([histories[entity_ids[g]].ts[p] for g, p, _ in found], dtype=np.int64)
    values = grouped_features(spec, [histories[i] for i in entity_ids], groups, at, positions)
    return [
        FeatureRow(spec.entity, entity_ids[g], e["occurred_at"], e["event_id"], vector)
        for (g, _, e), vector in zip(found, vectors_to_json(values))
    ]


async def compute_event_features(
    conn: Connection, fs: FeatureSet, events: Sequence[dict[str, Any]],
    entities: Sequence[str] | None = None, include_event_level: bool = True, label_cutoff: datetime | None = None,
) -> list[FeatureRow]:
    """Feature rows for stored events, from the event log (the offline path); ``label_cutoff``: labels as they
    stood then (a training set's cut-off), else as they stand now (:func:`load_histories`)."""
    rows = event_level_rows(fs, events) if include_event_level else []
    if not events:
        return rows
    t_min = min(e["occurred_at"] for e in events)
    t_max = max(e["occurred_at"] for e in events)
    for spec in fs.entities:
        if entities is not None and spec.entity not in entities:
            continue
        ids = sorted({e[spec.key_column] for e in events if e.get(spec.key_column) is not None})
        start = t_min - timedelta(seconds=spec.lookback_seconds)
        histories = await load_histories(conn, spec, ids, start, t_max, fs.label_name, label_cutoff)
        rows += rows_for_events(spec, histories, events)
    return rows


async def write_feature_rows(conn: Connection, fs: FeatureSet, rows: Sequence[FeatureRow]) -> int:
    """Append rows to ``sira_features`` (bulk COPY; rows already stored are skipped). Returns rows written.

    Rows are normally new (they belong to events just stored), so they are
    COPYed straight in; if some exist (a re-run after a crash), the batch goes
    through a staging table and ``ON CONFLICT DO NOTHING`` instead.
    """
    if not rows:
        return 0
    lo, hi = min(r.as_of for r in rows), max(r.as_of for r in rows)
    await conn.execute("SELECT sira_ensure_month_partitions('sira_features', $1, $2)", lo, hi)
    columns = ["feature_set", "feature_set_version", "entity_type", "entity_id", "as_of", "event_id", "features"]
    records = [(fs.name, fs.version, r.entity_type, r.entity_id, r.as_of, r.event_id, r.features) for r in rows]
    try:
        async with conn.transaction():  # a savepoint when the caller holds a transaction
            await conn.copy_records_to_table("sira_features", records=records, columns=columns)
        return len(records)
    except asyncpg.UniqueViolationError:
        pass
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS sira_features_stage ON COMMIT DELETE ROWS AS SELECT feature_set,"
        " feature_set_version, entity_type, entity_id, as_of, event_id, features FROM sira_features WITH NO DATA"
    )
    await conn.execute("TRUNCATE sira_features_stage")
    await conn.copy_records_to_table("sira_features_stage", records=records, columns=columns)
    status = await conn.execute(
        f"""INSERT INTO sira_features ({", ".join(columns)}) SELECT {", ".join(columns)} FROM sira_features_stage
            ON CONFLICT DO NOTHING"""
    )
    return db.rows_affected(status)


# -- snapshots --------------------------------------------------------------------


def state_from_history(spec: EntityFeatures, history: History, newest: int) -> dict[str, Any]:
    """The part of a history that later features can still need (within the lookback of ``newest``)."""
    kept = history.take(history.ts > newest - spec.lookback_seconds * US)
    known = kept.label_known_at if kept.label_known_at is not None else np.full(len(kept), np.inf)
    columns = [
        kept.ts.tolist(),
        [None if math.isnan(a) else a for a in kept.amount.tolist()],
        kept.event_id.tolist(),
        *(kept.categories[c].tolist() for c in spec.categorical_columns),
        [None if math.isinf(k) else int(k) for k in known.tolist()],
    ]
    return {"columns": ["ts", "amount", "event_id", *spec.categorical_columns, "label_known_at"],
            "rows": [list(r) for r in zip(*columns)]}


def history_from_state(spec: EntityFeatures, state: dict[str, Any]) -> History:
    names = state.get("columns") or []
    rows = state.get("rows") or []
    cols = dict(zip(names, zip(*rows))) if rows else {}
    return History.from_columns(
        cols.get("ts", ()), cols.get("amount", ()), cols.get("event_id", ()),
        {c: cols.get(c, (None,) * len(rows)) for c in spec.categorical_columns},
        cols.get("label_known_at", (None,) * len(rows)),
    )


def fold_events(
    spec: EntityFeatures, history: History, events: Sequence[dict[str, Any]]
) -> tuple[History, np.ndarray]:
    """The history with events added in time order (idempotent by event_id), and their positions."""
    new_ids = [e["event_id"] for e in events]
    old = history.take(~np.isin(history.event_id, new_ids)) if len(history) else history
    known = old.label_known_at if old.label_known_at is not None else np.full(len(old), np.inf)
    folded = History.from_columns(
        [*old.ts.tolist(), *(to_us(e["occurred_at"]) for e in events)],
        [*(None if math.isnan(a) else a for a in old.amount.tolist()), *(e.get("amount") for e in events)],
        [*old.event_id.tolist(), *new_ids],
        {c: [*old.categories[c].tolist(), *(e.get(c) for e in events)] for c in spec.categorical_columns},
        [*(None if math.isinf(k) else k for k in known.tolist()), *(e.get("label_known_at") for e in events)],
    )
    return folded, np.flatnonzero(np.isin(folded.event_id, new_ids))


def newest_vectors(spec: EntityFeatures, histories: dict[str, History]) -> dict[str, dict[str, float | None]]:
    """Each entity's vector as of its newest event (one vectorised call)."""
    ids = [i for i, h in histories.items() if len(h)]
    if not ids:
        return {}
    last = np.array([len(histories[i]) - 1 for i in ids], dtype=np.int64)
    at = np.array([histories[i].ts[-1] for i in ids], dtype=np.int64)
    values = grouped_features(spec, [histories[i] for i in ids], np.arange(len(ids)), at, last)
    return dict(zip(ids, vectors_to_json(values)))


async def upsert_snapshots(
    conn: Connection, fs: FeatureSet, spec: EntityFeatures, histories: dict[str, History],
    vectors: dict[str, dict[str, float | None]] | None = None,
) -> int:
    """Write each entity's snapshot as of its newest event (``vectors``: already computed ones)."""
    vectors = {**newest_vectors(spec, {i: h for i, h in histories.items() if i not in (vectors or {})}),
               **(vectors or {})}
    records = []
    for entity_id, history in histories.items():
        if len(history) == 0:
            continue
        newest = int(history.ts[-1])
        state = state_from_history(spec, history, newest)
        records.append((spec.entity, entity_id, fs.name, fs.version, vectors[entity_id], from_us(newest),
                        str(history.event_id[-1]), len(state["rows"]), state))
    if not records:
        return 0
    await conn.executemany(
        """INSERT INTO sira_feature_snapshots
               (entity_type, entity_id, feature_set, feature_set_version, features, as_of, last_event_id,
                event_count, state)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (entity_type, entity_id, feature_set, feature_set_version) DO UPDATE
              SET features = EXCLUDED.features, as_of = EXCLUDED.as_of, last_event_id = EXCLUDED.last_event_id,
                  event_count = EXCLUDED.event_count, state = EXCLUDED.state
            WHERE sira_feature_snapshots.state IS DISTINCT FROM EXCLUDED.state""",
        records,
    )
    await notify_snapshots(conn, spec.entity, [(r[1], r[6], r[7], _labelled(r[8])) for r in records])
    return len(records)


SNAPSHOT_CHANNEL = "sira_snapshots"
_NOTIFY_CHUNK = 60  # entities per notification (Postgres caps a payload at 8000 bytes)
_NOTIFY_MAX = 600  # beyond this many entities, one "all of this type changed" notification


def _labelled(state: dict[str, Any]) -> int:
    """How many events of a snapshot state carry a positive label (a label change changes the features)."""
    rows = state.get("rows") or []
    return sum(1 for r in rows if r[-1] is not None)


async def notify_snapshots(conn: Connection, entity_type: str,
                           changes: Sequence[tuple[str, str, int, int]]) -> None:
    """Tell serving replicas which snapshots changed (delivered at commit; caches drop or keep entries).

    Each change is (entity id, newest event id, events in the state, labelled
    events): a replica whose cached history has the same newest event, as many
    events within the lookback and as many labels keeps its entry (it folded
    those events itself); any other difference drops it.
    """
    import orjson

    if not changes:
        return
    if len(changes) > _NOTIFY_MAX:
        payloads = [orjson.dumps({"t": entity_type, "all": True}).decode()]
    else:
        payloads = [orjson.dumps({"t": entity_type, "e": [list(c) for c in changes[i: i + _NOTIFY_CHUNK]]}).decode()
                    for i in range(0, len(changes), _NOTIFY_CHUNK)]
    for payload in payloads:
        if len(payload.encode()) >= 7_900:  # very long ids: say "all" rather than fail the write
            payload = orjson.dumps({"t": entity_type, "all": True}).decode()
        await conn.execute("SELECT pg_notify($1, $2)", SNAPSHOT_CHANNEL, payload)


@dataclass(frozen=True)
class MaterializeResult:
    entities: dict[str, int]
    events_through: int
    labels_through: int


LOG_LOCK = 7402
"""Advisory lock (one bigint key) over the log's positions: every transaction storing events or labels holds it
shared (:func:`writing_log`), an erasure exclusively, and :func:`log_positions` for the instant it reads them."""


async def writing_log(conn: Connection) -> None:
    """Hold :data:`LOG_LOCK` shared for the caller's transaction, before it stores events or labels."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", LOG_LOCK)


async def log_positions(conn: Connection, patience_s: float = 30.0, queued_ms: int = 1000) -> tuple[int, int]:
    """(events' ``seq``, labels' ``id``) up to which the log is complete: no transaction can still commit an
    event or label at or below them. ``max(seq)`` alone is not that: a writer that took a sequence value before
    another and commits after it lands below a watermark read meanwhile, and an incremental job would never
    read it. So the read waits for the writers in flight (they hold :data:`LOG_LOCK` shared), takes the
    positions, and lets writers go on: a session-level lock, released before the caller's transaction ends.
    It waits by trying, not in PostgreSQL's queue, where it would hold back every new writer behind the
    slowest one in flight (a large label import); only after ``patience_s`` without a gap does it queue, for
    ``queued_ms`` at a time (``lock_timeout``): a wait with no end outlived a cancellation (SIGTERM waited out a
    stuck writer: minutes) and left a dropped connection's backend queued, holding back every new writer."""
    deadline = time.monotonic() + patience_s
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOG_LOCK):
        if time.monotonic() <= deadline:
            await asyncio.sleep(0.01)
            continue
        await (tx := conn.transaction()).start()  # a savepoint in the caller's transaction, if any
        try:
            await conn.execute(f"SELECT set_config('lock_timeout', '{int(queued_ms)}ms', true)")
            await conn.execute("SELECT pg_advisory_lock($1)", LOG_LOCK)
            break
        except asyncpg.LockNotAvailableError:
            continue
        finally:  # lock_timeout undone; a session-level advisory lock outlives a rollback
            await tx.rollback()
    try:
        row = await conn.fetchrow("SELECT (SELECT coalesce(max(seq), 0) FROM sira_events),"
                                  " (SELECT coalesce(max(id), 0) FROM sira_feedback)")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOG_LOCK)
    return (row[0], row[1]) if row else (0, 0)


async def watermark(conn: Connection, job: str) -> int:
    return await conn.fetchval("SELECT position FROM sira_job_watermarks WHERE job = $1", job) or 0


async def set_watermark(conn: Connection, job: str, position: int) -> None:
    await conn.execute(
        """INSERT INTO sira_job_watermarks (job, position) VALUES ($1, $2)
           ON CONFLICT (job) DO UPDATE SET position = EXCLUDED.position""",
        job, position,
    )


async def materialize(
    conn: Connection, fs: FeatureSet, *, full: bool = False, chunk: int = 2_000
) -> MaterializeResult:
    """Refresh snapshots of entities with new events or labels since the last run (all with ``full``)."""
    job = f"materialize:{fs.name}:v{fs.version}"
    ev_from = 0 if full else await watermark(conn, f"{job}:events")
    lab_from = 0 if full else await watermark(conn, f"{job}:labels")
    ev_to, lab_to = await log_positions(conn)
    counts: dict[str, int] = {}
    for spec in fs.entities:
        key = db.quote_ident(spec.key_column)
        changed = await conn.fetch(
            f"""SELECT {key} AS entity_id, max(occurred_at) AS newest FROM sira_events
                 WHERE {key} IN (
                       SELECT {key} FROM sira_events WHERE seq > $1 AND seq <= $2 AND {key} IS NOT NULL
                       UNION
                       SELECT e.{key} FROM sira_feedback f JOIN sira_events e ON e.event_id = f.event_id
                        WHERE $5 AND f.id > $3 AND f.id <= $4 AND e.{key} IS NOT NULL)
                 GROUP BY {key}""",
            ev_from, ev_to, lab_from, lab_to, spec.label_delay is not None,
        )
        done = 0
        for i in range(0, len(changed), chunk):
            part = changed[i: i + chunk]
            newest = max(r["newest"] for r in part)
            oldest_needed = min(r["newest"] for r in part) - timedelta(seconds=spec.lookback_seconds)
            histories = await load_histories(
                conn, spec, [r["entity_id"] for r in part], oldest_needed, newest, fs.label_name
            )
            done += await upsert_snapshots(conn, fs, spec, histories)
        counts[spec.entity] = done
    await set_watermark(conn, f"{job}:events", ev_to)
    await set_watermark(conn, f"{job}:labels", lab_to)
    return MaterializeResult(counts, ev_to, lab_to)


async def materialize_all(settings: Any, *, full: bool = False, fs: FeatureSet | None = None) -> dict[str, Any]:
    """``sira features materialize`` and ``jobs/materialize.py``: one incremental refresh."""
    import time

    from sira.features.definitions import get_feature_set

    fs = fs or get_feature_set()
    started = time.perf_counter()
    async with db.open_pool(settings) as pool:
        async with db.transaction(pool) as conn:
            # One materializer at a time per feature set; a second waits, then finds little to do.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"materialize:{fs.name}:{fs.version}")
            result = await materialize(conn, fs, full=full)
    return {"feature_set": fs.name, "version": fs.version, "entities": result.entities,
            "events_through_seq": result.events_through, "labels_through_id": result.labels_through,
            "seconds": round(time.perf_counter() - started, 3)}


@dataclass(frozen=True)
class OnlineFeatures:
    """An entity's online vector with how fresh it is."""

    entity_type: str
    entity_id: str
    features: dict[str, float | None]
    as_of: datetime
    age_seconds: float
    stale: bool
    state: dict[str, Any]


async def read_snapshot(
    conn: Connection, fs: FeatureSet, entity_type: str, entity_id: str, *, now: datetime | None = None
) -> OnlineFeatures:
    """The stored snapshot of one entity, with its age against the feature set's TTL."""
    row = await conn.fetchrow(
        """SELECT features, as_of, state FROM sira_feature_snapshots
            WHERE entity_type = $1 AND entity_id = $2 AND feature_set = $3 AND feature_set_version = $4""",
        entity_type, entity_id, fs.name, fs.version,
    )
    if row is None:
        raise NotFound(f"no {entity_type} snapshot for {entity_id!r} in feature set {fs.name} v{fs.version}")
    now = now or datetime.now(timezone.utc)
    age = (now - row["as_of"]).total_seconds()
    return OnlineFeatures(entity_type, entity_id, row["features"], row["as_of"], age,
                          age > parse_duration(fs.ttl), row["state"])


def features_at(spec: EntityFeatures, state: dict[str, Any], at: datetime) -> dict[str, float | None]:
    """An entity's window features evaluated at ``at`` from its snapshot state (windows age correctly)."""
    history = history_from_state(spec, state)
    values = entity_features(spec, history, np.array([to_us(at)], dtype=np.int64))
    return vector_to_json({k: v[0] for k, v in values.items()})


# -- point-in-time retrieval ---------------------------------------------------------


async def historical_features(
    conn: Connection, fs: FeatureSet, rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each row's features as known at its ``timestamp`` (the event itself included, nothing after).

    A row carries entity keys (``customer_id``, ``card_token``, ``terminal_id``,
    ...) and ``timestamp``, or an ``event_id`` (its time and keys then come from
    the stored event, and event-level features are filled in too).
    """
    event_ids = [r["event_id"] for r in rows if r.get("event_id")]
    stored: dict[str, dict[str, Any]] = {}
    if event_ids:
        keys = ", ".join(sorted({db.quote_ident(s.key_column) for s in fs.entities}))
        for rec in await conn.fetch(
            f"SELECT event_id, occurred_at, amount::float8 AS amount, {keys} FROM sira_events"
            " WHERE event_id = ANY($1::text[])",
            event_ids,
        ):
            stored[rec["event_id"]] = dict(rec)
    queries: list[dict[str, Any]] = []
    for r in rows:
        q = dict(r)
        if r.get("event_id"):
            if r["event_id"] not in stored:
                raise NotFound(f"event {r['event_id']!r} is not in the event log")
            q = {**stored[r["event_id"]], "timestamp": stored[r["event_id"]]["occurred_at"],
                 **{k: v for k, v in r.items() if v is not None}}
        if not isinstance(q.get("timestamp"), datetime):
            raise InvalidInput("every row needs a timestamp (or an event_id)")
        queries.append(q)
    out = [{name: math.nan for name in fs.names()} for _ in queries]
    event_rows = [i for i, q in enumerate(queries) if q.get("event_id")]
    if event_rows:
        ts = np.array([to_us(queries[i]["timestamp"]) for i in event_rows], dtype=np.int64)
        amount = np.array([np.nan if queries[i].get("amount") is None else queries[i]["amount"] for i in event_rows])
        for name, values in event_features(fs, ts, amount).items():
            for j, i in enumerate(event_rows):
                out[i][name] = float(values[j])
    for spec in fs.entities:
        idx = [i for i, q in enumerate(queries) if q.get(spec.key_column) is not None]
        if not idx:
            continue
        times = [queries[i]["timestamp"] for i in idx]
        histories = await load_histories(
            conn, spec, sorted({queries[i][spec.key_column] for i in idx}),
            min(times) - timedelta(seconds=spec.lookback_seconds), max(times), fs.label_name,
        )
        entity_ids = sorted({queries[i][spec.key_column] for i in idx})
        group_of = {e: g for g, e in enumerate(entity_ids)}
        stacked = [histories.get(e) or History.from_rows([], spec.categorical_columns) for e in entity_ids]
        groups = np.array([group_of[queries[i][spec.key_column]] for i in idx], dtype=np.int64)
        at = np.array([to_us(queries[i]["timestamp"]) for i in idx], dtype=np.int64)
        positions = np.full(len(idx), -1, dtype=np.int64)
        for j, i in enumerate(idx):
            if queries[i].get("event_id"):
                h = stacked[groups[j]]
                hits = np.flatnonzero(h.event_id == queries[i]["event_id"])
                if hits.size and h.ts[hits[0]] <= at[j]:
                    positions[j] = int(hits[0])
        by_name = grouped_features(spec, stacked, groups, at, positions)
        for j, i in enumerate(idx):
            out[i].update({k: float(v[j]) for k, v in by_name.items()})
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in out]


async def feature_sets_in_service(conn: Connection) -> list[FeatureSet]:
    """The feature sets new events are folded into: each name's current version, and every version a production or
    staging model version was trained on (until it is retired; then its set is read-only, no longer kept up to date)."""
    from sira.features.definitions import CURRENT_VERSIONS, FEATURE_SETS

    wanted = {(name, version) for name, version in CURRENT_VERSIONS.items()}
    wanted.update((r["feature_set"], r["feature_set_version"]) for r in await conn.fetch(
        """SELECT DISTINCT m.feature_set, v.feature_set_version FROM sira_model_versions v JOIN sira_models m
             ON m.id = v.model_id WHERE v.status IN ('production', 'staging') AND m.feature_set IS NOT NULL
              AND v.feature_set_version IS NOT NULL"""))
    return [FEATURE_SETS[key] for key in sorted(wanted) if key in FEATURE_SETS]
