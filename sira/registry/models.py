"""The model registry: models, training runs and versions.

Versions are numbered per model from 1 under a lock on the model's row, and
every registration writes an audit row in the same transaction. Lifecycle
rules, approvals and rollback build on these tables.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import asyncpg

from sira.core import audit
from sira.core.artifacts import ArtifactRef
from sira.core.errors import Conflict, InvalidInput, NoProductionVersion, NotFound, UnknownModel
from sira.registry import webhooks
from sira.registry.history import check_features_kept, rollback_target
from sira.registry.history import production_history as production_history  # re-exported: readers import it here
from sira.registry.settings import GOVERNANCE, MODEL_SETTINGS, check_source, checked, redacted, refused_setting
from sira.registry.verdicts import policy_says, retrain_verdict

if TYPE_CHECKING:
    from sira.core.db import Connection

MODEL_TYPES = ("fraud_detection", "churn", "anomaly")


async def get_model(conn: Connection, name: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM sira_models WHERE name = $1", name)
    if row is None:
        raise UnknownModel(name)
    return row


async def ensure_model(
    conn: Connection, name: str, *, actor: audit.Actor, model_type: str = "fraud_detection",
    entity_type: str = "customer", feature_set: str | None = None, feature_set_version: int | None = None,
    label_maturity_days: int | None = None,
) -> tuple[asyncpg.Record, bool]:
    """The model, created with defaults when it does not exist yet (and whether it was); one that exists reads
    the source this run reads (``feature_set``: the feature store; None: a table of its own)."""
    if model_type not in MODEL_TYPES:
        raise InvalidInput(f"model type must be one of {', '.join(MODEL_TYPES)}", details={"field": "model_type"})
    row = await conn.fetchrow("SELECT * FROM sira_models WHERE name = $1", name)
    if row is not None:
        check_source(row, feature_set is not None)
        return row, False
    try:
        async with conn.transaction():
            row = await conn.fetchrow(
                """INSERT INTO sira_models (name, model_type, entity_type, feature_set, feature_set_version, created_by,
                                           label_maturity_days)
                   VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, 30)) ON CONFLICT (name) DO NOTHING RETURNING *""",
                name, model_type, entity_type, feature_set, feature_set_version, actor.name, label_maturity_days,
            )
    except asyncpg.CheckViolationError:
        raise InvalidInput(f"invalid model name {name!r}: lowercase letters, digits, '-' and '_', starting with a "
                           "letter", details={"field": "model"}) from None
    if row is None:  # created concurrently
        return await get_model(conn, name), False
    await audit.record(conn, actor, "model.create", target_type="model", target_id=name,
                       details={"model_type": model_type, "defaults": True})
    return row, True


async def start_run(
    conn: Connection, model_id: int, *, kind: str, params: dict[str, Any], actor: audit.Actor,
    code_version: str | None, ray_job_id: str | None = None,
) -> uuid.UUID:
    return await conn.fetchval(
        """INSERT INTO sira_training_runs (model_id, kind, params, started_by, code_version, ray_job_id)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING run_id""",
        model_id, kind, params, actor.name, code_version, ray_job_id,
    )


async def finish_run(
    conn: Connection, run_id: uuid.UUID, *, metrics: dict[str, Any], fingerprint: dict[str, Any],
    timings: dict[str, float], params: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """UPDATE sira_training_runs SET status = 'succeeded', metrics = $2, dataset_fingerprint = $3, timings = $4,
                  params = CASE WHEN $5::jsonb IS NULL THEN params ELSE coalesce(params, '{}') || $5::jsonb END,
                  finished_at = now()  -- merged: what the run started with (a retrain's key) stays
            WHERE run_id = $1""",
        run_id, metrics, fingerprint, timings, params,
    )


async def fail_run(conn: Connection, run_id: uuid.UUID, *, error: str, timings: dict[str, float]) -> None:
    await conn.execute(
        """UPDATE sira_training_runs SET status = 'failed', error = $2, timings = $3, finished_at = now()
            WHERE run_id = $1 AND status = 'running'""",
        run_id, (redacted(error) or "")[:4000], timings,
    )


async def register_candidate(
    conn: Connection, model: asyncpg.Record, *, run_id: uuid.UUID, artifact: ArtifactRef,
    feature_schema: list[dict[str, Any]], params: dict[str, Any], metrics: dict[str, Any],
    thresholds: dict[str, float], feature_set_version: int | None, actor: audit.Actor,
) -> int:
    """A new ``candidate`` version, numbered after the model's last one (call inside a transaction)."""
    await conn.execute("SELECT 1 FROM sira_models WHERE id = $1 FOR UPDATE", model["id"])
    version = await conn.fetchval(
        "SELECT coalesce(max(version), 0) + 1 FROM sira_model_versions WHERE model_id = $1", model["id"]
    )
    await conn.execute(
        """INSERT INTO sira_model_versions (model_id, version, run_id, artifact_uri, artifact_sha256,
                                            feature_set_version, feature_schema, params, metrics, thresholds, created_by,
                                            description)  -- the model's, as registered: explanation reports quote it
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, (SELECT description FROM sira_models WHERE id = $1))""",
        model["id"], version, run_id, artifact.uri, artifact.sha256, feature_set_version, feature_schema, params,
        metrics, thresholds, actor.name,
    )
    await audit.record(conn, actor, "version.register", target_type="model_version",
                       target_id=f"{model['name']}:v{version}",
                       details={"run_id": str(run_id), "artifact_sha256": artifact.sha256, "status": "candidate"})
    return int(version)


# -- lifecycle, promotion, approvals, rollback ------------------------------------------


async def get_version(conn: Connection, model_name: str, version: int, *, lock: bool = False) -> asyncpg.Record:
    """A version with its model's governance settings."""
    row = await conn.fetchrow(
        f"""SELECT v.*, m.name AS model_name, m.required_approvals, m.feature_set, m.feature_set_version AS model_fs_version
              FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id
             WHERE m.name = $1 AND v.version = $2 {"FOR UPDATE OF v" if lock else ""}""",
        model_name, version,
    )
    if row is None:
        await get_model(conn, model_name)  # unknown model: say so
        raise NotFound(f"model {model_name!r} has no version {version}",
                       details={"field": "version", "model": model_name, "version": version})
    return row


async def version_in_use(conn: Connection, model_name: str, version: int | None = None) -> asyncpg.Record:
    """The version a job works with: the one named, else the model's production version."""
    if version is not None:
        return await get_version(conn, model_name, version)
    model = await get_model(conn, model_name)
    row = await conn.fetchval(
        "SELECT version FROM sira_model_versions WHERE model_id = $1 AND status = 'production'", model["id"]
    )
    if row is None:
        raise NoProductionVersion(model_name, "name a version")
    return await get_version(conn, model_name, row)



def loadable(row: Any) -> dict[str, Any]:
    """What a job needs of a version row to load it (:meth:`sira.serving.scoring.ModelRuntime.load`), as a plain
    dict that travels to Ray workers."""
    return {k: row[k] for k in ("model_id", "model_name", "version", "artifact_uri", "artifact_sha256",
                                "thresholds", "threshold_set", "status")}


async def _set_status(conn: Connection, version_id: int, status: str) -> None:
    await conn.execute(
        "UPDATE sira_model_versions SET status = $2, status_changed_at = now() WHERE id = $1", version_id, status
    )


async def validate_version(conn: Connection, settings: Any, identity: Any, model_name: str,
                           version: int) -> dict[str, Any]:
    """candidate → validated, when the gates pass (metrics, thresholds, artifact checksum, feature schema)."""
    from sira.core import artifacts
    from sira.core.auth import authorize
    from sira.features.definitions import get_feature_set
    from sira.registry import lifecycle

    authorize(identity, "models.write")
    row = await get_version(conn, model_name, version, lock=True)
    lifecycle.check_transition(row["status"], "validated")
    try:
        artifacts.load_artifact(settings, artifacts.ArtifactRef(row["artifact_uri"], row["artifact_sha256"]))
        checksum_ok = True
    except (artifacts.ArtifactTampered, NotFound):
        checksum_ok = False
    names = get_feature_set(row["feature_set"], row["model_fs_version"]).names() if row["feature_set"] else None
    gates = lifecycle.validation_gates(dict(row), checksum_ok=checksum_ok, feature_set_names=names)
    if not gates.passed:  # audited once the transaction has rolled back (inside it, it was rolled back too)
        raise audit.denied(InvalidInput(f"{model_name} v{version} fails validation: " + "; ".join(gates.failures),
                                        code="validation_failed", details={"failures": list(gates.failures)}),
                           identity.actor(), "version.validate", target_type="model_version",
                           target_id=f"{model_name}:v{version}", details={"failures": list(gates.failures)})
    await _set_status(conn, row["id"], "validated")
    await audit.record(conn, identity.actor(), "version.validate", target_type="model_version",
                       target_id=f"{model_name}:v{version}", details={"from": row["status"], "to": "validated"})
    return {"model": model_name, "version": version, "status": "validated"}


def verify_artifact(actor: audit.Actor, model_name: str, row: Any) -> None:
    """Refuse (409 artifact_checksum_mismatch, audited) a version whose artifact files no longer match the
    registered checksum, as validation checks them: what production would load must be what was approved."""
    from sira.core import artifacts
    from sira.core.config import get_settings

    try:
        artifacts.load_artifact(get_settings(), artifacts.ArtifactRef(row["artifact_uri"], row["artifact_sha256"]))
    except (artifacts.ArtifactTampered, NotFound) as exc:  # tampered, or gone from the store (artifact_missing)
        raise audit.denied(exc, actor, "production.change", target_type="model_version",
                           target_id=f"{model_name}:v{row['version']}", details={"reason": exc.message}) from None


async def _change_production(conn: Connection, actor: audit.Actor, model_id: int, model_name: str,
                             target: asyncpg.Record, *, via: str, reason: str | None,
                             extra: dict[str, Any] | None = None) -> int | None:
    """Make ``target`` the production version (the current one is archived), with a history row."""
    from sira.registry import lifecycle

    await check_features_kept(conn, actor, model_name, await conn.fetchval(
        "SELECT feature_set FROM sira_models WHERE id = $1 FOR UPDATE", model_id), target)
    verify_artifact(actor, model_name, target)
    current = await conn.fetchrow(
        "SELECT id, version FROM sira_model_versions WHERE model_id = $1 AND status = 'production' FOR UPDATE",
        model_id,
    )
    fresh = await conn.fetchval("SELECT status FROM sira_model_versions WHERE id = $1", target["id"])
    lifecycle.check_transition(fresh, "production", via=via)
    if current is not None:
        await _set_status(conn, current["id"], "archived")
    try:
        await _set_status(conn, target["id"], "production")
    except asyncpg.UniqueViolationError:
        raise Conflict(f"{model_name}: another production change won the race; try again") from None
    change = {"from": current["version"] if current else None, "to": target["version"], "via": via, "reason": reason,
              **(extra or {})}
    await audit.record(conn, actor, "production.change", target_type="model", target_id=model_name, details=change)
    await webhooks.enqueue(conn, "production.change", {"model": model_name, "actor": actor.name, **change})
    if via != "rollback":  # an older version's pending request would archive this newer one on a late approval
        for old in await conn.fetch(
                """UPDATE sira_promotion_requests r SET status = 'superseded', decided_at = now()
                     FROM sira_model_versions v
                    WHERE r.version_id = v.id AND r.model_id = $1 AND r.status = 'pending'
                      AND r.target_status = 'production' AND v.version < $2
                RETURNING r.id, v.version""", model_id, target["version"]):
            await audit.record(conn, actor, "promotion.superseded", target_type="model_version",
                               target_id=f"{model_name}:v{old['version']}",
                               details={"request_id": old["id"], "by_version": target["version"]})
    return current["version"] if current else None


async def stage_version(conn: Connection, settings: Any, identity: Any, model_name: str, version: int,
                        reason: str | None = None) -> dict[str, Any]:
    """Put a version in ``staging``: serving scores it in shadow beside production (never returned).

    A candidate is validated first. The model's previous staging version, if
    any, goes back to ``validated`` (one staging version per model).
    """
    from sira.core.auth import authorize
    from sira.registry import lifecycle

    authorize(identity, "promotion.request", target_type="model_version", target_id=f"{model_name}:v{version}")
    reason = redacted(reason)
    row = await get_version(conn, model_name, version, lock=True)
    if row["status"] == "staging":
        return {"model": model_name, "version": version, "status": "staging", "replaced": None}
    if row["status"] == "candidate":
        await validate_version(conn, settings, identity, model_name, version)
        row = await get_version(conn, model_name, version, lock=True)
    lifecycle.check_transition(row["status"], "staging")
    await conn.execute("SELECT 1 FROM sira_models WHERE id = $1 FOR UPDATE", row["model_id"])
    previous = await conn.fetchrow(
        "SELECT id, version FROM sira_model_versions WHERE model_id = $1 AND status = 'staging' FOR UPDATE",
        row["model_id"],
    )
    if previous is not None:
        await _set_status(conn, previous["id"], "validated")
    await _set_status(conn, row["id"], "staging")
    details = {"from": row["status"], "to": "staging", "reason": reason,
               "replaced": previous["version"] if previous else None,
               "retrain_verdict": await retrain_verdict(conn, row["model_id"], version)}
    await audit.record(conn, identity.actor(), "version.stage", target_type="model_version",
                       target_id=f"{model_name}:v{version}", details=details)
    await webhooks.enqueue(conn, "version.stage", {"model": model_name, "version": version, **details})
    return {"model": model_name, "version": version, "status": "staging", "replaced": details["replaced"],
            "retrain_verdict": details["retrain_verdict"]}


async def request_promotion(conn: Connection, settings: Any, identity: Any, model_name: str, version: int,
                            reason: str | None = None, decision: Any = None) -> dict[str, Any]:
    """Ask for production. A candidate is validated first; the request is bound to the artifact checksum. A
    model that requires no approvals asks its promotion policy (``decision``: the one a retraining run just
    made, else :func:`~sira.registry.verdicts.policy_decision`): it promotes when the policy says so, else the
    request waits for an approver, with the policy's reasons."""
    from sira.core.auth import authorize
    from sira.registry import lifecycle

    authorize(identity, "promotion.request", target_type="model_version", target_id=f"{model_name}:v{version}")
    reason = redacted(reason)
    row = await get_version(conn, model_name, version, lock=True)
    if row["status"] == "candidate":
        await validate_version(conn, settings, identity, model_name, version)
        row = await get_version(conn, model_name, version, lock=True)
    if row["status"] not in lifecycle.PROMOTABLE:
        raise lifecycle.IllegalTransition(f"a {row['status']} version cannot be promoted",
                                          details={"status": row["status"]})
    try:
        async with conn.transaction():
            request_id = await conn.fetchval(
                """INSERT INTO sira_promotion_requests (model_id, version_id, artifact_sha256, required_approvals,
                                                        requested_by, reason)
                   VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
                row["model_id"], row["id"], row["artifact_sha256"], row["required_approvals"], identity.name, reason,
            )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"{model_name} v{version} already has a pending promotion request",
                       code="request_pending") from None
    verdict = await retrain_verdict(conn, row["model_id"], version)  # the policy rejected (or held) it: said
    said = await policy_says(conn, row, decision) if row["required_approvals"] == 0 else None
    await audit.record(conn, identity.actor(), "promotion.request", target_type="model_version", target_id=f"{model_name}:v{version}",
                       details={"request_id": request_id, "reason": reason, "required_approvals": row["required_approvals"],
                                "retrain_verdict": verdict, "policy": said})
    await webhooks.enqueue(conn, "promotion.request", {
        "model": model_name, "version": version, "request_id": request_id, "requested_by": identity.name,
        "reason": reason, "required_approvals": row["required_approvals"]})
    status = "pending"
    if said is not None and said["promotes"]:  # the only way a policy promotes on its own
        policy = audit.Actor(f"policy:{model_name}", "policy")
        await _change_production(conn, policy, row["model_id"], model_name, row, via="policy", reason=reason,
                                 extra={"request_id": request_id, "requested_by": identity.name,
                                        "policy_reasons": said["reasons"]})
        await conn.execute("UPDATE sira_promotion_requests SET status = 'approved', decided_at = now() WHERE id = $1",
                           request_id)
        status = "approved"
    return {"model": model_name, "version": version, "request_id": request_id, "status": status,
            "required_approvals": row["required_approvals"], "retrain_verdict": verdict, "policy": said}


async def decide(conn: Connection, identity: Any, model_name: str, version: int, decision: str,
                 comment: str | None = None, request_id: int | None = None) -> dict[str, Any]:
    """An approver's approve/reject on the pending request (``request_id``: the one read); the last promotes."""
    from sira.core.auth import authorize, principals
    from sira.registry import lifecycle

    if decision not in ("approve", "reject"):
        raise InvalidInput("decision must be approve or reject")
    authorize(identity, "promotion.decide", target_type="model_version", target_id=f"{model_name}:v{version}")
    comment = redacted(comment)
    row = await get_version(conn, model_name, version, lock=True)  # the version, then the model: as staging does
    request = await conn.fetchrow(
        "SELECT * FROM sira_promotion_requests WHERE version_id = $1 AND status = 'pending' FOR UPDATE", row["id"]
    )
    await lifecycle.check_asked(conn, "sira_promotion_requests", request_id, request, row["id"], f"{model_name} v{version}")
    if request is None:
        last = await conn.fetchval(
            "SELECT status FROM sira_promotion_requests WHERE version_id = $1 ORDER BY id DESC LIMIT 1", row["id"]
        )
        if last is not None:
            raise Conflict(f"the promotion request of {model_name} v{version} is closed ({last})",
                           code="request_closed", details={"status": last})
        raise NotFound(f"{model_name} v{version} has no pending promotion request: request its promotion first",
                       code="no_pending_request", details={"model": model_name, "version": version})
    if request["artifact_sha256"] != row["artifact_sha256"]:
        raise Conflict("the version's artifact changed since promotion was requested", code="artifact_changed")
    previous = await conn.fetch("SELECT approver, decision FROM sira_approvals WHERE request_id = $1", request["id"])
    approver, creator, requester, *already = await principals(
        conn, identity.name, row["created_by"], request["requested_by"], *[p["approver"] for p in previous])
    lifecycle.check_approver(approver, identity.roles, creator=creator, requester=requester, already=already,
                             actor=identity.actor(), target=f"{model_name}:v{version}")
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO sira_approvals (request_id, approver, decision, comment) VALUES ($1, $2, $3, $4)",
                request["id"], identity.name, decision, comment,
            )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"{identity.name} has already decided on this request", code="already_decided") from None
    decisions = [(p["approver"], p["decision"]) for p in previous] + [(identity.name, decision)]
    # an admin who raised the model's required approvals since the request raised them for it too (lowering
    # them does not lower what a pending request was opened with); one the policy left pending needs one
    required = max(request["required_approvals"], row["required_approvals"], 1)
    outcome = lifecycle.request_outcome(required, decisions)
    await audit.record(conn, identity.actor(), f"promotion.{decision}", target_type="model_version",
                       target_id=f"{model_name}:v{version}",
                       details={"request_id": request["id"], "comment": comment, "outcome": outcome})
    await webhooks.enqueue(conn, f"promotion.{decision}", {
        "model": model_name, "version": version, "request_id": request["id"], "by": identity.name,
        "comment": comment, "outcome": outcome})
    previous_version = None
    if outcome == "approved":
        previous_version = await _change_production(
            conn, identity.actor(), row["model_id"], model_name, row, via="approval", reason=request["reason"],
            extra={"request_id": request["id"], "requested_by": request["requested_by"],
                   "approvers": sorted(w for w, d in decisions if d == "approve")},
        )
    if outcome != "pending":
        await conn.execute("UPDATE sira_promotion_requests SET status = $2, decided_at = now() WHERE id = $1",
                           request["id"], outcome)
    approvals = sum(1 for _, d in decisions if d == "approve")
    return {"model": model_name, "version": version, "request_id": request["id"], "outcome": outcome,
            "approvals": approvals, "required_approvals": required, "previous_production": previous_version}


