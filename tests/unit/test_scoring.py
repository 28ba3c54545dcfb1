"""Scoring a version without services: inputs, decisions, reason codes, and online/offline parity."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sira.core.errors import InvalidInput
from sira.features.definitions import PAYMENTS_V1
from sira.features.history import History, entity_features, event_features
from sira.features.store import fold_events, to_us
from sira.serving.scoring import ModelRuntime, append_event, describe, event_vectors, reason_code
from sira.training.trainer import FeatureSpec, train_model

T0 = datetime(2026, 9, 7, 12, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def runtime(synthetic_matrix):
    import lightgbm as lgb

    train, valid = synthetic_matrix(8_000, 1), synthetic_matrix(3_000, 2)
    result = train_model(train, valid, {"num_boost_round": 60}, seed=3, num_threads=1)
    return ModelRuntime(model_name="byo", model_id=1, version=1, artifact_sha256="0" * 64,
                        booster=lgb.Booster(model_str=result.model_text), schema=tuple(train.schema),
                        calibration=result.calibration, thresholds={"review": 0.05, "block": 0.2}, feature_set=None)


def test_reasons_follow_lightgbms_exact_contributions(runtime):
    X = runtime.matrix([{"amount": 300.0, "night": 1.0, "channel": "ecom"}, {"amount": 5.0, "night": 0.0,
                                                                               "channel": "pos"}])
    contrib = runtime.contributions(X)
    # pred_contrib sums to the raw margin (TreeSHAP's local accuracy)
    raw = runtime.booster.predict(X, raw_score=True)
    assert np.allclose(contrib.sum(axis=1), raw)
    reasons = runtime.reasons(X[0], contrib[0])
    expected = [runtime.schema[j].name for j in np.argsort(-contrib[0][:-1]) if contrib[0][j] > 0][:4]
    assert [r["feature"] for r in reasons] == expected and len(reasons) >= 1
    assert [r["contribution"] for r in reasons] == sorted((r["contribution"] for r in reasons), reverse=True)
    by_name = {r["feature"]: r for r in reasons}
    assert by_name.get("channel", {"value": "ecom"})["value"] == "ecom"  # categoricals shown as their category
    assert all(r["direction"] == "increases_risk" and r["code"] == reason_code(r["feature"]) for r in reasons)
    # the risky payment outscores the calm one, and its reasons add up to more
    calm = runtime.reasons(X[1], contrib[1])
    scores = runtime.predict(X)
    assert scores[0] > scores[1]
    assert sum(r["contribution"] for r in reasons) > sum(r["contribution"] for r in calm)


def test_decision_bands_follow_the_thresholds(runtime):
    assert runtime.decide(np.array([0.01, 0.05, 0.1999, 0.2, 0.9])) == ["approve", "review", "review", "block", "block"]


def test_scores_are_the_calibrated_model(runtime):
    from sira.training.trainer import apply_calibration

    X = runtime.matrix([{"amount": 120.0, "night": 1.0, "channel": "atm"}])
    assert runtime.predict(X)[0] == apply_calibration(runtime.calibration, runtime.booster.predict(X, raw_score=True))[0]


def test_ready_features_are_checked_by_name_type_and_value(runtime):
    assert runtime.check_features({"amount": 3.0, "night": 1, "channel": "pos"}) == []
    assert runtime.check_features({"amount": 3.0}) == ["night", "channel"]  # missing: allowed, flagged
    for bad, code in (({"amnt": 1.0}, "unknown_feature"), ({"amount": "x"}, "invalid_feature"),
                      ({"amount": float("nan")}, "invalid_feature"), ({"amount": True}, "invalid_feature"),
                      ({"channel": 3.5}, "invalid_feature")):
        with pytest.raises(InvalidInput) as err:
            runtime.check_features(bad)
        assert err.value.code == code and err.value.details["field"].startswith("features.")


def test_unknown_categories_and_missing_values_become_nan(runtime):
    X = runtime.matrix([{"amount": None, "channel": "teleport"}])
    assert np.isnan(X).all()


def test_reason_texts_read_as_sentences():
    assert describe("card_count_1h", 7.0, "high") == "Many payments by the card in the last hour (7)"
    assert describe("customer_new_country_30d", 1.0) == "A country new for the customer in the last 30 days"
    assert describe("terminal_risk_7d", 0.25, "high") == "High fraud rate at the terminal in the last 7 days (0.25)"
    assert describe("customer_distinct_terminal_1d", 4.0, "high").startswith("Many different terminals")
    assert describe("is_night", 1.0) == "A night-time payment"
    assert describe("something_else", None) == "something else (missing)"
    # numbers as a person reads them, not at full precision (issue #19.17)
    assert describe("customer_amount_ratio_30d", 4.41545).endswith("(ratio 4.42)")
    assert describe("customer_sum_amount_1d", 1234.5678).endswith("(1,234.57)")
    assert describe("terminal_risk_7d", 0.0123456).endswith("(0.0123)")


def _reference(values):
    from sira.training.runs import reference_statistics
    from sira.training.trainer import FeatureSpec, Matrix

    schema = [FeatureSpec(name, "numeric") for name in values]
    X = np.column_stack([np.asarray(v, dtype=float) for v in values.values()])
    return reference_statistics(Matrix(X, np.zeros(len(X)), schema), np.zeros(len(X)))["features"]


@pytest.mark.parametrize(("name", "value", "text"), [
    # an amount 700 times below the customer's average read "Amount far above ... (ratio 0.00135)"
    ("customer_amount_ratio_30d", 0.001345, "Amount well below the customer's average over the last 30 days "
                                            "(ratio 0.00135)"),
    ("customer_amount_ratio_30d", 9.0, "Amount well above the customer's average over the last 30 days (ratio 9)"),
    ("customer_amount_ratio_30d", 1.1, "Amount against the customer's average over the last 30 days (ratio 1.10)"),
    # and a largest amount of 1 in the last hour "High largest amount for the customer ... (1)"
    ("customer_max_amount_1h", 1.0, "Low largest amount for the customer in the last hour (1)"),
    ("customer_max_amount_1h", 5_000.0, "High largest amount for the customer in the last hour (5,000)"),
    ("customer_max_amount_1h", 60.0, "Largest amount for the customer in the last hour (60)"),
    ("card_count_1h", 0.0, "Few payments by the card in the last hour (0)"),
    ("card_count_1h", 40.0, "Many payments by the card in the last hour (40)"),
    ("amount", 1.0, "Low payment amount (1)"),
    ("is_night", 0.0, "A daytime payment"),
])
def test_a_reason_says_which_side_of_the_usual_range_its_value_lies(name, value, text):
    """A reason's words follow where its value lies against the version's training data (its reference
    statistics), not the mere fact that it raised the risk: a small amount can raise it."""
    rng = np.random.default_rng(0)
    reference = _reference({
        "customer_amount_ratio_30d": rng.lognormal(0, 0.3, 2_000),  # middle half around 1
        "customer_max_amount_1h": rng.lognormal(4, 0.5, 2_000),  # around 55
        "card_count_1h": rng.integers(1, 6, 2_000),
        "amount": rng.lognormal(4, 0.5, 2_000),
        "is_night": (rng.random(2_000) < 0.2).astype(float),
    })
    schema = tuple(FeatureSpec(n, "numeric") for n in reference)
    runtime = ModelRuntime(model_name="f", model_id=1, version=1, artifact_sha256="0" * 64, booster=None,
                           schema=schema, calibration={}, thresholds={"review": 0.5, "block": 0.9},
                           feature_set=None, reference=reference)
    x = np.full(len(schema), np.nan)
    j = [s.name for s in schema].index(name)
    x[j] = value
    contrib = np.zeros(len(schema) + 1)
    contrib[j] = 0.7  # it raised the risk
    (reason,) = runtime.reasons(x, contrib)
    assert reason["direction"] == "increases_risk" and reason["text"] == text


def test_a_reason_without_reference_statistics_is_worded_neutrally():
    assert describe("customer_max_amount_1h", 1.0) == "Largest amount for the customer in the last hour (1)"
    assert describe("customer_amount_ratio_30d", 0.001345).startswith("Amount against the customer's average")
    assert describe("card_count_1h", 7.0) == "Payments by the card in the last hour (7)"


def _event(i, minutes, amount, **keys):
    return {"event_id": f"e{i:03d}", "occurred_at": T0 + timedelta(minutes=minutes), "amount": amount,
            "customer_id": "c1", "card_token": "k1", "terminal_id": "t1", "country": "FR", "device_id": "d1", **keys}


def test_append_event_matches_fold_events_in_and_out_of_order():
    spec = PAYMENTS_V1.entity("customer")
    base = History.from_rows([], spec.categorical_columns)
    events = [_event(i, m, 10.0 + i) for i, m in enumerate([5, 1, 9, 9, 3])]
    folded = base
    for e in events:
        folded, _ = append_event(folded, spec.categorical_columns, e)
    expected, _ = fold_events(spec, base, events)
    assert folded.ts.tolist() == expected.ts.tolist() and folded.event_id.tolist() == expected.event_id.tolist()
    again, pos = append_event(folded, spec.categorical_columns, {**events[2], "amount": 99.0})  # same id: replaces
    assert len(again) == len(folded) and again.amount[pos] == 99.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60 * 24 * 3), st.floats(0, 1000, allow_nan=False),
                          st.sampled_from(["c1", "c2"]), st.sampled_from(["t1", "t2", "t3"])), min_size=2, max_size=30))
def test_online_vectors_equal_the_offline_maths(rows):
    """Scoring an event from its entities' histories gives the vector the offline pipeline computes."""
    fs = PAYMENTS_V1
    events = [_event(i, m, a, customer_id=c, terminal_id=t) for i, (m, a, c, t) in enumerate(rows)]
    past, new = events[:-1], events[-1]
    histories = {}
    for spec in fs.entities:
        for key in {e[spec.key_column] for e in past}:
            mine = [e for e in past if e[spec.key_column] == key]
            histories[(spec.entity, key)] = fold_events(spec, History.from_rows([], spec.categorical_columns), mine)[0]
    online = event_vectors(fs, [new], histories).vectors[0]
    for spec in fs.entities:
        everything = [e for e in events if e[spec.key_column] == new[spec.key_column]]
        h = History.from_rows([{**e, "ts": to_us(e["occurred_at"])} for e in everything], spec.categorical_columns)
        pos = int(np.flatnonzero(h.event_id == new["event_id"])[0])
        offline = entity_features(spec, h, h.ts[pos: pos + 1], np.array([pos]))
        for name, values in offline.items():
            want, got = values[0], online[name]
            assert (np.isnan(want) and got is None) or want == got, (name, want, got)
    own = event_features(fs, np.array([to_us(new["occurred_at"])]), np.array([new["amount"]]))
    assert all(online[k] == v[0] for k, v in own.items())


