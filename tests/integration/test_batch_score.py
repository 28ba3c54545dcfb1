"""Batch scoring on the test session's Ray: stored events and tables, reproducible and atomic output,
reasons that follow LightGBM's contributions, and the bad-input table of `sira score`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from asyncio import run as run_sync
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sira.core.errors import Conflict, InvalidInput
from sira.monitoring.batch import EXPLAIN_COST, BatchRequest, run_batch_score
from sira.serving.scoring import ModelRuntime


def score(fraud_model, **kwargs):
    return run_sync(run_batch_score(fraud_model.settings, BatchRequest(model="fraud", **kwargs)))


@pytest.fixture(scope="module")
def history(fraud_model, tmp_path_factory):
    """Every stored event scored by the production version, twice (reproducibility): on Ray Data, then
    in this process (the path a small input takes outside a Ray job)."""
    out = tmp_path_factory.mktemp("batch") / "all.parquet"
    start = _events_range(fraud_model)[0]  # --from alone: up to the newest event
    first = score(fraud_model, out=out, time_from=start, keep_columns=True, local_below=0)
    digest = first["sha256"]
    again = score(fraud_model, out=out, time_from=start, keep_columns=True)
    return first, again, digest, out


def _events_range(fraud_model):
    async def bounds():
        import asyncpg

        conn = await asyncpg.connect(fraud_model.dsn)
        try:
            return await conn.fetchrow("SELECT min(occurred_at), max(occurred_at), count(*) FROM sira_events")
        finally:
            await conn.close()

    return run_sync(bounds())


@pytest.mark.slow
def test_scoring_stored_events_covers_every_event_in_time_order(fraud_model, history):
    first, _, _, out = history
    lo, hi, n = _events_range(fraud_model)
    table = pq.read_table(out)
    assert first["rows"] == table.num_rows == n
    assert first["model"] == "fraud" and first["version"] == fraud_model.version
    assert sum(first["decisions"].values()) == n
    ids = table.column("event_id").to_pylist()
    assert len(set(ids)) == n
    times = table.column("occurred_at").to_pylist()
    assert times == sorted(times) and times[0] == lo and times[-1] == hi
    assert set(table.column("decision").to_pylist()) <= {"approve", "review", "block"}
    assert set(table.column("version").to_pylist()) == {fraud_model.version}
    scores = table.column("score").to_numpy()
    assert np.all((scores >= 0) & (scores <= 1)) and scores.std() > 0
    # --keep-columns: the features scored travel with the scores
    assert {"country", "channel", "amount", "customer_count_1d"} <= set(table.column_names)


def test_the_same_input_gives_the_same_file_byte_for_byte(history):
    first, again, digest, out = history
    assert (first["engine"], again["engine"]) == ("ray data", "in process")
    assert first["sha256"] == again["sha256"] == digest
    import hashlib

    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest


@pytest.mark.slow
def test_a_table_scores_like_the_runtime_and_reasons_follow_pred_contrib(fraud_model, history, tmp_path):
    _, _, _, scored_events = history
    features = pq.read_table(scored_events).drop_columns(["score", "decision", "model", "version"])
    features = features.slice(0, 6_000)  # explained rows cost ~1 ms each; two parts per file
    features = features.append_column("note", pa.array(["x"] * features.num_rows))
    part = tmp_path / "in"
    part.mkdir()
    half = features.num_rows // 2  # a folder of two files: one output, in file order
    pq.write_table(features.slice(0, half), part / "a.parquet")
    pq.write_table(features.slice(half), part / "b.parquet")
    out = tmp_path / "scored.parquet"
    result = score(fraud_model, out=out, data=[part], explain=True, batch_size=1000, local_below=0)
    assert result["engine"] == "ray data"
    table = pq.read_table(out)
    # a small input is scored in the calling process: the same rows, scores and reasons
    pq.write_table(features.slice(0, 300), tmp_path / "small.parquet")
    here = score(fraud_model, out=tmp_path / "here.parquet", data=[tmp_path / "small.parquet"], explain=True,
                 batch_size=1000, local_below=301 * EXPLAIN_COST)  # on every CPU
    assert here["engine"] == "in process"
    assert pq.read_table(tmp_path / "here.parquet").equals(table.slice(0, 300))
    assert table.column_names == ["event_id", "occurred_at", "score", "decision", "model", "version", "reasons",
                                  "reason_codes"]
    assert table.column("event_id").to_pylist() == features.column("event_id").to_pylist()
    runtime = ModelRuntime.load(fraud_model.settings, {
        "model_name": "fraud", "model_id": 1, "version": fraud_model.version,
        "artifact_uri": fraud_model.trained["artifact"]["uri"], "artifact_sha256": fraud_model.trained["artifact"]["sha256"],
    })
    X = runtime.table_matrix(features)
    np.testing.assert_array_equal(table.column("score").to_numpy(), runtime.predict(X))
    assert result["decisions"]["approve"] == int((runtime.predict(X) < runtime.thresholds["review"]).sum())
    rows = np.flatnonzero(table.column("score").to_numpy() >= runtime.thresholds["review"])[:20]
    contrib = runtime.contributions(X[rows])
    for k, i in enumerate(rows.tolist()):
        reasons = json.loads(table.column("reasons")[i].as_py())
        top = np.argsort(-contrib[k][:-1], kind="stable")[: len(reasons)]
        assert [r["feature"] for r in reasons] == [runtime.names[j] for j in top]
        assert table.column("reason_codes")[i].as_py() == [r["code"] for r in reasons]


def test_a_time_range_scores_only_its_events(fraud_model, tmp_path):
    lo, hi, _ = _events_range(fraud_model)
    start, end = lo + timedelta(days=10), lo + timedelta(days=12)
    result = score(fraud_model, out=tmp_path / "two-days.parquet", time_from=start, time_to=end)
    times = pq.read_table(tmp_path / "two-days.parquet").column("occurred_at").to_pylist()
    assert times and min(times) >= start and max(times) < end and result["rows"] == len(times)


def test_the_audit_record_of_a_run_keeps_no_email_or_card_number_of_its_paths(fraud_model, tmp_path):
    """The output's path as the caller gave it went into the append-only audit log (erasure never reaches it)."""
    import asyncpg

    lo, _, _ = _events_range(fraud_model)
    folder = tmp_path / "jane.doe@example.com" / "4539578763621486"
    folder.mkdir(parents=True)
    score(fraud_model, out=folder / "day.parquet", time_from=lo, time_to=lo + timedelta(hours=6))

    async def last_record():
        conn = await asyncpg.connect(fraud_model.dsn)
        try:
            return await conn.fetchval("SELECT details::text FROM sira_audit_log WHERE action = 'batch.score' "
                                       "ORDER BY id DESC LIMIT 1")
        finally:
            await conn.close()

    details = run_sync(last_record())
    assert "day.parquet" in details and "tok_" in details
    assert "jane.doe@example.com" not in details and "4539578763621486" not in details