async def rollback(conn: Connection, identity: Any, model_name: str, reason: str,
                   expected_version: int | None) -> dict[str, Any]:
    """Make the previous production version production again and archive the current one, in one step.

    ``expected_version`` is the production version the caller saw and means to replace (None: it saw
    none): two rollbacks sent on the same view would otherwise both succeed and undo each other (9 → 8 → 9).
    """
    from sira.core.auth import authorize

    authorize(identity, "rollback", target_type="model", target_id=model_name)
    if not reason or not reason.strip():
        raise InvalidInput("reason: a rollback needs one", code="missing_field", details={"field": "reason"})
    reason = redacted(reason) or ""
    model = await get_model(conn, model_name)
    await conn.execute("SELECT 1 FROM sira_models WHERE id = $1 FOR UPDATE", model["id"])
    current = await conn.fetchrow(
        "SELECT * FROM sira_model_versions WHERE model_id = $1 AND status = 'production'", model["id"]
    )
    if current is None:
        raise Conflict(f"{model_name} has no production version to roll back", code="nothing_to_roll_back")
    if current["version"] != expected_version:
        seen = f"v{expected_version}" if expected_version is not None else "none"
        raise Conflict(f"{model_name}: production is v{current['version']}, not {seen}: it changed since you looked "
                       "(see its history)",
                       code="production_moved",
                       details={"expected_version": expected_version, "production_version": current["version"]})
    came_from = await rollback_target(conn, model_name, current["version"])
    if came_from is None:
        raise Conflict(f"{model_name} v{current['version']} has no previous production version to roll back to",
                       code="no_previous_version")
    target = await get_version(conn, model_name, came_from, lock=True)
    await _change_production(conn, identity.actor(), model["id"], model_name, target, via="rollback", reason=reason)
    return {"model": model_name, "production": came_from, "archived": current["version"], "reason": reason}


