"""Ingestion: events in, validated, redacted, deduplicated, with their features. Two paths share
:func:`store_events` (validation, redaction, idempotent insert by ``event_id``, dead letters):

- files (:func:`ingest_files`): Ray Data reads the files and loads batches in
  parallel; then features of the new events are computed from the event log,
  sharded by entity, as Ray Data tasks (the offline path);
- small batches (``POST /v1/events``, the Redis stream, scored requests):
  :func:`ingest_records` stores the events and folds each into its entities'
  online snapshots in the same transaction (the online path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg
import numpy as np
import pyarrow as pa

from sira.core import audit, db
from sira.core import files as input_files
from sira.core.audit import Actor
from sira.core.config import Settings
from sira.core.errors import Interrupted, InvalidInput, SiraError
from sira.core.files import FILE, ROW, UNDECODABLE
from sira.features import store as feature_store
from sira.features.definitions import FeatureSet
from sira.features.history import grouped_features, vectors_to_json
from sira.features.store import feature_sets_in_service
from sira.ingest import gate
from sira.ingest.columnar import TEXT_FIELDS, normalize_table
from sira.ingest.dead_letters import IDENTITY, contradicted, dead_letters, identity, reused_copy, undecodable_row
from sira.ingest.events import (
    EVENT_COLUMNS,
    IngestSummary,
    Rejection,
    Row,
    check_columns,
    check_sample_types,
    json_records,
    normalize,
    stored_row,
)
from sira.ingest.pii import Redactor, redactor_for

FEATURE_SHARDS = 8
# Rows below which a file load runs in the caller's process: Ray Data's start (a local Ray, its executor,
# a worker importing SIRA: ~2.5 s here) costs more than two parallel loaders save below ~2 x start / 30 µs
# per row (docs/performance.md). Row counts are known for Parquet only; CSV and JSON Lines go through Ray.
LOCAL_BELOW = 150_000
CLOSE_S = 10.0  # the longest a file load's connection waits to close gracefully before it is dropped


async def store_events(
    conn: asyncpg.Connection,
    records: Sequence[Mapping[str, Any]],
    *,
    redactor: Redactor,
    source: str,
    mapping: Mapping[str, str] | None = None,
    numbers_as_text: bool = False,
) -> tuple[IngestSummary, list[dict[str, Any]]]:
    """Validate, redact and insert events; returns the summary and the newly stored rows.

    Re-sending an event (same ``event_id``) changes nothing and counts as a duplicate;
    invalid records go to ``sira_rejected_events`` with their reason. ``numbers_as_text``: the
    records come from CSV, where a numeric string is a number (elsewhere it is refused).
    """
    source, results = normalize_all(records, redactor, source, mapping, numbers_as_text=numbers_as_text)
    return await store_normalized(conn, results, source)


def normalize_all(records: Sequence[Mapping[str, Any]], redactor: Redactor, source: str,
                  mapping: Mapping[str, str] | None = None, *, numbers_as_text: bool = False
                  ) -> tuple[str, list[dict[str, Any] | Rejection]]:
    """The source's name scrubbed (a name sent by the caller, or a file's: an email in it is redacted) and what
    :func:`normalize` makes of each record (no database)."""
    source = redactor.scrub_text(source)
    return source, [normalize(raw, redactor, source, mapping, numbers_as_text=numbers_as_text) for raw in records]


async def store_normalized(conn: asyncpg.Connection, results: Sequence[dict[str, Any] | Rejection], source: str,
                           positions: Sequence[str | None] | None = None) -> tuple[IngestSummary, list[dict[str, Any]]]:
    """Store what :func:`normalize` made of a batch (``source`` scrubbed) as :func:`store_rows` does (``positions``:
    where each record came from); returns the summary (with each event's result) and the new rows."""
    rows = [r if isinstance(r, Rejection) else stored_row(r) for r in results]
    summary, new_ids, aside = await store_rows(conn, rows, source, lambda at: [positions[i] if positions else None
                                                                               for i in at], ids=True)
    fresh: list[dict[str, Any]] = []
    for i, result in enumerate(results):  # in the batch's order, each with its index
        if isinstance(result, Rejection) or i in aside:
            summary.results.append({"index": i, "event_id": aside[i].event_id, "status": "rejected",
                                    "code": aside[i].reason_code, "reason": aside[i].reason})
        else:
            new = result["event_id"] in new_ids
            new_ids.discard(result["event_id"])  # a later copy is a duplicate
            fresh += [result] if new else []
            summary.results.append({"index": i, "event_id": result["event_id"],
                                    "status": "accepted" if new else "duplicate"})
    return summary, fresh


async def store_rows(conn: asyncpg.Connection, results: Sequence[Row | Rejection], source: str,
                     where: Callable[[list[int]], Sequence[str | None]] = lambda at: [None] * len(at), *,
                     ids: bool = False) -> tuple[IngestSummary, set[str], dict[int, Rejection]]:
    """Store a batch's rows (tuples in :data:`EVENT_COLUMNS` order), the first copy of each ``event_id``, and its
    rejections as dead letters. A copy of an event_id that contradicts its first copy, or the event stored under
    it before (:data:`IDENTITY`), is another event under a reused id: set aside as ``event_id_reused`` (``where``:
    the positions of rows by index, which its dead letter keeps: loaded again, it is a repeat); another copy is a
    duplicate. Returns the summary, the ids stored (``ids``; else they are counted: a file load's millions) and the
    records set aside by index."""
    summary = IngestSummary(read=len(results))
    rows = {i: r for i, r in enumerate(results) if not isinstance(r, Rejection)}
    first: dict[str, int] = {}
    for i, row in rows.items():
        first.setdefault(row[0], i)
    kept = [rows[i] for i in first.values()]
    new_ids = await insert_events(conn, kept) if ids else set()
    summary.accepted = len(new_ids) if ids else await count_inserted(conn, kept)
    # each copy compared with the event its id names: the one stored before (looked up only when some were), or
    # the batch's first copy
    stored = await _stored_otherwise(conn) if summary.accepted < len(kept) else {}
    reused = {i: fields for i, row in rows.items() if (i != first[row[0]] or row[0] in stored) and (
        fields := contradicted(stored.get(row[0]) or identity(rows[first[row[0]]]), row))}
    aside = {i: r for i, r in enumerate(results) if isinstance(r, Rejection)}
    for i, position in zip(sorted(reused), where(sorted(reused))):
        aside[i] = reused_copy(rows[i], reused[i], position)
    summary.duplicates = len(results) - summary.accepted - len(aside)
    summary.duplicates += await dead_letters(conn, [aside[i] for i in sorted(aside)], source, summary)
    return summary, new_ids, aside


async def _stored_otherwise(conn: asyncpg.Connection) -> dict[str, tuple[Any, ...]]:
    """The :func:`identity` of each event stored under the id of a staged row (:func:`_staged_insert`) that differs
    from it there."""
    rows = await conn.fetch(
        f"SELECT e.event_id, {', '.join(f'e.{c}' for c in IDENTITY)} FROM sira_events_stage s JOIN sira_events e"
        f" ON e.event_id = s.event_id WHERE ({', '.join(f's.{c}' for c in IDENTITY)}) IS DISTINCT FROM"
        f" ({', '.join(f'e.{c}' for c in IDENTITY)})")
    return {r[0]: tuple(r)[1:] for r in rows}


async def insert_events(conn: asyncpg.Connection, rows: Sequence[Row]) -> set[str]:
    """Insert event rows (COPY through a staging table); returns the ids stored (new, not erased)."""
    if not rows:
        return set()
    staged = await _staged_insert(conn, rows)
    return {r["event_id"] for r in await conn.fetch(staged + " RETURNING event_id")}


async def count_inserted(conn: asyncpg.Connection, records: Sequence[Row]) -> int:
    """:func:`insert_events` of rows as tuples in :data:`EVENT_COLUMNS` order, returning how many were stored,
    not their ids (a file load's millions)."""
    if not records:
        return 0
    return db.rows_affected(await conn.execute(await _staged_insert(conn, records)))


async def _staged_insert(conn: asyncpg.Connection, records: Sequence[Row]) -> str:
    """COPY the rows (tuples in :data:`EVENT_COLUMNS` order) into a staging table; returns the statement that
    inserts the new ones."""
    cols = ", ".join(EVENT_COLUMNS)
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS sira_events_stage ON COMMIT DELETE ROWS"
        f" AS SELECT {cols} FROM sira_events WITH NO DATA"
    )
    # one round trip (the recorder's and the stream's path): an erasure or a read of the log's positions waits
    # for this insert (sira.features.store.writing_log)
    await conn.execute(f"TRUNCATE sira_events_stage; SELECT pg_advisory_xact_lock_shared({feature_store.LOG_LOCK})")
    await conn.copy_records_to_table(
        "sira_events_stage", records=records, columns=list(EVENT_COLUMNS),
    )
    return (  # an erased person's events from before the erasure are never stored again (sql/017)
        f"INSERT INTO sira_events ({cols}) SELECT {cols} FROM sira_events_stage s"
        " WHERE NOT EXISTS (SELECT 1 FROM sira_erased_subjects x, sira_erasure_salt k"
        f"                   WHERE x.digest = {gate.digest_of('s.customer_id')} AND s.occurred_at < x.erased_at)"
        # events stored already are left out before the insert: a row ON CONFLICT skips has taken a value of
        # `seq` all the same, and the log's arrival counter (sira_events_stored_total, max(seq)) counted it
        # (a replica's recorder storing events ingested before: 7,267 too many for 15,464 rows)
        "   AND NOT EXISTS (SELECT 1 FROM sira_events e WHERE e.event_id = s.event_id)"
        " ON CONFLICT (event_id) DO NOTHING")  # (one stored meanwhile by another transaction)


