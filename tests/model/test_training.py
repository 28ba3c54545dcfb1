"""The trainer: byte-for-byte reproducibility, calibration, model behaviour, bad inputs."""

import numpy as np
import pytest

from sira.core.errors import InvalidInput
from sira.training.trainer import (
    Matrix,
    apply_calibration,
    check_params,
    encode_columns,
    fit_calibration,
    normalize_params,
    train_model,
)


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


@pytest.mark.parametrize("params, message", [
    ({"num_leave": 2}, "unknown parameter num_leave: not a LightGBM parameter .*; did you mean num_leaves?"),
    ({"foo_bar": 3}, "unknown parameter foo_bar"),
    ({"eta": 0.3, "learning_rate": 0.1}, "parameter learning_rate is given twice"),
    ({"early_stopping_rounds": "ten"}, "early_stopping_rounds must be a whole number of at least 0"),
    ({"early_stopping_rounds": -1}, "early_stopping_rounds must be a whole number of at least 0"),
    ({"num_boost_round": 0.5}, "num_boost_round must be a whole number"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
    ({"lambda_l2": [1.0, float("inf")]}, "lambda_l2 must be a finite number"),
    ({"num_leaves": None}, "num_leaves must be a number"),
    ({"calibration": "sigmoid"}, "calibration must be auto, isotonic or platt"),
    ({"bagging_fraction": 1.5}, "LightGBM refuses the parameters: bagging_fraction must be <= 1.0"),
    ({"min_data_in_leaf": -4}, "min_data_in_leaf must be >= 0"),
    ({"subsample": 0}, "bagging_fraction must be > 0.0"),  # an alias: checked under LightGBM's name
    ({"objective": "nonsense"}, "Unknown objective type name: nonsense"),
    # training always sets the weight: refused naming SIRA's (LightGBM said "Cannot set is_unbalance and
    # scale_pos_weight at the same time" to a user who had set no scale_pos_weight)
    ({"is_unbalance": True}, "parameter is_unbalance is set by SIRA"),
])
def test_parameters_training_would_ignore_or_refuse_are_refused_up_front(params, message, capfd):
    """A typo was ignored by LightGBM yet recorded as used (the model byte-identical), a bad value failed as
    `internal` only once training ran (NaN passed the > 0 check, `calibration: sigmoid` after the boosting):
    without the data, before anything is created, one reason, and nothing of LightGBM's on stderr."""
    with pytest.raises(InvalidInput, match=message):
        check_params(params)
    assert "LightGBM" not in capfd.readouterr().err


def test_a_typo_in_the_parameters_fails_training_instead_of_being_recorded(data):
    train, valid = data
    with pytest.raises(InvalidInput, match="unknown parameter num_leave"):
        train_model(train, valid, {"num_boost_round": 20, "num_leave": 2})
    with pytest.raises(InvalidInput, match="calibration must be"):
        train_model(train, valid, {"num_boost_round": 20, "calibration": "sigmoid"})


def test_parameters_that_describe_the_columns_are_checked_against_the_data(data, capfd):
    train, valid = data  # three features
    check_params({"monotone_constraints": [1, 0]})  # without the data: not checkable
    with pytest.raises(InvalidInput, match="monotone_constraints must have one value per feature"):
        train_model(train, valid, {"num_boost_round": 20, "monotone_constraints": [1, 0]})
    assert "LightGBM" not in capfd.readouterr().err
    result = train_model(train, valid, {"num_boost_round": 20, "monotone_constraints": [1, 0, 0]})
    assert result.params["monotone_constraints"] == [1, 0, 0]


def test_aliases_mean_their_parameter(data):
    """`eta` lost to the default learning_rate (LightGBM prefers the main name), `n_estimators` overrode the
    rounds SIRA passed: each now means its parameter, and the run records it under that name."""
    train, valid = data
    by_alias = train_model(train, valid, {"n_estimators": 20, "eta": 0.3, "early_stopping_round": 5}, seed=1)
    by_name = train_model(train, valid, {"num_boost_round": 20, "learning_rate": 0.3, "early_stopping_rounds": 5},
                          seed=1)
    assert by_alias.model_text == by_name.model_text
    assert by_alias.params["learning_rate"] == 0.3 and "eta" not in by_alias.params
    assert normalize_params({"colsample_bytree": 0.5}) == {"feature_fraction": 0.5}
    assert train_model(train, valid, {"num_boost_round": 15, "early_stopping_rounds": 0}).best_iteration == 15
