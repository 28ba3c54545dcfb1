"""Batch scoring's pieces that need no services: the reads, the actor pool's shape, the atomic writer, the tally."""

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from sira.core.errors import InvalidInput
from sira.core.files import ROW_GROUP, in_row_groups, row_group_parts, write_atomically
from sira.monitoring.batch import READ_ROWS, PoolShape, ScoreTally, pool_shape, read_part


def test_a_large_row_group_is_read_in_bounded_slices_in_order(tmp_path):
    """Whatever row groups a file was written with, a read task hands on at most READ_ROWS rows at a time."""
    n = READ_ROWS * 2 + 123
    whole = pa.table({"id": [f"e{i}" for i in range(n)], "f0": np.arange(n, dtype=np.float64)})
    pq.write_table(whole, tmp_path / "a.parquet", row_group_size=n)  # one row group
    pacsv.write_csv(whole.slice(0, 10), tmp_path / "b.csv")
    parts = list(read_part({"path": np.array([str(tmp_path / "a.parquet"), str(tmp_path / "b.csv")]),
                            "row_group": np.array([0, -1])}))
    assert [p.num_rows for p in parts] == [READ_ROWS, READ_ROWS, 123, 10]
    assert pa.concat_tables(parts[:3]).equals(whole)
    assert parts[3].column("f0").to_pylist() == list(range(10))


def test_a_file_of_one_large_row_group_is_split_into_parts_for_every_actor(tmp_path):
    """One 300k-row row group was one part: one actor scored it while the others idled (issue #19.9)."""
    n = 300_001
    whole = pa.table({"id": np.arange(n), "f0": np.arange(n, dtype=np.float64) / 7})
    pq.write_table(whole, tmp_path / "a.parquet", row_group_size=n)
    pq.write_table(whole.slice(0, 1000), tmp_path / "small.parquet", row_group_size=400)  # 3 groups, not split
    footer = pq.ParquetFile(tmp_path / "a.parquet").metadata
    parts = row_group_parts(tmp_path / "a.parquet", footer, 131_072)
    assert len(parts) == 3 and [p["row_group"] for p in parts] == [0, 0, 0]
    assert parts[0]["start"] == 0 and parts[-1]["stop"] == n
    assert all(a["stop"] == b["start"] for a, b in zip(parts, parts[1:]))
    assert len(row_group_parts(tmp_path / "a.parquet", footer, 2_048)) == 147  # --explain: small parts
    small = row_group_parts(tmp_path / "small.parquet", pq.ParquetFile(tmp_path / "small.parquet").metadata, 131_072)
    assert [(p["row_group"], p["start"], p["stop"]) for p in small] == [(0, 0, -1), (1, 0, -1), (2, 0, -1)]
    # every row read once, in order, each part in slices of at most READ_ROWS
    read = []
    for p in parts + [{"path": str(tmp_path / "a.parquet"), "row_group": 0, "start": 5, "stop": 9}]:
        tables = list(read_part({k: np.array([v]) for k, v in p.items()}))
        assert all(t.num_rows <= READ_ROWS for t in tables)
        read.append(pa.concat_tables(tables))
    assert pa.concat_tables(read[:3]).equals(whole)
    assert read[3].column("id").to_pylist() == [5, 6, 7, 8]


def test_the_pool_has_an_actor_per_cpu_leaves_cpu_for_reads_and_fits_what_is_free():
    assert pool_shape(2, 2, None, reads=False) == PoolShape(1.0, 2, 2)  # this machine, a file: both CPUs
    assert pool_shape(2, 2, None, reads=True) == PoolShape(0.875, 2, 2)  # stored events: a quarter CPU for reads
    assert pool_shape(2, 1.5, None, reads=False) == PoolShape(0.75, 2, 2)  # a Serve replica holds half a CPU
    assert pool_shape(2, 1.2, None, reads=True) == PoolShape(0.95, 1, 1)
    assert pool_shape(2, 0.2, None, reads=True) == PoolShape(0.5, 1, 3)  # nothing free: the smallest actor, never zero
    assert pool_shape(16, 16, None, reads=False) == PoolShape(1.0, 16, 16)  # a cluster: one per CPU
    assert pool_shape(16, 4, None, reads=True) == PoolShape(0.9375, 4, 16)  # busy now: grows as CPUs free up
    assert pool_shape(16, 16, 3, reads=False) == PoolShape(1.0, 3, 3)
    for total, free in [(2, 2), (2, 1.5), (3, 2.7), (16, 16), (16, 4), (64, 63.5)]:
        for reads in (False, True):
            shape = pool_shape(total, free, None, reads=reads)
            # what starts fits in what is free, beside the reads
            assert shape.first * shape.cpus <= free - (0.25 if reads else 0) + 1e-9, (total, free, reads)
            assert shape.largest * shape.cpus <= total - (0.25 if reads else 0) + 1e-9, (total, free, reads)


def _batch(start: int, n: int) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(start, start + n)], "score": [0.5] * n,
                     "decision": ["review"] * n})


