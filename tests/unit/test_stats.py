import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from scipy.spatial import distance

from sira.core.stats import (
    DriftThresholds,
    benjamini_hochberg,
    bin_counts,
    chi2_test,
    js_divergence,
    ks_2samp,
    psi,
    verdict,
)


def _samples(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Reference/current pairs the drift job meets: same law, a shift, skew, ties, unequal and tiny sizes."""
    if name == "normal vs normal":
        return rng.normal(size=2000), rng.normal(size=2000)
    if name == "normal vs shifted":
        return rng.normal(size=1500), rng.normal(0.3, 1, size=900)
    if name == "lognormal":
        return rng.lognormal(size=3000), rng.lognormal(0.1, 1.2, size=700)
    if name == "ties":
        return rng.integers(0, 5, size=400).astype(float), rng.integers(0, 6, size=350).astype(float)
    if name == "unequal sizes":
        return rng.normal(size=20_000), rng.normal(size=37)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["normal vs normal", "normal vs shifted", "lognormal", "ties", "unequal sizes"])
@pytest.mark.parametrize("seed", [0, 1])
def test_ks_matches_scipy_asymptotic(name, seed):
    a, b = _samples(name, np.random.default_rng(seed))
    expected = sps.ks_2samp(a, b, method="asymp")
    statistic, p_value = ks_2samp(a, b)
    assert statistic == expected.statistic
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("sizes", [(1, 2), (2, 1), (1, 5), (2, 3), (3, 3), (4, 5), (5, 5)])
def test_ks_tiny_samples_match_scipy(sizes):
    rng = np.random.default_rng(sum(sizes))
    a, b = rng.normal(size=sizes[0]), rng.normal(size=sizes[1])
    expected = sps.ks_2samp(a, b, method="asymp")
    assert ks_2samp(a, b) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-9)


@pytest.mark.parametrize("case", ["discrete", "window beyond the reference", "window inside", "equal values"])
def test_ks_of_a_large_window_against_a_small_sample_is_exact(case):
    """Only the smaller side is sorted: the statistic is still exactly scipy's, whichever side is larger."""
    rng = np.random.default_rng(7)
    small = rng.integers(0, 12, size=400).astype(float)
    large = {"discrete": rng.integers(-2, 15, size=60_000).astype(float),
             "window beyond the reference": np.concatenate([rng.uniform(-50, -1, 30_000), rng.uniform(20, 60, 30_000)]),
             "window inside": rng.uniform(3, 4, 60_000),
             "equal values": np.full(60_000, 5.0)}[case]
    for a, b in ((small, large), (large, small)):
        expected = sps.ks_2samp(a, b, method="asymp")
        statistic, p_value = ks_2samp(a, b)
        assert statistic == expected.statistic
        assert p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_ks_of_sorted_samples_is_the_same_test():
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=700), np.round(rng.normal(0.3, 1, size=9000), 1)
    assert ks_2samp(np.sort(a), np.sort(b), assume_sorted=True) == ks_2samp(a, b)


def test_ks_one_value_each_has_no_p_value():
    assert ks_2samp([1.0], [2.0])[0] == 1.0
    assert math.isnan(ks_2samp([1.0], [2.0])[1])


def test_ks_drops_nan_and_detects_a_shift():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=3000), rng.normal(0.5, 1, size=3000)
    with_nan = np.concatenate([a, [np.nan] * 50])
    assert ks_2samp(with_nan, b) == ks_2samp(a, b)
    statistic, p_value = ks_2samp(a, b)
    assert statistic > 0.15 and p_value < 1e-12


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # scipy's own 1-vs-1 case
@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40),
       st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40))
def test_ks_property_matches_scipy(a, b):
    expected = sps.ks_2samp(np.array(a), np.array(b), method="asymp")
    statistic, p_value = ks_2samp(a, b)
    assert statistic == expected.statistic
    if len(a) == len(b) == 1:
        assert math.isnan(p_value)
    else:
        assert p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_bin_counts_equal_histogram_inside_the_range():
    rng = np.random.default_rng(4)
    reference = rng.lognormal(size=5000)
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, 11)))
    current = rng.uniform(edges[0], edges[-1], size=2000)
    current[:3] = [edges[0], edges[-1], edges[4]]  # edge values: [e_i, e_i+1) and a closed last bin
    np.testing.assert_array_equal(bin_counts(current, edges), np.histogram(current, bins=edges)[0])


def test_bin_counts_clip_out_of_range_and_skip_nan():
    edges = [0.0, 1.0, 2.0, 3.0]
    values = np.array([-5.0, 0.0, 0.5, 1.0, 2.99, 3.0, 7.0, np.inf, -np.inf, np.nan])
    np.testing.assert_array_equal(bin_counts(values, edges), [4, 1, 4])


