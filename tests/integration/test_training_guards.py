"""What a training run refuses, or says, before it registers a version whose metrics mean little: evaluation
windows without negatives or with a handful of rows, a test window far richer in positives, a model setting
given for a model that exists, a search with nothing to search; the gap a --label-delay asks for.

The history is `load_payments`'s (tests/integration/test_training_sets.py): 20 days of hourly payments, every
tenth a fraud whose chargeback is known two days later, written straight into the tables. Runs train on feature
set v2 (folded from the log in this process: no Ray).
"""

from __future__ import annotations

import json
from datetime import timedelta

import asyncpg
import pytest

from sira.core.auth import Identity
from sira.core.errors import Conflict, InvalidInput
from sira.registry import models as registry
from sira.training.runs import TrainRequest, run_training
from tests.integration.test_training_sets import START, load_payments

CUTOFF = START + timedelta(days=40)  # every event mature (label maturity 5 days)
TRAIN = {"train_from": START, "train_to": START + timedelta(days=14)}
TEST = {"test_from": START + timedelta(days=15), "test_to": START + timedelta(days=20)}
FAST = {"num_boost_round": 30, "early_stopping_rounds": 10, "min_data_in_leaf": 5}
ADMIN = Identity("t-admin", frozenset({"admin"}))


def request(model: str, **fields) -> TrainRequest:
    return TrainRequest(**{"model": model, "label_maturity_days": 5, "as_of": CUTOFF, "num_threads": 1,
                           "params": FAST, **TRAIN, **TEST, **fields})


async def label(pool, lo, hi, value: bool, every: int = 1) -> int:
    """A review's word on every ``every``-th event of [lo, hi), known an hour after it; how many."""
    done = await pool.execute(
        """INSERT INTO sira_feedback (event_id, label, known_at, source)
           SELECT event_id, $3, occurred_at + interval '1 hour', 'review'
             FROM (SELECT event_id, occurred_at, row_number() OVER (ORDER BY occurred_at) AS n FROM sira_events
                    WHERE occurred_at >= $1 AND occurred_at < $2) e
            WHERE n % $4 = 0""", lo, hi, value, every)
    return int(done.split()[-1])


async def nothing_created(pool) -> bool:
    return (await pool.fetchval("SELECT count(*) FROM sira_models"), await pool.fetchval(
        "SELECT count(*) FROM sira_training_runs")) == (0, 0)


@pytest.mark.parametrize("hours, message", [
    (6, "the test window 2026-09-16..2026-09-16 06:00 holds 6 usable events: too few to evaluate on (at least 30)"),
    (1, "the test window 2026-09-16 03:00..2026-09-16 04:00 has no negative labels: its 1 usable events are all "
        "positive"),
])
async def test_a_test_window_of_a_few_rows_or_no_negatives_is_refused_before_anything_is_created(clean_db, settings,
                                                                                                 hours, message):
    """`--test-from 2026-09-25T01:01:00 --test-to 2026-09-25T01:05:00` registered a version tested on 2 frauds:
    AP 1.0, ROC AUC and recall at 1% FPR NaN (and --json printed NaN)."""
    await load_payments(clean_db)
    start = START + timedelta(days=15, hours=3 if hours == 1 else 0)  # hour 3 of a day holds a fraud
    for dry_run in (True, False):
        with pytest.raises(InvalidInput) as caught:
            await run_training(settings, request("tiny", test_from=start, test_to=start + timedelta(hours=hours),
                                                 dry_run=dry_run))
        assert caught.value.code == "empty_window" and caught.value.message.startswith(message), caught.value.message
    assert await nothing_created(clean_db)