def test_a_failed_run_leaves_the_earlier_output_untouched(fraud_model, tmp_path):
    out = tmp_path / "keep.parquet"
    table = pa.table({"event_id": ["a"], "amount": [1.0]})
    pq.write_table(table, tmp_path / "partial.parquet")
    out.write_bytes(b"earlier output")
    with pytest.raises(InvalidInput) as caught:
        score(fraud_model, out=out, data=[tmp_path / "partial.parquet"])
    assert caught.value.code == "missing_columns" and "log_amount" in caught.value.message
    assert out.read_bytes() == b"earlier output"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_no_free_cpu_for_a_scoring_actor_is_a_clear_error_not_a_hang(fraud_model, history, tmp_path):
    """Serve replicas or another job hold the CPUs: Ray Data would wait forever without a word."""
    from sira.core.errors import ServiceUnavailable
    from tests.conftest import cpus_held

    _, _, _, scored_events = history
    data = tmp_path / "in.parquet"
    pq.write_table(pq.read_table(scored_events).drop_columns(["score", "decision", "model", "version"]), data)
    with cpus_held(leaving=0.3):  # less than one actor's half CPU
        out = tmp_path / "out.parquet"
        with pytest.raises(ServiceUnavailable, match="no CPU free for a scoring actor after 3 s"):
            score(fraud_model, out=out, data=[data], wait_for_cpus_s=3, local_below=0)
        assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.slow
