"""The trainer: byte-for-byte reproducibility, calibration, model behaviour, bad inputs."""

import numpy as np
import pytest

from sira.core.errors import InvalidInput
from sira.training.trainer import Matrix, apply_calibration, encode_columns, fit_calibration, train_model


@pytest.fixture(scope="module")
def data(synthetic_matrix):
    return synthetic_matrix(12_000, 1), synthetic_matrix(4_000, 2)


def test_same_data_params_seed_and_threads_give_the_same_model_file(data):
    train, valid = data
    params = {"num_boost_round": 60, "early_stopping_rounds": 20}
    a = train_model(train, valid, params, seed=7, num_threads=2)
    b = train_model(train, valid, params, seed=7, num_threads=2)
    assert a.model_text.encode() == b.model_text.encode()
    c = train_model(train, valid, params, seed=8, num_threads=2)
    assert c.model_text != a.model_text


def test_scores_are_calibrated_probabilities(data):
    train, valid = data
    result = train_model(train, valid, {"num_boost_round": 80}, seed=1, num_threads=1)
    assert 0 <= result.valid_scores.min() and result.valid_scores.max() <= 1
    # calibrated: the mean score is close to the observed rate despite the positive-class weight
    assert abs(result.valid_scores.mean() - valid.y.mean()) < 0.01
    # the ranking of the raw model is kept
    order = np.argsort(result.raw_valid)
    assert np.all(np.diff(result.valid_scores[order]) >= 0)


def test_a_fraud_pattern_raises_the_score(data):
    train, valid = data
    result = train_model(train, valid, {"num_boost_round": 80}, seed=1, num_threads=1)
    import lightgbm as lgb

    booster = lgb.Booster(model_str=result.model_text)
    calm = encode_columns({"amount": [20.0], "night": [0.0], "channel": ["pos"]}, train.schema)
    risky = encode_columns({"amount": [200.0], "night": [1.0], "channel": ["ecom"]}, train.schema)
    score = lambda X: apply_calibration(result.calibration, booster.predict(X, raw_score=True))[0]  # noqa: E731
    assert score(risky) > 5 * score(calm)


def test_calibration_methods():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-(2 * raw - 3)))).astype(float)
    for method in ("platt", "isotonic"):
        cal = fit_calibration(raw, y, method)
        p = apply_calibration(cal, raw)
        assert abs(p.mean() - y.mean()) < 0.01 and cal["method"] == method
    with pytest.raises(InvalidInput):
        fit_calibration(raw, y, "magic")


def test_no_positives_is_a_clear_error(data):
    train, valid = data
    empty = Matrix(train.X, np.zeros_like(train.y), train.schema)
    with pytest.raises(InvalidInput, match="no positive labels"):
        train_model(empty, valid)
    only_frauds = Matrix(valid.X, np.ones_like(valid.y), valid.schema)  # calibration would fail in scikit-learn
    with pytest.raises(InvalidInput, match="the validation window has no negative labels"):
        train_model(train, only_frauds)
    with pytest.raises(InvalidInput, match="learning_rate"):
        train_model(train, valid, {"learning_rate": -1})


def test_unknown_categories_become_missing(synthetic_matrix):
    X = encode_columns({"amount": [1.0], "night": [None], "channel": ["teleport"]}, synthetic_matrix.schema)
    assert X[0, 0] == 1.0 and np.isnan(X[0, 1]) and np.isnan(X[0, 2])


def test_defaults_do_not_collapse_on_very_rare_positives():
    """0.2% positives with a time-like split: LightGBM's plain defaults can collapse here (MEASURED.md)."""
    from sira.training.evaluation import average_precision
    from sira.training.trainer import FeatureSpec

    rng = np.random.default_rng(11)
    n = 60_000
    X = rng.normal(size=(n, 12))
    logit = -9.0 + 2.2 * X[:, 0] + 1.5 * (X[:, 1] > 1.5) + X[:, 2] * X[:, 3]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    assert 0.001 < y.mean() < 0.004
    schema = [FeatureSpec(f"f{i}", "numeric") for i in range(12)]
    train, valid, test = (Matrix(X[s], y[s], schema) for s in (slice(0, 36_000), slice(36_000, 48_000),
                                                                   slice(48_000, None)))
    result = train_model(train, valid, seed=3, num_threads=2)
    import lightgbm as lgb

    ap = average_precision(test.y, lgb.Booster(model_str=result.model_text).predict(test.X))
    plain = lgb.train({"objective": "binary", "verbosity": -1, "seed": 3}, lgb.Dataset(train.X, label=train.y), 100)
    plain_ap = average_precision(test.y, plain.predict(test.X))
    oracle_ap = average_precision(test.y, logit[48_000:])  # the true log-odds: the best any model can do
    assert ap > 3 * plain_ap and ap > 0.3 * oracle_ap, (ap, plain_ap, oracle_ap)