# -- models and versions: reading and settings ----------------------------------------

def jsonable(row: asyncpg.Record) -> dict[str, Any]:
    from datetime import datetime

    return {k: (v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID) else v)
            for k, v in dict(row).items()}


async def create_model(conn: Connection, identity: Any, name: str, *, model_type: str,
                       entity_type: str = "customer", feature_set: str | None = "payments",
                       feature_set_version: int | None = None, **settings: Any) -> dict[str, Any]:
    """A new model (on the feature set's current version unless told). Its governance settings (approvals,
    policy, targets) need an admin."""
    from sira.core.auth import authorize
    from sira.features.definitions import CURRENT_VERSIONS, get_feature_set
    from sira.registry.settings import check_feature_set

    authorize(identity, "models.write")
    unknown = set(settings) - set(MODEL_SETTINGS)
    if unknown:
        raise InvalidInput(f"unknown model setting(s): {', '.join(sorted(unknown))}", code="unknown_field",
                           details={"field": min(unknown), "unknown": sorted(unknown), "accepted": list(MODEL_SETTINGS)})
    if any(settings.get(k) is not None for k in GOVERNANCE):
        authorize(identity, "models.settings")
    if model_type not in MODEL_TYPES:
        raise InvalidInput(f"model type must be one of {', '.join(MODEL_TYPES)}", details={"field": "model_type"})
    if feature_set is not None and feature_set_version is None:
        feature_set_version = CURRENT_VERSIONS.get(feature_set, 1)
    if feature_set is not None:  # an entity the model's features are about
        check_feature_set(name, feature_set, feature_set_version)
        entities = [spec.entity for spec in get_feature_set(feature_set, feature_set_version).entities]
        if entity_type not in entities:
            raise InvalidInput(f"entity type must be one of {feature_set}'s: {', '.join(entities)}",
                               details={"field": "entity_type"})
    values = checked(settings)
    columns = ["name", "model_type", "entity_type", "feature_set", "feature_set_version", "created_by", *values]
    args = [name, model_type, entity_type, feature_set, feature_set_version, identity.name, *values.values()]
    placeholders = ", ".join(f"${i}" for i in range(1, len(args) + 1))
    try:
        async with conn.transaction():
            row = await conn.fetchrow(
                f"INSERT INTO sira_models ({', '.join(columns)}) VALUES ({placeholders}) RETURNING *", *args
            )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"model {name!r} exists already", code="model_exists") from None
    except asyncpg.CheckViolationError as exc:
        raise refused_setting(exc) from None
    await audit.record(conn, identity.actor(), "model.create", target_type="model", target_id=name,
                       details={k: v for k, v in values.items()})
    assert row is not None  # INSERT ... RETURNING returns the row it inserted
    return jsonable(row)