async def test_a_validation_window_without_negatives_is_refused_before_anything_is_created(clean_db, settings):
    """A run whose validation window (the newest rows of the training window) held positives only was refused
    by the trainer after its model and a failed run had been created. The newest labelled events of the
    training window are read first (newest first, until a negative turns up)."""
    await load_payments(clean_db)
    tail = START + timedelta(days=11, hours=12)
    assert await label(clean_db, tail, TRAIN["train_to"], True) == 60  # the newest 60 training events: frauds
    for dry_run in (True, False):
        with pytest.raises(InvalidInput, match=r"the validation window \(the newest 50 usable events of the "
                                               r"training window, up to 2026-09-15\) has no negative labels") as caught:
            await run_training(settings, request("halfmodel", dry_run=dry_run))
        assert caught.value.code == "empty_window"
    assert await nothing_created(clean_db)
    # one legitimate payment among them is enough
    await clean_db.execute("""UPDATE sira_feedback SET label = false WHERE source = 'review' AND event_id =
                              (SELECT event_id FROM sira_events WHERE occurred_at = $1)""",
                           TRAIN["train_to"] - timedelta(hours=5))
    assert (await run_training(settings, request("halfmodel", dry_run=True)))["dry_run"]


async def test_a_test_window_far_richer_in_positives_is_said_and_recorded(clean_db, settings):
    """A test window of young events (labelled only when a chargeback came: 118 of 131 positive) registered
    test AP 0.9975 without a word. The run says so: in its answer, its row's fingerprint and the manifest."""
    from sira.core.artifacts import ArtifactRef, load_artifact

    await load_payments(clean_db)
    await label(clean_db, TEST["test_from"], TEST["test_to"], True, every=3)  # 40 more frauds: 48 of 120
    plan = await run_training(settings, request("rich", dry_run=True))
    assert plan["warnings"] == ["the test window's positive rate (40.0%: 48 of 120) is 4 times the training "
                                "window's (10.1%): its metrics flatter the model"], plan["warnings"]
    said = []
    done = await run_training(settings, request("rich"), progress=said.append)
    assert done["warnings"] == plan["warnings"]
    assert f"warning: {done['warnings'][0]}" in said
    run = await clean_db.fetchrow("SELECT dataset_fingerprint FROM sira_training_runs WHERE run_id = $1::uuid",
                                  done["run_id"])
    assert run["dataset_fingerprint"]["warnings"] == done["warnings"]
    manifest = load_artifact(settings, ArtifactRef(done["artifact"]["uri"], done["artifact"]["sha256"])).manifest
    assert manifest["dataset"]["warnings"] == done["warnings"]
    # the training window's own rate: nothing to say
    plain = await run_training(settings, request("rich", train_to=START + timedelta(days=13),
                                                 test_from=START + timedelta(days=13), test_to=TEST["test_from"],
                                                 dry_run=True))
    assert plain["warnings"] == []


async def test_a_model_setting_for_an_existing_model_that_differs_is_refused(clean_db, settings):
    """`sira train --model halfmodel --label-maturity 10 --dry-run` on a model of 30 days said "label maturity
    30 days" and nothing more: the option applies to a model the run creates. One that differs is refused,
    naming `sira models update`; the model's own value is fine."""
    await load_payments(clean_db)
    async with clean_db.acquire() as conn:
        await registry.create_model(conn, ADMIN, "halfmodel", model_type="fraud_detection", label_maturity_days=30)
    for dry_run in (True, False):
        with pytest.raises(Conflict, match=r"model halfmodel exists, with a label maturity of 30 days: --label-maturity "
                                           r"sets it for a model this run creates; change the model's with `sira "
                                           r"models update halfmodel --label-maturity 10`") as caught:
            await run_training(settings, request("halfmodel", label_maturity_days=10, dry_run=dry_run))
        assert caught.value.code == "model_setting"
        with pytest.raises(Conflict, match="model halfmodel exists, as a fraud_detection model: --type"):
            await run_training(settings, request("halfmodel", label_maturity_days=None, model_type="churn",
                                                 dry_run=dry_run))
    assert await clean_db.fetchval("SELECT count(*) FROM sira_training_runs") == 0
    plan = await run_training(settings, request("halfmodel", label_maturity_days=30, model_type="fraud_detection",
                                                as_of=START + timedelta(days=60), dry_run=True))
    assert plan["windows"]["maturity_days"] == 30