async def record_normalized(conn: asyncpg.Connection, fs: FeatureSet, rows: Sequence[dict[str, Any]],
                            origin: str | None = None) -> int:
    """Store already-normalized (redacted) events and fold the new ones into every feature set in service
    (``fs``, the one they were scored with, among them). The path of events a serving replica scored (``origin``: the replica, named in the notifications of v2 states it
    writes): validated and redacted before scoring, not normalized twice. A scored event whose id names another
    stored event is set aside as ``event_id_reused`` (source ``serving``), as on every other path (it was dropped
    unseen). Returns the number of events that were new.
    """
    _, new_ids, _ = await store_rows(conn, [stored_row(r) for r in rows], "serving", ids=True,
                                     where=lambda at: [f"scored {rows[i]['event_id']}" for i in at])
    fresh = [r for r in rows if r["event_id"] in new_ids]
    if fresh:
        for other in sorted({fs, *await feature_sets_in_service(conn)}, key=lambda f: (f.name, f.version)):
            await fold_and_store(conn, other, fresh, origin=origin)
    return len(fresh)


async def fold_and_store(conn: asyncpg.Connection, fs: FeatureSet, fresh: Sequence[dict[str, Any]],
                         origin: str | None = None) -> tuple[int, int]:
    """New events into their entities' state: (feature rows written, states updated). Feature engine v2
    (``engine="tiles"``) folds them into the packed states and writes no per-event rows (a vector is
    reproducible from the log and the checkpoints; a scored one is in ``sira_predictions``); the history
    engine updates its snapshots and writes each event's row into ``sira_features``."""
    if not fresh:
        return 0, 0
    if fs.engine == "tiles":
        from sira.features.label_states import fold_stored_labels
        from sira.features.states import fold_events

        folded = await fold_events(conn, fs, fresh, origin)  # then labels stored before their events (notified
        # with no origin: a replica that folded these events lacks them)
        return 0, folded.states + await fold_stored_labels(conn, fs, [e["event_id"] for e in fresh], folded.rebuilt)
    rows, updated = await fold_into_snapshots(conn, fs, fresh)
    return await feature_store.write_feature_rows(conn, fs, rows), updated


