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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sira.errors import InvalidInput
from sira.files import find_files, read_table
from sira.training import FeatureSpec, Matrix, encode_columns

MAX_CATEGORIES = 100
_TRUE = {"1", "true", "t", "yes", "y", "fraud", "positive"}
_FALSE = {"0", "false", "f", "no", "n", "legit", "negative"}


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
        text = str(v).strip().lower()
        if isinstance(v, bool):
            out[i] = float(v)
        elif text in _TRUE or (isinstance(v, (int, float)) and v == 1):
            out[i] = 1.0
        elif text in _FALSE or (isinstance(v, (int, float)) and v == 0):
            out[i] = 0.0
        else:
            distinct = sorted({str(x) for x in values})[:5]
            raise InvalidInput(
                f"label column {name} is not binary (values such as {', '.join(distinct)}); "
                "use 0/1, true/false, or --positive VALUE",
                details={"column": name},
            )
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
    positive: str | None = None, schema: list[FeatureSpec] | None = None,
) -> Dataset:
    """A bring-your-own table as a labelled matrix (``schema`` given: reuse it, e.g. for scoring)."""
    files = find_files(paths)
    table = read_table(files)
    for role, name in (("label", label), ("time", time_col), ("id", id_col)):
        if name is not None and name not in table.column_names:
            raise InvalidInput(f"{role} column {name} is not in the table (columns: {', '.join(table.column_names)})",
                               details={"column": name})
    if table.num_rows == 0:
        raise InvalidInput("the table has no rows")
    y = _label_array(table.column(label), positive, label)
    exclude = {label, *(c for c in (time_col, id_col) if c)}
    dropped: dict[str, str] = {c: role for c, role in ((time_col, "time column"), (id_col, "id column")) if c}
    if schema is None:
        schema, why = infer_schema(table, exclude)
        dropped.update(why)
    times = None
    if time_col:
        column = table.column(time_col)
        if not pa.types.is_timestamp(column.type):
            try:
                column = pc.cast(column, pa.timestamp("us"))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                try:
                    column = pc.strptime(column, format="%Y-%m-%d %H:%M:%S", unit="us")
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise InvalidInput(f"time column {time_col} cannot be read as timestamps",
                                       details={"column": time_col}) from None
        if column.null_count:
            raise InvalidInput(f"time column {time_col} has missing values", details={"column": time_col})
        times = pc.cast(column, pa.timestamp("us")).cast(pa.int64()).to_numpy()
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
    }
    ids = table.column(id_col).to_pylist() if id_col else None
    return Dataset(Matrix(X, y, schema), times, ids, segments, dropped, fingerprint)


def split_dataset(ds: Dataset, *, seed: int, valid_share: float = 0.15, test_share: float = 0.15) -> Split:
    """By time when the dataset has times (train < validation < test), else stratified and seeded."""
    n = ds.matrix.y.size
    if ds.times is not None:
        order = np.argsort(ds.times, kind="stable")
        n_test = max(1, int(round(n * test_share)))
        n_valid = max(1, int(round(n * valid_share)))
        train, valid, test = order[: n - n_test - n_valid], order[n - n_test - n_valid: n - n_test], order[n - n_test:]
        windows = {name: {"from": int(ds.times[idx].min()), "to": int(ds.times[idx].max())}
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
        if ds.matrix.y[idx].sum() == 0:
            raise InvalidInput(f"the {name} window has no positive labels; bring more positives or widen it")
    return split
