"""Training time per million rows and peak memory: SIRA's trainer against a bare `lightgbm.train`.

    python benchmarks/train_time.py [--rows 1000000]

Same synthetic data (rows x 30 features, ~1% positives), same parameters,
200 rounds without early stopping, 2 threads. SIRA adds the validation
metric, calibration and the model text; each side runs in a fresh process so
peak memory (max RSS) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
from _common import report

ROUNDS = 200


def data(rows: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 30))
    logit = -5.5 + 1.5 * X[:, 0] + X[:, 1] * X[:, 2] + 0.8 * (X[:, 3] > 1)
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(float)
    return X, y


def run(mode: str, rows: int) -> dict:
    from sira.training.trainer import DEFAULT_PARAMS, FeatureSpec, Matrix, resolve_params, train_model

    X, y = data(rows, 1)
    Xv, yv = data(max(rows // 5, 1000), 2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    params = {"num_boost_round": ROUNDS, "early_stopping_rounds": ROUNDS}
    if mode == "sira":
        schema = [FeatureSpec(f"f{i}", "numeric") for i in range(30)]
        train_model(Matrix(X, y, schema), Matrix(Xv, yv, schema), params, seed=1, num_threads=2)
    else:
        import lightgbm as lgb

        full = resolve_params({**DEFAULT_PARAMS, **params}, seed=1, num_threads=2)
        full = {k: v for k, v in full.items() if k not in ("num_boost_round", "early_stopping_rounds")}
        lgb.train(full, lgb.Dataset(X, label=y), num_boost_round=ROUNDS)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mib": peak_mib, "data_mib": before / 1024}


def main(rows: int) -> None:
    results = {}
    for mode in ("bare", "sira"):
        out = subprocess.run([sys.executable, __file__, "--rows", str(rows), "--mode", mode],
                             capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    per_million = {m: results[m]["seconds"] / rows * 1e6 for m in results}
    report("train_time", {
        "rows": rows, "features": 30, "rounds": ROUNDS, "threads": 2,
        "bare_s_per_million_rows": round(per_million["bare"], 1), "sira_s_per_million_rows": round(per_million["sira"], 1),
        "ratio_vs_bare": round(per_million["sira"] / per_million["bare"], 2),
        "bare_peak_mib": round(results["bare"]["peak_mib"]), "sira_peak_mib": round(results["sira"]["peak_mib"]),
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--mode", choices=["bare", "sira"])
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run(args.mode, args.rows)))
    else:
        main(args.rows)
