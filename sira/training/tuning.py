"""Hyperparameter search: Ray Tune + Optuna (seeded TPE) + ASHA over LightGBM.

One CPU per trial, as many concurrent trials as the cluster has CPUs. The
training and validation matrices go to the object store once
(``tune.with_parameters``) and trial actors are reused, so short trials do
not pay for shipping data (see MEASURED.md). Trials report validation average
precision every few boosting rounds so ASHA can stop poor ones early. The
search never sees the test window: the best configuration is retrained and
evaluated once by the caller.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import threading
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sira.core.errors import Interrupted, InvalidInput
from sira.training.trainer import Matrix, check_params, normalize_params, resolve_params

log = logging.getLogger(__name__)

REPORT_EVERY = 10
METRIC = "average_precision"


def search_space(fixed: Collection[str] = ()) -> dict[str, Any]:
    """Ranges that suit rare positives: small-to-medium trees, enough data per leaf, regularisation. Without the
    parameters the caller ``fixed`` (LightGBM's names): the search tunes the others around them."""
    from ray import tune

    space = {
        "learning_rate": tune.loguniform(0.01, 0.2),
        "num_leaves": tune.randint(8, 128),
        "min_data_in_leaf": tune.randint(10, 400),
        "min_sum_hessian_in_leaf": tune.loguniform(1e-4, 10.0),
        "feature_fraction": tune.uniform(0.5, 1.0),
        "bagging_fraction": tune.uniform(0.5, 1.0),
        "lambda_l2": tune.loguniform(1e-3, 30.0),
        # weight of the positive class as a power of the imbalance: 0 = none, 1 = fully balanced
        "pos_weight_power": tune.uniform(0.0, 1.0),
    }
    return {k: v for k, v in space.items() if _searched_name(k) not in fixed}


# The LightGBM parameters the search tunes (search_space's dimensions, by the parameter each sets)
SEARCHED = ("learning_rate", "num_leaves", "min_data_in_leaf", "min_sum_hessian_in_leaf", "feature_fraction",
            "bagging_fraction", "lambda_l2", "scale_pos_weight")


def _searched_name(key: str) -> str:
    """The LightGBM parameter a search dimension sets."""
    return "scale_pos_weight" if key == "pos_weight_power" else key


def check_something_to_search(params: dict[str, Any] | None) -> None:
    """Refuse a search whose parameters (``--params``) fix every one it tunes: checked before anything is created
    or read (it was refused only after the model was created and the training set built)."""
    fixed = normalize_params(params)
    if all(name in fixed for name in SEARCHED):
        raise InvalidInput(f"--params fixes every parameter the search tunes ({', '.join(sorted(SEARCHED))}): "
                           "nothing is left to search; train without --trials")


def trial_params(config: dict[str, Any], y_train: np.ndarray) -> dict[str, Any]:
    """LightGBM parameters of one trial's configuration."""
    params = {k: v for k, v in config.items() if k != "pos_weight_power"}
    if "pos_weight_power" in config:
        pos = float(y_train.sum())
        imbalance = (y_train.size - pos) / max(pos, 1.0)
        params["scale_pos_weight"] = float(min(imbalance ** config["pos_weight_power"], 1000.0))
    for key in ("num_leaves", "min_data_in_leaf"):
        if key in params:
            params[key] = int(params[key])
    return params


def _trial(config: dict[str, Any], *, train_X: np.ndarray, train_y: np.ndarray, valid_X: np.ndarray,
           valid_y: np.ndarray, names: list[str], categorical: list[str], seed: int, rounds: int,
           patience: int, base: dict[str, Any]) -> None:
    """One Ray Tune trial: train with early stopping, report validation AP every REPORT_EVERY rounds. The
    caller's own parameters (``base``) apply as they will to the final model."""
    import lightgbm as lgb
    from ray import tune

    params = resolve_params({**trial_params(config, train_y), **base, "num_boost_round": rounds,
                             "early_stopping_rounds": patience}, seed=seed, num_threads=1)
    lgb_params = {k: v for k, v in params.items() if k not in ("num_boost_round", "early_stopping_rounds")}
    lgb_params["metric"] = METRIC
    dtrain = lgb.Dataset(train_X, label=train_y, feature_name=names, categorical_feature=categorical or "auto",
                         params={"verbosity": -1})
    dvalid = lgb.Dataset(valid_X, label=valid_y, reference=dtrain)

    def report(env: Any) -> None:
        if (env.iteration + 1) % REPORT_EVERY == 0:
            ap = next(r[2] for r in env.evaluation_result_list if r[1] == METRIC)
            tune.report({METRIC: float(ap), "rounds": env.iteration + 1})

    booster = lgb.train(lgb_params, dtrain, num_boost_round=rounds, valid_sets=[dvalid], valid_names=["validation"],
                        callbacks=[lgb.early_stopping(patience, verbose=False), report])
    tune.report({METRIC: float(booster.best_score["validation"][METRIC]),
                 "rounds": int(booster.best_iteration or booster.current_iteration()), "done": True})


def tune_params(
    train: Matrix, valid: Matrix, *, trials: int, seed: int, storage: Path, time_budget_s: float | None = None,
    base_params: dict[str, Any] | None = None, early_termination: bool = True, wait_for_cpus_s: float = 600.0,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Search on Ray Tune; returns the best parameters and a summary of the search. The caller's parameters
    (``base_params``) are fixed: the search tunes only the others, and the summary says which were which. When
    no CPU is free for a trial (Serve replicas hold them), waits ``wait_for_cpus_s`` for one, saying so, then
    fails. Once ``stop`` is set (a signal), the search stops its trials, starts no more and raises Interrupted."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory" on every search
    if trials < 1:
        raise InvalidInput("--trials must be at least 1")
    if not ray.is_initialized():
        raise InvalidInput("tuning needs Ray: start it with sira.core.ray_runtime.init_ray first")
    from sira.core.ray_runtime import wait_for_cpus

    check_params(base_params, train)  # LightGBM's refusals once, here, not in every trial
    check_something_to_search(base_params)
    base = normalize_params(base_params)
    space = search_space(fixed=base)
    wait_for_cpus(1, wait_for_cpus_s, "a tuning trial")
    fixed = sorted(base)
    rounds = int(base.pop("num_boost_round", 1000))
    patience = int(base.pop("early_stopping_rounds", 100))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    max_t = max(1, math.ceil(rounds / REPORT_EVERY))  # in reports: ASHA's grace period may not exceed it
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial, train_X=train.X, train_y=train.y, valid_X=valid.X, valid_y=valid.y, names=train.names,
            categorical=[s.name for s in train.schema if s.kind == "categorical"], seed=seed, rounds=rounds,
            patience=patience, base=base,
        ),
        {"cpu": 1},
    )
    stopper = _stopper(stop) if stop is not None else None
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", search_alg=OptunaSearch(seed=seed), num_samples=trials,
            scheduler=ASHAScheduler(max_t=max_t, grace_period=min(5, max_t), reduction_factor=3)
            if early_termination else None,
            max_concurrent_trials=cpus, reuse_actors=True, time_budget_s=time_budget_s,
        ),
        run_config=tune.RunConfig(storage_path=str(storage), verbose=0, log_to_file=True,
                                  stop=stopper),
    )
    # Tune prints its own tables on stdout even at verbose=0 (the experiment's box, where its files are, a
    # TensorBoard hint into Ray's temporary folder): stdout belongs to the command's result (--json), and
    # none of it is for the person running `sira tune`, so it goes to the debug log.
    # Its logs (a failed trial's traceback, "Failed to fetch metrics" of trials a time budget stopped before
    # their first report) would bury the command's one-line error on stderr: the debug log has them.
    with contextlib.redirect_stdout(io.StringIO()) as printed, _tune_logs_to_debug():
        try:
            results = tuner.fit()
        finally:
            if stopper is not None:
                _STOPS.pop(stopper.key, None)
        if stop is not None and stop.is_set():
            raise Interrupted("the search was stopped before its trials ended")
        errors = [r.error for r in results if r.error is not None]
        finished = [r for r in results if r.error is None and r.metrics and METRIC in r.metrics]
        best = results.get_best_result(metric=METRIC, mode="max", scope="all") if finished else None
    log.debug("Ray Tune printed: %s", printed.getvalue())
    if best is None:
        if errors:
            raise InvalidInput(f"every tuning trial failed: {str(errors[0]).strip().splitlines()[-1]}")
        if time_budget_s is not None:  # stopped by the budget before a first report: none failed
            raise InvalidInput(f"no tuning trial finished within --time-budget {time_budget_s:g} s: give the "
                               "search more time", code="time_budget_exceeded")
        raise InvalidInput("no tuning trial reported a result")
    best_ap = float(best.metrics_dataframe[METRIC].max())
    params = {**trial_params(best.config, train.y), **base, "num_boost_round": rounds,
              "early_stopping_rounds": patience}
    return {
        "params": params,
        "summary": {"trials": len(results), "completed": len(finished), "best_validation_ap": best_ap,
                    "concurrency": cpus, "trial_aps": sorted((float(r.metrics_dataframe[METRIC].max())
                                                              for r in finished), reverse=True),
                    "searched": sorted(_searched_name(k) for k in space), "fixed": fixed},
    }


