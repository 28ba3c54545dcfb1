"""The plain-language factors of a report say what the value was in words that match its direction: a factor
that lowered the risk is never described as what made it high."""

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


def test_a_factor_that_raised_the_risk_keeps_its_reason_words():
    raised = factor(FeatureSpec("customer_count_24h", "numeric"), 9.0, 0.4, None)
    assert raised["direction"] == "increases_risk"
    assert raised["text"] == "Many payments by the customer in the last 24 hours (9)"
