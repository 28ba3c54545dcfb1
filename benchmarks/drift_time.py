"""Drift job time per million rows x features: `sira.monitoring.drift.compare` against a bare histogram of every column.

    python benchmarks/drift_time.py [--rows 1000000] [--features 30] [--no-categorical] [--repeat 3]

The reference is what training stores with a version: ``reference_statistics``
and ``reference_sample`` (5,000 rows) of a seeded 100k-row training matrix and
its scores. The current window is seeded ``--rows`` x ``--features`` (the last
feature categorical with 5 categories unless ``--no-categorical``; 1% missing
values in the numeric ones; a shift planted in two features so that not every
row comes out "ok") and its scores. Measured in the same run, median of
``--repeat``:

- sira: ``compare(reference, X, scores)``: per feature PSI and JS on the
  reference's bins, KS against the reference sample (numeric) or chi-square
  (categorical), then the same for the score, Benjamini-Hochberg, severities.
- sira without KS: the same with no reference sample (what KS costs).
- baseline: ``np.histogram`` of every feature column and the score into 10
  bins over the reference's range, the least work any PSI needs.

Reported: seconds, seconds per (million rows x feature), and sira / baseline.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
from _common import report

from sira.monitoring.drift import Reference, compare
from sira.training.runs import REFERENCE_SAMPLE_ROWS, reference_sample, reference_statistics
from sira.training.trainer import FeatureSpec, Matrix

TRAIN_ROWS = 100_000
CATEGORIES = ("atm", "ecom", "moto", "pos", "recurring")


def schema(features: int, categorical: bool) -> list[FeatureSpec]:
    specs = [FeatureSpec(f"f{j}", "numeric") for j in range(features - int(categorical))]
    return specs + ([FeatureSpec("channel", "categorical", CATEGORIES)] if categorical else [])


def window(rows: int, specs: list[FeatureSpec], seed: int, shift: bool) -> tuple[np.ndarray, np.ndarray]:
    """A seeded matrix in the model's encoding (categorical as codes, NaN for missing) and its scores."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, len(specs)))
    for j, spec in enumerate(specs):
        if spec.kind == "categorical":
            X[:, j] = rng.choice(len(spec.categories), size=rows, p=[0.1, 0.3, 0.05, 0.5, 0.05])
        else:
            X[rng.random(rows) < 0.01, j] = np.nan
    if shift:
        X[:, 0] = X[:, 0] * 1.5 + 0.5
        X[:, 1] += 0.2
    scores = 1 / (1 + np.exp(-(-4 + 1.2 * np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, 2]))))
    return X, scores


def baseline(reference: Reference, X: np.ndarray, scores: np.ndarray) -> None:
    for j, spec in enumerate(reference.schema):
        if spec.kind == "categorical":
            lo, hi = 0, len(spec.categories)
        else:
            edges = reference.statistics["features"][spec.name]["bin_edges"]
            lo, hi = edges[0], edges[-1]
        np.histogram(X[:, j], bins=10, range=(lo, hi))
    np.histogram(scores, bins=10, range=(0.0, 1.0))


def timed(fn, repeat: int) -> float:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main(rows: int, features: int, categorical: bool, repeat: int) -> None:
    specs = schema(features, categorical)
    X_train, train_scores = window(TRAIN_ROWS, specs, seed=1, shift=False)
    train = Matrix(X_train, np.zeros(TRAIN_ROWS), specs)
    sample = np.load(io.BytesIO(reference_sample(train, train_scores, seed=7)), allow_pickle=False)
    reference = Reference(tuple(specs), reference_statistics(train, train_scores), sample)
    no_ks = Reference(reference.schema, reference.statistics, None)
    X, scores = window(rows, specs, seed=2, shift=True)

    rows_out, verdict = compare(reference, X, scores)  # also a warm-up of every code path
    sira_s = timed(lambda: compare(reference, X, scores), repeat)
    no_ks_s = timed(lambda: compare(no_ks, X, scores), repeat)
    base_s = timed(lambda: baseline(reference, X, scores), repeat)
    cells = rows / 1e6 * features
    report("drift_time", {
        "rows": rows, "features": features, "categorical": int(categorical), "reference_rows": TRAIN_ROWS,
        "reference_sample_rows": min(REFERENCE_SAMPLE_ROWS, TRAIN_ROWS), "repeat": repeat,
        "sira_s": round(sira_s, 3), "sira_s_per_million_rows_x_feature": round(sira_s / cells, 4),
        "sira_without_ks_s": round(no_ks_s, 3),
        "histogram_s": round(base_s, 3), "histogram_s_per_million_rows_x_feature": round(base_s / cells, 4),
        "ratio_vs_histogram": round(sira_s / base_s, 1), "ratio_without_ks_vs_histogram": round(no_ks_s / base_s, 1),
        "verdict": verdict, "alerts": sum(r["severity"] == "alert" for r in rows_out),
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--categorical", action=argparse.BooleanOptionalAction, default=True,
                        help="make the last feature categorical (5 categories)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    main(args.rows, args.features, args.categorical, args.repeat)
