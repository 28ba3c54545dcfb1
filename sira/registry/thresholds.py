"""Decision thresholds as a governed history: threshold sets.

A version's review and block thresholds are revisions of a threshold set (``sira_threshold_sets``):
revision 1 is what training chose on validation (made when the version is registered); a change is a new
revision, requested with a reason and the what-if evidence the requester saw, and approved as a promotion
is (the model's ``required_approvals``; four eyes: the requester may not decide; any rejection closes it;
``required_approvals = 0`` lets the policy apply it at once). Approval makes it the version's one active
set: the database copies its values to the version's ``thresholds`` for every reader and announces it on
``sira_registry``, so replicas swap thresholds without reloading the artifact. Each prediction records the
set that decided it (``sira_predictions.threshold_set``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import asyncpg

from sira.core import audit
from sira.core.auth import authorize, principals
from sira.core.errors import Conflict, InvalidInput, NotFound
from sira.registry import lifecycle, webhooks
from sira.registry.models import get_model, get_version
from sira.registry.settings import redacted

if TYPE_CHECKING:
    from sira.core.db import Connection

CHANGEABLE = ("validated", "staging", "production")  # what serving or a promotion may still use


def check_values(review: Any, block: Any) -> tuple[float, float]:
    """Two thresholds as floats with 0 <= review <= block <= 1, else a specific error."""
    def number(value: Any, field: str) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{field}: a threshold is a number", code="invalid_value",
                               details={"field": field}) from None

    r, b = number(review, "review"), number(block, "block")
    if not (math.isfinite(r) and math.isfinite(b) and 0 <= r <= b <= 1):
        field = "review" if not (math.isfinite(r) and 0 <= r <= 1) else "block"  # block: out of range, or below review
        raise InvalidInput(f"thresholds must satisfy 0 <= review <= block <= 1 (got review {r}, block {b})",
                           code="invalid_value", details={"field": field, "review": r, "block": b})
    return r, b


def _set(row: asyncpg.Record, approvals: list[asyncpg.Record] | None = None) -> dict[str, Any]:
    out = {"id": row["id"], "revision": row["revision"], "review": row["review"], "block": row["block"],
           "status": row["status"], "required_approvals": row["required_approvals"],
           "requested_by": row["requested_by"], "reason": row["reason"], "evidence": row["evidence"],
           "created_at": row["created_at"].isoformat(),
           "decided_at": row["decided_at"].isoformat() if row["decided_at"] else None,
           "activated_at": row["activated_at"].isoformat() if row["activated_at"] else None}
    if approvals is not None:
        out["decisions"] = [{"approver": a["approver"], "decision": a["decision"], "comment": a["comment"],
                             "at": a["created_at"].isoformat()} for a in approvals if a["set_id"] == row["id"]]
    return out


async def history(conn: Connection, identity: Any, model_name: str, version: int) -> dict[str, Any]:
    """Every threshold set of a version, newest first, with each one's decisions."""
    authorize(identity, "models.read")
    row = await get_version(conn, model_name, version)
    sets = await conn.fetch("SELECT * FROM sira_threshold_sets WHERE version_id = $1 ORDER BY revision DESC",
                            row["id"])
    approvals = await conn.fetch(
        """SELECT a.* FROM sira_threshold_approvals a JOIN sira_threshold_sets s ON s.id = a.set_id
            WHERE s.version_id = $1 ORDER BY a.id""", row["id"])
    now_required = await conn.fetchval("SELECT required_approvals FROM sira_models WHERE name = $1", model_name)
    out = [_set(s, list(approvals)) for s in sets]
    for s in out:  # a pending change needs what decide_change will count: the model's number if raised since
        if s["status"] == "pending":
            s["required_approvals"] = max(s["required_approvals"], now_required)
    return {"model": model_name, "version": version, "active": row["threshold_set"], "sets": out}


async def get_set(conn: Connection, set_id: int) -> dict[str, Any] | None:
    """One threshold set by id (what a stored prediction names), or None."""
    row = await conn.fetchrow("SELECT * FROM sira_threshold_sets WHERE id = $1", set_id)
    return _set(row) if row is not None else None


async def _activate(conn: Connection, actor: audit.Actor, model_name: str, version: dict[str, Any],
                    pending: asyncpg.Record, via: str, approvers: list[str]) -> None:
    await conn.execute("UPDATE sira_threshold_sets SET status = 'superseded' WHERE version_id = $1 "
                       "AND status = 'active'", pending["version_id"])
    await conn.execute("UPDATE sira_threshold_sets SET status = 'active', decided_at = coalesce(decided_at, now()), "
                       "activated_at = now() WHERE id = $1", pending["id"])
    change = {"model": model_name, "version": version["version"], "set": pending["id"],
              "revision": pending["revision"], "from": dict(version["thresholds"] or {}),
              "to": {"review": pending["review"], "block": pending["block"]}, "via": via,
              "reason": pending["reason"], "approvers": approvers}
    await audit.record(conn, actor, "thresholds.change", target_type="model_version",
                       target_id=f"{model_name}:v{version['version']}", details=change)
    await webhooks.enqueue(conn, "thresholds.change", {**change, "actor": actor.name})


