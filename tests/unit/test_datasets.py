from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sira.core.errors import InvalidInput
from sira.training.datasets import infer_schema, load_table_dataset, split_dataset


def table(n=600, label=None):
    rng = np.random.default_rng(0)
    start = datetime(2026, 1, 1)
    return pa.table({
        "id": [f"r{i}" for i in range(n)],
        "when": [start + timedelta(hours=i) for i in range(n)],
        "amount": rng.random(n) * 100,
        "count": rng.integers(0, 5, n),
        "channel": rng.choice(["pos", "ecom"], n).tolist(),
        "flag": (rng.random(n) < 0.5).tolist(),
        "constant": ["x"] * n,
        "free_text": [f"note {i}" for i in range(n)],
        "label": label if label is not None else (rng.random(n) < 0.1).astype(int),
    })


def test_schema_inference_reports_every_dropped_column():
    schema, dropped = infer_schema(table(), exclude={"id", "when", "label"})
    kinds = {f.name: f.kind for f in schema}
    assert kinds == {"amount": "numeric", "count": "numeric", "channel": "categorical", "flag": "categorical"}
    assert dropped == {"constant": "constant", "free_text": "all values unique (an identifier?)"}


def test_time_split_keeps_the_future_out_of_training(tmp_path):
    pq.write_table(table(), tmp_path / "t.parquet")
    ds = load_table_dataset([tmp_path / "t.parquet"], label="label", time_col="when", id_col="id")
    split = split_dataset(ds, seed=1)
    assert ds.times[split.train].max() < ds.times[split.valid].min() <= ds.times[split.valid].max() < ds.times[split.test].min()
    assert ds.dropped["when"] == "time column" and ds.dropped["id"] == "id column"


