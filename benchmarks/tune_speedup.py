"""Tuning speed-up: N trials on Ray Tune (2 CPUs) against the same N trials run one after another with plain Optuna.

    python benchmarks/tune_speedup.py [--trials 16] [--rows 100000]

Same data (rows x 30 features, rare positives), same search space and seed,
same trial function (1 LightGBM thread, 150 rounds); ASHA is off so both do the
same work. Ideal speed-up on 2 CPUs: 2.0. MEASURED.md: a naive trainable 0.87,
a careful one 1.61.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import report

from sira.training.trainer import FeatureSpec, Matrix, resolve_params
from sira.training.tuning import METRIC, trial_params, tune_params


def data(rows: int, seed: int) -> Matrix:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 30))
    logit = -6 + 1.5 * X[:, 0] + X[:, 1] * X[:, 2] + 0.8 * (X[:, 3] > 1)
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(float)
    return Matrix(X, y, [FeatureSpec(f"f{i}", "numeric") for i in range(30)])


def sequential_optuna(train: Matrix, valid: Matrix, trials: int, seed: int, rounds: int) -> float:
    import lightgbm as lgb
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        config = {
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 8, 127),
            "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 10, 399),
            "min_sum_hessian_in_leaf": trial.suggest_float("min_sum_hessian_in_leaf", 1e-4, 10.0, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
            "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
            "pos_weight_power": trial.suggest_float("pos_weight_power", 0.0, 1.0),
        }
        params = resolve_params({**trial_params(config, train.y), "num_boost_round": rounds,
                                 "early_stopping_rounds": rounds}, seed=seed, num_threads=1)
        params = {k: v for k, v in params.items() if k not in ("num_boost_round", "early_stopping_rounds")}
        params["metric"] = METRIC
        dtrain = lgb.Dataset(train.X, label=train.y, params={"verbosity": -1})
        booster = lgb.train(params, dtrain, num_boost_round=rounds,
                            valid_sets=[lgb.Dataset(valid.X, label=valid.y, reference=dtrain)])
        return float(booster.best_score["valid_0"][METRIC]) if booster.best_score else 0.0

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    started = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - started


def main(trials: int, rows: int, rounds: int) -> None:
    import ray

    train, valid = data(rows, 1), data(rows // 4, 2)
    sequential_s = sequential_optuna(train, valid, trials, 7, rounds)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        out = tune_params(train, valid, trials=trials, seed=7, storage=Path(tmp),
                          base_params={"num_boost_round": rounds, "early_stopping_rounds": rounds},
                          early_termination=False)
        tune_s = time.perf_counter() - started
    ray.shutdown()
    report("tune_speedup", {
        "trials": trials, "rows": rows, "features": 30, "rounds": rounds,
        "sequential_optuna_s": round(sequential_s, 1), "ray_tune_s": round(tune_s, 1),
        "speedup": round(sequential_s / tune_s, 2), "completed": out["summary"]["completed"],
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=150)
    args = parser.parse_args()
    main(args.trials, args.rows, args.rounds)
