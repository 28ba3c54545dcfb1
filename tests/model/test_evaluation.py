import numpy as np
import pytest
from sklearn import metrics as skm

from sira.core.errors import InvalidInput
from sira.registry.targets import DecisionTargets
from sira.training.evaluation import (
    average_precision,
    brier,
    choose_thresholds,
    decide,
    evaluate,
    log_loss,
    precision_at_k,
    recall_at_fpr,
    roc_auc,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(3000) < 0.05).astype(float)
    p = np.clip(rng.random(3000) * 0.5 + y * rng.random(3000) * 0.5, 0, 1)
    p = np.round(p, 2)  # plenty of ties
    assert average_precision(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert log_loss(y, p) == pytest.approx(skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), abs=1e-9)
    fpr, tpr, _ = skm.roc_curve(y, p)
    assert recall_at_fpr(y, p, 0.01) == pytest.approx(tpr[fpr <= 0.01].max())


def test_precision_at_k():
    assert precision_at_k(np.array([1, 0, 1, 0.0]), np.array([0.9, 0.8, 0.7, 0.1]), 2) == 0.5


def test_thresholds_follow_the_targets():
    rng = np.random.default_rng(4)
    y = (rng.random(20_000) < 0.01).astype(float)
    p = np.clip(rng.normal(0.1, 0.05, y.size) + y * 0.6, 0, 1)
    targets = DecisionTargets(review_rate=0.03, block_precision=0.9, max_block_rate=0.01)
    t = choose_thresholds(y, p, targets)
    d = decide(p, t)
    assert (d != "approve").mean() == pytest.approx(0.03, abs=0.002)
    blocked = d == "block"
    assert blocked.mean() <= 0.01 and y[blocked].mean() >= 0.9
    assert t["review"] <= t["block"]


def test_no_block_band_when_precision_is_unreachable():
    y = np.array([0, 1, 0, 1, 0, 0.0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert choose_thresholds(y, p, DecisionTargets(block_precision=0.99, review_rate=0.5))["block"] == 1.0


def test_evaluate_reports_segments_and_cost():
    rng = np.random.default_rng(5)
    y = (rng.random(1000) < 0.1).astype(float)
    p = rng.random(1000)
    m = evaluate(y, p, {"review": 0.8, "block": 0.95}, segments={"country": ["SN"] * 500 + ["FR"] * 500},
                 min_segment_size=100)
    assert set(m["segments"]["country"]) == {"SN", "FR"}
    assert m["cost"]["total"] == m["cost"]["missed_fraud"] * 100 + m["cost"]["false_alarms"] * 5


def test_bad_targets_are_refused():
    with pytest.raises(InvalidInput):
        DecisionTargets.from_dict({"review_rate": 2})
    with pytest.raises(InvalidInput):
        DecisionTargets.from_dict({"reveiw_rate": 0.1})


@pytest.mark.parametrize("value", ["abc", None, [1], float("nan"), float("inf"), -1])
def test_decision_targets_refuse_what_is_not_a_usable_number(value):
    from sira.core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="cost_false_alarm"):
        DecisionTargets.from_dict({"cost_false_alarm": value})


def test_a_bad_label_is_named_without_its_value():
    """A wrongly mapped label column may hold names: the dead letter's reason must not repeat them."""
    from pydantic import ValidationError

    from sira.ingest.labels import FeedbackIn

    with pytest.raises(ValidationError) as err:
        FeedbackIn.model_validate({"event_id": "e1", "label": "Jane Doe", "known_at": "2026-01-02T00:00:00Z"})
    assert "Jane" not in str(err.value.errors()[0]["msg"]) and "binary label" in str(err.value)
