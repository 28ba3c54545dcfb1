"""The version lifecycle and approval rules, as pure functions (no I/O; one exception, :func:`check_asked`,
reads the status of the request an approver named).

candidate → validated → staging → production → archived, or rejected.
``production`` is reached only when a promotion request gathers the model's
required number of distinct approvals (a policy may promote on its own only
when that number is 0), or by a rollback, which brings the previous
production version back from ``archived``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sira.core import audit
from sira.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied

if TYPE_CHECKING:
    from sira.core.db import Connection

STATUSES = ("candidate", "validated", "staging", "production", "archived", "rejected")
# Direct transitions; production is entered only through approve_request / rollback.
TRANSITIONS: dict[str, frozenset[str]] = {
    "candidate": frozenset({"validated", "rejected"}),
    "validated": frozenset({"staging", "production", "rejected", "archived"}),
    "staging": frozenset({"validated", "production", "archived", "rejected"}),
    "production": frozenset({"archived"}),
    "archived": frozenset({"production"}),
    "rejected": frozenset(),
}
PROMOTABLE = frozenset({"validated", "staging"})


class IllegalTransition(Conflict):
    code = "illegal_transition"


def check_transition(current: str, target: str, *, via: str = "direct") -> None:
    """Raise unless ``current → target`` is legal (production only via approval or rollback)."""
    for status in (current, target):
        if status not in STATUSES:
            raise InvalidInput(f"unknown status {status!r}; statuses: {', '.join(STATUSES)}")
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"a {current} version cannot become {target}",
                                details={"from": current, "to": target})
    if target == "production" and via not in ("approval", "rollback", "policy"):
        raise IllegalTransition("production is reached through a promotion request and its approvals, or a rollback",
                                details={"from": current, "to": target})
    if current == "archived" and via != "rollback":
        raise IllegalTransition("an archived version returns to production only by a rollback",
                                details={"from": current, "to": target})


@dataclass(frozen=True)
class GateResult:
    passed: bool
    failures: tuple[str, ...]


def validation_gates(version: Mapping[str, Any], *, checksum_ok: bool, feature_set_names: Sequence[str] | None) -> GateResult:
    """What a candidate must show before it is ``validated``."""
    failures = []
    metrics = version.get("metrics") or {}
    for part in ("validation", "test"):
        ap = (metrics.get(part) or {}).get("average_precision")
        if ap is None:
            failures.append(f"{part} average precision is missing")
    thresholds = version.get("thresholds") or {}
    if not {"review", "block"} <= set(thresholds):
        failures.append("decision thresholds (review, block) are not set")
    elif not 0 <= thresholds["review"] <= thresholds["block"] <= 1:
        failures.append("thresholds must satisfy 0 <= review <= block <= 1")
    if not checksum_ok:
        failures.append("the artifact does not match its registered checksum")
    schema = [f["name"] for f in version.get("feature_schema") or []]
    if not schema:
        failures.append("the feature schema is empty")
    elif feature_set_names is not None:
        unknown = sorted(set(schema) - set(feature_set_names))
        if unknown:
            failures.append(f"features not in the model's feature set: {', '.join(unknown[:5])}")
    return GateResult(not failures, tuple(failures))


def check_approver(approver: str, roles: Iterable[str], *, creator: str | None, requester: str,
                   already: Iterable[str], what: str = "promotion", actor: audit.Actor | None = None,
                   target: str | None = None) -> None:
    """Raise unless ``approver`` may decide on a ``what`` (a promotion, a threshold change): holds the approver
    role, neither created the version (``creator``; None: a change that does not bar it, such as new
    thresholds) nor requested the change (four eyes), has not decided on this request before. ``actor``: who
    asks, the refusal audited as theirs (None: a question, such as who may decide, not an attempt), naming the
    version (``target``, "model:vN") and the decision's request."""
    def refused(message: str, code: str | None = None) -> PermissionDenied:
        exc = PermissionDenied(message, code=code, details={"action": "promotion.decide"})
        if actor is None:
            return exc
        return audit.denied(exc, actor, "promotion.decide", target_type="model_version" if target else None,
                            target_id=target, details={"reason": message, "what": what, "code": code})

    if "approver" not in set(roles) and "admin" not in set(roles):
        raise refused(f"{approver} does not hold the approver role")
    if creator is not None and approver == creator:
        raise refused(f"the creator of a version cannot approve or reject its {what}", code="self_approval")
    if approver == requester:
        raise refused(f"the requester of a {what} cannot decide on it", code="self_approval")
    if approver in set(already):
        raise Conflict(f"{approver} has already decided on this request", code="already_decided")


def request_outcome(required: int, decisions: Sequence[tuple[str, str]]) -> str:
    """pending, approved (``required`` distinct approvals) or rejected (any rejection closes it)."""
    if any(decision == "reject" for _, decision in decisions):
        return "rejected"
    approvers = {who for who, decision in decisions if decision == "approve"}
    return "approved" if len(approvers) >= required else "pending"


# A decision names the request the approver read, by its table: (the word for it, the name of its id)
ASKED = {"sira_promotion_requests": ("promotion request", "request_id"),
         "sira_threshold_sets": ("threshold change", "set_id")}


async def check_asked(conn: Connection, table: str, asked: int | None, pending: Any, version_id: int,
                      target: str) -> None:
    """Refuse a decision on ``asked`` (the id of the request the caller read, a promotion's or a threshold
    change's; None: whichever is pending) unless it is ``pending`` (the version's pending row of ``table``, or
    None): 404 not_found when the version has no such request, else 409 request_closed with its status and the
    one pending now. Decisions are addressed by version: an approval sent from a stale card (its request
    rejected, a new one asked with another reason or other thresholds) decided the new request unread."""
    if asked is None or (pending is not None and pending["id"] == asked):
        return
    what, key = ASKED[table]
    status = await conn.fetchval(f"SELECT status FROM {table} WHERE id = $1 AND version_id = $2",
                                 asked, version_id)  # table: one of ASKED, never the caller's
    if status is None:
        raise NotFound(f"{target} has no {what} {asked}", details={"field": key, key: asked})
    now = pending["id"] if pending is not None else None
    raise Conflict(f"the {what} {asked} of {target} is closed ({status})"
                   + (f"; {what} {now} is pending now: read it before deciding" if now is not None else ""),
                   code="request_closed", details={"status": status, key: asked, "pending": now})