def test_the_output_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out.parquet"
    out.write_bytes(b"earlier")

    def failing():
        yield _batch(0, 10)
        raise RuntimeError("a worker died")

    with pytest.raises(RuntimeError):
        write_atomically(failing(), out, lambda _b: None)
    assert out.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == ["out.parquet"]
    with pytest.raises(InvalidInput):
        write_atomically(iter(()), out, lambda _b: None)
    assert out.read_bytes() == b"earlier"
    seen = []
    digest = write_atomically(iter([_batch(0, ROW_GROUP), _batch(ROW_GROUP, 5)]), out, seen.append)
    table = pq.read_table(out)
    assert table.num_rows == ROW_GROUP + 5 and len(seen) == 2
    assert pq.ParquetFile(out).metadata.num_row_groups == 2
    import hashlib

    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()


def test_the_files_row_groups_do_not_depend_on_how_the_blocks_were_cut(tmp_path):
    """Ray Data's blocks reach the writer in whatever sizes the actors' output made; the file is the same."""
    n = ROW_GROUP * 2 + 77
    whole = _batch(0, n)
    cuts = {"one block": [n], "even": [ROW_GROUP] * 2 + [77],
            "ragged": [1, ROW_GROUP - 1, 5, 50_000, ROW_GROUP - 50_005 + 70, 1, 6]}
    digests = set()
    for name, sizes in cuts.items():
        assert sum(sizes) == n, name
        bounds = np.cumsum([0, *sizes])
        blocks = [whole.slice(lo, hi - lo) for lo, hi in zip(bounds[:-1], bounds[1:])]
        groups = list(in_row_groups(iter(blocks)))
        assert [g.num_rows for g in groups] == [ROW_GROUP, ROW_GROUP, 77], name
        assert pa.concat_tables(groups).equals(whole), name
        digests.add(write_atomically(iter(blocks), tmp_path / f"{name}.parquet", lambda _b: None))
    assert len(digests) == 1
    # a later block whose types differ (an int column in one CSV, float in the next) takes the first one's
    first = pa.table({"x": pa.array([1.5, 2.5])})
    later = pa.table({"x": pa.array([3], pa.int64())})
    assert list(in_row_groups(iter([first, later]), rows=10))[0].column("x").to_pylist() == [1.5, 2.5, 3.0]


def test_the_tally_counts_decisions_and_bins_scores():
    tally = ScoreTally()
    tally.add(pa.table({"score": [0.01, 0.5, 0.99], "decision": ["approve", "review", "block"]}))
    tally.add(pa.table({"score": [0.02], "decision": ["approve"]}))
    summary = tally.summary()
    assert summary["rows"] == 4 and summary["decisions"] == {"approve": 2, "review": 1, "block": 1}
    assert summary["score_histogram"][0] == 2 and summary["score_histogram"][-1] == 1
    assert summary["mean_score"] == pytest.approx((0.01 + 0.5 + 0.99 + 0.02) / 4)


@pytest.mark.parametrize("quantiles", [(0.6, 0.9), (0.9, 0.6)])
def test_a_scored_batch_carries_the_runtimes_decisions_scores_and_version(synthetic_matrix, quantiles):
    """score_table's Arrow-built decisions are sira.training.evaluation.decide's bands for every score, for
    scores exactly at the thresholds too (thresholds picked among the scores; also a block threshold
    below the review one); scores are the runtime's."""
    import dataclasses

    import lightgbm as lgb

    from sira.monitoring.batch import score_table
    from sira.serving.scoring import ModelRuntime
    from sira.training.evaluation import decide
    from sira.training.trainer import train_model

    train, valid = synthetic_matrix(4_000, 1), synthetic_matrix(1_000, 2)
    result = train_model(train, valid, {"num_boost_round": 20}, seed=3, num_threads=1)
    runtime = ModelRuntime(model_name="byo", model_id=1, version=7, artifact_sha256="0" * 64,
                           booster=lgb.Booster(model_str=result.model_text), schema=tuple(train.schema),
                           calibration=result.calibration, thresholds={"review": 0.05, "block": 0.2}, feature_set=None)
    rng = np.random.default_rng(5)
    n = 3_000
    table = pa.table({"event_id": [f"e{i}" for i in range(n)], "amount": rng.lognormal(3, 1, n),
                      "night": (rng.random(n) < 0.2).astype(float), "channel": rng.choice(["pos", "ecom", "atm"], n)})
    scores = runtime.predict(runtime.table_matrix(table))
    review, block = (float(np.sort(scores)[int(q * n)]) for q in quantiles)
    runtime = dataclasses.replace(runtime, thresholds={"review": review, "block": block})
    out = score_table(runtime, table, ["event_id"])
    assert out.column("score").to_numpy().tolist() == scores.tolist()
    assert out.column("decision").type == pa.string()
    assert out.column("decision").to_pylist() == decide(scores, runtime.thresholds).tolist()
    assert set(out.column("decision").to_pylist()) == ({"approve", "review", "block"} if review <= block
                                                       else {"approve", "block"})
    assert out.column("version").to_pylist() == [7] * n and out.column("event_id").to_pylist()[:2] == ["e0", "e1"]


