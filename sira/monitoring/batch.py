"""Batch scoring: one model version over a table or a time range of stored events, on Ray Data.

    sira score --model fraud --data history/ --out scores.parquet [--version 3] [--explain] [--keep-columns]
    sira score --model fraud --from 2026-01-01 --to 2026-02-01 --out january.parquet

The input streams through ``map_batches`` with an actor pool: each actor loads and verifies the version's artifact
once (:class:`sira.serving.scoring.ModelRuntime`) and scores Arrow batches on one LightGBM thread, one actor per CPU.
A file input's parts (Parquet row groups, CSV files) are read by the scoring actors themselves: only the scores travel
through Ray's object store, not every feature column, and no read process competes with the scoring for the CPUs.
Stored events are read by day in tasks of their own (Postgres round trips overlap the scoring); those tasks hold a
quarter of a CPU, so on a small machine the pool never takes every CPU and starves them (MEASURED.md: that hangs with
no error).

The driver writes the scored batches to one Parquet file, in input order, in row groups of a fixed size, under a
temporary name renamed into place when complete: the same input, version and options give the same file byte for byte,
and a failed or interrupted run leaves any earlier output untouched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sira.core import db
from sira.core import files as input_files
from sira.core.audit import Actor
from sira.core.config import Settings
from sira.core.errors import InvalidInput, ServiceUnavailable, inverted_window, sira_cause
from sira.ingest.pii import redactor_for
from sira.registry import models as registry
from sira.training import evaluation

log = logging.getLogger(__name__)

ID_COLUMNS = ("event_id", "id", "transaction_id", "prediction_id")
TIME_COLUMNS = ("occurred_at", "event_time", "timestamp", "ts")
OUTPUT_COLUMNS = ("score", "decision", "model", "version", "reasons", "reason_codes")
READ_CPUS = 0.25  # reads wait on disk or Postgres; they must never be starved by the scoring actors
READ_ROWS = 65_536  # rows per slice a Parquet row group is read in
# Rows per part a large row group is split into (sira.core.files.row_group_parts), so every scoring actor gets
# work whatever row groups the file was written with (one 1M-row group kept one actor busy while the
# others idled). Decoding the rows a part skips costs ~1 µs a row against ~16 µs to score one (~3 ms with
# --explain, hence its smaller parts).
PART_ROWS = 131_072
EXPLAIN_PART_ROWS = 2_048
# Ray Data's target block size for a scoring job (its default: 128 MiB): about one scored 64k-row slice
# (ids, time, score, decision) per block, so the writer gets rows as they are scored (10M rows: first
# rows 3 s sooner than with 16 MiB) and peak memory stays lower.
BLOCK_BYTES = 4 * 1024 * 1024
# What a scoring job may hold in Ray's object store at once. Reads outrun the scoring actors, and
# by default Ray Data lets their output pile up to a share of the whole object store (30% of RAM),
# so peak memory grew with the input until that ceiling; with this budget the reads wait instead.
OBJECT_STORE_BUDGET = 512 * 1024 * 1024
SCORE_BINS = 20
# Below this many input rows (with --explain, EXPLAIN_COST times fewer) and outside a Ray job, the
# input is scored in the calling process on all its CPUs, with the same reads, scoring calls and writer
# (the same file). With no cluster configured, a local Ray would share this machine's CPUs and first
# start its processes and actors (~7 s to the first scored batch here): `python benchmarks/batch_score.py`
# (2026-12-06) scored 1M rows in process at 131k rows/s (0.76x a bare read + predict) against 72k on a
# fresh local Ray Data and 110k on a running one (10M rows on a fresh Ray: 0.92x, so Ray pays above a few
# million). With a cluster configured (SIRA_RAY_ADDRESS) its nodes take inputs above CLUSTER_LOCAL_BELOW.
LOCAL_BELOW = 2_000_000
CLUSTER_LOCAL_BELOW = 200_000
EXPLAIN_COST = 32  # an explained row (exact TreeSHAP) costs ~30-90 plain ones
DECISIONS = pa.array(list(evaluation.DECISIONS), pa.string())  # indexed by evaluation.decision_codes


@dataclass(frozen=True)
class BatchRequest:
    model: str
    out: Path
    version: int | None = None
    data: list[Path] | None = None
    time_from: datetime | None = None
    time_to: datetime | None = None
    keep_columns: bool = False
    explain: bool = False
    id_col: str | None = None
    time_col: str | None = None
    batch_size: int = 8_192
    max_actors: int | None = None
    wait_for_cpus_s: float = 600.0  # when no scoring actor fits the free CPUs at the start
    local_below: int | None = None  # rows under which the calling process scores (0: always Ray Data; None:
    # LOCAL_BELOW, or CLUSTER_LOCAL_BELOW when a Ray cluster is configured)


@dataclass
class ScoreTally:
    """What the summary says about the scores, accumulated batch by batch (nothing kept per row)."""

    rows: int = 0
    score_sum: float = 0.0
    decisions: dict[str, int] = field(default_factory=lambda: {"approve": 0, "review": 0, "block": 0})
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS, dtype=np.int64))

    def add(self, batch: pa.Table) -> None:
        scores = batch.column("score").to_numpy()
        self.rows += batch.num_rows
        self.score_sum += float(scores.sum())
        self.histogram += np.histogram(scores, bins=SCORE_BINS, range=(0.0, 1.0))[0]
        import pyarrow.compute as pc

        # Arrow counts the strings in C++ (np.unique sorted Python strings: 63 ms per 64k rows, in the driver)
        counted = pc.value_counts(batch.column("decision"))
        for value, count in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()):
            self.decisions[value] = self.decisions.get(value, 0) + int(count)

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "mean_score": self.score_sum / self.rows if self.rows else None,
                "decisions": dict(self.decisions), "score_histogram": self.histogram.tolist()}


class VersionScorer:
    """A Ray Data callable class: the version loaded once per actor, Arrow batches in, scores out.

    What to load comes as class attributes of a subclass made by :meth:`bound` (shipped with the
    class), not as constructor arguments: those go through the object store, and Ray then warns on
    every actor that it could not be restarted once they are gone.
    """

    job: dict[str, Any] = {}

    @classmethod
    def bound(cls, version: dict[str, Any], passthrough: list[str], explain: bool, **more: Any) -> type:
        return type(cls.__name__, (cls,), {"job": {"version": version, "passthrough": passthrough,
                                                   "explain": explain, **more}})

    def __init__(self, settings: Settings | None = None) -> None:
        from sira.core.config import get_settings
        from sira.ingest.pii import redactor_for
        from sira.serving.scoring import ModelRuntime

        settings = settings or get_settings()
        self.runtime, self.redactor = ModelRuntime.load(settings, self.job["version"]), redactor_for(settings)
        self.passthrough = self.job["passthrough"]
        self.explain = self.job["explain"]

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.score(batch)

    def score(self, batch: pa.Table) -> pa.Table:
        # an actor scores on one LightGBM thread: it holds (at most) one CPU, see pool_shape
        return score_table(self.runtime, batch, self.passthrough, explain=self.explain,
                           threads=self.job.get("threads", 1), redactor=self.redactor)


class PartScorer(VersionScorer):
    """A scoring actor that reads its input itself: parts in (``job["read"]`` turns a batch of them
    into Arrow tables), one scored table per table read, the model called on ``job["rows_per_call"]``
    rows at a time."""

    def __call__(self, parts: dict[str, np.ndarray]) -> Iterator[pa.Table]:  # type: ignore[override]
        step = self.job["rows_per_call"]
        for table in self.job["read"](parts):
            if table.num_rows:  # a CSV file of a header only
                yield pa.concat_tables([self.score(table.slice(at, step)) for at in range(0, table.num_rows, step)])


def score_table(runtime: Any, batch: pa.Table, passthrough: list[str], *, explain: bool = False,
                threads: int = 1, redactor: Any = None) -> pa.Table:
    """Scores, decisions (and reasons) of one Arrow batch, beside the passthrough columns; the model's
    categories read through ``redactor`` as its training table's were (tokens for e-mails, ...)."""
    import pyarrow.compute as pc

    categorical = {s.name for s in runtime.schema if s.kind == "categorical"}  # a table's model: redacted ones
    redact = redactor is not None and runtime.feature_set is None and categorical
    X = runtime.table_matrix(redactor.table(batch, set(batch.column_names) - categorical)[0] if redact else batch)
    scores = runtime.predict(X, threads=threads)
    columns: dict[str, Any] = {name: batch.column(name) for name in passthrough}
    columns["score"] = pa.array(scores, pa.float64())
    # taken from three Arrow strings by code (a Python list of 8k strings cost 1-9 ms per batch here)
    columns["decision"] = pc.take(DECISIONS, pa.array(evaluation.decision_codes(scores, runtime.thresholds)))
    columns["model"] = pa.array([runtime.model_name] * batch.num_rows, pa.string())
    columns["version"] = pa.array(np.full(batch.num_rows, runtime.version, dtype=np.int32))
    if explain:
        contrib = runtime.contributions(X, threads=threads)
        reasons = [runtime.reasons(X[i], contrib[i]) for i in range(batch.num_rows)]
        columns["reasons"] = pa.array([json.dumps(r, sort_keys=True) for r in reasons], pa.string())
        columns["reason_codes"] = pa.array([[x["code"] for x in r] for r in reasons], pa.list_(pa.string()))
    return pa.table(columns)