def test_events_of_one_entity_in_one_batch_see_each_other_in_time_order():
    fs = PAYMENTS_V1
    a, b = _event(1, 10, 5.0), _event(2, 11, 7.0)
    vectors = event_vectors(fs, [b, a], {}).vectors  # out of order in the batch
    assert vectors[1]["card_count_1h"] == 1.0 and vectors[0]["card_count_1h"] == 2.0


def test_an_event_without_an_entity_key_has_that_entitys_features_missing():
    fs = PAYMENTS_V1
    vector = event_vectors(fs, [_event(1, 0, 5.0, terminal_id=None)], {}).vectors[0]
    assert all(vector[n] is None for n in fs.entity("terminal").names())
    assert vector["customer_count_1h"] == 1.0


def test_lightgbm_for_scoring_is_imported_without_scikit_learn_and_predicts_the_same(tmp_path):
    """A fresh process: lightgbm_core() leaves scikit-learn unimported (and importable), and its
    Booster scores a model exactly as the ordinarily imported LightGBM does."""
    import subprocess
    import sys

    import lightgbm as lgb

    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 4))
    y = (X[:, 0] + rng.normal(size=400) > 0).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1, "seed": 1},
                        lgb.Dataset(X, y), num_boost_round=10)
    (tmp_path / "model.txt").write_text(booster.model_to_string())
    np.save(tmp_path / "X.npy", X)
    code = f"""
import sys, json, numpy as np
from sira.serving.scoring import lightgbm_core
lgb = lightgbm_core()
hidden = "sklearn" not in sys.modules and not lgb.compat.SKLEARN_INSTALLED
scores = lgb.Booster(model_file={str(tmp_path / 'model.txt')!r}).predict(np.load({str(tmp_path / 'X.npy')!r}))
import sklearn.isotonic
print(json.dumps({{"hidden": hidden, "scores": scores.tolist(), "sklearn": sys.modules["sklearn"] is not None}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert result["hidden"] and result["sklearn"]
    assert np.array_equal(np.array(result["scores"]), booster.predict(X))


def test_one_row_is_scored_through_lightgbms_single_row_api_bit_for_bit(runtime):
    """An online request's row goes through SingleRowPredictor; its score is Booster.predict's exactly
    (missing values and extreme values included), and a row of the wrong width is refused."""
    rng = np.random.default_rng(11)
    X = rng.normal(scale=3.0, size=(300, len(runtime.schema)))
    X[rng.random(X.shape) < 0.2] = np.nan
    X[:5] = 1e300
    batch = runtime.predict(X)
    raw = runtime.booster.predict(X, raw_score=True, num_threads=1)
    for i in range(len(X)):
        assert runtime.single_row.raw_score(X[i]) == raw[i]
        assert runtime.predict(X[i:i + 1])[0] == batch[i]
    with pytest.raises(ValueError, match="features"):
        runtime.single_row.raw_score(X[0, :-1])


def test_no_client_request_id_names_a_shadow_prediction():
    """A shadow score's id was the production id of a request whose id is literally "<R>:shadow:v4": the second
    of the two rows was skipped as a duplicate (an answered prediction never stored)."""
    from types import SimpleNamespace

    from sira.serving.answers import answer, shadow_answer
    from sira.serving.idempotency import PredictionIds, prediction_namespace
    from sira.serving.schemas import Item

    runtime = SimpleNamespace(model_name="fraud", version=4)

    def item(request_id: str) -> Item:
        return Item(runtime=runtime, shadow=None, request_id=request_id, client_request_id=True, event=None,
                    features=None, record=True, explain=False, started=0.0)

    ids = PredictionIds(prediction_namespace("an installation's secret"), 7)
    shadow = shadow_answer(item("R"), runtime, "R", 0.2, "approve", "approve", "now", ids)
    production = answer(item("R:shadow:v4"), runtime, 0.2, "approve", [], {}, set(), 1.0, "now", ids)
    assert production["prediction_id"] != shadow["prediction_id"]
    assert shadow_answer(item("R"), runtime, "R", 0.2, "approve", "approve", "now", ids) == shadow  # stable
