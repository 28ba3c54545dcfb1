"""Training sets: from a table the user brings, with their features inferred and reported.

A bring-your-own table (Parquet or CSV, a file or a folder) becomes a labelled
matrix: numeric columns are features; string, boolean or category columns
with few distinct values are categorical features; the id column, the time
column, constant columns and all-unique (or too varied) string columns are
dropped, each with its reason. The split is by time when a time column is
given (train, then validation, then test), else stratified and seeded.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sira.core.errors import InvalidInput
from sira.core.files import InputFiles, columns_of, find_files, read_table
from sira.features.store import event_label_join
from sira.ingest.labels import LABEL_WORDS, parse_label
from sira.ingest.pii import Redactor
from sira.training.trainer import FeatureSpec, Matrix, encode_columns
from sira.training.windows import (
    MIN_EVAL_ROWS,
    MIN_VALID_POSITIVES,
    TRAINING_FLAGS,
    VALID_SHARE,
    Windows,
    label_rule,
)

log = logging.getLogger(__name__)

MAX_CATEGORIES = 100


@dataclass
class Dataset:
    """A labelled matrix with what is needed to split, evaluate by segment and trace it."""

    matrix: Matrix
    times: np.ndarray | None  # int64 µs, or None
    ids: list[Any] | None
    segments: dict[str, np.ndarray] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)  # column -> why it is not a feature
    fingerprint: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    method: str
    windows: dict[str, Any] = field(default_factory=dict)


def _label_array(column: pa.ChunkedArray, positive: str | None, name: str) -> np.ndarray:
    if column.null_count:
        raise InvalidInput(f"label column {name} has {column.null_count} missing values", details={"column": name})
    values = column.to_pylist()
    if positive is not None:
        distinct = {str(v) for v in values}
        if str(positive) not in distinct:
            raise InvalidInput(f"--positive {positive!r} does not occur in label column {name}")
        if len(distinct) != 2:
            raise InvalidInput(f"label column {name} is not binary: {len(distinct)} distinct values",
                               details={"column": name})
        return np.array([str(v) == str(positive) for v in values], dtype=np.float64)
    out = np.empty(len(values))
    for i, v in enumerate(values):
        try:
            label = parse_label(v)  # the vocabulary labels come in with (sira feedback import, HTTP)
            if label is None:
                raise ValueError("missing")
            out[i] = float(label)
        except ValueError:
            distinct = sorted({str(x) for x in values})[:5]
            raise InvalidInput(
                f"label column {name} is not binary (values such as {', '.join(distinct)}); "
                f"use {LABEL_WORDS}, or --positive VALUE",
                details={"column": name},
            ) from None
    return out


def infer_schema(table: pa.Table, exclude: set[str]) -> tuple[list[FeatureSpec], dict[str, str]]:
    """Which columns are features, of what kind, and why the others are not."""
    schema: list[FeatureSpec] = []
    dropped: dict[str, str] = {}
    n = table.num_rows
    for name in table.column_names:
        if name in exclude:
            continue
        column = table.column(name)
        kind = column.type
        non_null = column.drop_null()
        distinct = pc.count_distinct(non_null).as_py() if len(non_null) else 0
        if distinct <= 1:
            dropped[name] = "constant"
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            schema.append(FeatureSpec(name, "numeric"))
        elif pa.types.is_boolean(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind) \
                or pa.types.is_dictionary(kind):
            if distinct == len(non_null) and n > MAX_CATEGORIES:
                dropped[name] = "all values unique (an identifier?)"
            elif distinct > MAX_CATEGORIES:
                dropped[name] = f"{distinct} distinct values (more than {MAX_CATEGORIES} for a categorical)"
            else:
                values = sorted({str(v) for v in non_null.to_pylist()})
                schema.append(FeatureSpec(name, "categorical", tuple(values)))
        else:
            dropped[name] = f"unsupported type {kind}"
    if not schema:
        raise InvalidInput("no usable feature columns in the table", details={"dropped": dropped})
    return schema, dropped


def load_table_dataset(
    paths: list[Path], *, label: str, time_col: str | None = None, id_col: str | None = None,
    positive: str | None = None, schema: list[FeatureSpec] | None = None, redactor: Redactor | None = None,
) -> Dataset:
    """A bring-your-own table as a labelled matrix (``schema`` given: reuse it, e.g. for scoring). With a
    ``redactor`` (training does), the table's personal data is out before any value is read: a category's
    values end up in the model's schema, its manifest and the registry, which any viewer reads."""
    files = find_files(paths)
    check_same_columns(files)
    table = read_table(files)
    pii_dropped: dict[str, str] = {}
    if redactor is not None:
        table, pii_dropped = redactor.table(table, {label, *(c for c in (time_col, id_col) if c)})
    for role, name in (("label", label), ("time", time_col), ("id", id_col)):
        if name is not None and name not in table.column_names:
            raise InvalidInput(f"{role} column {name} is not in the table (columns: {', '.join(table.column_names)})",
                               details={"column": name})
    if table.num_rows == 0:
        raise InvalidInput("the table has no rows")
    y = _label_array(table.column(label), positive, label)
    exclude = {label, *(c for c in (time_col, id_col) if c)}
    table, infinite = infinite_as_missing(table, exclude)
    dropped: dict[str, str] = {c: role for c, role in ((time_col, "time column"), (id_col, "id column")) if c}
    dropped.update(pii_dropped)
    if schema is None:
        schema, why = infer_schema(table, exclude)
        dropped.update(why)
    times, time_read = (read_time_column(table.column(time_col), time_col) if time_col else (None, None))
    columns = {f.name: table.column(f.name).to_pylist() for f in schema}
    X = encode_columns(columns, schema)
    segments = {c: np.array(table.column(c).to_pylist(), dtype=object) for c in ("country", "channel")
                if c in table.column_names}
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(X).tobytes())
    digest.update(y.tobytes())
    fingerprint = {
        "source": [str(p) for p in files.paths], "rows": int(table.num_rows), "positives": int(y.sum()),
        "label": label, "time_col": time_col, "content_sha256": digest.hexdigest(),
        **({"time_column": {"name": time_col, "read_as": time_read}} if time_col else {}),
        **({"infinite_values": infinite} if infinite else {}),
    }
    ids = table.column(id_col).to_pylist() if id_col else None
    return Dataset(Matrix(X, y, schema), times, ids, segments, dropped, fingerprint)