def local_batches(settings: Settings, version: dict[str, Any], source: Source, *, explain: bool = False,
                  batch_size: int = 8_192) -> Iterator[pa.Table]:
    """The source's rows scored by the version in this process, in input order: what :func:`scored_batches`
    gives through Ray Data (the same reads and the same scoring calls, so the same file)."""
    scorer = PartScorer.bound(version, source.passthrough, explain, read=source.read, rows_per_call=batch_size,
                              threads=_cpus(settings))(settings)
    for part in source.parts:
        batch = {key: np.array([value]) for key, value in part.items()}
        if source.read_by_scorer:
            yield from scorer(batch)
        else:
            table = source.read(batch)
            for at in range(0, table.num_rows, batch_size):
                yield scorer.score(table.slice(at, batch_size))


def _cpus(settings: Settings) -> int:
    """The CPUs this process may use (``SIRA_RAY_NUM_CPUS`` when set, as for a local Ray)."""
    if settings.ray_num_cpus:
        return settings.ray_num_cpus
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def in_process(settings: Settings, rows: int | None, *, explain: bool = False, local_below: int | None = None) -> bool:
    """Whether to score here rather than on Ray Data: an input of known size below the limit (see
    :data:`LOCAL_BELOW`), outside a Ray job (a submitted job asked for the cluster; its driver may sit on a
    head node that offers no CPUs)."""
    from sira.core.ray_runtime import in_ray_job

    if local_below is None:
        local_below = CLUSTER_LOCAL_BELOW if settings.ray_address else LOCAL_BELOW
    below = local_below // EXPLAIN_COST if explain else local_below
    return rows is not None and rows < below and not in_ray_job()


