"""What `sira drift` and `sira performance` say of their windows: bounds to the minute (a default window ends
1 µs after the newest event, so dates alone named another window than the one measured), and, for a window
that holds nothing, where the data is. A database of its own: the session's model, events and predictions
written here."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from sira.core import db
from sira.core.errors import InvalidInput
from sira.monitoring.drift import DriftRequest, run_drift
from sira.monitoring.performance import PerformanceRequest, run_performance
from tests.conftest import cli_in_process, private_installation, run_sync

UTC = timezone.utc
FIRST = datetime(2026, 9, 20, 9, 17, 23, tzinfo=UTC)
# an event every 3:07:11 from there: none in the minute of a window's bound (a bound shown to the minute reads
# the same events as the bound itself)
EVERY = timedelta(hours=3, minutes=7, seconds=11)
EVENTS = 160
NEWEST = FIRST + EVERY * (EVENTS - 1)
SCORED = datetime(2026, 10, 10, 6, 5, 41, tzinfo=UTC)  # when every prediction was scored


@pytest.fixture(scope="module")
def inst(create_database, fraud_model):
    installation = private_installation(create_database, fraud_model, "sira_monitor_windows")

    async def seed() -> None:
        conn = await db.connect(installation.dsn)
        try:
            model_id = await conn.fetchval("SELECT id FROM sira_models WHERE name = 'fraud'")
            version = await conn.fetchval("SELECT version FROM sira_model_versions WHERE status = 'production'")
            async with conn.transaction():
                for i in range(EVENTS):
                    at = FIRST + EVERY * i
                    await conn.execute("INSERT INTO sira_events (event_id, occurred_at, customer_id, amount) "
                                       "VALUES ($1, $2, $3, 10)", f"ev-{i}", at, f"cus-{i % 7}")
                    await conn.execute(
                        "INSERT INTO sira_predictions (prediction_id, scored_at, model_id, model_name, version, "
                        "event_id, score, decision) VALUES ($1, $2, $3, 'fraud', $4, $5, $6, 'approve')",
                        uuid.uuid4(), SCORED, model_id, version, f"ev-{i}", (i % 10) / 20)
        finally:
            await conn.close()

    run_sync(seed())
    return installation


def sira(inst, monkeypatch, capsys, *args: str):
    env = {"SIRA_DATABASE_URL": inst.dsn, "SIRA_WORKSPACE": str(inst.settings.workspace),
           "SIRA_API_KEY": inst.keys["admin"]}
    return cli_in_process(monkeypatch, capsys, env, *args)


def test_performance_shows_its_windows_to_the_minute_and_how_to_read_them_again(inst, monkeypatch, capsys):
    """The default range ends 1 µs after the newest usable event; the table showed its windows' dates only
    (`2026-09-13..2026-09-20`): `--from 2026-09-13 --to 2026-09-20` read other events. Bounds are shown to the
    minute, and the range's exact bounds with them (cut to its minute, the end leaves the newest event out)."""
    done = sira(inst, monkeypatch, capsys, "performance", "--model", "fraud")
    assert done.returncode == 0, done.stderr
    shown = re.findall(r"(\d{4}-\d\d-\d\dT\d\d:\d\d)\.\.(\d{4}-\d\d-\d\dT\d\d:\d\d)", done.stderr)
    assert len(shown) == 3 and shown[-1][1] == f"{NEWEST:%Y-%m-%dT%H:%M}", done.stderr
    assert all(lo.endswith(f"{NEWEST:%H:%M}") and hi.endswith(f"{NEWEST:%H:%M}") for lo, hi in shown), done.stderr
    counts = [int(n.replace(",", "")) for n in re.findall(r"T\d\d:\d\d\.\.\S+ +│ +([\d,]+) ", done.stderr)]
    assert len(counts) == len(shown) and sum(counts) == EVENTS, done.stderr
    end = NEWEST + timedelta(microseconds=1)
    exact = re.search(r"range exactly --from (\S+) --to (\S+) \(the same rows again\)", done.stderr)
    assert exact and exact[2] == end.isoformat().replace("+00:00", "Z"), done.stderr
    # what the table says, run again: the same windows, the same counts
    again = sira(inst, monkeypatch, capsys, "performance", "--model", "fraud", "--from", exact[1], "--to", exact[2],
                 "--json")
    assert again.returncode == 0, again.stderr
    windows = [w for r in json.loads(again.stdout)["results"] for w in r["windows"]]
    assert [(w["window_start"][:16], w["window_end"][:16], w["n"]) for w in windows] == [
        (lo, hi, n) for (lo, hi), n in zip(shown, counts)]


def test_an_empty_performance_range_says_where_the_predictions_are(inst):
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(run_performance(inst.settings, PerformanceRequest(
            model="fraud", time_to=datetime(2026, 9, 1, tzinfo=UTC))))
    assert caught.value.code == "empty_input"
    assert caught.value.message == (
        "no predictions of fraud between 2026-08-04 00:00 and 2026-09-01 00:00 (event time); the predicted events "
        f"of fraud span {FIRST:%Y-%m-%d %H:%M} .. {NEWEST:%Y-%m-%d %H:%M}")


def test_an_empty_drift_window_says_where_the_data_is(inst, monkeypatch, capsys):
    """`sira drift --from 2027-01-01 --to 2027-01-08` said `insufficient_data: 0 events ...` and no more."""
    window = {"time_from": datetime(2027, 1, 1, tzinfo=UTC), "time_to": datetime(2027, 1, 8, tzinfo=UTC)}
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(run_drift(inst.settings, DriftRequest(model="fraud", **window)))
    assert caught.value.code == "insufficient_data"
    assert caught.value.message == (
        "0 events between 2027-01-01 00:00 and 2027-01-08 00:00 (event time); drift needs at least 100: widen or "
        f"move the window (the stored events span {FIRST:%Y-%m-%d %H:%M} .. {NEWEST:%Y-%m-%d %H:%M} (event time))")
    # --source predictions windows by scoring time (performance by event time): the message says so, and where
    # the version's predictions were scored
    with pytest.raises(InvalidInput) as caught:
        asyncio.run(run_drift(inst.settings, DriftRequest(model="fraud", source="predictions", **window)))
    assert caught.value.code == "insufficient_data"
    message = caught.value.message
    assert message.startswith("0 predictions of fraud v") and "(scoring time, not event time)" in message, message
    assert message.endswith(f"production predictions span {SCORED:%Y-%m-%d %H:%M} .. {SCORED:%Y-%m-%d %H:%M} "
                            "(scoring time))"), message
    done = sira(inst, monkeypatch, capsys, "drift", "--model", "fraud", "--from", "2027-01-01", "--to", "2027-01-08")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: insufficient_data: 0 events between") and "the stored events span" in \
        done.stderr, done.stderr


def test_the_drift_options_say_which_time_each_source_windows_by(monkeypatch, capsys):
    done = cli_in_process(monkeypatch, capsys, {k: v for k, v in os.environ.items() if k.startswith("SIRA_")},
                          "drift", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.replace("│", " ").split())
    assert "by when it scored them" in text and "windows by event time" in text, text