async def test_a_search_with_nothing_to_search_is_refused_before_anything_is_created(clean_db, settings):
    """`sira tune --params p_all.yaml` (every searched parameter fixed) was refused only after the model had been
    created and the training set built (~9 s)."""
    await load_payments(clean_db)
    everything = {"learning_rate": 0.1, "num_leaves": 8, "min_data_in_leaf": 20, "min_sum_hessian_in_leaf": 1e-3,
                  "feature_fraction": 0.9, "bagging_fraction": 0.9, "lambda_l2": 1.0, "scale_pos_weight": 3.0}
    with pytest.raises(InvalidInput, match="--params fixes every parameter the search tunes"):
        await run_training(settings, request("tunefixed", trials=2, params=everything))
    assert await nothing_created(clean_db)


def test_an_explicit_label_delay_is_the_gap_and_the_dry_run_says_what_set_it(clean_db, settings, pg_dsn, tmp_path,
                                                                            monkeypatch, capsys):
    """--label-delay 7, 10 and 20 all gave a gap of 3 days 17:59 (an eighth of the span), silently, while
    windows.md says explicit values win. The default gap is still capped; a given one is kept, or refused when
    it leaves no training window. The dry run shows the gap and what set it, and calls its cut-off "now"
    without --as-of (it said "(--as-of)" either way)."""
    from tests.conftest import cli_in_process, fetch_rows, run_sync

    async def load() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await load_payments(conn)
        finally:
            await conn.close()

    run_sync(load())
    env = {"SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(tmp_path)}

    def plan(*args: str) -> dict:
        done = cli_in_process(monkeypatch, capsys, env, "train", "--model", "gaps", "--label-maturity", "5",
                              "--dry-run", "--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    default = plan()
    span = 20 - 1 / 24  # the first event to the newest mature one
    assert default["gap"] == {"days": pytest.approx(span / 8, abs=1e-3),
                              "set_by": "default: 7 days, at most an eighth of the span"}
    for days in ("1", "3", "5"):
        given = plan("--label-delay", days)
        assert given["gap"] == {"days": float(days), "set_by": f"--label-delay {days}"}
        assert given["windows"]["test_from"] == default["windows"]["test_from"]
    assert plan("--train-to", "2026-09-10")["gap"]["set_by"] == "--train-to"
    refused = cli_in_process(monkeypatch, capsys, env, "train", "--model", "gaps", "--label-maturity", "5",
                             "--dry-run", "--label-delay", "16")
    assert refused.returncode == 2 and refused.stderr.startswith(
        "error: empty_window: --label-delay 16 days leaves no training window"), refused.stderr
    both = cli_in_process(monkeypatch, capsys, env, "train", "--model", "gaps", "--label-maturity", "5", "--dry-run",
                          "--label-delay", "2", "--train-to", "2026-09-10")
    assert both.returncode == 2 and "error: invalid_option: --label-delay sets the gap" in both.stderr
    table = cli_in_process(monkeypatch, capsys, env, "train", "--model", "gaps", "--label-maturity", "5",
                           "--dry-run", "--label-delay", "3")
    text = " ".join(table.stderr.split())
    assert "gap │ 3 days (--label-delay 3)" in text and "(now: no --as-of)" in text and "(--as-of)" not in text, text
    dated = cli_in_process(monkeypatch, capsys, env, "train", "--model", "gaps", "--label-maturity", "5",
                           "--dry-run", "--as-of", "2026-10-11")
    assert "2026-10-11T00:00 (--as-of)" in " ".join(dated.stderr.split()), dated.stderr
    assert run_sync(fetch_rows(pg_dsn, "SELECT name FROM sira_models")) == []


async def test_more_test_days_than_the_data_holds_is_said_as_such(clean_db, settings):
    """`sira train --dry-run --test-days 40` on 35 days of data said "the windows are out of order (train
    2026-09-01 00:01..2026-08-22 15:00, ...)": not that the test window is longer than the data (training review)."""
    await load_payments(clean_db)
    with pytest.raises(InvalidInput) as caught:
        await run_training(settings, TrainRequest(model="longtest", label_maturity_days=5, as_of=CUTOFF,
                                                  num_threads=1, test_days=400, dry_run=True))
    assert caught.value.code == "empty_window" and caught.value.details["field"] == "test_days"
    assert caught.value.message.startswith("--test-days 400 leaves no training window: the usable events span ")