def check_same_columns(files: InputFiles) -> None:
    """Every Parquet or CSV file of the table has the same columns (their footers or headers are read): a
    column missing from one file was filled with nulls without a word, a feature null in every validation
    and test row, while batch scoring refuses the same folder. (In JSON Lines a record may omit a field.)"""
    found = columns_of(files)  # none for JSON Lines
    if len(found) < 2:
        return
    (first, expected), *others = found
    for path, names in others:
        missing, extra = [c for c in expected if c not in names], [c for c in names if c not in expected]
        if missing or extra:
            differ = " and ".join([*([f"lacks {', '.join(missing)}"] if missing else []),
                                   *([f"has {', '.join(extra)} too"] if extra else [])])
            raise InvalidInput(f"{path.name}: {differ} (against {first.name}); every file of a table needs the "
                               "same columns", code="missing_columns",
                               details={"file": str(path), "missing": missing, "extra": extra})


def infinite_as_missing(table: pa.Table, exclude: set[str]) -> tuple[pa.Table, dict[str, int]]:
    """The table with its features' infinite values (+inf, -inf) made missing, and how many each column had:
    LightGBM reads them as values beyond every split, and drift's quantile bins and means of them are not
    numbers (a version trained on one could not be compared). Batch scoring reads them as missing too."""
    counts: dict[str, int] = {}
    for i, name in enumerate(table.column_names):
        column = table.column(i)
        if name in exclude or not pa.types.is_floating(column.type):
            continue
        n = int(np.isinf(column.to_numpy()).sum())
        if n:
            table = table.set_column(i, name, pc.if_else(pc.is_inf(column), pa.scalar(None, column.type), column))
            counts[name] = n
    return table, counts


# Numbers in a time column: epoch seconds or milliseconds when they fall in these ranges
# (1973..2096), else an offset in seconds from the start of the data (as many public fraud data sets have).
EPOCH_SECONDS = (1e8, 4e9)
EPOCH_MILLISECONDS = (1e11, 4e12)