def test_rows_of_one_time_are_never_on_both_sides_of_a_cut(tmp_path):
    """The cuts were row counts after a stable sort: with a day-resolution time column, one day's rows were
    split between validation and test (the model validated on rows of the day it was then tested on)."""
    days = table().set_column(1, "when", pa.array([datetime(2026, 1, 1) + timedelta(days=i // 40) for i in range(600)]))
    pq.write_table(days, tmp_path / "t.parquet")
    ds = load_table_dataset([tmp_path / "t.parquet"], label="label", time_col="when", id_col="id")
    split = split_dataset(ds, seed=1)
    assert ds.times[split.train].max() < ds.times[split.valid].min() <= ds.times[split.valid].max() < ds.times[split.test].min()
    assert split.train.size + split.valid.size + split.test.size == 600


@pytest.mark.parametrize("values, read_as", [
    # seconds from the start of the data, as a float (the card-fraud data set's `Time`): refused before #19.5
    (lambda n: np.arange(n, dtype=np.float64) * 37.5, "seconds from the start of the data"),
    (lambda n: 1_788_000_000 + np.arange(n) * 3600, "epoch seconds"),
    (lambda n: 1_788_000_000_000 + np.arange(n) * 3_600_000, "epoch milliseconds"),
])
def test_a_numeric_time_column_orders_the_time_split(tmp_path, values, read_as):
    n = 600
    base = table(n).drop_columns(["when"])
    shuffled = np.random.default_rng(3).permutation(n)  # rows not in time order in the file
    data = base.append_column("Time", pa.array(values(n)[shuffled]))
    pq.write_table(data, tmp_path / "t.parquet")
    ds = load_table_dataset([tmp_path / "t.parquet"], label="label", time_col="Time", id_col="id")
    assert ds.fingerprint["time_column"]["name"] == "Time"
    assert ds.fingerprint["time_column"]["read_as"].startswith(read_as)
    split = split_dataset(ds, seed=1)
    assert split.method == "time"
    assert ds.times[split.train].max() < ds.times[split.valid].min() <= ds.times[split.valid].max() < ds.times[split.test].min()
    # the order is the column's: the test rows are those with the largest values
    order = np.argsort(values(n)[shuffled], kind="stable")
    assert set(split.test.tolist()) == set(order[-split.test.size:].tolist())
    if read_as == "epoch seconds":
        assert datetime.utcfromtimestamp(ds.times.min() / 1e6) == datetime(2026, 8, 29, 10, 40)
    # the split's windows as a person reads them: ISO 8601 for times of the epoch (they were microseconds since
    # it, 1789452000000000), the column's own ordering for seconds from the data's start
    first = split.windows["train"]["from"]
    if read_as.startswith("epoch"):
        assert first == "2026-08-29T10:40:00+00:00", split.windows
    else:
        assert first == 0, split.windows


def test_a_timestamp_columns_windows_are_iso_8601(tmp_path):
    pq.write_table(table(), tmp_path / "t.parquet")
    ds = load_table_dataset([tmp_path / "t.parquet"], label="label", time_col="when", id_col="id")
    windows = split_dataset(ds, seed=1).windows
    assert windows["train"]["from"] == "2026-01-01T00:00:00+00:00"
    assert {tuple(w) for w in windows.values()} == {("from", "to")} and all(
        isinstance(v, str) for w in windows.values() for v in w.values())


def test_a_time_column_that_is_neither_time_nor_number_is_refused(tmp_path):
    pq.write_table(table().append_column("Time", pa.array(["soon"] * 600)), tmp_path / "t.parquet")
    with pytest.raises(InvalidInput, match="cannot be read as timestamps or numbers"):
        load_table_dataset([tmp_path / "t.parquet"], label="label", time_col="Time")


def test_stratified_split_without_time_is_seeded(tmp_path):
    pq.write_table(table(), tmp_path / "t.parquet")
    ds = load_table_dataset([tmp_path / "t.parquet"], label="label")
    a, b = split_dataset(ds, seed=3), split_dataset(ds, seed=3)
    assert np.array_equal(a.test, b.test) and a.method == "stratified"
    for idx in (a.train, a.valid, a.test):
        assert ds.matrix.y[idx].sum() > 0


@pytest.mark.parametrize(
    "label, kwargs, message",
    [
        (["yes", "no", "maybe"] * 200, {}, "is not binary"),
        (["fraud", "legit"] * 300, {"positive": "chargeback"}, "does not occur"),
        (["a", "b", "c"] * 200, {"positive": "a"}, "not binary: 3 distinct values"),
    ],
)
def test_labels_must_be_binary(tmp_path, label, kwargs, message):
    pq.write_table(table(label=label), tmp_path / "t.parquet")
    with pytest.raises(InvalidInput, match=message):
        load_table_dataset([tmp_path / "t.parquet"], label="label", **kwargs)


def test_labels_with_positive_value_and_missing_columns(tmp_path):
    pq.write_table(table(label=["fraud", "legit", "legit", "legit"] * 150), tmp_path / "t.parquet")
    ds = load_table_dataset([tmp_path / "t.parquet"], label="label", positive="fraud")
    assert ds.matrix.y.mean() == 0.25
    with pytest.raises(InvalidInput, match="label column is_fraud is not in the table"):
        load_table_dataset([tmp_path / "t.parquet"], label="is_fraud")


def test_infinite_values_in_a_feature_are_missing_and_reported(tmp_path):
    """An infinite value went into the matrix as it was: the reference's top bin edge and mean were infinite
    (null in the manifest) and every later drift run on the version failed. It is missing, as for LightGBM's
    NaN, and counted per column."""
    amount = np.random.default_rng(1).random(600) * 100
    amount[::50], amount[7] = np.inf, -np.inf
    pq.write_table(table().set_column(2, "amount", pa.array(amount)), tmp_path / "t.parquet")
    ds = load_table_dataset([tmp_path / "t.parquet"], label="label", time_col="when", id_col="id")
    column = ds.matrix.X[:, ds.matrix.names.index("amount")]
    assert np.isfinite(column).sum() == 587 and np.isnan(column).sum() == 13
    assert ds.fingerprint["infinite_values"] == {"amount": 13}
    everything = table().set_column(2, "amount", pa.array([np.inf] * 600))  # nothing else: a constant column
    pq.write_table(everything, tmp_path / "t.parquet")
    ds = load_table_dataset([tmp_path / "t.parquet"], label="label")
    assert ds.dropped["amount"] == "constant" and "amount" not in ds.matrix.names


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_folder_whose_files_have_different_columns_is_refused(tmp_path, fmt):
    """A column missing from one file was filled with nulls without a word (a feature null in every validation
    and test row) while `sira score` refused the same folder; the file and its columns are named."""
    whole = table()
    parts = {"a": whole.slice(0, 300), "b": whole.slice(300).drop_columns(["amount"]).append_column(
        "note", pa.array(["x"] * 300))}
    for name, part in parts.items():
        if fmt == "parquet":
            pq.write_table(part, tmp_path / f"{name}.parquet")
        else:
            part.to_pandas().to_csv(tmp_path / f"{name}.csv", index=False)
    with pytest.raises(InvalidInput, match=rf"b\.{fmt}: lacks amount and has note too \(against a\.{fmt}\)") as caught:
        load_table_dataset([tmp_path], label="label", time_col="when")
    assert caught.value.code == "missing_columns"
    (tmp_path / f"b.{fmt}").unlink()
    reordered = whole.slice(300).select(list(reversed(whole.column_names)))  # the same columns in another order
    if fmt == "parquet":
        pq.write_table(reordered, tmp_path / "b.parquet")
    else:
        reordered.to_pandas().to_csv(tmp_path / "b.csv", index=False)
    assert load_table_dataset([tmp_path], label="label", time_col="when").matrix.y.size == 600


@pytest.mark.parametrize("suffix, hours", [("Z", 0), ("+02:00", -2), ("-0530", 5.5), ("", 0)])
def test_iso_text_with_a_zone_is_read_as_that_instant_in_utc(tmp_path, suffix, hours):
    """Text such as 2026-01-01T00:00:00Z or ...+02:00 was refused ("cannot be read as timestamps"): it is the
    instant it names, in UTC; text without a zone is read as it is, as before."""
    start = datetime(2026, 1, 1)
    text = [(start + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%S") + suffix for i in range(600)]
    pq.write_table(table().set_column(1, "when", pa.array(text)), tmp_path / "t.parquet")
    ds = load_table_dataset([tmp_path / "t.parquet"], label="label", time_col="when", id_col="id")
    first = datetime(1970, 1, 1) + timedelta(microseconds=int(ds.times.min()))
    assert first == start + timedelta(hours=hours) and np.all(np.diff(ds.times) == 3_600_000_000)
    assert ds.fingerprint["time_column"]["read_as"].startswith("timestamps (ISO 8601 text")
    assert ("in UTC" in ds.fingerprint["time_column"]["read_as"]) == bool(suffix)
