"""The "typical values" of a report: a range that holds the middle half of the training data, whatever its shape."""

import numpy as np
import pytest

from sira.core.stats import reference_bin_edges
from sira.monitoring.explanation import _typical
from sira.training.runs import REFERENCE_BINS


def reference(values: np.ndarray) -> dict:
    """A numeric feature's reference as training stores it (sira.training.runs: value bins, and the histogram
    over them)."""
    edges = reference_bin_edges(values, REFERENCE_BINS)
    return {"type": "numeric", "bin_edges": [float(e) for e in edges],
            "histogram": [int(h) for h in np.histogram(values, bins=edges)[0]]}


@pytest.mark.parametrize("values", [
    np.concatenate([np.zeros(600), np.arange(1, 401) % 16]),  # a count, 60% zeros: was "0.4 to 15.00" (25 to 75: 0 to 8)
    np.random.default_rng(3).lognormal(3, 1, 2_000),  # skewed
    np.random.default_rng(4).normal(100, 15, 2_000),
])
def test_the_typical_range_holds_the_middle_half(values):
    typical = _typical(reference(values))
    lo, hi = (float(v) for v in typical.split(" to ")) if " to " in typical else (float(typical.split()[0]), np.inf)
    assert lo <= np.percentile(values, 25) + 1e-9 and hi >= np.percentile(values, 75) - 1e-9
    # and not much more: at most the two bins around each quartile
    assert np.mean((values >= lo) & (values <= hi)) <= 0.5 + 2 * 0.1 + 1e-9 or lo == values.min()


def test_a_reference_without_counts_or_values_has_no_range():
    assert _typical({"type": "numeric", "bin_edges": [0.0, 1.0], "histogram": [0]}) is None
    assert _typical({"type": "numeric", "bin_edges": [0.0, 1.0, 2.0]}) is None
    assert _typical(None) is None



@pytest.mark.parametrize("values", [
    np.concatenate([np.arange(700.0) / 14, np.full(300, 50.0), [987_654.32]]),  # 75th in the last bin: the max
    np.concatenate([[-123_456.78], np.arange(680.0) + 1, np.full(320, 0.0)]),  # a lone minimum
])
def test_the_typical_range_never_shows_one_rows_value(values):
    """The training maximum (and a lone minimum) is one row's value, someone's payment: a bound is an inner
    bin edge or a value many rows share, else the range is left open ("50.00 or more")."""
    typical = _typical(reference(values))
    assert "987,654.32" not in typical and "-123,456.78" not in typical, typical
    bounds = [float(v.replace(",", "")) for v in typical.replace(" or more", "").replace(" or less", "").split(" to ")]
    # nor halfway between it and a value many rows share (a bin edge next to it): no bound far out
    assert all(np.percentile(values, 1) <= b <= np.percentile(values, 99) for b in bounds), typical
    assert typical.endswith(" or less") or min(bounds) <= np.percentile(values, 25) + 1e-9
    assert typical.endswith(" or more") or max(bounds) >= np.percentile(values, 75) - 1e-9


@pytest.mark.parametrize("ones, typical", [(0.04, "no (yes in 4% of the training data)"),
                                           (0.9, "yes (no in 10% of the training data)"),
                                           (0.001, "no (yes in under 1% of the training data)")])
def test_a_yes_no_feature_is_typically_yes_or_no_with_its_share(ones, typical):
    """A 0/1 feature's quantiles are all 0 or 1: its range read "0.00 or more", as if a person's 1 were typical."""
    values = (np.arange(10_000) < ones * 10_000).astype(float)
    ref = {**reference(values), "mean": float(values.mean()), "std": float(values.std())}
    assert _typical(ref) == typical


def test_a_share_between_0_and_1_is_no_yes_no_feature():
    values = np.random.default_rng(5).beta(2, 5, 2_000)
    ref = {**reference(values), "mean": float(values.mean()), "std": float(values.std())}
    assert " to " in _typical(ref) or _typical(ref).endswith(" or more")
