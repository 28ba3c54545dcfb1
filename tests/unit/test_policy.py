"""The promotion policy: its settings, the decision table, and that stricter settings never stage more."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sira.core.errors import InvalidInput
from sira.registry.policy import Decision, Evidence, PromotionPolicy


def metrics(ap=0.543, ece=0.02, positives=240, n=10_000):
    return {"average_precision": ap, "expected_calibration_error": ece, "positives": positives, "n": n,
            "roc_auc": 0.95}


def evidence(challenger=None, champion="default", score_psi=0.05, drift_verdict="ok", failed_checks=(), not_run=None):
    return Evidence(challenger=challenger or metrics(),
                    champion=metrics(ap=0.512) if champion == "default" else champion,
                    score_psi=score_psi, drift_verdict=drift_verdict, failed_checks=failed_checks,
                    not_run=not_run or {})


def test_defaults():
    policy = PromotionPolicy()
    assert policy.to_dict() == {
        "min_ap_gain": 0.0, "max_calibration_error": 0.05, "max_score_psi": 0.25, "block_on_drift": "alert",
        "block_on_failed_checks": True, "on_missing_check": "block", "min_positives": 20, "auto_stage": True, "auto_promote": True,
    }
    assert PromotionPolicy.from_mapping(None) == policy
    assert PromotionPolicy.from_mapping({}) == policy


def test_from_mapping_round_trips_and_accepts_whole_numbers_for_floats():
    policy = PromotionPolicy.from_mapping({"min_ap_gain": 0, "max_score_psi": 1, "block_on_drift": "warn"})
    assert policy.min_ap_gain == 0.0 and isinstance(policy.min_ap_gain, float)
    assert PromotionPolicy.from_mapping(policy.to_dict()) == policy


def test_unknown_key_is_named_with_the_valid_ones():
    with pytest.raises(InvalidInput, match="min_ap_gian") as raised:
        PromotionPolicy.from_mapping({"min_ap_gian": 0.01})
    assert raised.value.code == "invalid_policy"
    assert raised.value.details["field"] == "promotion_policy.min_ap_gian"  # nested as the HTTP body is
    assert "min_ap_gain" in raised.value.message  # the valid settings are listed


@pytest.mark.parametrize("field, value", [
    ("min_ap_gain", "0.01"), ("min_ap_gain", True), ("min_ap_gain", math.nan), ("min_ap_gain", 2.0),
    ("max_calibration_error", -0.01), ("max_calibration_error", None),
    ("max_score_psi", 0), ("max_score_psi", -0.1), ("max_score_psi", math.inf),
    ("block_on_drift", "critical"), ("block_on_drift", None), ("block_on_drift", ["alert"]),
    ("block_on_failed_checks", "yes"), ("block_on_failed_checks", 1),
    ("min_positives", 20.5), ("min_positives", 0), ("min_positives", True),
    ("auto_stage", "true"), ("auto_promote", None),
])
def test_bad_values_name_their_field(field, value):
    with pytest.raises(InvalidInput) as raised:
        PromotionPolicy.from_mapping({field: value})
    assert raised.value.code == "invalid_policy"
    assert raised.value.details == {"field": f"promotion_policy.{field}"}
    assert field in raised.value.message


def test_a_policy_that_is_not_a_mapping():
    with pytest.raises(InvalidInput) as raised:
        PromotionPolicy.from_mapping(["min_ap_gain", 0.1])  # type: ignore[arg-type]
    assert raised.value.code == "invalid_policy" and raised.value.details == {"field": "promotion_policy"}


def test_a_better_calibrated_challenger_is_staged_with_the_numbers():
    decision = PromotionPolicy().decide(evidence())
    assert decision.outcome == "stage"
    assert decision.blockers == ()
    assert all(decision.checks.values())
    assert set(decision.checks) == {"data_checks", "drift", "evidence", "ap_gain", "calibration", "score_psi"}
    assert "AP gain +0.031 over the champion (0.512 → 0.543) meets the minimum +0.000" in decision.reasons
    assert "expected calibration error 0.020 is within the maximum 0.050" in decision.reasons
    assert "score PSI 0.050 against the champion's scores is within the maximum 0.250" in decision.reasons
    assert len(decision.reasons) == len(decision.checks)  # one sentence per rule checked


def test_gain_below_the_minimum_rejects():
    decision = PromotionPolicy(min_ap_gain=0.05).decide(evidence())
    assert decision.outcome == "reject"
    assert decision.checks["ap_gain"] is False
    assert "AP gain +0.031 over the champion (0.512 → 0.543) is below the minimum +0.050" in decision.reasons


def test_the_rules_that_decided_are_kept_apart_from_those_that_passed():
    """`sira promote` quoted a rejected version's first two reasons, "no data check failed" and "dataset drift
    verdict 'alert': this policy never blocks on drift": both rules had passed, the AP gain that decided it was
    left out. The demo's policy and run 2's numbers."""
    policy = PromotionPolicy.from_mapping({"min_ap_gain": 0.02, "block_on_drift": "never"})
    rejected = policy.decide(evidence(challenger=metrics(ap=0.8363), champion=metrics(ap=0.9006), score_psi=0.0061,
                                      drift_verdict="alert"))
    assert rejected.outcome == "reject" and rejected.reasons[:2] == (
        "no data check failed", "dataset drift verdict 'alert': this policy never blocks on drift")
    assert rejected.deciding == ("AP gain -0.064 over the champion (0.901 → 0.836) is below the minimum +0.020",)
    assert rejected.to_dict()["deciding"] == list(rejected.deciding)
    assert policy.decide(evidence()).deciding == ()  # staged: nothing held it back
    held = policy.decide(evidence(challenger=metrics(positives=3)))
    assert held.outcome == "hold" and held.deciding == (
        "the evaluation window holds 3 positives, fewer than the 20 needed for a decision: insufficient evidence",)
    blocked = PromotionPolicy(block_on_drift="warn", max_score_psi=0.01).decide(evidence(drift_verdict="alert"))
    assert blocked.deciding == ("dataset drift verdict 'alert' is at or above 'warn': promotion is blocked",
                                "score PSI 0.050 against the champion's scores exceeds the maximum 0.010")


def test_a_worse_challenger_is_rejected_by_the_default_policy():
    decision = PromotionPolicy().decide(evidence(challenger=metrics(ap=0.48)))
    assert decision.outcome == "reject"
    assert any("AP gain -0.032" in r and "is below the minimum +0.000" in r for r in decision.reasons)


def test_gain_exactly_the_minimum_passes_despite_float_rounding():
    assert 0.6 - 0.5 < 0.1  # the subtraction lands a hair below
    decision = PromotionPolicy(min_ap_gain=0.1).decide(evidence(challenger=metrics(ap=0.6), champion=metrics(ap=0.5)))
    assert decision.checks["ap_gain"] is True


def test_calibration_too_high_rejects():
    decision = PromotionPolicy().decide(evidence(challenger=metrics(ece=0.081)))
    assert decision.outcome == "reject"
    assert decision.checks["calibration"] is False
    assert "expected calibration error 0.081 exceeds the maximum 0.050" in decision.reasons


def test_score_psi_too_high_rejects():
    decision = PromotionPolicy().decide(evidence(score_psi=0.31))
    assert decision.outcome == "reject"
    assert decision.checks["score_psi"] is False
    assert "score PSI 0.310 against the champion's scores exceeds the maximum 0.250" in decision.reasons


@pytest.mark.parametrize("block_on, verdict, outcome", [
    ("alert", "alert", "reject"), ("alert", "warn", "stage"), ("alert", "ok", "stage"),
    ("warn", "alert", "reject"), ("warn", "warn", "reject"), ("warn", "ok", "stage"),
    ("never", "alert", "stage"), ("never", "warn", "stage"),
])
def test_dataset_drift_blocks_at_or_above_the_policy_level(block_on, verdict, outcome):
    decision = PromotionPolicy(block_on_drift=block_on).decide(evidence(drift_verdict=verdict))
    assert decision.outcome == outcome
    assert decision.checks["drift"] is (outcome == "stage")
    if outcome == "reject":
        assert decision.blockers == (f"dataset drift {verdict!r}",)
        assert f"dataset drift verdict {verdict!r} is at or above {block_on!r}: promotion is blocked" in decision.reasons
    else:
        assert decision.blockers == ()


def test_no_drift_verdict_is_nothing_to_block_on():
    decision = PromotionPolicy(block_on_drift="warn").decide(evidence(drift_verdict=None))
    assert decision.outcome == "stage"
    assert "no dataset drift verdict was given: nothing to block on" in decision.reasons


def test_failed_checks_block_unless_the_policy_says_not_to():
    failed = ("label_rate_in_range", "no_future_known_at")
    blocked = PromotionPolicy().decide(evidence(failed_checks=failed))
    assert blocked.outcome == "reject"
    assert blocked.blockers == ("data checks failed: label_rate_in_range, no_future_known_at",)
    ignored = PromotionPolicy(block_on_failed_checks=False).decide(evidence(failed_checks=failed))
    assert ignored.outcome == "stage"
    assert ignored.blockers == ()
    assert any("does not block" in r and "label_rate_in_range" in r for r in ignored.reasons)


def test_too_few_positives_holds():
    decision = PromotionPolicy().decide(evidence(challenger=metrics(positives=12)))
    assert decision.outcome == "hold"
    assert decision.checks == {"data_checks": True, "drift": True, "evidence": False}  # metric rules not judged
    assert any("12 positives, fewer than the 20" in r for r in decision.reasons)
    assert PromotionPolicy(min_positives=12).decide(evidence(challenger=metrics(positives=12))).outcome == "stage"


@pytest.mark.parametrize("change", [
    {"challenger": metrics(ap=math.nan)},
    {"challenger": metrics(ece=None)},
    {"challenger": {"average_precision": 0.5, "expected_calibration_error": 0.01}},  # no positive count
    {"champion": metrics(ap=math.nan)},
    {"score_psi": None},
    {"score_psi": math.nan},
    {"champion": metrics(ap=0.5, n=9_000)},  # not the same window
])
def test_missing_or_nan_evidence_holds(change):
    decision = PromotionPolicy().decide(evidence(**change))
    assert decision.outcome == "hold"
    assert decision.checks["evidence"] is False
    assert any("insufficient evidence" in r for r in decision.reasons)


def test_nan_ap_holds_and_says_which():
    decision = PromotionPolicy().decide(evidence(challenger=metrics(ap=math.nan)))
    assert "the challenger's average_precision is missing or NaN: insufficient evidence" in decision.reasons


def test_a_blocker_rejects_even_without_enough_positives():
    decision = PromotionPolicy().decide(evidence(challenger=metrics(positives=3), drift_verdict="alert"))
    assert decision.outcome == "reject"
    assert decision.blockers == ("dataset drift 'alert'",)


def test_no_champion_stages_when_the_other_rules_pass():
    decision = PromotionPolicy(min_ap_gain=0.2).decide(evidence(champion=None, score_psi=None))
    assert decision.outcome == "stage"
    assert any("no champion" in r and "0.543" in r for r in decision.reasons)
    assert any("no champion scores" in r for r in decision.reasons)
    no_champion_bad_calibration = evidence(challenger=metrics(ece=0.2), champion=None, score_psi=None)
    assert PromotionPolicy().decide(no_champion_bad_calibration).outcome == "reject"


def test_evidence_rejects_an_unknown_drift_verdict_and_takes_a_list_of_checks():
    with pytest.raises(InvalidInput):
        evidence(drift_verdict="critical")
    assert evidence(failed_checks=["a", "b"]).failed_checks == ("a", "b")


def test_decision_to_dict_is_json_ready():
    decision = PromotionPolicy().decide(evidence(score_psi=0.4))
    as_dict = decision.to_dict()
    assert as_dict["outcome"] == "reject"
    assert as_dict["checks"]["score_psi"] is False
    assert isinstance(as_dict["reasons"], list) and isinstance(as_dict["blockers"], list)


@pytest.mark.parametrize("outcome, auto_stage, auto_promote, required, statuses", [
    ("stage", True, True, 0, ("staging", "production")),
    ("stage", True, True, 2, ("staging",)),
    ("stage", True, False, 0, ("staging",)),
    ("stage", False, True, 0, ()),
    ("reject", True, True, 0, ()),
    ("hold", True, True, 0, ()),
])
def test_production_on_its_own_only_without_required_approvals(outcome, auto_stage, auto_promote, required,
                                                                statuses):
    policy = PromotionPolicy(auto_stage=auto_stage, auto_promote=auto_promote)
    decision = Decision(outcome, (), (), {})
    assert policy.auto_statuses(decision, required_approvals=required) == statuses


# Properties: tightening a policy never stages a challenger the looser policy would not stage.

unit = st.floats(0, 1, allow_nan=False)
evidences = st.builds(
    evidence,
    challenger=st.builds(metrics, ap=unit, ece=st.floats(0, 0.2), positives=st.integers(0, 100)),
    champion=st.one_of(st.none(), st.builds(metrics, ap=unit)),
    score_psi=st.floats(0, 1),
    drift_verdict=st.sampled_from([None, "ok", "warn", "alert"]),
    failed_checks=st.lists(st.sampled_from(["schema", "label_rate"]), max_size=2, unique=True).map(tuple),
)
DRIFT_STRICTNESS = ["never", "alert", "warn"]


@given(evidences, st.floats(-0.2, 0.2), st.floats(0, 0.2), st.floats(0.01, 1), st.sampled_from(DRIFT_STRICTNESS),
       st.booleans(), st.integers(1, 100),
       st.floats(0, 0.2), st.floats(0, 0.1), st.floats(0, 0.5), st.integers(0, 2), st.booleans(), st.integers(0, 50))
def test_a_stricter_policy_never_stages_more(ev, gain, ece, psi, drift, block_checks, min_pos,
                                             d_gain, d_ece, d_psi, d_drift, stricter_checks, d_pos):
    loose = PromotionPolicy(min_ap_gain=gain, max_calibration_error=ece, max_score_psi=psi, block_on_drift=drift,
                            block_on_failed_checks=block_checks, min_positives=min_pos)
    strict = PromotionPolicy(
        min_ap_gain=min(gain + d_gain, 1.0), max_calibration_error=max(ece - d_ece, 0.0),
        max_score_psi=max(psi - d_psi, 0.005),
        block_on_drift=DRIFT_STRICTNESS[max(DRIFT_STRICTNESS.index(drift), min(d_drift, 2))],
        block_on_failed_checks=block_checks or stricter_checks, min_positives=min_pos + d_pos)
    loose_decision, strict_decision = loose.decide(ev), strict.decide(ev)
    if strict_decision.outcome == "stage":
        assert loose_decision.outcome == "stage"
    if loose_decision.outcome == "reject":
        assert strict_decision.outcome == "reject" or not strict_decision.checks["evidence"]


@given(evidences, st.floats(-0.2, 0.2), st.floats(0, 0.2), st.floats(0.01, 1), st.sampled_from(DRIFT_STRICTNESS))
def test_the_outcome_follows_the_checks(ev, gain, ece, psi, drift):
    decision = PromotionPolicy(min_ap_gain=gain, max_calibration_error=ece, max_score_psi=psi,
                               block_on_drift=drift).decide(ev)
    assert decision.outcome in ("stage", "reject", "hold")
    assert (decision.outcome == "stage") == all(decision.checks.values()) == (not decision.deciding)
    assert set(decision.deciding) <= set(decision.reasons)
    assert (decision.outcome == "hold") == (not decision.checks["evidence"] and not decision.blockers)
    if decision.blockers:
        assert decision.outcome == "reject"
    assert len(decision.reasons) >= len(decision.checks)


def test_a_check_that_could_not_run_blocks_by_default_and_warns_when_told():
    why = "insufficient_data: 5 events between 2026-11-20 and 2026-11-27"
    blocked = PromotionPolicy().decide(evidence(drift_verdict=None, not_run={"drift": why}))
    assert blocked.outcome == "reject" and blocked.checks["drift"] is False
    assert blocked.blockers == ("drift check not run",)
    assert any(why in r and "blocked" in r for r in blocked.reasons)
    warned = PromotionPolicy(on_missing_check="warn").decide(evidence(drift_verdict=None, not_run={"drift": why}))
    assert warned.outcome == "stage" and warned.blockers == ()
    assert any(why in r and "warns only" in r for r in warned.reasons)
    with pytest.raises(InvalidInput, match="on_missing_check"):
        PromotionPolicy(on_missing_check="ignore")


def test_the_retrain_report_says_a_drift_check_did_not_run():
    from sira.monitoring.retrain import drift_not_run, markdown

    step = {"status": "not_run", "verdict": None, "reason": "insufficient_data: 5 events"}
    assert drift_not_run(step) == {"drift": "insufficient_data: 5 events"}
    assert drift_not_run({"verdict": None, "note": "too few"}) == {"drift": "too few"}  # a step stored earlier
    assert drift_not_run({"status": "ran", "verdict": "ok"}) == {}
    report = {"model": "fraud", "run": 1, "decision": "reject", "challenger": 2, "champion": 1, "staged": False,
              "evaluation": {"window": {"from": "2026-11-01", "to": "2026-11-08"}, "rows": 10, "positives": 2},
              "drift": step, "reasons": ["r"], "blockers": ["drift check not run"]}
    text = markdown(report)
    assert "reference: not run: insufficient_data: 5 events" in text and ": None" not in text
