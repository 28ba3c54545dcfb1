"""Drift of a window against a training reference: quiet on the same distribution, loud on a planted shift."""

from __future__ import annotations

import io
import json
import math

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


def _two_bin_psi(ref_ones: float, cur_ones: float) -> float:
    """PSI of a 0/1 feature by hand: sum over its two values of (current - reference) * ln(current / reference)."""
    return sum((c - r) * math.log(c / r) for r, c in ((1 - ref_ones, 1 - cur_ones), (ref_ones, cur_ones)))


def test_a_yes_no_feature_moving_is_measured_on_a_bin_per_value(synthetic_matrix):
    """Quantile edges with the repeats dropped made "night" (0/1, 20% ones) one closed bin [0, 1]: its PSI and JS
    were 0 however often it was 1 later. Each of its values is a bin: PSI is the two-bin PSI by hand."""
    reference, train, _ = _reference(synthetic_matrix)
    night = reference.statistics["features"]["night"]
    assert night["bin_edges"] == [0.0, 0.5, 1.0] and sum(night["histogram"]) == 20_000
    current = synthetic_matrix(5_000, 11)
    X = current.X.copy()
    X[:, 1] = (np.random.default_rng(3).random(len(X)) < 0.6).astype(float)  # 20% -> 60% at night
    rows, _ = compare(reference, X, _score(X))
    row = next(r for r in rows if r["feature"] == "night")
    by_hand = _two_bin_psi(train.X[:, 1].mean(), X[:, 1].mean())
    assert by_hand > 0.5 and row["psi"] == pytest.approx(by_hand, rel=1e-9)  # the missing bin is empty on both sides
    assert row["js_divergence"] > 0.1 and row["severity"] == "alert" and "few_bins" not in row["details"]


def test_a_mostly_zero_feature_keeps_its_zeros_in_a_bin_of_their_own(synthetic_matrix):
    """95% zeros: every quantile up to the 90th was 0, so the edges were [0, max], one bin with all of it."""
    train = synthetic_matrix(20_000, 1)
    X = train.X.copy()
    rng = np.random.default_rng(4)
    X[:, 0] = np.where(rng.random(len(X)) < 0.95, 0.0, X[:, 0])
    reference = Reference(tuple(train.schema), reference_statistics(Matrix(X, train.y, train.schema), _score(X)), None)
    amount = reference.statistics["features"]["amount"]
    assert amount["bin_edges"][0] == 0.0 and 0 < amount["bin_edges"][1] < X[X[:, 0] > 0, 0].min()
    assert amount["histogram"][0] == (X[:, 0] == 0).sum()
    current = X[:5_000].copy()
    current[:, 0] = np.where(rng.random(5_000) < 0.7, 0.0, synthetic_matrix(5_000, 12).X[:, 0])  # 5% -> 30% non-zero
    row = next(r for r in compare(reference, current, _score(current))[0] if r["feature"] == "amount")
    assert row["psi"] > 0.25 and row["severity"] == "alert"


def test_an_older_reference_with_merged_bins_is_rebinned_from_its_sample_or_says_it_cannot_measure(synthetic_matrix):
    """A version trained before: its stored "night" is one bin [0, 1]. Its reference sample (training rows)
    rebins it; without a sample the row says it has too few bins rather than a silent PSI 0."""
    reference, train, _ = _reference(synthetic_matrix)
    statistics = json.loads(json.dumps(reference.statistics))
    statistics.pop("binning", None)  # what an older version stored
    statistics["features"]["night"].update(bin_edges=[0.0, 1.0], histogram=[20_000])
    current = synthetic_matrix(5_000, 11)
    X = current.X.copy()
    X[:, 1] = (np.random.default_rng(3).random(len(X)) < 0.6).astype(float)
    rows, _ = compare(Reference(reference.schema, statistics, reference.sample), X, _score(X))
    night = next(r for r in rows if r["feature"] == "night")
    sample_ones = np.nanmean(reference.sample[:, 1])
    assert night["details"]["bins_from"] == "reference_sample" and night["details"]["value_bins"] == 2
    assert night["psi"] == pytest.approx(_two_bin_psi(sample_ones, X[:, 1].mean()), rel=1e-9)
    assert night["n_reference"] == 5_000 and "few_bins" not in night["details"]
    rows, _ = compare(Reference(reference.schema, statistics, None), X, _score(X))
    night = next(r for r in rows if r["feature"] == "night")
    assert night["psi"] == 0.0 and "only its missing rate" in night["details"]["few_bins"]
    assert "retrain" in night["details"]["few_bins"]