def read_time_column(column: pa.ChunkedArray, name: str) -> tuple[np.ndarray, str]:
    """A time column as int64 µs since the epoch, and how it was read: timestamps, date strings, or numbers
    (epoch seconds, epoch milliseconds, or seconds from the start of the data: an ordering for the split)."""
    if column.null_count:
        raise InvalidInput(f"time column {name} has missing values", details={"column": name})
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        values = column.to_numpy().astype(np.float64)
        if not np.isfinite(values).all():
            raise InvalidInput(f"time column {name} has values that are not finite numbers", details={"column": name})
        lo, hi = float(values.min()), float(values.max())
        if EPOCH_SECONDS[0] <= lo and hi <= EPOCH_SECONDS[1]:
            scale, read_as = 1e6, "epoch seconds"
        elif EPOCH_MILLISECONDS[0] <= lo and hi <= EPOCH_MILLISECONDS[1]:
            scale, read_as = 1e3, "epoch milliseconds"
        else:
            scale, read_as = 1e6, "seconds from the start of the data (an ordering for the time split)"
        return np.round(values * scale).astype(np.int64), read_as
    read_as = "timestamps"
    if not pa.types.is_timestamp(column.type):
        # ISO 8601 text: without a zone as it is (as today), with Z or an offset (+02:00) as that instant in UTC
        for kind, read_as in ((pa.timestamp("us"), "timestamps (ISO 8601 text)"),
                              (pa.timestamp("us", tz="UTC"), "timestamps (ISO 8601 text with a zone, in UTC)")):
            try:
                column = pc.cast(column, kind)
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        else:
            try:
                column = pc.strptime(column, format="%Y-%m-%d %H:%M:%S", unit="us")
                read_as = "timestamps (YYYY-MM-DD HH:MM:SS text)"
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise InvalidInput(f"time column {name} cannot be read as timestamps or numbers (epoch seconds, "
                                   "milliseconds, or seconds from the start; text with a zone on some values and "
                                   "not others is not read either)", details={"column": name}) from None
    return pc.cast(column, pa.timestamp("us")).cast(pa.int64()).to_numpy(), read_as


