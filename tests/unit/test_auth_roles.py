import pytest

from sira.core.auth import PERMISSIONS, ROLES, Identity, authorize, may, validate_roles
from sira.core.errors import InvalidInput, PermissionDenied


def who(*roles):
    return Identity("someone", frozenset(roles))


# The role table of CONVENTIONS.md, written out: (role, actions it may take).
EXPECTED = {
    "service": {"score", "events.write", "feedback.write", "rejected.read"},  # rejected: what it posted
    "viewer": {"models.read"},
    "analyst": {"models.read", "predictions.read", "feedback.write", "features.read"},
    "data_scientist": {"models.read", "models.write", "promotion.request", "batch.score", "features.read",
                       "features.materialize"},
    "approver": {"models.read", "promotion.decide"},
    "operator": {"models.read", "rollback", "serving.reload", "monitoring.run", "features.materialize"},
    "admin": set(PERMISSIONS),
}


@pytest.mark.parametrize("role", ROLES)
def test_each_role_may_do_exactly_what_the_conventions_say(role):
    allowed = {action for action in PERMISSIONS if may(who(role), action)}
    assert allowed == EXPECTED[role]


def test_roles_combine_and_denials_name_the_roles_needed():
    both = who("viewer", "approver")
    assert may(both, "promotion.decide") and may(both, "models.read") and not may(both, "rollback")
    with pytest.raises(PermissionDenied, match="needs one of the roles admin, operator"):
        authorize(who("viewer"), "rollback")
    with pytest.raises(KeyError):
        may(who("admin"), "launch.rockets")


def test_role_names_are_validated():
    assert validate_roles(["admin", "viewer", "viewer"]) == ["viewer", "admin"]
    with pytest.raises(InvalidInput, match="unknown: root"):
        validate_roles(["root"])
    with pytest.raises(InvalidInput):
        validate_roles([])
