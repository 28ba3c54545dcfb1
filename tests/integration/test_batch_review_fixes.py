"""`sira score` as an outside review (2026-12-07) found it: personal data copied through by --keep-columns into a
world-readable file, a start of 0001-01-01 failing as `internal`, an audit record that named no input, and empty
inputs refused under three codes."""

from __future__ import annotations

import json
from asyncio import run as run_sync
from datetime import timedelta

from sira.monitoring.batch import BatchRequest, run_batch_score


def score(fraud_model, **kwargs):
    return run_sync(run_batch_score(fraud_model.settings, BatchRequest(model="fraud", **kwargs)))


def _rows(fraud_model, sql: str, *args):
    from tests.conftest import fetch_rows

    return run_sync(fetch_rows(fraud_model.dsn, sql, *args))


def _range(fraud_model):
    return _rows(fraud_model, "SELECT min(occurred_at) AS lo, max(occurred_at) AS hi FROM sira_events")[0].values()


def _cli(fraud_model, monkeypatch, capsys, *args: str):
    from tests.conftest import cli_in_process

    return cli_in_process(monkeypatch, capsys, {
        "SIRA_DATABASE_URL": fraud_model.dsn, "SIRA_WORKSPACE": str(fraud_model.settings.workspace),
        "SIRA_API_KEY": fraud_model.keys["data_scientist"]}, "score", *args)


def test_a_start_before_any_event_is_the_oldest_event(fraud_model, tmp_path, monkeypatch, capsys):
    """--from 0001-01-01 reached PostgreSQL as -infinity: `internal: DatetimeFieldOverflowError`."""
    _, hi = _range(fraud_model)
    end = (hi + timedelta(days=2)).strftime("%Y-%m-%d")
    done = {}
    for start in ("0001-01-01", "0001-01-02"):
        out = tmp_path / f"{start}.parquet"
        ran = _cli(fraud_model, monkeypatch, capsys, "--model", "fraud", "--from", start, "--to", end,
                   "--out", str(out), "--json")
        assert ran.returncode == 0, ran.stderr
        done[start] = json.loads(ran.stdout)
    assert done["0001-01-01"]["rows"] == done["0001-01-02"]["rows"] > 0
    assert done["0001-01-01"]["sha256"] == done["0001-01-02"]["sha256"]
    ran = _cli(fraud_model, monkeypatch, capsys, "--model", "fraud", "--from", "0001-01-01", "--to", "0001-02-01",
               "--out", str(tmp_path / "none.parquet"))
    assert ran.returncode == 2 and ran.stderr.startswith("error: empty_input: no stored events between"), ran.stderr