async def request_change(conn: Connection, identity: Any, model_name: str, version: int, *, review: Any,
                         block: Any, reason: str, evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ask for new thresholds on a version (call inside a transaction): a pending set that approvals activate;
    with ``required_approvals = 0`` the policy activates it at once."""
    authorize(identity, "promotion.request", target_type="model_version", target_id=f"{model_name}:v{version}")
    r, b = check_values(review, block)
    if not (reason or "").strip():
        raise InvalidInput("reason: a threshold change needs one", code="missing_field", details={"field": "reason"})
    reason = redacted(reason.strip()[:2000]) or ""
    model = await get_model(conn, model_name)
    row = dict(await get_version(conn, model_name, version, lock=True))
    if row["status"] not in CHANGEABLE:
        raise lifecycle.IllegalTransition(f"the thresholds of a {row['status']} version cannot change",
                                          details={"status": row["status"]})
    current = row["thresholds"] or {}
    if current.get("review") == r and current.get("block") == b:
        raise Conflict(f"{model_name} v{version} already uses review {r} and block {b}", code="no_change")
    revision = await conn.fetchval("SELECT coalesce(max(revision), 0) + 1 FROM sira_threshold_sets "
                                   "WHERE version_id = $1", row["id"])
    try:
        async with conn.transaction():
            pending = await conn.fetchrow(
                """INSERT INTO sira_threshold_sets (version_id, revision, review, block, required_approvals,
                                                    requested_by, reason, evidence)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *""",
                row["id"], revision, r, b, model["required_approvals"], identity.name, reason, evidence or {})
    except asyncpg.UniqueViolationError:
        raise Conflict(f"{model_name} v{version} already has a pending threshold change",
                       code="request_pending") from None
    assert pending is not None  # INSERT ... RETURNING gives its row
    details = {"set": pending["id"], "revision": revision, "review": r, "block": b, "from": current,
               "required_approvals": model["required_approvals"]}
    await audit.record(conn, identity.actor(), "thresholds.request", target_type="model_version",
                       target_id=f"{model_name}:v{version}", details={**details, "reason": reason})
    await webhooks.enqueue(conn, "thresholds.request", {"model": model_name, "version": version,
                                                        "requested_by": identity.name, "reason": reason, **details})
    status = "pending"
    if model["required_approvals"] == 0:  # as for promotion: the only way a policy changes them on its own
        await _activate(conn, audit.Actor(f"policy:{model_name}", "policy"), model_name, row, pending, "policy", [])
        status = "active"
    return {"model": model_name, "version": version, **details, "status": status}


async def decide_change(conn: Connection, identity: Any, model_name: str, version: int, decision: str,
                        comment: str | None = None, set_id: int | None = None) -> dict[str, Any]:
    """An approver's approve/reject on a version's pending threshold change (call inside a transaction);
    the last required approval activates it. ``set_id``: the change the approver read, refused (409
    request_closed) unless it is the one pending (:func:`~sira.registry.lifecycle.check_asked`)."""
    if decision not in ("approve", "reject"):
        raise InvalidInput("decision must be approve or reject")
    authorize(identity, "promotion.decide", target_type="model_version", target_id=f"{model_name}:v{version}")
    comment = redacted(comment)
    row = dict(await get_version(conn, model_name, version, lock=True))
    pending = await conn.fetchrow("SELECT * FROM sira_threshold_sets WHERE version_id = $1 AND status = 'pending' "
                                  "FOR UPDATE", row["id"])
    await lifecycle.check_asked(conn, "sira_threshold_sets", set_id, pending, row["id"], f"{model_name} v{version}")
    if pending is None:  # never asked (404), or decided, or cancelled with the version's move (409, as promotions)
        last = await conn.fetchval("SELECT status FROM sira_threshold_sets WHERE version_id = $1 AND revision > 1 "
                                   "ORDER BY revision DESC LIMIT 1", row["id"])  # revision 1: training's, not asked
        if last is None:
            raise NotFound(f"{model_name} v{version} has no pending threshold change: ask for new thresholds first",
                           code="no_pending_request", details={"model": model_name, "version": version})
        why = f", the version being {row['status']} now" if last == "cancelled" else ""
        raise Conflict(f"the threshold change of {model_name} v{version} is closed ({last}{why})",
                       code="request_closed", details={"status": last, "version_status": row["status"]})
    previous = await conn.fetch("SELECT approver, decision FROM sira_threshold_approvals WHERE set_id = $1",
                                pending["id"])
    approver, requester, *already = await principals(conn, identity.name, pending["requested_by"],
                                                     *[p["approver"] for p in previous])
    lifecycle.check_approver(approver, identity.roles, creator=None, requester=requester, already=already,
                             what="threshold change", actor=identity.actor(), target=f"{model_name}:v{version}")
    await conn.execute("INSERT INTO sira_threshold_approvals (set_id, approver, decision, comment) "
                       "VALUES ($1, $2, $3, $4)", pending["id"], identity.name, decision, comment)
    decisions = [(p["approver"], p["decision"]) for p in previous] + [(identity.name, decision)]
    # raised on the model since the change was asked: raised for it too, as for a promotion (lowering does not lower)
    required = max(pending["required_approvals"], row["required_approvals"])
    outcome = lifecycle.request_outcome(required, decisions)
    await audit.record(conn, identity.actor(), f"thresholds.{decision}", target_type="model_version",
                       target_id=f"{model_name}:v{version}",
                       details={"set": pending["id"], "comment": comment, "outcome": outcome})
    await webhooks.enqueue(conn, f"thresholds.{decision}", {"model": model_name, "version": version,
                                                             "set": pending["id"], "by": identity.name,
                                                             "comment": comment, "outcome": outcome})
    if outcome == "approved":
        approvers = sorted(w for w, d in decisions if d == "approve")
        await _activate(conn, identity.actor(), model_name, row, pending, "approval", approvers)
    elif outcome == "rejected":
        await conn.execute("UPDATE sira_threshold_sets SET status = 'rejected', decided_at = now() WHERE id = $1",
                           pending["id"])
    return {"model": model_name, "version": version, "set": pending["id"], "revision": pending["revision"],
            "outcome": outcome, "approvals": sum(1 for _, d in decisions if d == "approve"),
            "required_approvals": required,
            "status": {"approved": "active", "rejected": "rejected"}.get(outcome, "pending")}
