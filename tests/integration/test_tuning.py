"""Ray Tune + Optuna: 8 trials, 2 at a time, and the best validation AP wins."""

import numpy as np

from sira.training.tuning import search_space, trial_params, tune_params


def test_tuning_picks_the_trial_with_the_best_validation_ap(ray_session, tmp_path, synthetic_matrix):
    train, valid = synthetic_matrix(6000, 1), synthetic_matrix(2000, 2)
    out = tune_params(train, valid, trials=8, seed=3, storage=tmp_path,
                      base_params={"num_boost_round": 120, "early_stopping_rounds": 30})
    summary = out["summary"]
    assert summary["trials"] == 8 and summary["completed"] == 8 and summary["concurrency"] == 2
    assert summary["best_validation_ap"] == max(summary["trial_aps"])
    assert out["params"]["num_boost_round"] == 120 and out["params"]["scale_pos_weight"] >= 1.0
    assert set(search_space()) - {"pos_weight_power"} <= set(out["params"])


def test_trial_params_map_the_weight_power():
    y = np.array([1.0] + [0.0] * 99)
    base = {"num_leaves": 31.0, "min_data_in_leaf": 20.0, "learning_rate": 0.1}
    assert trial_params({**base, "pos_weight_power": 0.0}, y)["scale_pos_weight"] == 1.0
    assert trial_params({**base, "pos_weight_power": 1.0}, y)["scale_pos_weight"] == 99.0
    assert isinstance(trial_params({**base, "pos_weight_power": 0.5}, y)["num_leaves"], int)


def test_the_trials_train_with_the_callers_own_parameters(ray_session, tmp_path, synthetic_matrix):
    """Parameters the caller fixes (here a coarse max_bin) went into the final model but not into the trials,
    so the search chose settings under other conditions than the model it picked them for. The same seeded
    search with and without them now finds different validation APs."""
    train, valid = synthetic_matrix(4000, 1), synthetic_matrix(1500, 2)
    runs = [tune_params(train, valid, trials=2, seed=3, storage=tmp_path / name, early_termination=False,
                        base_params={"num_boost_round": 40, "early_stopping_rounds": 10, **extra})
            for name, extra in (("plain", {}), ("coarse", {"max_bin": 3, "min_data_in_bin": 1}))]
    assert runs[0]["summary"]["trial_aps"] != runs[1]["summary"]["trial_aps"]
    assert runs[1]["params"]["max_bin"] == 3


def test_no_free_cpu_for_a_trial_is_said_and_bounded_not_a_silent_hang(ray_session, tmp_path, synthetic_matrix,
                                                                         caplog):
    """Serve replicas (here an actor) hold the CPUs: Ray Tune would wait forever without a word. The search
    says it waits, fails after the bound with a one-line reason, and goes on when a CPU comes free in time."""
    import threading

    import pytest
    import ray

    from sira.core.errors import ServiceUnavailable
    from tests.conftest import cpus_held

    train, valid = synthetic_matrix(1000, 1), synthetic_matrix(500, 2)
    with cpus_held(leaving=0.5) as holder:  # half a CPU: no trial fits
        with pytest.raises(ServiceUnavailable, match="no CPU free for a tuning trial after 2 s"):
            tune_params(train, valid, trials=1, seed=3, storage=tmp_path / "held", wait_for_cpus_s=2,
                        base_params={"num_boost_round": 60, "early_stopping_rounds": 5})
        assert "waiting up to 2 s for CPUs" in caplog.text
        freed = threading.Timer(1.0, ray.kill, args=(holder,))  # a replica goes away while the search waits
        freed.start()
        out = tune_params(train, valid, trials=1, seed=3, storage=tmp_path / "freed", wait_for_cpus_s=120,
                          base_params={"num_boost_round": 60, "early_stopping_rounds": 5})
        freed.join()
        assert out["summary"]["completed"] == 1


