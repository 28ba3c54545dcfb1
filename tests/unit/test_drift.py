"""Drift of a window against a training reference: quiet on the same distribution, loud on a planted shift."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from sira.monitoring.drift import SCORE, Reference, compare
from sira.training.runs import reference_sample, reference_statistics
from sira.training.trainer import Matrix


def _reference(synthetic_matrix, n: int = 20_000, seed: int = 1) -> tuple[Reference, Matrix, np.ndarray]:
    train = synthetic_matrix(n, seed)
    scores = 1 / (1 + np.exp(-(train.X[:, 0] / 40 - 2)))  # any deterministic score of the rows
    sample = np.load(io.BytesIO(reference_sample(train, scores, seed=7)), allow_pickle=False)
    return Reference(tuple(train.schema), reference_statistics(train, scores), sample), train, scores


def _score(X: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(np.nan_to_num(X[:, 0]) / 40 - 2)))


def test_a_sample_of_the_same_distribution_raises_no_alert(synthetic_matrix):
    reference, _, _ = _reference(synthetic_matrix)
    for seed in (2, 3, 4):
        current = synthetic_matrix(5_000, seed)
        rows, verdict = compare(reference, current.X, _score(current.X))
        assert verdict != "alert", rows
        assert all(r["severity"] != "alert" for r in rows)
        assert all(r["psi"] < 0.1 for r in rows)
        assert {r["feature"] for r in rows} == {"amount", "night", "channel", SCORE}


def test_a_planted_drift_is_detected_and_sorted_first(synthetic_matrix):
    reference, _, _ = _reference(synthetic_matrix)
    current = synthetic_matrix(5_000, 5)
    X = current.X.copy()
    X[:, 0] *= 3  # amounts triple
    X[:, 2] = np.where(np.random.default_rng(0).random(len(X)) < 0.7, 1.0, X[:, 2])  # mostly e-commerce now
    rows, verdict = compare(reference, X, _score(X))
    by = {r["feature"]: r for r in rows}
    assert verdict == "alert"
    assert by["amount"]["severity"] == "alert" and by["amount"]["psi"] > 0.25 and by["amount"]["ks_statistic"] > 0.3
    assert by["channel"]["severity"] == "alert" and by["channel"]["chi2_statistic"] > 100
    assert by[SCORE]["severity"] == "alert"
    assert by["night"]["severity"] == "ok"
    assert [r["severity"] for r in rows] == sorted((r["severity"] for r in rows),
                                                   key=["alert", "warn", "ok"].index)
    # p-values are adjusted across the run (Benjamini-Hochberg never lowers one)
    assert all(r["p_value_adjusted"] >= r["p_value"] for r in rows if r["p_value"] is not None)


def test_a_feature_that_stops_arriving_is_drift(synthetic_matrix):
    reference, _, _ = _reference(synthetic_matrix)
    current = synthetic_matrix(5_000, 6)
    X = current.X.copy()
    X[:, 1] = np.nan  # the pipeline lost "night"
    rows, _ = compare(reference, X, _score(X))
    night = next(r for r in rows if r["feature"] == "night")
    assert night["severity"] == "alert" and night["details"]["missing_rate_current"] == 1.0


def test_a_category_training_never_saw_is_not_a_missing_value(synthetic_matrix):
    """A channel renamed upstream ("ecom" now "ECOM") leaves the model's vocabulary: it was counted as missing,
    read as a feature that stopped arriving, and a retrain's data check blocked the challenger for it. It is
    drift in a bin of its own; absent values stay missing."""
    reference, _, _ = _reference(synthetic_matrix)
    current = synthetic_matrix(5_000, 9)
    X = current.X.copy()
    renamed = X[:, 2] == 1.0
    X[renamed, 2] = np.nan  # unencodable: a category outside the vocabulary
    rows, _ = compare(reference, X, _score(X), nulls={"channel": 0})
    channel = next(r for r in rows if r["feature"] == "channel")
    assert channel["details"]["missing_rate_current"] == 0.0
    assert channel["details"]["unseen_rate_current"] == renamed.mean() > 0.2 and channel["severity"] == "alert"
    X[:100, 2] = np.nan  # and some absent (null) too: those are missing
    rows, _ = compare(reference, X, _score(X), nulls={"channel": int((~renamed[:100]).sum())})
    channel = next(r for r in rows if r["feature"] == "channel")
    assert channel["details"]["missing_rate_current"] == (~renamed[:100]).sum() / len(X)


def test_without_a_reference_sample_ks_is_left_out(synthetic_matrix):
    reference, _, _ = _reference(synthetic_matrix)
    bare = Reference(reference.schema, reference.statistics, None)
    current = synthetic_matrix(2_000, 8)
    rows, _ = compare(bare, current.X, _score(current.X))
    assert all(r["ks_statistic"] is None for r in rows)
    assert all(r["psi"] is not None for r in rows)


def test_the_reference_sample_is_reproducible(synthetic_matrix):
    train = synthetic_matrix(9_000, 1)
    scores = np.linspace(0, 1, 9_000)
    assert reference_sample(train, scores, 3) == reference_sample(train, scores, 3)
    array = np.load(io.BytesIO(reference_sample(train, scores, 3)), allow_pickle=False)
    assert array.shape == (5_000, 4) and np.all(np.diff(array[:, -1]) > 0)  # rows kept in training order


def test_a_staging_versions_predictions_are_its_shadow_scores():
    from sira.monitoring.drift import served_as

    assert served_as({"status": "staging"}) == "shadow"
    assert served_as({"status": "production"}) == served_as({"status": "archived"}) == "production"


def test_a_category_always_missing_in_training_that_now_arrives_is_drift_not_a_crash(synthetic_matrix):
    """A column filled only in later rows: a time split leaves it all missing in the training split, so its
    reference frequencies are empty. The drift run raised 'reference_proportions sums to zero' and stored
    nothing; the column's arrival is now an alert (PSI on the missing bin), with no chi-square."""
    train = synthetic_matrix(5_000, 1)
    X = train.X.copy()
    X[:, 2] = np.nan  # "channel" never filled in training
    blank = Matrix(X, train.y, train.schema)
    scores = _score(X)
    reference = Reference(tuple(blank.schema), reference_statistics(blank, scores), None)
    current = synthetic_matrix(2_000, 9)
    rows, verdict = compare(reference, current.X, _score(current.X))
    channel = next(r for r in rows if r["feature"] == "channel")
    assert channel["chi2_statistic"] is None and channel["severity"] == "alert" and verdict == "alert"