# -- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where the rows come from and what travels with the scores."""

    description: str
    rows: int | None  # known up front (Parquet metadata, a count of events), else None
    passthrough: list[str]
    parts: list[dict[str, Any]]  # units of reading, in output order: a row group, a CSV file, a day of events
    read: Callable[[dict[str, np.ndarray]], Iterator[pa.Table]]  # a batch of parts -> their rows, in order
    read_by_scorer: bool  # the scoring actors read the parts (files); else read tasks do (events)
    passthrough_schema: pa.Schema | None = None  # the passthrough columns' types across every input file
    at_most: int | None = None  # rows there can be at most, when not known (a CSV's lines): where to score


def _pick(columns: list[str], named: str | None, candidates: tuple[str, ...], role: str) -> str | None:
    if named is not None:
        if named not in columns:
            raise InvalidInput(f"{role} column {named} is not in the input (columns: {', '.join(columns)})",
                               code="missing_columns", details={"columns": [named]})
        return named
    return next((c for c in candidates if c in columns), None)


def read_part(batch: dict[str, np.ndarray]) -> Iterator[pa.Table]:
    """Parquet row groups (``row_group`` >= 0; rows ``start``..``stop`` of it), or whole CSV files (their
    types inferred from all of each), streamed in slices of at most :data:`READ_ROWS` rows
    (:func:`sira.core.files.read_part`).

    A row group is written by whoever made the file and can be any size; read whole it would
    make a block of that size (and its copies) whatever the job, so memory would grow with
    the input's row groups rather than stay bounded by the pipeline.
    """
    n = len(batch["path"])
    starts = batch["start"].tolist() if "start" in batch else [0] * n  # a whole row group
    stops = batch["stop"].tolist() if "stop" in batch else [-1] * n
    texts = batch["text"].tolist() if "text" in batch else [""] * n  # CSV columns read as text, \x1f-joined
    for path, group, start, stop, text in zip(batch["path"].tolist(), batch["row_group"].tolist(), starts, stops,
                                              texts):
        yield from input_files.read_part(path, group, "parquet" if group >= 0 else "csv", READ_ROWS, start, stop,
                                  text=tuple(text.split("\x1f")) if text else ())