def test_bin_counts_constant_feature_has_one_bin():
    np.testing.assert_array_equal(bin_counts(np.array([2.0, 2.0, 5.0, np.nan]), [2.0]), [3])


@pytest.mark.parametrize("edges", [[0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 1.0, 2.0], [0.0, 1.0, 1.0, 1.0, 3.0],
                                   [0.0, 1.0, 3.0, 3.0], [2.0], [-1.0, 5.0]])
def test_bin_counts_of_sorted_values_equal_the_histogram_path(edges):
    """The drift job sorts a column once and reads its bins off it: the same counts, repeated edges included."""
    rng = np.random.default_rng(9)
    values = np.concatenate([rng.integers(-2, 5, size=3000).astype(float), rng.uniform(-3, 6, size=3000),
                             [np.inf, -np.inf, np.nan, np.nan]])
    present = np.sort(values[~np.isnan(values)])
    np.testing.assert_array_equal(bin_counts(present, edges, assume_sorted=True), bin_counts(values, edges))


def test_bin_counts_reject_bad_edges():
    with pytest.raises(ValueError, match="edges is empty"):
        bin_counts(np.array([1.0]), [])
    with pytest.raises(ValueError, match="sorted ascending"):
        bin_counts(np.array([1.0]), [0.0, 2.0, 1.0])


def _quantile_psi(reference: np.ndarray, current: np.ndarray) -> float:
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, 11)))
    return psi(bin_counts(reference, edges), bin_counts(current, edges))


def test_psi_separates_stable_from_shifted_data():
    rng = np.random.default_rng(5)
    reference = rng.normal(size=5000)
    assert _quantile_psi(reference, reference) == 0.0
    assert _quantile_psi(reference, rng.normal(size=5000)) < 0.1
    assert _quantile_psi(reference, rng.normal(1.0, 1, size=5000)) > 0.25


def test_psi_formula_and_smoothing():
    assert psi([10, 20, 30], [1, 2, 3]) == 0.0  # proportions, not counts
    r, c = np.array([0.5, 0.5]), np.array([0.2, 0.8])
    assert psi([50, 50], [20, 80]) == pytest.approx(np.sum((c - r) * np.log(c / r)))
    # an emptied bin costs about p * ln(p / eps): large but finite
    assert psi([50, 50], [100, 0]) == pytest.approx(0.5 * np.log(2) + (1e-4 - 0.5) * np.log(1e-4 / 0.5))


@pytest.mark.parametrize("reference, current, message", [
    ([1, 2, 3], [1, 2], "differ in length"),
    ([], [], "empty"),
    ([0, 0], [1, 2], "sums to zero"),
    ([1, -1], [1, 2], "non-negative"),
])
def test_psi_rejects_bad_counts(reference, current, message):
    with pytest.raises(ValueError, match=message):
        psi(reference, current)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chi2_matches_scipy_chisquare(seed):
    rng = np.random.default_rng(seed)
    reference = rng.dirichlet(np.ones(6))
    counts = rng.multinomial(4000, rng.dirichlet(np.ones(6)))
    expected = counts.sum() * reference / reference.sum()
    scipy_result = sps.chisquare(counts, f_exp=expected)
    assert chi2_test(reference, counts) == pytest.approx((scipy_result.statistic, scipy_result.pvalue), rel=1e-9)


def test_chi2_smooths_a_category_the_reference_never_saw():
    reference, counts = np.array([0.7, 0.3, 0.0]), np.array([60, 35, 5])
    smoothed = np.array([0.7, 0.3, 1e-4]) / 1.0001
    scipy_result = sps.chisquare(counts, f_exp=counts.sum() * smoothed)
    statistic, p_value = chi2_test(reference, counts)
    assert np.isfinite(statistic) and p_value < 1e-6
    assert (statistic, p_value) == pytest.approx((scipy_result.statistic, scipy_result.pvalue), rel=1e-9)


def test_chi2_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        chi2_test([0.5, 0.5], [1, 2, 3])
    with pytest.raises(ValueError, match="current_counts sums to zero"):
        chi2_test([0.5, 0.5], [0, 0])
    with pytest.raises(ValueError, match="at least two categories"):
        chi2_test([1.0], [7])


@pytest.mark.parametrize("p, q", [
    ([1, 2, 3, 4], [4, 3, 2, 1]),
    ([0.5, 0.5, 0.0], [0.0, 0.1, 0.9]),
    ([1, 0], [0, 1]),
    ([3, 3, 3], [1, 1, 1]),
])
def test_js_matches_scipy(p, q):
    assert js_divergence(p, q) == pytest.approx(distance.jensenshannon(p, q, base=2) ** 2, rel=1e-12, abs=1e-15)


def test_js_is_bounded_in_bits():
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([2, 5, 7], [2, 5, 7]) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        js_divergence([1, 2], [1, 2, 3])