_STOPS: dict[str, threading.Event] = {}  # the stop of each search under way, by its stopper's key


def _stopper(stop: threading.Event) -> Any:
    """A Tune stopper that stops the whole search once ``stop`` is set. Tune pickles its run config (a checkpoint
    of the search), so the stopper holds a key to ``_STOPS``, and its class is this module's ``StopWhenAsked``."""
    from ray.tune.stopper import Stopper

    if "StopWhenAsked" not in globals():
        class StopWhenAsked(Stopper):
            def __init__(self, key: str) -> None:
                self.key = key

            def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
                return self.stop_all()

            def stop_all(self) -> bool:
                asked = _STOPS.get(self.key)
                return asked is not None and asked.is_set()

        StopWhenAsked.__qualname__ = "StopWhenAsked"
        globals()["StopWhenAsked"] = StopWhenAsked
    key = uuid.uuid4().hex
    _STOPS[key] = stop
    return globals()["StopWhenAsked"](key)


class _ToDebugLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log.debug("Ray Tune: %s", self.format(record))


@contextlib.contextmanager
def _tune_logs_to_debug() -> Iterator[None]:
    """Ray Tune's log records go to this module's debug log instead of Ray's stderr handler."""
    tune_log = logging.getLogger("ray.tune")
    handler = _ToDebugLog()
    saved = tune_log.propagate
    tune_log.addHandler(handler)
    tune_log.propagate = False
    try:
        yield
    finally:
        tune_log.propagate = saved
        tune_log.removeHandler(handler)