def _file_schema(path: Path, file_format: str, text: tuple[str, ...] = ()) -> tuple[pa.Schema, Any]:
    """A file's columns and types, from its footer (Parquet, returned too: rows and row groups) or its
    first block (CSV, no footer: None; ``text`` columns as text)."""
    try:
        if file_format == "parquet":
            import pyarrow.parquet as pq

            footer = pq.ParquetFile(path)
            return footer.schema_arrow, footer.metadata
        import pyarrow.csv as pacsv

        return pacsv.open_csv(path, convert_options=input_files.csv_options(text)).schema, None
    except (pa.ArrowInvalid, OSError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise InvalidInput(f"{path}: cannot read as {file_format}: {reason}", code="invalid_input",
                           details={"file": str(path)}) from None


def file_source(files: input_files.InputFiles, feature_schema: list[dict[str, Any]], req: BatchRequest) -> Source:
    """A Parquet or CSV table that carries the model's features as columns; every file is checked before
    any scoring starts (readable, the features present and numeric where the model wants numbers, the
    columns that travel to the output of one type across files)."""
    if files.format == "json":
        raise InvalidInput("batch scoring reads Parquet or CSV files", code="unsupported_format")
    read = {p: _file_schema(p, files.format) for p in files.paths}  # each footer read once
    schemas = [(p, schema) for p, (schema, _) in read.items()]
    feature_names = [f["name"] for f in feature_schema]
    for path, schema in schemas:
        missing = [n for n in feature_names if n not in schema.names]
        if missing:
            where = f" ({path.name})" if len(schemas) > 1 else ""
            hint = ""
            if "occurred_at" in schema.names and len(missing) > len(feature_names) // 2:
                hint = ("; this looks like raw events, not features: ingest them (sira ingest) and score the "
                        "stored events with --from/--to (add --keep-columns to get a feature table)")
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            count = f"{len(missing)} feature{'s' if len(missing) > 1 else ''}"
            raise InvalidInput(f"the input lacks {count} of the model{where}: {shown}{hint}",
                               code="missing_columns", details={"columns": missing, "file": str(path)})
        for f in feature_schema:
            kind, t = f.get("type", "numeric"), schema.field(f["name"]).type  # FeatureSpec.to_dict's keys
            if kind != "categorical" and not input_files.is_numeric_type(t):
                raise InvalidInput(f"{path.name}: column {f['name']} must be numeric, not {t}", code="invalid_column",
                                   details={"column": f["name"], "file": str(path)})
    columns = schemas[0][1].names
    rows = None
    if files.format == "parquet":
        rows = sum(footer.num_rows for _, footer in read.values())
        if rows == 0:
            raise InvalidInput(f"no rows in {', '.join(files.strings)}", code="empty_input")
    id_col = _pick(columns, req.id_col, ID_COLUMNS, "id")
    key_columns = [c for c in (id_col, _pick(columns, req.time_col, TIME_COLUMNS, "time")) if c]
    text: tuple[str, ...] = ()
    if files.format == "csv" and id_col and id_col not in feature_names:
        # an id of digits is text: inferred as a number, "007" and "7" became one id in the output
        text = (id_col,)
        read = {p: _file_schema(p, files.format, text) for p in files.paths}
        schemas = [(p, schema) for p, (schema, _) in read.items()]
    passthrough = [c for c in columns if c not in OUTPUT_COLUMNS] if req.keep_columns else key_columns
    passthrough_schema = _passthrough_schema(schemas, passthrough)

    # Our own reads, one part per row group (CSV: per file), rather than read_parquet: Ray 2.60's
    # file listing step asks for a whole CPU whatever the read's num_cpus, and beside a scoring
    # actor on 2 CPUs it never gets one (the job hangs without an error).
    if files.format == "parquet":
        part_rows = EXPLAIN_PART_ROWS if req.explain else PART_ROWS
        parts = [part for p, (_, footer) in read.items() for part in input_files.row_group_parts(p, footer, part_rows)]
    else:
        parts = [{"path": str(p), "row_group": -1, "start": 0, "stop": -1, "text": "\x1f".join(text)}
                 for p in files.paths]
    return Source(f"{len(files.paths)} {files.format} file(s)", rows, passthrough, parts, read_part,
                  read_by_scorer=True, passthrough_schema=passthrough_schema,
                  at_most=None if rows is not None else sum(_lines(p) for p in files.paths))


def _lines(path: Path) -> int:
    """A text file's line breaks: at least its rows (a quoted field may hold more), read at disk speed."""
    count = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            count += chunk.count(b"\n")
    return count + 1


def _passthrough_schema(schemas: list[tuple[Path, pa.Schema]], passthrough: list[str]) -> pa.Schema:
    """One type per output column across the files (an int and a float column make a float one; a
    column empty in one file takes the others' type); a column that is text in one file and numbers in
    another, or missing from one, is refused here rather than after most of the scoring."""
    fields = []
    for name in passthrough:
        seen = []
        for path, schema in schemas:
            if name not in schema.names:
                raise InvalidInput(f"{path.name}: column {name} is missing (the first file has it)",
                                   code="missing_columns", details={"columns": [name], "file": str(path)})
            seen.append((path, schema.field(name)))
        try:
            unified = pa.unify_schemas([pa.schema([f]) for _, f in seen], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            kinds = ", ".join(f"{f.type} in {path.name}" for path, f in seen[:4])
            raise InvalidInput(f"column {name} has different types across the files ({kinds}); make them agree",
                               code="invalid_column", details={"column": name}) from None
        fields.append(unified.field(name))
    return pa.schema(fields)


EVENT_COLUMNS = ("event_id", "occurred_at", "country", "channel")


def events_source(dsn: str, fs: Any, label_name: str, lo: datetime, hi: datetime, rows: int,
                  keep_columns: bool) -> Source:
    """Stored events of a time range with their point-in-time features, read by day in parallel."""
    shards = []
    t = lo
    while t < hi:
        shards.append({"lo": t.isoformat(), "hi": min(t + timedelta(days=1), hi).isoformat()})
        t += timedelta(days=1)
    names = fs.names()
    schema = pa.schema([("event_id", pa.string()), ("occurred_at", pa.timestamp("us", tz="UTC")),
                        ("country", pa.string()), ("channel", pa.string()),
                        *((n, pa.float64()) for n in names)])

    def read_tiles(batch: dict[str, np.ndarray]) -> pa.Table:
        """Feature engine v2: a day's events folded from their checkpoints (or a horizon of the log)."""
        from sira.training.columnar import tiles_vectors

        parts = []
        for shard_lo, shard_hi in zip(batch["lo"].tolist(), batch["hi"].tolist()):
            X, events, rows = tiles_vectors(dsn, fs, datetime.fromisoformat(shard_lo), datetime.fromisoformat(shard_hi))
            parts.append(pa.table({
                "event_id": pa.array(events.event_id[rows].tolist(), pa.string()),
                "occurred_at": pa.array(events.ts[rows], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                "country": events.columns["country"].take(pa.array(rows)),
                "channel": events.columns["channel"].take(pa.array(rows)),
                **{n: pa.array(X[rows, j], pa.float64(), mask=np.isnan(X[rows, j])) for j, n in enumerate(names)},
            }, schema=schema))
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def read(batch: dict[str, np.ndarray]) -> pa.Table:
        from sira.training.datasets import read_feature_shard

        out = []
        for shard_lo, shard_hi in zip(batch["lo"].tolist(), batch["hi"].tolist()):
            out += read_feature_shard(dsn, fs.name, fs.version, datetime.fromisoformat(shard_lo),
                                      datetime.fromisoformat(shard_hi), None, label_name)
        columns = {"event_id": [r["event_id"] for r in out],
                   "occurred_at": pa.array([r["ts"] for r in out], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                   "country": [r["country"] for r in out], "channel": [r["channel"] for r in out],
                   **{n: [r[n] for r in out] for n in names}}
        return pa.table(columns, schema=schema)

    passthrough = [*EVENT_COLUMNS, *names] if keep_columns else list(EVENT_COLUMNS)
    return Source(f"events {lo:%Y-%m-%d %H:%M}..{hi:%Y-%m-%d %H:%M}", rows, passthrough, shards,
                  read_tiles if fs.engine == "tiles" else read, read_by_scorer=False)


# -- the job ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolShape:
    cpus: float  # each actor's share of CPU (it scores on one LightGBM thread)
    first: int  # actors started at once: one per CPU free now
    largest: int  # the most the pool grows to: one per CPU of the cluster


def pool_shape(total_cpus: float, free_cpus: float, max_actors: int | None, *, reads: bool) -> PoolShape:
    """Single-threaded scoring actors, one per CPU free now (Serve replicas may hold some), the last one
    on what is left of a CPU, with a quarter of a CPU left to the read tasks when there are any.

    Measured on 2 CPUs: two one-thread actors scored 1M rows ~25% faster than one two-thread actor,
    whose OpenMP threads wait for each other whenever another process (the driver writing, Ray)
    takes one of the cores.
    """
    reserve = READ_CPUS if reads else 0.0
    room = free_cpus - reserve
    first = max(1, math.ceil(room - 1e-9))
    cpus = max(0.5, min(1.0, room / first))
    largest = max(first, int((total_cpus - reserve) // cpus))
    if max_actors is not None:
        first, largest = min(first, max_actors), min(largest, max_actors)
    return PoolShape(cpus, first, largest)


def scored_batches(version: dict[str, Any], source: Source, *, explain: bool = False, batch_size: int = 8_192,
                   max_actors: int | None = None, wait_for_cpus_s: float = 600.0) -> Any:
    """The source's rows scored by the version, in input order, as Arrow tables (Ray Data's blocks).

    When not even one scoring actor fits the CPUs free now (Serve replicas or other jobs hold them),
    the pipeline waits ``wait_for_cpus_s`` for them (an autoscaler adds a node, a job ends), then
    fails with :class:`ServiceUnavailable`: Ray Data would otherwise wait forever, silently.
    """
    import ray
    import ray.data

    free = float(ray.available_resources().get("CPU", 0))
    reads = not source.read_by_scorer
    shape = pool_shape(float(ray.cluster_resources().get("CPU", 1)), free, max_actors, reads=reads)
    from sira.core.ray_runtime import quiet_ray_data

    quiet_ray_data()
    parts = ray.data.from_items(source.parts, override_num_blocks=len(source.parts))
    needed = shape.cpus + (READ_CPUS if reads else 0.0)
    if free + 1e-9 < needed:
        log.warning("%.2f CPUs free; a scoring actor needs %.2f: waiting up to %.0f s for CPUs", free, needed,
                    wait_for_cpus_s)
        parts.context.wait_for_min_actors_s = wait_for_cpus_s
    # This dataset's own context (a copy made when it was created; the process-wide one is untouched):
    parts.context.execution_options.preserve_order = True  # output rows in input order: reproducible files
    parts.context.target_max_block_size = BLOCK_BYTES  # small blocks: memory bounded by the pipeline, not the input
    parts.context.execution_options.resource_limits = ray.data.ExecutionResources.for_limits(
        object_store_memory=OBJECT_STORE_BUDGET)
    pool = {"compute": ray.data.ActorPoolStrategy(min_size=shape.first, max_size=shape.largest),
            "num_cpus": shape.cpus}
    if source.read_by_scorer:
        # Reading in the actor that scores (as a plain loop would): the feature columns never go
        # through the object store, and no read process is started beside the actors.
        scorer = PartScorer.bound(version, source.passthrough, explain, read=source.read, rows_per_call=batch_size)
        scored = parts.map_batches(scorer, batch_size=1, batch_format="numpy", **pool)
    else:
        rows = parts.map_batches(source.read, batch_size=1, batch_format="numpy", num_cpus=READ_CPUS)
        scored = rows.map_batches(VersionScorer.bound(version, source.passthrough, explain),
                                  batch_size=batch_size, batch_format="pyarrow", zero_copy_batch=True, **pool)
    # Blocks as the actors made them, each fetched when the writer asks: re-cutting them into batches
    # of a size here (and prefetching) held the first rows back until several blocks had arrived
    # (2-3 s on a 1M-row job); input_files.write_atomically cuts the row groups.
    return scored.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)


async def resolve_source(settings: Settings, req: BatchRequest) -> tuple[dict[str, Any], Source]:
    """The version to score with and the input, checked before any Ray work starts (``req.out`` checked by
    :func:`sira.core.files.output_file`)."""
    if (req.data is None) == (req.time_from is None and req.time_to is None):
        raise InvalidInput("give either --data or a time range (--from/--to) of stored events", code="invalid_input")
    async with db.open_pool(settings) as pool:
        async with pool.acquire() as conn:
            row = await registry.version_in_use(conn, req.model, req.version)
            version = registry.loadable(row)
            if req.data is not None:
                files = input_files.find_files(req.data)
                return version, file_source(files, list(row["feature_schema"]), req)
            if not row["feature_set"]:
                raise InvalidInput(f"{req.model} was trained on a table of its own; score a table with --data",
                                   code="invalid_input")
            lo, hi = req.time_from, req.time_to
            if lo is None or hi is None:
                first, last = await conn.fetchrow("SELECT min(occurred_at), max(occurred_at) FROM sira_events")
                lo, hi = lo or first, hi or (last + timedelta(microseconds=1) if last else None)
            if lo is None or hi is None or hi <= lo:  # no stored event at all, or a window ending before it starts
                raise inverted_window(lo, hi) if lo and hi else InvalidInput("no stored events", code="empty_input")
            n = await conn.fetchval("SELECT count(*) FROM sira_events WHERE occurred_at >= $1 AND occurred_at < $2",
                                    lo, hi)
            if not n:
                raise InvalidInput(f"no stored events between {lo:%Y-%m-%d %H:%M} and {hi:%Y-%m-%d %H:%M}",
                                   code="empty_input")
            model = await registry.get_model(conn, req.model)
    from sira.features.definitions import get_feature_set

    fs = get_feature_set(row["feature_set"], row["feature_set_version"] or row["model_fs_version"])
    return version, events_source(db.resolve_dsn(settings), fs, model["label_name"], lo, hi, n, req.keep_columns)


async def run_batch_score(settings: Settings, req: BatchRequest, *, actor: Actor | None = None,
                          on_rows: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
    """Score the input with the version; write ``req.out``; audit the run; return the summary."""
    import asyncio

    from sira.core import audit
    from sira.core.ray_runtime import in_ray_job, init_ray, job_id

    actor = actor or Actor.local()
    req = dataclasses.replace(req, out=input_files.output_file(req.out, req.data or [], in_job=in_ray_job()))
    version, source = await resolve_source(settings, req)
    started = time.perf_counter()
    here = in_process(settings, source.rows if source.rows is not None else source.at_most, explain=req.explain,
                      local_below=req.local_below)  # a small CSV too (it always started Ray)
    if not here:
        init_ray(settings, db.resolve_dsn(settings))
    tally = ScoreTally()

    def count(batch: pa.Table) -> None:
        tally.add(batch)
        if on_rows:
            on_rows(tally.rows, source.rows)

    def run() -> str:
        if here:
            batches = local_batches(settings, version, source, explain=req.explain, batch_size=req.batch_size)
            return input_files.write_atomically(batches, req.out, count, source.passthrough_schema)
        import ray

        batches = scored_batches(version, source, explain=req.explain, batch_size=req.batch_size,
                                 max_actors=req.max_actors, wait_for_cpus_s=req.wait_for_cpus_s)
        try:
            return input_files.write_atomically(batches, req.out, count, source.passthrough_schema)
        except ray.exceptions.GetTimeoutError:
            raise ServiceUnavailable(
                f"no CPU free for a scoring actor after {req.wait_for_cpus_s:.0f} s (the cluster has "
                f"{ray.cluster_resources().get('CPU', 0):g} CPUs; Serve replicas or other jobs hold them): "
                "free some, add a node or try later") from None
        except Exception as exc:
            cause = sira_cause(exc)  # raised in a scoring actor: Ray wraps it
            if cause is None:
                raise
            raise cause from None

    digest = await asyncio.to_thread(run)
    seconds = time.perf_counter() - started
    result = {
        "model": version["model_name"], "version": version["version"], "status": version["status"],
        "input": source.description, "out": str(req.out), "sha256": digest, "explain": req.explain, "job_id": job_id(),
        "engine": "in process" if here else "ray data",
        "columns": [*source.passthrough, "score", "decision", "model", "version",
                    *(("reasons", "reason_codes") if req.explain else ())],
        "seconds": round(seconds, 3), "rows_per_second": round(tally.rows / seconds, 1) if seconds else None,
        **tally.summary(),
    }
    scrub = redactor_for(settings).scrub_text  # paths as given, as ingest's file names: the audit log is append-only
    details = {**{k: result[k] for k in ("sha256", "rows", "decisions", "job_id")},
               "input": scrub(result["input"]), "out": scrub(result["out"])}
    async with db.open_pool(settings) as pool:
        async with pool.acquire() as conn:
            await audit.record(conn, actor, "batch.score", target_type="model_version",
                               target_id=f"{version['model_name']}:v{version['version']}", details=details)
    return result