# -- the online path -------------------------------------------------------------


async def fold_into_snapshots(
    conn: asyncpg.Connection, fs: FeatureSet, events: Sequence[dict[str, Any]]
) -> tuple[list[feature_store.FeatureRow], int]:
    """Fold new events into their entities' snapshots (rows locked) and return their feature rows.

    The snapshot state is the entity's events within the lookback; an entity
    without a snapshot starts from its stored history. Folding a batch at once
    equals folding its events one by one: each event's vector sees only what
    precedes it.
    """
    rows = feature_store.event_level_rows(fs, events)
    updated = 0
    for spec in fs.entities:
        by_entity: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            if e.get(spec.key_column) is not None:
                by_entity.setdefault(e[spec.key_column], []).append(e)
        if not by_entity:
            continue
        ids = sorted(by_entity)  # one lock order for every consumer: no deadlocks
        snaps = {
            r["entity_id"]: r["state"]
            for r in await conn.fetch(
                """SELECT entity_id, state FROM sira_feature_snapshots
                    WHERE entity_type = $1 AND entity_id = ANY($2::text[]) AND feature_set = $3
                      AND feature_set_version = $4
                    ORDER BY entity_id FOR UPDATE""",
                spec.entity, ids, fs.name, fs.version,
            )
        }
        missing = [i for i in ids if i not in snaps]
        loaded: dict[str, feature_store.History] = {}
        if missing:
            newest = max(e["occurred_at"] for i in missing for e in by_entity[i])
            oldest = min(e["occurred_at"] for i in missing for e in by_entity[i])
            loaded = await feature_store.load_histories(
                conn, spec, missing, oldest - timedelta(seconds=spec.lookback_seconds), newest, fs.label_name
            )
        histories: dict[str, feature_store.History] = {}
        new_positions: dict[str, np.ndarray] = {}
        for entity_id in ids:
            if entity_id in snaps:
                base = feature_store.history_from_state(spec, snaps[entity_id])
            else:
                base = loaded.get(entity_id) or feature_store.History.from_rows([], spec.categorical_columns)
            histories[entity_id], new_positions[entity_id] = feature_store.fold_events(spec, base, by_entity[entity_id])
        groups = np.concatenate([np.full(len(new_positions[i]), g) for g, i in enumerate(ids)]).astype(np.int64)
        positions = np.concatenate([new_positions[i] for i in ids]).astype(np.int64)
        at = np.concatenate([histories[i].ts[new_positions[i]] for i in ids]).astype(np.int64)
        values = grouped_features(spec, [histories[i] for i in ids], groups, at, positions)
        newest: dict[str, dict[str, float | None]] = {}
        for j, vector in enumerate(vectors_to_json(values)):
            entity_id = ids[groups[j]]
            history = histories[entity_id]
            rows.append(feature_store.FeatureRow(spec.entity, entity_id, feature_store.from_us(int(at[j])),
                                                 str(history.event_id[positions[j]]), vector))
            if positions[j] == len(history) - 1:
                newest[entity_id] = vector  # the snapshot's vector, no need to compute it again
        updated += await feature_store.upsert_snapshots(conn, fs, spec, histories, newest)
    return rows, updated