async def update_model(conn: Connection, identity: Any, name: str, **changes: Any) -> dict[str, Any]:
    """Change a model's settings (admin): approvals, policy, targets, maturity, descriptions."""
    from sira.core.auth import authorize
    from sira.registry.settings import check_feature_set

    authorize(identity, "models.settings")
    unknown = set(changes) - set(MODEL_SETTINGS)
    if unknown or not any(v is not None for v in changes.values()):
        raise InvalidInput(f"settings to change: {', '.join(MODEL_SETTINGS)}", code="unknown_field" if unknown else
                           "missing_field", details={"field": min(unknown, default=""), "accepted": list(MODEL_SETTINGS)})
    changes = checked(changes)
    before = await get_model(conn, name)
    if "feature_set_version" in changes:  # what its next versions train on; versions keep their own
        check_feature_set(name, before["feature_set"], changes["feature_set_version"])
    sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(changes, start=2))
    try:
        row = await conn.fetchrow(f"UPDATE sira_models SET {sets} WHERE name = $1 RETURNING *", name, *changes.values())
    except asyncpg.CheckViolationError as exc:
        raise refused_setting(exc) from None
    await audit.record(conn, identity.actor(), "model.update", target_type="model", target_id=name,
                       details={k: {"from": before[k], "to": v} for k, v in changes.items()})
    assert row is not None  # get_model found the model above (models are never deleted)
    return jsonable(row)