def tail_with_positives(order: np.ndarray, y: np.ndarray, share: float, min_positives: int = MIN_VALID_POSITIVES) -> int:
    """How many of the latest rows (``order`` is by time) make a window of at least ``share`` of them that
    also holds ``min_positives`` positives, when the rows before it keep at least as many."""
    n = order.size
    count = max(1, int(round(n * share)))
    positives_from_end = np.cumsum(y[order][::-1])
    total = positives_from_end[-1] if n else 0
    wanted = min(min_positives, int(total // 2))
    if wanted > 0 and positives_from_end[count - 1] < wanted:
        count = int(np.searchsorted(positives_from_end, wanted) + 1)
    return min(count, n - 1) if n > 1 else n


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _time_boundary(times: np.ndarray, cut: int) -> int:
    """``cut`` moved to where ``times`` (sorted) changes, so rows of one time are never on both sides of it:
    back to the first row of its time (the later window takes the tie), else forward past the last."""
    if cut <= 0 or cut >= times.size:
        return cut
    back = int(np.searchsorted(times, times[cut], "left"))
    if back > 0:
        return back
    forward = int(np.searchsorted(times, times[cut], "right"))
    return forward if forward < times.size else cut


def split_dataset(ds: Dataset, *, seed: int, valid_share: float = VALID_SHARE, test_share: float = 0.15) -> Split:
    """By time when the dataset has times (train < validation < test), else stratified and seeded."""
    n = ds.matrix.y.size
    if ds.times is not None:
        order = np.argsort(ds.times, kind="stable")
        times = ds.times[order]
        cut = _time_boundary(times, n - tail_with_positives(order, ds.matrix.y, test_share))
        rest = order[:cut]
        v_cut = _time_boundary(times[:cut], cut - tail_with_positives(rest, ds.matrix.y, valid_share / (1 - test_share)))
        train, valid, test = rest[:v_cut], rest[v_cut:], order[cut:]
        # times of the epoch (a timestamp column, epoch seconds or milliseconds) as ISO 8601, as a feature-store
        # run's windows (they were microseconds since the epoch); an ordering from the data's start as it is
        epoch = str((ds.fingerprint.get("time_column") or {}).get("read_as", "")).startswith(("epoch", "timestamps"))
        bound = (lambda us: (EPOCH + timedelta(microseconds=int(us))).isoformat()) if epoch else int
        windows = {name: {"from": bound(ds.times[idx].min()), "to": bound(ds.times[idx].max())}
                   for name, idx in (("train", train), ("validation", valid), ("test", test)) if idx.size}
        split = Split(np.sort(train), np.sort(valid), np.sort(test), "time", windows)
    else:
        rng = np.random.default_rng(seed)
        parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
        for cls in (0.0, 1.0):
            idx = np.flatnonzero(ds.matrix.y == cls)
            idx = idx[rng.permutation(idx.size)]
            n_test = int(round(idx.size * test_share))
            n_valid = int(round(idx.size * valid_share))
            parts["test"].append(idx[:n_test])
            parts["valid"].append(idx[n_test: n_test + n_valid])
            parts["train"].append(idx[n_test + n_valid:])
        split = Split(*(np.sort(np.concatenate(parts[k])) for k in ("train", "valid", "test")), method="stratified")
    for name, idx in (("training", split.train), ("validation", split.valid), ("test", split.test)):
        if idx.size == 0:
            raise InvalidInput(f"the {name} window is empty; bring more rows")
        check_window(name, ds.matrix.y[idx], "bring more rows, or more of both labels", code="invalid_input")
    return split


def check_window(name: str, y: np.ndarray, fix: str, *, code: str = "empty_window") -> None:
    """A window's labels: positives and negatives both, and (validation, test) enough rows to evaluate on."""
    positives = int(y.sum())
    if positives == 0:
        raise InvalidInput(f"the {name} window has no positive labels; {fix}", code=code)
    if positives == y.size:
        raise InvalidInput(f"the {name} window has no negative labels: its {y.size:,} rows are all positive; {fix}",
                           code=code)
    if name != "training" and y.size < MIN_EVAL_ROWS:
        raise InvalidInput(f"the {name} window holds {y.size:,} rows: too few to evaluate on (at least "
                           f"{MIN_EVAL_ROWS}); {fix}", code=code)


# -- from the feature store -------------------------------------------------------

# An event's vectors (its feature rows, one per entity) and its labels as known at the cut-off ($5): what each
# source last said by then (a reversal known later does not exist for this set)
SHARD_SQL = f"""
SELECT e.event_id, e.occurred_at, e.country, e.channel, e.customer_id, e.card_token, e.terminal_id,
       e.amount::float8 AS amount,
       (SELECT jsonb_object_agg(f.entity_type, f.features) FROM sira_features f
         WHERE f.event_id = e.event_id AND f.feature_set = $3 AND f.feature_set_version = $4) AS vectors,
       lab.positive_known_at, lab.negative_known
  FROM sira_events e
  {event_label_join("$5", "$6")}
 WHERE e.occurred_at >= $1 AND e.occurred_at < $2
"""


def read_feature_shard(dsn: str, fs_name: str, fs_version: int, lo: Any, hi: Any, windows: Windows | None,
                       label_name: str) -> list[dict[str, Any]]:
    """One shard (a time range) of feature vectors, read with its own connection (a Ray task's work), in
    (time, event id) order. With ``windows``, labelled by the dataset's label rule (events it leaves out are
    dropped); without, every event, unlabelled (batch scoring, drift).

    Label-derived features are recomputed here as of each event from the event log and
    the labels known before it, whatever was known when the event was ingested; with ``windows``, the labels
    as they stood at its cut-off, as the label column reads them (a reversal known later does not exist
    for this set). An event with no
    stored feature row of the set (feature set v1 stores them only while the set is in service:
    docs/features.md) gets its whole vector computed here from the event log, by the same maths,
    and says so (``from_log``): it never becomes a row of missing values.
    """
    import asyncio

    from sira.core import db
    from sira.features import store as feature_store
    from sira.features.definitions import get_feature_set

    fs = get_feature_set(fs_name, fs_version)
    label_specs = [s.entity for s in fs.entities if s.label_delay]

    async def run() -> list[dict[str, Any]]:
        conn = await db.connect(dsn)
        try:
            rows = await conn.fetch(SHARD_SQL, lo, hi, fs.name, fs.version, windows.cutoff if windows else hi,
                                    label_name)
            events = sorted((dict(r) for r in rows), key=lambda e: (e["occurred_at"], e["event_id"]))
            if windows is not None:  # the events the label rule leaves out need no vector
                events = [e for e in events if _label(e, windows) is not None]
            stored = [e for e in events if e["vectors"] is not None]
            missing = [e for e in events if e["vectors"] is None]
            recomputed: dict[str, dict[str, Any]] = {}

            async def compute(part: list[dict[str, Any]], entities: list[str] | None) -> None:
                for row in await feature_store.compute_event_features(
                        conn, fs, part, entities=entities, include_event_level=entities is None,
                        label_cutoff=windows.cutoff if windows else None):
                    recomputed.setdefault(row.event_id, {}).update(row.features)

            if label_specs and stored:
                await compute(stored, label_specs)
            if missing:
                await compute(missing, None)  # every entity's features and the event's own
            return [_shard_row(e, fs, windows, recomputed.get(e["event_id"], {})) for e in events]
        finally:
            await conn.close()

    return asyncio.run(run())


def _label(e: dict[str, Any], windows: Windows) -> float | None:
    return label_rule(e["occurred_at"], e["positive_known_at"], e["negative_known"], windows)


def _shard_row(e: dict[str, Any], fs: Any, windows: Windows | None, recomputed: dict[str, Any]) -> dict[str, Any]:
    from sira.features.store import to_us

    vector: dict[str, Any] = {}
    for values in (e["vectors"] or {}).values():
        vector.update(values)
    vector.update(recomputed)
    labelled = {"label": _label(e, windows)} if windows is not None else {}
    return {"event_id": e["event_id"], "ts": to_us(e["occurred_at"]), "country": e["country"],
            "channel": e["channel"], "from_log": e["vectors"] is None, **labelled,
            **{n: vector.get(n) for n in fs.names()}}


def build_feature_dataset(
    dsn: str, fs: Any, windows: Windows, *, label_name: str = "fraud", shards_per_day: int = 1,
    test_only: bool = False,
) -> tuple[Dataset, Split]:
    """Labelled vectors for the train and test windows, read in parallel by time shard (Ray Data);
    ``test_only``: the test window alone (evaluating versions on it: the training rows are not read)."""
    from datetime import timedelta

    import ray.data

    if not (windows.train_from < windows.train_to <= windows.test_from < windows.test_to):
        raise InvalidInput("windows must satisfy train_from < train_to <= test_from < test_to")
    if fs.engine == "tiles":  # feature engine v2: the vectors come from the log, folded as columns
        from sira.training.columnar import tiles_rows

        X, y, times, ids, segments, source = tiles_rows(dsn, fs, windows, label_name=label_name,
                                                        test_only=test_only)
        return feature_dataset(fs, windows, X, y, times, ids, segments, source, test_only=test_only)
    shards = []
    spans = [(windows.test_from, windows.test_to)] if test_only else [(windows.train_from, windows.train_to),
                                                                       (windows.test_from, windows.test_to)]
    for lo, hi in spans:
        step = timedelta(days=1) / shards_per_day
        t = lo
        while t < hi:
            # ISO strings: datetimes would come back from Arrow as another type
            shards.append({"lo": t.isoformat(), "hi": min(t + step, hi).isoformat()})
            t += step

    def read(shard: dict[str, Any]) -> list[dict[str, Any]]:
        from datetime import datetime

        return read_feature_shard(dsn, fs.name, fs.version, datetime.fromisoformat(shard["lo"]),
                                  datetime.fromisoformat(shard["hi"]), windows, label_name)

    if ray.is_initialized() and float(ray.available_resources().get("CPU", 0)) < 1:
        # Ray Data's read tasks need a CPU each and would wait for one forever, without a word (a job's driver
        # holding a 1-CPU head's only CPU, Serve replicas holding the rest): this process reads them instead
        log.warning("no CPU free for Ray Data's read tasks (the cluster's %g CPUs are held: this job's driver, "
                    "Serve replicas or other jobs): reading the %d shards of the training set in this process",
                    float(ray.cluster_resources().get("CPU", 0)), len(shards))
        rows = [row for shard in shards for row in read(shard)]
    else:
        from sira.core.ray_runtime import quiet_ray_data

        quiet_ray_data()
        rows = ray.data.from_items(shards, override_num_blocks=len(shards)).flat_map(read).take_all()
    if not rows:
        raise InvalidInput(f"no labelled events in the windows ({windows.describe()}); set {TRAINING_FLAGS}",
                           code="empty_window")
    rows.sort(key=lambda r: (r["ts"], r["event_id"]))
    from_log = sum(1 for r in rows if r["from_log"])
    if from_log:
        log.warning("%s@%s stores no feature row for %s of the %s events of the training set (the set was not in "
                    "service when they were ingested): their vectors were computed from the event log",
                    fs.name, fs.version, f"{from_log:,}", f"{len(rows):,}")
    schema = [FeatureSpec(n, "numeric") for n in fs.names()]
    X = encode_columns({n: [r[n] for r in rows] for n in fs.names()}, schema)
    return feature_dataset(
        fs, windows, X, np.array([r["label"] for r in rows], dtype=np.float64),
        np.array([r["ts"] for r in rows], dtype=np.int64), [r["event_id"] for r in rows],
        {"country": np.array([r["country"] for r in rows], dtype=object),
         "channel": np.array([r["channel"] for r in rows], dtype=object)},
        {"query": " ".join(SHARD_SQL.split()), "shards": len(shards), "features_from_log": from_log},
        test_only=test_only)


def feature_dataset(fs: Any, windows: Windows, X: np.ndarray, y: np.ndarray, times: np.ndarray, ids: list[Any],
                    segments: dict[str, np.ndarray], source: dict[str, Any], *, test_only: bool = False,
                    ) -> tuple[Dataset, Split]:
    """A feature set's labelled rows (in time order) split by the windows: training then validation (the
    latest 15% of the training window, with positives), and test; refused when a window is empty."""
    from sira.features.store import to_us

    schema = [FeatureSpec(n, "numeric") for n in fs.names()]
    train_to_us, test_from_us = to_us(windows.train_to), to_us(windows.test_from)
    in_train = np.flatnonzero(times < train_to_us)
    test = np.flatnonzero(times >= test_from_us)
    n_valid = tail_with_positives(in_train, y, VALID_SHARE) if in_train.size else 0
    train, valid = in_train[: in_train.size - n_valid], in_train[in_train.size - n_valid:]
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(X).tobytes())
    digest.update(y.tobytes())
    fingerprint = {
        "source": "feature_store", "feature_set": fs.name, "feature_set_version": fs.version, **source,
        "windows": windows.to_dict(), "label_cutoff": windows.cutoff.isoformat(),
        "rows": int(y.size), "positives": int(y.sum()), "content_sha256": digest.hexdigest(),
    }
    ds = Dataset(Matrix(X, y, schema), times, ids, segments, {}, fingerprint)
    split = Split(train, valid, test, "time", {"train": windows.to_dict()})
    for name, idx in (("training", split.train), ("validation", split.valid), ("test", split.test)):
        if test_only and name != "test":
            continue
        if idx.size == 0:
            raise InvalidInput(f"the {name} window is empty ({windows.describe()}); set {TRAINING_FLAGS}",
                               code="empty_window")
        check_window(name, y[idx], f"widen it with {TRAINING_FLAGS}, or lower the label maturity "
                                   f"({windows.describe()})")
    return ds, split


async def events_without_vectors(conn: Any, model_name: str, windows: dict[str, Any]) -> dict[str, Any] | None:
    """What a dry run says of a model's feature rows: its feature set and how many events of the train and test
    ``windows`` (as a plan states them: ISO times) it stored no row for, whose vectors the build computes from the
    event log (slower); None for a set that stores none (feature engine v2) or a model not created yet."""
    from datetime import datetime

    from sira.features.definitions import get_feature_set

    model = await conn.fetchrow("SELECT feature_set, feature_set_version FROM sira_models WHERE name = $1", model_name)
    if model is None or not model["feature_set"]:
        return None
    fs = get_feature_set(model["feature_set"], model["feature_set_version"])
    if fs.engine == "tiles":
        return None
    missing = 0
    for lo, hi in (("train_from", "train_to"), ("test_from", "test_to")):
        missing += await conn.fetchval(
            """SELECT count(*) FROM sira_events e WHERE e.occurred_at >= $1 AND e.occurred_at < $2
                  AND NOT EXISTS (SELECT 1 FROM sira_features f WHERE f.event_id = e.event_id
                                     AND f.as_of = e.occurred_at AND f.feature_set = $3 AND f.feature_set_version = $4)""",
            datetime.fromisoformat(windows[lo]), datetime.fromisoformat(windows[hi]), fs.name, fs.version)
    return {"feature_set": f"{fs.name}@{fs.version}", "events_without_feature_rows": int(missing)}