async def ingest_normalized(conn: asyncpg.Connection, source: str, results: Sequence[dict[str, Any] | Rejection],
                            feature_sets: Sequence[FeatureSet] | None = None,
                            positions: Sequence[str | None] | None = None) -> IngestSummary:
    """Store a batch :func:`normalize_all` made and fold its new events into the state of every feature set in
    service (``feature_sets`` when given), inside the caller's transaction (``positions``: where each record came
    from, which a dead letter keeps)."""
    summary, fresh = await store_normalized(conn, results, source, positions)
    if fresh:
        for fs in feature_sets if feature_sets is not None else await feature_sets_in_service(conn):
            written, updated = await fold_and_store(conn, fs, fresh)
            summary.features_written += written
            summary.snapshots_updated += updated
    return summary


async def ingest_records(
    pool: asyncpg.Pool,
    records: Sequence[Mapping[str, Any]],
    *,
    redactor: Redactor,
    source: str,
    mapping: Mapping[str, str] | None = None,
    feature_sets: Sequence[FeatureSet] | None = None,
    position: str | None = None,
) -> IngestSummary:
    """:func:`ingest_normalized` of the records in a transaction of its own (``POST /v1/events``). ``position``:
    where the records came from (the API's endpoint), which their dead letters keep: a retry's are repeats, stored
    once, as a stream's."""
    started = time.perf_counter()
    source, results = normalize_all(records, redactor, source, mapping)
    if position is not None:
        results = [replace(r, position=position) if isinstance(r, Rejection) else r for r in results]
    async with db.transaction(pool) as conn:
        summary = await ingest_normalized(conn, source, results, feature_sets,
                                          None if position is None else [position] * len(results))
    summary.seconds = time.perf_counter() - started
    return summary