def test_infinite_training_values_make_no_bin_edge(synthetic_matrix):
    """The reference's quantiles took them in: its top edge and the mean were infinite (null in the manifest)."""
    train = synthetic_matrix(5_000, 1)
    X = train.X.copy()
    X[::50, 0] = np.inf
    stats = reference_statistics(Matrix(X, train.y, train.schema), _score(train.X))["features"]["amount"]
    assert np.isfinite(stats["bin_edges"]).all() and np.isfinite([stats["mean"], stats["std"]]).all()
    assert stats["missing_rate"] == pytest.approx(0.02) and sum(stats["histogram"]) == 4_900


def test_a_stored_reference_with_a_null_bin_edge_skips_its_feature_with_the_reason(synthetic_matrix):
    """A version trained before infinite values were read as missing stored its top edge as null: every drift
    run on it failed with `internal: ValueError: edges must be finite`. That feature is left out, saying why."""
    reference, _, _ = _reference(synthetic_matrix)
    statistics = json.loads(json.dumps(reference.statistics))
    statistics["features"]["amount"].update(bin_edges=[*statistics["features"]["amount"]["bin_edges"][:-1], None],
                                            mean=None, std=None)
    old = Reference(reference.schema, statistics, reference.sample)
    current = synthetic_matrix(2_000, 8)
    rows, verdict = compare(old, current.X, _score(current.X))
    assert "amount" not in {r["feature"] for r in rows} and {"night", "channel", SCORE} <= {r["feature"] for r in rows}
    assert "not finite numbers" in old.skipped["amount"] and list(old.skipped) == ["amount"]