async def list_models(conn: Connection, identity: Any) -> list[dict[str, Any]]:
    from sira.core.auth import authorize

    authorize(identity, "models.read")
    rows = await conn.fetch(
        """SELECT m.name, m.model_type, m.required_approvals, m.updated_at,
                  (SELECT max(version) FROM sira_model_versions v WHERE v.model_id = m.id) AS latest_version,
                  (SELECT version FROM sira_model_versions v WHERE v.model_id = m.id AND status = 'production')
                      AS production_version,
                  (SELECT version FROM sira_model_versions v WHERE v.model_id = m.id AND status = 'staging')
                      AS staging_version
             FROM sira_models m ORDER BY m.name"""
    )
    return [jsonable(r) for r in rows]


async def show_model(conn: Connection, identity: Any, name: str) -> dict[str, Any]:
    from sira.core.auth import authorize

    authorize(identity, "models.read")
    model = jsonable(await get_model(conn, name))
    versions = await conn.fetch(
        """SELECT v.version, v.status, v.created_by, v.created_at, v.artifact_sha256,
                  v.metrics->'test'->>'average_precision' AS test_ap,
                  (SELECT status FROM sira_promotion_requests r WHERE r.version_id = v.id ORDER BY id DESC LIMIT 1)
                      AS last_request,
                  (SELECT decision FROM sira_retrain_runs t WHERE t.model_id = v.model_id AND t.status = 'succeeded'
                      AND t.challenger_version = v.version ORDER BY id DESC LIMIT 1) AS retrain_decision
             FROM sira_model_versions v WHERE v.model_id = $1 ORDER BY v.version""",
        model["id"],
    )
    model["versions"] = [jsonable(v) for v in versions]
    return model


