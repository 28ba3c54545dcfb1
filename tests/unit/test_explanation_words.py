"""The plain-language factors of a report say what the value was in words that match where it lies against the
training data's typical range (high, low, or neutral words within it or without statistics), never its
direction alone: a factor that lowered the risk is never described as what made it high, and a small value
that raised it is never called high."""

import pytest

from sira.monitoring.explanation import factor
from sira.training.trainer import FeatureSpec

RAISING_WORDS = ("Many ", "High ", "Unusual ", "far above", "Many different")


@pytest.mark.parametrize(("name", "value", "text"), [
    ("customer_count_24h", 0.0, "Payments by the customer in the last 24 hours (0)"),
    ("card_sum_amount_7d", 12.5, "Total amount for the card in the last 7 days (12.50)"),
    ("customer_mean_amount_30d", 40.0, "Average amount for the customer in the last 30 days (40)"),
    ("customer_max_amount_7d", 40.0, "Largest amount for the customer in the last 7 days (40)"),
    ("customer_amount_ratio_30d", 0.5, "Amount against the customer's average over the last 30 days (ratio 0.5)"),
    ("terminal_risk_7d", 0.0, "Fraud rate at the terminal in the last 7 days (0)"),
    ("card_distinct_terminal_1d", 1.0, "Different terminals used by the card in the last day (1)"),
    ("is_night", 0.0, "A daytime payment"),
    ("is_weekend", 1.0, "A weekend payment"),
])
def test_a_factor_that_lowered_the_risk_is_described_neutrally(name, value, text):
    lowered = factor(FeatureSpec(name, "numeric"), value, -0.3, None)
    assert lowered["direction"] == "decreases_risk"
    assert not any(w in lowered["text"] for w in RAISING_WORDS), lowered["text"]
    assert lowered["text"] == text


# the reference statistics of a count whose middle half is 1 to 3 (the 25th percentile in the bin from 1, the 75th in the one up to 3) (as training stores them)
COUNTS = {"type": "numeric", "missing_rate": 0.0, "bin_edges": [0.0, 1.0, 2.0, 3.0, 12.0],
          "histogram": [100, 300, 400, 200], "mean": 2.1, "std": 1.4}


def test_a_factor_says_which_side_of_the_typical_range_its_value_lies():
    raised = factor(FeatureSpec("customer_count_24h", "numeric"), 9.0, 0.4, COUNTS)
    assert raised["direction"] == "increases_risk"
    assert raised["text"] == "Many payments by the customer in the last 24 hours (9)"
    # a value below the typical range that raised the risk was called "Many payments ... (0)"
    few = factor(FeatureSpec("customer_count_24h", "numeric"), 0.0, 0.4, COUNTS)
    assert few["typical"] == "1.00 to 3.00"
    assert few["text"] == "Few payments by the customer in the last 24 hours (0)"
    assert not any(w in few["text"] for w in RAISING_WORDS), few["text"]
    within = factor(FeatureSpec("customer_count_24h", "numeric"), 2.0, 0.4, COUNTS)
    assert within["text"] == "Payments by the customer in the last 24 hours (2)"
    unknown = factor(FeatureSpec("customer_count_24h", "numeric"), 9.0, 0.4, None)
    assert unknown["text"] == "Payments by the customer in the last 24 hours (9)"


@pytest.mark.parametrize(("name", "thing"), [("customer_new_device_30d", "device"),
                                            ("customer_new_country_30d", "country")])
def test_a_novelty_the_payment_gave_no_value_for_reads_as_missing(name, thing):
    """A payment without a device (device_id NULL) read "device seen before by the customer (missing)": a
    missing value is neither new nor seen before."""
    missing = factor(FeatureSpec(name, "numeric"), float("nan"), -0.2, None)
    assert missing["text"] == f"No {thing} given: whether it was new for the customer is unknown (missing)"
    assert factor(FeatureSpec(name, "numeric"), 0.0, -0.2, None)["text"] == f"{thing} seen before by the customer (0)"
    assert factor(FeatureSpec(name, "numeric"), 1.0, 0.2, None)["text"] == f"A {thing} new for the customer in the last 30 days"