def test_bad_batch_inputs_get_one_line_and_exit_2(fraud_model, tmp_path, history, monkeypatch, capsys):
    from tests.conftest import cli_in_process

    def _cli(fraud_model, *args: str, role: str = "data_scientist") -> subprocess.CompletedProcess:
        """`sira score` in this process: each refusal comes before any scoring (no process of its own needed)."""
        return cli_in_process(monkeypatch, capsys, {
            "SIRA_DATABASE_URL": fraud_model.dsn, "SIRA_WORKSPACE": str(fraud_model.settings.workspace),
            "SIRA_API_KEY": fraud_model.keys[role]}, "score", *args)

    _, _, _, scored_events = history
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(scored_events).slice(0, 0), empty)
    lacking = tmp_path / "lacking.parquet"
    pq.write_table(pq.read_table(scored_events).select(["event_id", "amount"]).slice(0, 5), lacking)
    raw = tmp_path / "raw.parquet"  # the demo's history/: events, not features
    pq.write_table(pq.read_table(scored_events).select(["event_id", "occurred_at", "amount"]), raw)
    out = str(tmp_path / "o.parquet")
    # folders whose later file is what is wrong: found before any scoring starts
    features = pq.read_table(scored_events).drop_columns(["score", "decision", "model", "version"]).slice(0, 20)
    damaged, short, mixed = (tmp_path / name for name in ("damaged", "short", "mixed"))
    for folder in (damaged, short, mixed):
        folder.mkdir()
        pq.write_table(features, folder / "a.parquet")
    (damaged / "b.parquet").write_bytes(b"")
    pq.write_table(features.drop_columns(["customer_count_1d"]), short / "b.parquet")
    pq.write_table(features.set_column(features.schema.get_field_index("event_id"), "event_id",
                                       pa.array(range(20), pa.int64())), mixed / "b.parquet")
    cases = [
        (["--model", "fraud", "--data", str(damaged), "--out", out], "invalid_input", "b.parquet: cannot read"),
        (["--model", "fraud", "--data", str(short), "--out", out], "missing_columns", "(b.parquet): customer_count_1d"),
        (["--model", "fraud", "--data", str(mixed), "--out", out], "invalid_column", "column event_id has different"),
        (["--model", "nope", "--data", str(empty), "--out", out], "unknown_model", "nope"),
        (["--model", "fraud", "--version", "99", "--data", str(empty), "--out", out], "not_found", "no version 99"),
        (["--model", "fraud", "--data", str(empty), "--out", out], "empty_input", "no rows"),
        (["--model", "fraud", "--data", str(lacking), "--out", out], "missing_columns", "log_amount"),
        (["--model", "fraud", "--data", str(raw), "--out", out], "missing_columns", "raw events"),
        (["--model", "fraud", "--data", str(tmp_path / "missing.parquet"), "--out", out], "not_found", "missing"),
        (["--model", "fraud", "--from", "2001-01-01", "--to", "2001-02-01", "--out", out], "empty_input", "no stored"),
        (["--model", "fraud", "--data", str(lacking), "--out", str(tmp_path / "o.csv")], "invalid_output", ".parquet"),
        (["--model", "fraud", "--out", out], "invalid_input", "--data"),
    ]
    for args, code, words in cases:
        done = _cli(fraud_model, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith(f"error: {code}:") and words in done.stderr, (args, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
    denied = _cli(fraud_model, "--model", "fraud", "--data", str(lacking), "--out", out, role="viewer")
    assert denied.returncode == 2 and denied.stderr.startswith("error: forbidden:")


def test_csv_files_whose_columns_type_differently_still_make_one_file(fraud_model, history, tmp_path):
    """A kept column empty in one file and text in the next, an id of digits then of letters: CSV types are
    inferred per file; the output takes one type per column. A header-only file scores nothing."""
    import pyarrow.csv as pacsv

    _, _, _, scored_events = history
    features = pq.read_table(scored_events).drop_columns(["score", "decision", "model", "version", "occurred_at"])
    n = features.num_rows // 2
    folder = tmp_path / "csv"
    folder.mkdir()
    first = features.slice(0, n).append_column("note", pa.nulls(n, pa.string()))
    later = features.slice(n).append_column("note", pa.array(["late"] * (features.num_rows - n)))
    pacsv.write_csv(first.slice(0, 0), folder / "0-header-only.csv")
    pacsv.write_csv(first, folder / "a.csv")
    pacsv.write_csv(later, folder / "b.csv")
    out = tmp_path / "scored.parquet"  # not inside the input folder: that is refused (tests/unit/test_cli.py)
    first_run = score(fraud_model, out=out, data=[folder], keep_columns=True)
    table = pq.read_table(out)
    assert table.num_rows == features.num_rows and table.schema.field("note").type == pa.string()
    assert table.column("note").to_pylist()[-1] == "late"
    # a small CSV is scored in this process (it always started Ray: a CSV's rows are not known up front, its
    # lines are counted instead); on Ray Data the same file comes out
    again = score(fraud_model, out=out, data=[folder], keep_columns=True, local_below=0)
    assert (first_run["engine"], again["engine"]) == ("in process", "ray data")
    assert again["rows"] == first_run["rows"] and again["sha256"] == first_run["sha256"]


def test_a_csv_id_of_digits_stays_text(fraud_model, history, tmp_path):
    """"007" and "7" are two payments: inferred as numbers they came out as one id, 7 (ingest read ids as
    text; batch scoring did not), in process and on Ray Data alike."""
    import pyarrow.csv as pacsv

    _, _, _, scored_events = history
    features = pq.read_table(scored_events).drop_columns(["score", "decision", "model", "version", "occurred_at"])
    ids = ["007", "7", "0012"]
    rows = features.slice(0, 3)
    rows = rows.set_column(rows.schema.get_field_index("event_id"), "event_id", pa.array(ids))
    pacsv.write_csv(rows, tmp_path / "ids.csv")
    for local_below in (None, 0):
        out = tmp_path / f"scored-{local_below}.parquet"
        score(fraud_model, out=out, data=[tmp_path / "ids.csv"], **({} if local_below is None else
                                                                     {"local_below": local_below}))
        column = pq.read_table(out).column("event_id")
        assert column.type == pa.string() and sorted(column.to_pylist()) == sorted(ids), local_below


def test_a_model_without_production_is_refused(fraud_model, tmp_path):
    async def second_model():
        from sira.core import db
        from sira.core.auth import Identity
        from sira.registry import models as registry

        pool = await db.create_pool(fraud_model.dsn, fraud_model.settings)
        try:
            async with db.transaction(pool) as conn:
                await registry.ensure_model(conn, "unserved", actor=Identity("t", frozenset({"admin"})).actor())
        finally:
            await pool.close()

    run_sync(second_model())
    with pytest.raises(Conflict) as caught:
        run_sync(run_batch_score(fraud_model.settings, BatchRequest(model="unserved", out=tmp_path / "x.parquet",
                                                                    data=[tmp_path / "in"])))
    assert caught.value.code == "no_production_version" and caught.value.http_status == 409  # as serving says it


@pytest.mark.slow
def test_the_readmes_score_example_runs_verbatim(fraud_model, tmp_path):
    """The README's feature-table example, as a person pastes it (issue #19.8: its old example failed)."""
    from tests.conftest import assert_quiet, readme_block

    lines = readme_block("score-example")
    assert any("--keep-columns" in line for line in lines) and any("--data" in line for line in lines)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIRA_", "RAY_ADDRESS"))}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "SIRA_DATABASE_URL": fraud_model.dsn, "SIRA_WORKSPACE": str(fraud_model.settings.workspace),
                "SIRA_API_KEY": fraud_model.keys["data_scientist"], "SIRA_RAY_NUM_CPUS": "2"})
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_quiet(done.stderr)
    week, rescored = pq.read_table(tmp_path / "week.parquet"), pq.read_table(tmp_path / "rescored.parquet")
    assert week.num_rows == rescored.num_rows > 0
    assert rescored.column("score").to_pylist() == week.column("score").to_pylist()  # the same vectors
    assert "reason_codes" in rescored.column_names