async def show_version(conn: Connection, identity: Any, name: str, version: int) -> dict[str, Any]:
    from sira.core.auth import authorize

    authorize(identity, "models.read")
    row = jsonable(await get_version(conn, name, version))
    requests = await conn.fetch(
        """SELECT r.id, r.status, r.requested_by, r.created_at, r.decided_at,
                  coalesce(jsonb_agg(jsonb_build_object('approver', a.approver, 'decision', a.decision,
                                                        'comment', a.comment, 'at', a.created_at)
                                     ORDER BY a.id) FILTER (WHERE a.id IS NOT NULL), '[]') AS decisions
             FROM sira_promotion_requests r LEFT JOIN sira_approvals a ON a.request_id = r.id
            WHERE r.version_id = $1 GROUP BY r.id ORDER BY r.id""",
        row["id"],
    )
    row["promotion_requests"] = [jsonable(r) for r in requests]
    return row


async def compare_versions(conn: Connection, identity: Any, name: str, a: int, b: int) -> dict[str, Any]:
    """Two versions' metrics side by side (validation and test), with the difference b - a."""
    left, right = await show_version(conn, identity, name, a), await show_version(conn, identity, name, b)
    rows = []
    for part in ("validation", "test"):
        ma, mb = (left["metrics"] or {}).get(part, {}), (right["metrics"] or {}).get(part, {})
        for key in sorted(set(ma) | set(mb)):
            va, vb = ma.get(key), mb.get(key)
            diff = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
            rows.append({"window": part, "metric": key, f"v{a}": va, f"v{b}": vb, "difference": diff})
    return {"model": name, "a": a, "b": b, "status": {f"v{a}": left["status"], f"v{b}": right["status"]},
            "thresholds": {f"v{a}": left["thresholds"], f"v{b}": right["thresholds"]}, "metrics": rows}


async def read_audit(conn: Connection, identity: Any, *, target: str | None = None, actor: str | None = None,
                     action: str | None = None, limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
    """The audit log, newest first, filtered by target id, actor or action (prefix); ``before`` an entry's id:
    only older entries (the keyset cursor of the next page)."""
    from sira.core.auth import authorize

    authorize(identity, "audit.read")
    rows = await conn.fetch(
        """SELECT id, occurred_at, actor, actor_kind, action, target_type, target_id, source_address, outcome, details
             FROM sira_audit_log
            WHERE ($1::text IS NULL OR target_id = $1 OR starts_with(target_id, $1 || ':'))
              AND ($2::text IS NULL OR actor = $2) AND ($3::text IS NULL OR starts_with(action, $3))
              AND ($5::bigint IS NULL OR id < $5)
            ORDER BY id DESC LIMIT $4""",
        target, actor, action, min(max(limit, 1), 10_001), before,  # 10,000 and one: whether a page is cut
    )
    return [jsonable(r) for r in rows]