# -- the file path (Ray Data) ------------------------------------------------------


def _load_batch(batch: Any, *, mapping: dict[str, str], source: str, dsn: str, file_format: str,
                names: Mapping[str, str], redactor: Redactor | None = None) -> dict[str, np.ndarray]:
    """Ray Data task (or a step of an in-process load, given the caller's ``redactor``): store one batch of
    file rows in the driver's database; returns its counts as one row. A rejected row's dead letter keeps its
    file's name (``names``: its path inside the folder loaded) and row number (``a.csv:7``,
    ``2026-05/a.csv:7``; JSON Lines: the line) as its position: ingested again, it is a repeat
    (:mod:`sira.ingest.dead_letters`)."""
    from sira.core.config import Settings

    redactor = redactor or redactor_for(Settings())  # a Ray worker's settings: the driver's (worker_env)
    scrubbed = redactor.scrub_text(source)
    where = ("file", "line") if file_format == "json" else (FILE, ROW)
    table = batch if file_format == "json" else batch.drop_columns(list(where))
    if file_format == "parquet":  # typed columns: validated and redacted as columns where plainly valid
        results = normalize_table(table, redactor, scrubbed, mapping)
    else:
        records = ([r if isinstance(r, dict) else replace(r, payload=redactor.payload(r.payload))  # a broken line's
                    for r in json_records(table, names)] if file_format == "json"  # file name redacted
                   else table.to_pylist())
        # a CSV row with bytes that are no UTF-8 (sira.core.files.as_text): set aside, nothing of it lost
        undecodable = [r.pop(UNDECODABLE) if file_format == "csv" else None  # type: ignore[union-attr]
                       for r in records]
        normalized = (raw if isinstance(raw, Rejection) else undecodable_row(raw, column, redactor, mapping) if column
                      else normalize(raw, redactor, scrubbed, mapping, numbers_as_text=file_format == "csv")
                      for raw, column in zip(records, undecodable))
        results = [r if isinstance(r, Rejection) else stored_row(r) for r in normalized]
    named: dict[str, str] = {}  # path -> its name, scrubbed (a file's name may hold an email)

    def positions(at: list[int]) -> list[str]:
        """Rows' positions (by index in the batch): their file's name and row."""
        places = zip(*(batch.column(c).take(pa.array(at, pa.int64())).to_pylist() for c in where))
        return [f"{named.setdefault(p, redactor.scrub_text(names.get(p) or Path(p).name))}:{row}" for p, row in places]

    bad = [i for i, r in enumerate(results) if isinstance(r, Rejection)]
    for i, position in zip(bad, positions(bad) if bad else []):
        results[i] = replace(cast(Rejection, results[i]), position=position)

    s = asyncio.run(_in_transaction(dsn, store_rows, results, scrubbed, positions))[0]
    return {  # the reasons as JSON text: as a dict, Ray Data merged the batches' into one struct of every reason,
        # None where a batch had none (and adding them up failed once every event was stored)
        "read": np.array([s.read]), "accepted": np.array([s.accepted]), "duplicates": np.array([s.duplicates]),
        "rejected": np.array([s.rejected]), "reasons": np.array([json.dumps(dict(s.reasons))]),
    }