def test_file_checks_follow_the_feature_schema_kinds(tmp_path):
    """A categorical feature may be text; a numeric one may not (FeatureSpec.to_dict's "type" key)."""
    from sira.core.files import find_files
    from sira.monitoring.batch import BatchRequest, file_source

    schema = [{"name": "amount", "type": "numeric"}, {"name": "channel", "type": "categorical",
                                                      "categories": ["pos", "ecom"]}]
    good, bad = tmp_path / "good", tmp_path / "bad"
    for folder in (good, bad):
        folder.mkdir()
    pacsv.write_csv(pa.table({"id": ["a"], "amount": [1.0], "channel": ["pos"]}), good / "a.csv")
    pacsv.write_csv(pa.table({"id": ["b"], "amount": ["lots"], "channel": ["pos"]}), bad / "b.csv")
    req = BatchRequest(model="m", out=tmp_path / "o.parquet")
    source = file_source(find_files([good]), schema, req)
    assert source.passthrough == ["id"] and source.passthrough_schema.field("id").type == pa.string()
    with pytest.raises(InvalidInput, match="column amount must be numeric") as caught:
        file_source(find_files([bad]), schema, req)
    assert caught.value.code == "invalid_column"


def test_a_small_input_is_scored_in_process_unless_a_cluster_or_a_ray_job_should_take_it(monkeypatch):
    from sira.core.config import Settings
    from sira.monitoring.batch import CLUSTER_LOCAL_BELOW, EXPLAIN_COST, LOCAL_BELOW, in_process

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    here, cluster = Settings(ray_address=None), Settings(ray_address="ray://head:10001")
    assert in_process(here, LOCAL_BELOW - 1) and not in_process(here, LOCAL_BELOW)
    assert in_process(cluster, CLUSTER_LOCAL_BELOW - 1) and not in_process(cluster, CLUSTER_LOCAL_BELOW)
    assert not in_process(here, LOCAL_BELOW // EXPLAIN_COST, explain=True)
    assert not in_process(here, None)  # a CSV input: its size is not known up front
    assert not in_process(here, 10, local_below=0)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"metadata": {"job_submission_id": "raysubmit_1"}}')
    assert not in_process(here, 10)  # a submitted job asked for the cluster


def test_batch_scoring_names_non_text_categories_as_training_did():
    """Training writes a categorical column's vocabulary with str() (True, 1.0); batch scoring cast with Arrow
    (true, 1), which matched nothing: every row of a boolean category was scored as missing. The matrix of a
    table equals the training encoding of the same values, for booleans, floats, integers, text and nulls."""
    from sira.serving.scoring import ModelRuntime
    from sira.training.trainer import FeatureSpec, encode_columns

    values = {"flag": [True, False, None, True], "rate": [1.0, 0.5, 1.0, None], "n": [1, 2, 3, 1],
              "channel": ["pos", None, "ecom", "pos"]}
    schema = [FeatureSpec(name, "categorical", tuple(sorted({str(v) for v in vs if v is not None})))
              for name, vs in values.items()]
    expected = encode_columns(values, schema)
    runtime = ModelRuntime(model_name="t", model_id=1, version=1, artifact_sha256="0" * 64, booster=None,
                           schema=tuple(schema), calibration=None, thresholds={}, feature_set=None)  # no predict
    got = runtime.table_matrix(pa.table(values))
    np.testing.assert_array_equal(got, expected)
    assert not np.isnan(got[0]).any()  # the first row has every value: none scored as missing


def test_a_csv_cell_reading_like_a_missing_value_is_text_and_only_an_empty_cell_is_missing(tmp_path):
    """pyarrow's default null markers ("NA", "N/A", "None", "null") turned a column of Namibian payments'
    country code "NA" into nothing."""
    from sira.core.files import find_files, read_table

    path = tmp_path / "namibia.csv"
    path.write_text("event_id,country,terminal_id,amount\ne1,NA,N/A,1.5\ne2,NA,None,\n")
    table = read_table(find_files([path]))
    assert table.column("country").to_pylist() == ["NA", "NA"]
    assert table.column("terminal_id").to_pylist() == ["N/A", "None"]
    assert table.column("amount").to_pylist() == [1.5, None]


def test_the_summary_a_person_reads_says_which_engine_scored():
    """docs/monitoring.md promised the summary's `engine`; only --json had it."""
    from rich.console import Console

    from sira.cli.monitor import batch_table

    result = {"model": "fraud", "version": 2, "status": "production", "input": "week.parquet", "rows": 1000,
              "seconds": 1.5, "rows_per_second": 667, "mean_score": 0.0123, "decisions": {"approve": 990, "review": 10},
              "out": "scores.parquet", "sha256": "ab" * 32, "engine": "in process"}
    console = Console(width=200, record=True)
    console.print(batch_table(result))
    text = console.export_text()
    assert "engine" in text and "in process" in text
