"""The lifecycle state machine and approval rules, exhaustively and by property."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sira.core.errors import Conflict, InvalidInput, PermissionDenied
from sira.registry.lifecycle import (
    STATUSES,
    TRANSITIONS,
    IllegalTransition,
    check_approver,
    check_transition,
    request_outcome,
    validation_gates,
)

LEGAL_DIRECT = {
    ("candidate", "validated"), ("candidate", "rejected"), ("validated", "staging"), ("validated", "rejected"),
    ("validated", "archived"), ("staging", "validated"), ("staging", "archived"), ("staging", "rejected"),
    ("production", "archived"),
}


@pytest.mark.parametrize("current, target", list(itertools.product(STATUSES, STATUSES)))
def test_every_pair_of_statuses(current, target):
    if (current, target) in LEGAL_DIRECT:
        check_transition(current, target)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(current, target)


def test_production_only_through_approval_policy_or_rollback():
    for via in ("approval", "policy"):
        check_transition("validated", "production", via=via)
        check_transition("staging", "production", via=via)
    check_transition("archived", "production", via="rollback")
    with pytest.raises(IllegalTransition, match="only by a rollback"):
        check_transition("archived", "production", via="approval")
    with pytest.raises(IllegalTransition):
        check_transition("candidate", "production", via="approval")
    with pytest.raises(InvalidInput):
        check_transition("candidate", "shipped")


@given(st.lists(st.sampled_from(STATUSES), max_size=12))
def test_random_walks_only_follow_the_table(path):
    status = "candidate"
    for target in path:
        try:
            check_transition(status, target, via="rollback" if status == "archived" else "approval")
        except IllegalTransition:
            assert target not in TRANSITIONS[status] or status == "archived"
            continue
        assert target in TRANSITIONS[status]
        status = target
    assert status in STATUSES
    assert TRANSITIONS["rejected"] == frozenset()  # rejected is final


@given(st.integers(0, 5), st.lists(st.tuples(st.sampled_from("abcdefg"), st.sampled_from(["approve", "reject"])),
                                   max_size=8))
def test_request_outcome(required, decisions):
    outcome = request_outcome(required, decisions)
    distinct = {w for w, d in decisions if d == "approve"}
    if any(d == "reject" for _, d in decisions):
        assert outcome == "rejected"
    elif len(distinct) >= required:
        assert outcome == "approved"
    else:
        assert outcome == "pending"


def test_approver_rules():
    check_approver("bob", {"approver"}, creator="dana", requester="dana", already=["ann"])
    with pytest.raises(PermissionDenied, match="approver role"):
        check_approver("bob", {"viewer"}, creator="dana", requester="dana", already=[])
    with pytest.raises(PermissionDenied) as info:
        check_approver("dana", {"approver"}, creator="dana", requester="x", already=[])
    assert info.value.code == "self_approval"
    with pytest.raises(PermissionDenied, match="requester") as info:  # four eyes: not the one who asked either
        check_approver("olga", {"approver", "data_scientist"}, creator="dana", requester="olga", already=[])
    assert info.value.code == "self_approval"
    with pytest.raises(Conflict):
        check_approver("ann", {"approver"}, creator="dana", requester="dana", already=["ann"])


def test_validation_gates_list_every_failure():
    good = {"metrics": {"validation": {"average_precision": 0.5}, "test": {"average_precision": 0.4}},
            "thresholds": {"review": 0.1, "block": 0.9}, "feature_schema": [{"name": "amount"}]}
    assert validation_gates(good, checksum_ok=True, feature_set_names=["amount"]).passed
    bad = validation_gates({**good, "metrics": {}, "thresholds": {"review": 0.9, "block": 0.1},
                            "feature_schema": [{"name": "zodiac"}]}, checksum_ok=False, feature_set_names=["amount"])
    assert not bad.passed and len(bad.failures) == 5