def _feature_shard(batch: dict[str, np.ndarray], *, fs_name: str, fs_version: int, seq_from: int, seq_to: int,
                   shards: int, dsn: str) -> dict[str, np.ndarray]:
    """Ray Data task: features of the new events of one (entity, shard)."""
    from sira.features.definitions import get_feature_set

    fs = get_feature_set(fs_name, fs_version)
    written = []
    for entity, shard in zip(batch["entity"].tolist(), batch["shard"].tolist()):
        async def run(entity: str = entity, shard: int = shard) -> int:
            async with _connected(dsn) as conn:
                key = "event_id" if entity == feature_store.EVENT_ENTITY else fs.entity(entity).key_column
                keys = ", ".join(sorted({f'"{s.key_column}"' for s in fs.entities}))
                events = [dict(r) for r in await conn.fetch(
                    f"""SELECT event_id, occurred_at, amount::float8 AS amount, {keys} FROM sira_events
                         WHERE seq > $1 AND seq <= $2 AND "{key}" IS NOT NULL
                           AND (hashtext("{key}") & 2147483647) % $3 = $4""",
                    seq_from, seq_to, shards, shard,
                )]
                if entity == feature_store.EVENT_ENTITY:
                    rows = feature_store.event_level_rows(fs, events)
                else:
                    rows = await feature_store.compute_event_features(
                        conn, fs, events, entities=[entity], include_event_level=False
                    )
                async with conn.transaction():
                    return await feature_store.write_feature_rows(conn, fs, rows)

        written.append(asyncio.run(run()))
    return {"written": np.array(written, dtype=np.int64)}