async def test_the_callers_parameters_are_fixed_and_the_search_tunes_the_others(ray_session, clean_db, settings,
                                                                            tmp_path):
    """`sira tune --params` with num_leaves 4 and learning_rate 0.3: the run and the manifest said 92 and 0.06,
    the search's values, without a word. The caller's keys (under any alias) are fixed, the search space loses
    them (a fixed scale_pos_weight takes the weight's power with it), and the run says which were searched
    and which fixed."""
    import pandas as pd

    from sira.core.artifacts import ArtifactRef, load_manifest
    from sira.training.runs import TrainRequest, run_training

    rng = np.random.default_rng(0)
    n = 3000
    table = pd.DataFrame({"ts": pd.date_range("2026-01-01", periods=n, freq="10min"),
                          "amount": rng.lognormal(3, 1, n), "night": (rng.random(n) < 0.2).astype(int)})
    table["is_fraud"] = (rng.random(n) < 1 / (1 + np.exp(4 - 1.5 * (table.amount > 60) - 1.5 * table.night))).astype(int)
    table.to_parquet(tmp_path / "t.parquet", index=False)
    result = await run_training(settings, TrainRequest(
        model="fixed", data=[tmp_path / "t.parquet"], label="is_fraud", time_col="ts", trials=2, num_threads=1,
        params={"num_boost_round": 60, "early_stopping_rounds": 10, "num_leaves": 4, "eta": 0.3,
                "scale_pos_weight": 2.5}))
    run = await clean_db.fetchval("SELECT params FROM sira_training_runs WHERE run_id = $1", result["run_id"])
    manifest = load_manifest(settings, ArtifactRef(result["artifact"]["uri"], result["artifact"]["sha256"]))
    for params in (run, manifest["params"]):
        assert (params["num_leaves"], params["learning_rate"], params["scale_pos_weight"]) == (4, 0.3, 2.5)
    fixed = ["early_stopping_rounds", "learning_rate", "num_boost_round", "num_leaves", "scale_pos_weight"]
    searched = ["bagging_fraction", "feature_fraction", "lambda_l2", "min_data_in_leaf", "min_sum_hessian_in_leaf"]
    assert (result["search"]["completed"], result["search"]["fixed"], result["search"]["searched"]) == (
        2, fixed, searched)
    assert run["search"] == {"fixed": fixed, "searched": searched}


def test_a_search_has_something_left_to_search(ray_session, tmp_path, synthetic_matrix):
    import pytest

    from sira.core.errors import InvalidInput

    assert set(search_space(fixed={"scale_pos_weight", "num_leaves"})) == set(search_space()) - {
        "pos_weight_power", "num_leaves"}
    train, valid = synthetic_matrix(1000, 1), synthetic_matrix(500, 2)
    everything = {"learning_rate": 0.1, "num_leaves": 8, "min_data_in_leaf": 20, "min_sum_hessian_in_leaf": 1e-3,
                  "feature_fraction": 0.9, "bagging_fraction": 0.9, "lambda_l2": 1.0, "scale_pos_weight": 3.0}
    with pytest.raises(InvalidInput, match="--params fixes every parameter the search tunes"):
        tune_params(train, valid, trials=2, seed=3, storage=tmp_path, base_params=everything)


def test_bad_parameters_are_refused_before_any_trial(ray_session, tmp_path, synthetic_matrix, capfd):
    """`max_bin: -5` failed in every trial: Ray Tune's tracebacks (a hundred lines) on stderr, then the error."""
    import pytest

    from sira.core.errors import InvalidInput

    train, valid = synthetic_matrix(1000, 1), synthetic_matrix(500, 2)
    capfd.readouterr()
    with pytest.raises(InvalidInput, match="LightGBM refuses the parameters: max_bin must be > 1"):
        tune_params(train, valid, trials=2, seed=3, storage=tmp_path, base_params={"max_bin": -5})
    assert capfd.readouterr().err == ""


def test_a_search_with_fewer_rounds_than_asha_waits_for(ray_session, tmp_path, synthetic_matrix):
    """Under 50 rounds ASHA's grace period (5 reports) exceeded its last milestone: `internal: AssertionError:
    grace_period must be <= max_t!`."""
    train, valid = synthetic_matrix(1000, 1), synthetic_matrix(500, 2)
    out = tune_params(train, valid, trials=1, seed=3, storage=tmp_path,
                      base_params={"num_boost_round": 20, "early_stopping_rounds": 5})
    assert out["summary"]["completed"] == 1


def test_a_time_budget_no_trial_finishes_in_is_said_as_such(ray_session, tmp_path, synthetic_matrix, caplog):
    """Trials stopped by --time-budget before their first report were reported as "every tuning trial failed",
    after a multi-line Ray warning ("Failed to fetch metrics") on stderr: no trial had failed. Ray Tune's
    records now go to the debug log, not to the `ray` logger whose handler writes on stderr."""
    import logging

    import pytest

    from sira.core.errors import InvalidInput

    train, valid = synthetic_matrix(1000, 1), synthetic_matrix(500, 2)
    with pytest.raises(InvalidInput, match="no tuning trial finished within --time-budget 0.5 s") as caught:
        tune_params(train, valid, trials=3, seed=3, storage=tmp_path, time_budget_s=0.5,
                    base_params={"num_boost_round": 60, "early_stopping_rounds": 5})
    assert caught.value.code == "time_budget_exceeded"
    assert [r.getMessage() for r in caplog.records if r.name.startswith("ray") and r.levelno >= logging.WARNING] == []
