"""Batch scoring runs as a person meets them: a wide time range, an output that cannot be written, a run stopped
by a signal or killed, options that do not apply, and what the audit log keeps of each run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from asyncio import run as run_sync
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sira.core.errors import InvalidInput
from sira.monitoring.batch import BatchRequest, run_batch_score


def score(fraud_model, **kwargs):
    return run_sync(run_batch_score(fraud_model.settings, BatchRequest(model="fraud", **kwargs)))


def _rows(fraud_model, sql: str, *args):
    from tests.conftest import fetch_rows

    return run_sync(fetch_rows(fraud_model.dsn, sql, *args))


def _range(fraud_model):
    return _rows(fraud_model, "SELECT min(occurred_at) AS lo, max(occurred_at) AS hi FROM sira_events")[0].values()


def _last_audit(fraud_model) -> dict:
    row = _rows(fraud_model, "SELECT outcome, details::text AS details FROM sira_audit_log "
                             "WHERE action = 'batch.score' ORDER BY id DESC LIMIT 1")[0]
    return {"outcome": row["outcome"], **json.loads(row["details"])}


@pytest.fixture(scope="module")
def features(fraud_model, tmp_path_factory):
    """A feature table of a few thousand stored events (their point-in-time features, as --keep-columns writes
    them), to score as a file."""
    lo, _ = _range(fraud_model)
    out = tmp_path_factory.mktemp("features") / "scored.parquet"
    score(fraud_model, out=out, time_from=lo + timedelta(days=20), time_to=lo + timedelta(days=30), keep_columns=True)
    table = pq.read_table(out).drop_columns(["score", "decision", "model", "version"])
    path = out.with_name("features.parquet")
    pq.write_table(table, path)
    return path


def _cli(fraud_model, monkeypatch, capsys, *args: str):
    from tests.conftest import cli_in_process

    return cli_in_process(monkeypatch, capsys, {
        "SIRA_DATABASE_URL": fraud_model.dsn, "SIRA_WORKSPACE": str(fraud_model.settings.workspace),
        "SIRA_API_KEY": fraud_model.keys["data_scientist"]}, "score", *args)


def test_a_wide_time_range_reads_only_the_days_that_hold_events(fraud_model, tmp_path):
    """--from ten years back around 36 days of events: one read (and one Ray Data block) per calendar day made
    it ~30 ms a day slower for nothing (329 s against 2.6 s for the same output)."""
    from sira.monitoring.batch import resolve_source

    lo, hi = _range(fraud_model)
    days = _rows(fraud_model, "SELECT count(DISTINCT date_trunc('day', occurred_at)) AS n FROM sira_events")[0]["n"]
    wide = BatchRequest(model="fraud", out=tmp_path / "wide.parquet", time_from=lo - timedelta(days=3650),
                        time_to=hi + timedelta(days=3650))
    _, source = run_sync(resolve_source(fraud_model.settings, wide))
    assert len(source.parts) <= days + 1  # the range's days are not midnight to midnight: one more at most
    started = time.perf_counter()
    result = score(fraud_model, out=wide.out, time_from=wide.time_from, time_to=wide.time_to)
    assert time.perf_counter() - started < 120
    narrow = score(fraud_model, out=tmp_path / "narrow.parquet", time_from=lo)
    assert result["rows"] == narrow["rows"] and result["sha256"] == narrow["sha256"]


def test_an_output_that_cannot_be_written_is_refused_before_anything_is_read(fraud_model, features, tmp_path,
                                                                            monkeypatch, capsys):
    """It was found by the writer after the first 65,536 rows had been scored (7 minutes with --explain), as
    `internal` (exit 1)."""
    (tmp_path / "a-file").write_text("not a folder")
    cases = [Path("/proc/scores.parquet"), tmp_path / "a-file" / "scores.parquet"]
    immutable = tmp_path / "immutable"
    immutable.mkdir()
    if subprocess.run(["chattr", "+i", str(immutable)], capture_output=True).returncode == 0:  # root writes 0o500 too
        cases.append(immutable / "scores.parquet")
    try:
        for out in cases:
            done = _cli(fraud_model, monkeypatch, capsys, "--model", "fraud", "--data", str(features), "--explain",
                        "--out", str(out))
            assert done.returncode == 2, (out, done.stderr)
            assert done.stderr.startswith("error: invalid_output:") and "cannot write in" in done.stderr, done.stderr
            assert done.stderr.count("\n") == 1, done.stderr
        made = tmp_path / "new" / "deeper" / "scores.parquet"  # a missing folder is made, as before
        done = _cli(fraud_model, monkeypatch, capsys, "--model", "fraud", "--data", str(features), "--out", str(made))
        assert done.returncode == 0, done.stderr
        assert pq.read_metadata(made).num_rows == pq.read_metadata(features).num_rows
    finally:
        subprocess.run(["chattr", "-i", str(immutable)], capture_output=True)


def test_the_writer_refuses_a_file_it_cannot_create_as_an_output_error(tmp_path):
    """The folder checked up front can change before the writer opens its file (removed, made read-only)."""
    import pyarrow as pa

    from sira.core.errors import InvalidInput
    from sira.core.files import write_atomically

    gone = tmp_path / "gone"
    gone.mkdir()
    out = gone / "x.parquet"
    gone.rmdir()
    gone.write_text("a file now")
    with pytest.raises(InvalidInput) as caught:
        write_atomically(iter([pa.table({"a": [1]})]), out, lambda _b: None)
    assert caught.value.code == "invalid_output"


def _env(fraud_model) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIRA_", "RAY_ADDRESS"))}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "SIRA_DATABASE_URL": fraud_model.dsn, "SIRA_WORKSPACE": str(fraud_model.settings.workspace),
                "SIRA_API_KEY": fraud_model.keys["data_scientist"], "SIRA_RAY_NUM_CPUS": "2"})
    return env


def _partials(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp"))


def _signalled(fraud_model, features: Path, out: Path, sig: int, *,
               as_job: bool = False) -> subprocess.CompletedProcess:
    """`sira score --explain` in a process of its own, sent ``sig`` once it has started writing (``as_job``: as a
    Ray job's driver, which always scores on Ray Data: here on a local Ray of its own, once its actors score)."""
    env = _env(fraud_model)
    if as_job:
        env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = "{}"  # what `ray job submit` sets; the driver then starts no other path
    process = subprocess.Popen([sys.executable, "-m", "sira", "score", "--model", "fraud", "--data", str(features),
                                "--explain", "--out", str(out)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _partials(out.parent, out.name) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if as_job:
        time.sleep(5)  # the actors started and scoring: the writer waits for a block
    assert process.poll() is None, process.communicate()  # still scoring: the signal comes mid-run
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    done.pid = process.pid  # type: ignore[attr-defined]
    return done


@pytest.mark.slow
def test_a_run_stopped_by_a_signal_says_so_and_leaves_nothing_behind(fraud_model, features, tmp_path):
    """SIGTERM (`kill`, `ray job stop`) ended the process at once: its partial file stayed (a new one each
    run), nothing said why, nothing was audited. SIGINT cleaned up but said nothing either."""
    out = tmp_path / "scores.parquet"
    out.write_bytes(b"an earlier output")
    for sig, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        done = _signalled(fraud_model, features, out, sig)
        assert done.returncode == status, done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        said = f"error: interrupted: stopped by {sig.name}; {out} was not written"
        assert errors and errors[-1].startswith(said), done.stderr
        assert "Traceback" not in done.stderr
        assert _partials(tmp_path, out.name) == [] and out.read_bytes() == b"an earlier output"
        record = _last_audit(fraud_model)
        assert record["outcome"] == "failed" and record["error"] == "interrupted", record
        assert record["explain"] is True and record["keep_columns"] is False and "rows" in record


@pytest.mark.slow
def test_a_ray_job_stopped_mid_run_ends_its_pipeline_and_says_so(fraud_model, features, tmp_path):
    """`ray job stop` sends SIGTERM and, 3 s later, SIGKILL. On Ray Data the writer waits for the actors' next
    block: Ray was shut down under it at exit, and its threads logged tracebacks (and started a new Ray)."""
    out = tmp_path / "scores.parquet"
    done = _signalled(fraud_model, features, out, signal.SIGTERM, as_job=True)
    assert done.returncode == 143, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: interrupted: stopped by SIGTERM"), done.stderr
    assert "Traceback" not in done.stderr and "not initialized" not in done.stderr, done.stderr[-3000:]
    assert _partials(tmp_path, out.name) == [] and not out.exists()


@pytest.mark.slow
def test_what_a_killed_run_left_is_removed_by_the_next_run(fraud_model, features, tmp_path):
    """SIGKILL (or a lost node) leaves the partial file; it names its process, so the next run of the same output
    removes it once that process is gone, and leaves a live writer's alone."""
    out = tmp_path / "scores.parquet"
    killed = _signalled(fraud_model, features, out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    left = _partials(tmp_path, out.name)
    assert len(left) == 1 and f".{killed.pid}@" in left[0]
    host = socket.gethostname()
    live = tmp_path / f".{out.name}.{os.getpid()}@{host}.{'a' * 32}.tmp"  # this process: alive
    elsewhere = tmp_path / f".{out.name}.{os.getpid()}@another-host.{'b' * 32}.tmp"  # recent: kept
    old = tmp_path / f".{out.name}.{'c' * 32}.tmp"  # an older release's name, untouched for three days
    for path in (live, elsewhere, old):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 3 * 86_400,) * 2)
    small = tmp_path / "small.parquet"
    pq.write_table(pq.read_table(features).slice(0, 50), small)
    score(fraud_model, out=out, data=[small])
    assert _partials(tmp_path, out.name) == sorted([live.name, elsewhere.name])
    assert pq.read_metadata(out).num_rows == 50


def test_options_of_a_table_are_refused_for_stored_events(fraud_model, tmp_path, monkeypatch, capsys):
    """--id-col and --time-col were silently ignored with --from/--to."""
    lo, _ = _range(fraud_model)
    for option in ("--id-col", "--time-col"):
        done = _cli(fraud_model, monkeypatch, capsys, "--model", "fraud", "--from", lo.strftime("%Y-%m-%d"),
                    option, "x", "--out", str(tmp_path / "o.parquet"))
        assert done.returncode == 2 and done.stderr.startswith("error: invalid_input:"), done.stderr
        assert f"{option}: for a table (--data) only" in done.stderr and not (tmp_path / "o.parquet").exists()


def test_a_table_without_an_id_column_is_scored_with_a_warning(fraud_model, features, tmp_path, caplog):
    table = pq.read_table(features).drop_columns(["event_id"])
    pq.write_table(table, tmp_path / "noid.parquet")
    with caplog.at_level("WARNING"):
        score(fraud_model, out=tmp_path / "o.parquet", data=[tmp_path / "noid.parquet"])
    assert any("noid.parquet: no id column" in r.getMessage() and "--id-col" in r.getMessage() for r in caplog.records)
    with pytest.raises(InvalidInput) as caught:  # a named one that is not there: its columns, not all 60 of them
        score(fraud_model, out=tmp_path / "o.parquet", data=[tmp_path / "noid.parquet"], id_col="nope")
    assert caught.value.code == "missing_columns" and caught.value.message.endswith(
        f"and {table.num_columns - 8} more)")


def test_a_start_after_the_newest_event_names_the_newest(fraud_model, tmp_path, monkeypatch, capsys):
    """It said "the time range is empty (--from must be before --to)", though no --to was given."""
    lo, hi = _range(fraud_model)
    later = (hi + timedelta(days=400)).strftime("%Y-%m-%d")
    out = str(tmp_path / "o.parquet")
    done = _cli(fraud_model, monkeypatch, capsys, "--model", "fraud", "--from", later, "--out", out)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: empty_input: no stored events after {later} 00:00 (the newest stored "
                                  f"event is from {hi:%Y-%m-%d %H:%M})"), done.stderr
    earlier = (lo - timedelta(days=400)).strftime("%Y-%m-%d")
    done = _cli(fraud_model, monkeypatch, capsys, "--model", "fraud", "--to", earlier, "--out", out)
    assert done.returncode == 2 and f"no stored events before {earlier} 00:00" in done.stderr, done.stderr


def test_the_audit_record_says_how_the_run_was_made(fraud_model, tmp_path):
    lo, _ = _range(fraud_model)
    result = score(fraud_model, out=tmp_path / "o.parquet", time_from=lo, time_to=lo + timedelta(hours=12),
                   explain=True, keep_columns=True)
    record = _last_audit(fraud_model)
    assert record["outcome"] == "success" and record["sha256"] == result["sha256"]
    assert (record["explain"], record["keep_columns"], record["version_status"]) == (True, True, "production")
    assert record["rows"] == result["rows"] > 0