def ingest_files(
    settings: Settings,
    paths: list[Path],
    *,
    feature_sets: Sequence[FeatureSet] | None = None,
    mapping: dict[str, str] | None = None,
    source: str | None = None,
    progress: bool = True,
    batch_size: int = 10_000,
    notify: Callable[[str], None] = lambda _m: None,
    actor: Actor | None = None,
    local_below: int = LOCAL_BELOW,
) -> IngestSummary:
    """Load event files through Ray Data (in this process when they hold fewer than ``local_below`` rows),
    then fold the new events into every feature set in service (``feature_sets`` when given): the history
    engine's features as Ray Data tasks sharded by entity, feature engine v2's states and checkpoints by
    :func:`sira.features.states.advance`. The load is recorded in the audit log as ``events.ingest``, by
    ``actor`` (the key's owner; by default the local user)."""
    import ray
    import ray.data

    from sira.core.progress import bar
    from sira.core.ray_runtime import init_ray, quiet_ray_data, ray_data_errors_unlogged, task_cause
    from sira.features.states import advance as advance_states

    started = time.perf_counter()
    mapping = mapping or {}
    files = replace(input_files.find_files(paths), text=tuple(mapping.get(name, name) for name in TEXT_FIELDS))
    sampled, sample = input_files.read_sample(files)
    json_columns = [(sampled, sample.column_names)] if files.format == "json" else []  # no fixed columns: the sample's
    for path, columns in [*json_columns, *input_files.columns_of(files)]:  # one that cannot work fails before any loads
        try:
            check_columns(columns, mapping)
        except InvalidInput as exc:
            raise InvalidInput(f"{path}: {exc.message}", details={**exc.details, "file": str(path)}) from None
    check_sample_types(sample, mapping, numbers_as_text=files.format != "parquet", file=sampled)
    parts = input_files.read_parts(files)  # every Parquet footer: one damaged fails here, before anything is loaded
    named = source or (files.paths[0].name if len(files.paths) == 1 else files.paths[0].parent.name)
    source = named if named.startswith("file:") else f"file:{named}"  # the kind first, as the API's api:NAME
    dsn = db.resolve_dsn(settings)

    async def seq_now() -> int:
        from sira.core import migrations

        async with _connected(dsn) as conn:
            await migrations.check(conn)
            return await conn.fetchval("SELECT coalesce(max(seq), 0) FROM sira_events")

    async def in_service() -> list[FeatureSet]:
        async with _connected(dsn) as conn:
            return await feature_sets_in_service(conn)

    seq_from = asyncio.run(seq_now())
    feature_sets = list(feature_sets) if feature_sets is not None else asyncio.run(in_service())
    total = sum(p["rows"] for p in parts) if all(p["rows"] >= 0 for p in parts) else None
    here = total is not None and total < local_below
    if not here or any(fs.engine != "tiles" for fs in feature_sets):  # Ray Data loads, or v1's features
        init_ray(settings, dsn)
        quiet_ray_data()
    notify(f"loading {len(files.paths)} {files.format} file(s)")
    phase = time.perf_counter()
    # Our own reads, one part per row group or file, rather than read_parquet/read_csv/read_json:
    # their errors named no file, CSV types came from a file's first block (a value of another type
    # further on failed the whole file) and JSON through Arrow's types (one row of another type
    # failed the file; integers became floats beside a fraction).
    load = {"mapping": mapping, "source": source, "dsn": dsn, "file_format": files.format, "names": files.named()}
    try:
        with ray_data_errors_unlogged(), bar("ingest: loading events", total, show=progress) as advance:
            counts = []
            for c in (
                ({k: v[0] for k, v in _load_batch(t, **load, redactor=redactor_for(settings)).items()}
                 for part in parts
                 for t in input_files.numbered(part["path"], part["row_group"], part["first"], files.format, batch_size,
                                   files.text))
                if here else
                ray.data.from_items(parts, override_num_blocks=len(parts))
                .map_batches(input_files.read_numbered, batch_size=1, batch_format="numpy",
                             fn_kwargs={"file_format": files.format, "rows": batch_size, "text": files.text})
                .map_batches(_load_batch, batch_format="pyarrow", batch_size=batch_size, fn_kwargs=load)
                .iter_rows()
            ):
                counts.append(c)
                advance(int(c["read"]))
    except BaseException as exc:  # noqa: BLE001 - re-raised as what a task raised (a damaged file: bad input)
        cause = task_cause(exc) if isinstance(exc, Exception) else exc
        raise (error := _stopped(cause, seq_now, seq_from)) from (None if error is cause else cause)
    summary = IngestSummary()
    for c in counts:
        for count in ("read", "accepted", "duplicates", "rejected"):
            setattr(summary, count, getattr(summary, count) + int(c[count]))
        summary.reasons.update(json.loads(c["reasons"]))
    seq_to = asyncio.run(seq_now())
    if summary.accepted:
        asyncio.run(db.analyze(dsn, "sira_events"))
    summary.phases["load"] = time.perf_counter() - phase
    try:
        # v2 states advance from what their last fold saw (sira.features.states.advance), so a load whose events
        # were all stored before folds those a load that stopped before folding left out (nothing when none are)
        for fs in [f for f in feature_sets if seq_to > seq_from or f.engine == "tiles" and summary.duplicates]:
            phase = time.perf_counter()
            notify(f"folding {summary.accepted:,} new events into {fs.name}@{fs.version}")
            if fs.engine == "tiles":
                summary.snapshots_updated += sum(asyncio.run(_in_transaction(dsn, advance_states, fs)).entities.values())
                summary.phases[f"states:{fs.name}@{fs.version}"] = time.perf_counter() - phase
                continue
            entities = [feature_store.EVENT_ENTITY, *(s.entity for s in fs.entities)]
            shards = [{"entity": e, "shard": k} for e in entities for k in range(FEATURE_SHARDS)]
            written = []
            with bar("ingest: computing features", len(shards), unit="shards", show=progress) as advance:
                for w in (
                    ray.data.from_items(shards)
                    .map_batches(_feature_shard, batch_size=1, batch_format="numpy",
                                 fn_kwargs={"fs_name": fs.name, "fs_version": fs.version, "seq_from": seq_from,
                                            "seq_to": seq_to, "shards": FEATURE_SHARDS, "dsn": dsn})
                    .iter_rows()
                ):
                    written.append(w)
                    advance(1)
            summary.features_written += sum(int(w["written"]) for w in written)
            summary.phases["features"] = time.perf_counter() - phase
    except BaseException as exc:  # stopped by a signal: says what it stored, unfolded, and what folds it
        raise (error := _stopped(exc, seq_now, seq_from, signalled=True)) from (None if error is exc else exc)
    if summary.features_written:
        asyncio.run(db.analyze(dsn, "sira_features"))
    summary.seconds = time.perf_counter() - started
    asyncio.run(_record_load(dsn, actor or Actor.local(), redactor_for(settings), source, files, summary, seq_from,
                             seq_to))
    return summary