def test_bh_matches_scipy_and_keeps_input_order():
    ps = np.array([0.5, 0.6, 0.1, 0.001, 0.04, 0.04, 1.0, 0.0])
    np.testing.assert_array_equal(benjamini_hochberg(ps), sps.false_discovery_control(ps, method="bh"))


def test_bh_leaves_nan_out_of_the_count():
    ps = np.array([0.01, np.nan, 0.02, 0.03, np.nan])
    adjusted = benjamini_hochberg(ps)
    assert np.isnan(adjusted[[1, 4]]).all()
    np.testing.assert_array_equal(adjusted[[0, 2, 3]], sps.false_discovery_control([0.01, 0.02, 0.03]))
    assert np.isnan(benjamini_hochberg([np.nan])).all()
    assert benjamini_hochberg([]).size == 0


def test_bh_rejects_values_outside_unit_interval():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        benjamini_hochberg([0.2, 1.5])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=60))
def test_bh_property_matches_scipy_and_is_monotone(ps):
    adjusted = benjamini_hochberg(ps)
    np.testing.assert_allclose(adjusted, sps.false_discovery_control(ps, method="bh"), rtol=1e-12, atol=0)
    order = np.argsort(ps, kind="stable")
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= np.array(ps)) and np.all(adjusted <= 1)


@pytest.mark.parametrize("kwargs, expected", [
    ({}, "ok"),
    ({"psi": 0.05, "js": 0.01, "p_adjusted": 0.5, "ks": 0.02}, "ok"),
    ({"psi": 0.1}, "warn"),
    ({"psi": 0.25}, "alert"),
    ({"js": 0.05}, "warn"),
    ({"js": 0.1}, "alert"),
    ({"p_adjusted": 0.001, "ks": 0.05}, "warn"),  # significant but tiny: millions of rows
    ({"p_adjusted": 0.001, "ks": 0.1}, "alert"),
    ({"p_adjusted": 0.001}, "warn"),  # no effect size, no alert
    # significant, every effect negligible (a million rows: 50% against 50.5% of a category): no warning
    ({"p_adjusted": 1e-23, "psi": 1e-4, "js": 1e-5}, "ok"),
    ({"p_adjusted": 1e-23, "ks": 0.01, "psi": 0.001}, "ok"),
    ({"p_adjusted": 1e-23, "js": 0.03}, "warn"),  # half the JS warning line: noticeable
    ({"p_adjusted": 0.02, "ks": 0.5}, "ok"),  # a large KS without evidence is not flagged by KS
    ({"psi": 0.3, "p_adjusted": 0.9, "ks": 0.01}, "alert"),
    ({"psi": None, "js": None, "p_adjusted": None, "ks": None}, "ok"),
])
def test_severity_truth_table(kwargs, expected):
    assert DriftThresholds().severity(**kwargs) == expected


def test_thresholds_reject_inverted_bands():
    with pytest.raises(ValueError, match="psi_warn <= psi_alert"):
        DriftThresholds(psi_warn=0.3, psi_alert=0.2)


@pytest.mark.parametrize("severities, expected", [
    ([], "ok"),
    (["ok"] * 10, "ok"),
    (["ok"] * 9 + ["warn"], "warn"),
    (["ok"] * 9 + ["alert"], "warn"),  # a lone alert among quiet features: 10% flagged
    (["ok"] * 8 + ["warn", "alert"], "alert"),  # 20% flagged, one alert
    (["ok"] * 12 + ["warn", "warn", "alert"], "alert"),  # exactly 3 of 15 = 0.2
    (["ok"] * 12 + ["warn"] * 8, "warn"),  # many warnings, no alert
    (["ok"] * 47 + ["alert"] * 3, "alert"),  # three alerts whatever the share
    (["ok"] * 48 + ["alert"] * 2, "warn"),
])
def test_verdict_truth_table(severities, expected):
    assert verdict(severities) == expected


def test_verdict_rejects_unknown_severity():
    with pytest.raises(ValueError, match="unknown severity 'critical'"):
        verdict(["ok", "critical"])


def test_reference_bins_keep_distinct_values_apart_and_heavy_values_alone():
    from sira.core.stats import reference_bin_edges

    flag = np.array([0.0] * 70 + [1.0] * 30)
    assert reference_bin_edges(flag, 10).tolist() == [0.0, 0.5, 1.0]
    assert np.histogram(flag, reference_bin_edges(flag, 10))[0].tolist() == [70, 30]
    assert reference_bin_edges(np.array([3.0, 3.0]), 10).tolist() == [3.0]  # one value: one bin
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=1_000), np.ones(500)])  # a third of the rows at exactly 1
    edges = reference_bin_edges(values, 10)
    counts = np.histogram(values, edges)[0]
    assert 500 in counts.tolist() and len(counts) >= 8  # 1 alone in its bin, the rest in about equal shares
    assert not np.isin(edges[1:-1], values).any()  # no edge on a value: none is split across two bins