def _stopped(cause: BaseException, seq_now: Callable[[], Any], seq_from: int, signalled: bool = False
             ) -> BaseException:
    """What stopped a load (only a signal when ``signalled``: SIGTERM's ``Stopped`` or cancellation, Ctrl-C, said as
    ``interrupted``), saying what to run when some of its events were stored already (the database gone: the cause)."""
    by_signal = not isinstance(cause, (Exception, SystemExit, GeneratorExit))
    if signalled and not by_signal:
        return cause
    with contextlib.suppress(Exception):
        if (stored := asyncio.run(seq_now()) - seq_from) > 0:
            note = (f" ({stored:,} events of this load were stored before it stopped, not yet folded into the "
                    "features: `sira features materialize` folds them; so does loading the files again)")
            if by_signal:
                signum = signal.SIGINT if isinstance(cause, KeyboardInterrupt) else signal.SIGTERM
                return Interrupted(f"ingest stopped by {signal.Signals(signum).name}{note}", signum=signum)
            if not isinstance(cause, SiraError):
                return SiraError(f"{type(cause).__name__}: {cause}{note}")
            cause.message += note
            cause.args = (cause.message,)
    return cause


@contextlib.asynccontextmanager
async def _connected(dsn: str, *, transaction: bool = False) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own for a step or a Ray Data task (``transaction``: the body in one). Stopped midway it
    is dropped: after SIGTERM in a COPY a close waited forever on a server waiting for the COPY's data, holding
    LOG_LOCK (every later fold waited); dropped, the server rolls back and frees its locks (replies left unread)."""
    conn = await db.connect(dsn)
    try:
        if transaction:
            await (tx := conn.transaction()).start()
        yield conn
        if transaction:
            await tx.commit()
    except BaseException:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: None if isinstance(
            context.get("exception"), asyncpg.ConnectionDoesNotExistError) else loop.default_exception_handler(context))
        conn.terminate()
        raise
    try:  # a graceful close, bounded: the server answers at once, or is gone
        await asyncio.wait_for(conn.close(), CLOSE_S)
    except (asyncio.TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        conn.terminate()


async def _in_transaction(dsn: str, step: Callable[..., Any], *args: Any) -> Any:
    async with _connected(dsn, transaction=True) as conn:
        return await step(conn, *args)


async def _record_load(dsn: str, actor: Actor, redactor: Redactor, source: str, files: Any, summary: IngestSummary,
                       seq_from: int, seq_to: int) -> None:
    """Who loaded which files, and what came of it (file names only, scrubbed as sources are: a name may
    hold an email)."""
    async with _connected(dsn) as conn:
        await audit.record(conn, actor, "events.ingest", target_type="source", target_id=redactor.scrub_text(source),
                           details={"files": [redactor.scrub_text(p.name) for p in files.paths][:100],
                                    "n_files": len(files.paths), "read": summary.read, "accepted": summary.accepted,
                                    "duplicates": summary.duplicates, "rejected": summary.rejected,
                                    "seq_from": seq_from, "seq_to": seq_to})
