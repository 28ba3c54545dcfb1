"""What the ops dashboard (``/ui``) reads, one query each: the models with their production and staging
versions, live against training average precision, the drift verdict and the last retraining decision; and
the approvals queue (promotions and threshold changes), each request with the evidence an approver needs and
whether the caller may decide on it (and if not, why: the same rules :func:`sira.registry.models.decide` and
:func:`sira.registry.thresholds.decide_change` enforce)."""

from __future__ import annotations

from typing import Any

from asyncpg import Connection

from sira.core.auth import Identity, authorize, may, principals
from sira.core.errors import SiraError
from sira.registry import lifecycle
from sira.registry.models import jsonable

_OVERVIEW = """
    SELECT m.name, m.model_type, m.description, m.required_approvals, m.updated_at,
           (SELECT max(version) FROM sira_model_versions v WHERE v.model_id = m.id) AS latest_version,
           p.version AS production_version, s.version AS staging_version,
           (p.metrics->'test'->>'average_precision')::float8 AS training_ap,
           live.average_precision AS live_ap, live.window_end AS live_window_end, live.flagged AS live_flagged,
           drift.severity AS drift_verdict, drift.computed_at AS drift_at,
           rr.decision AS retrain_decision, rr.finished_at AS retrain_at, rr.challenger_version AS retrain_challenger
      FROM sira_models m
      LEFT JOIN sira_model_versions p ON p.model_id = m.id AND p.status = 'production'
      LEFT JOIN sira_model_versions s ON s.model_id = m.id AND s.status = 'staging'
      LEFT JOIN LATERAL (  -- the newest *mature* window, as the exporter's: a provisional one flatters, never flags
           SELECT average_precision, window_end, flagged FROM sira_model_performance q
            WHERE q.model_id = m.id AND q.version = p.version AND q.role = 'production' AND q.segment = 'all'
              AND NOT coalesce((q.metrics->>'provisional')::boolean, false)
            ORDER BY window_end DESC, computed_at DESC LIMIT 1) live ON true
      LEFT JOIN LATERAL (
           SELECT severity, computed_at FROM sira_data_drift d
            WHERE d.model_id = m.id AND d.feature = '__dataset__' AND (p.version IS NULL OR d.version = p.version)
            ORDER BY computed_at DESC LIMIT 1) drift ON true  -- production's, not a challenger's
      LEFT JOIN LATERAL (
           SELECT decision, finished_at, challenger_version FROM sira_retrain_runs r
            WHERE r.model_id = m.id AND r.status = 'succeeded' ORDER BY finished_at DESC LIMIT 1) rr ON true
     ORDER BY m.name"""

_QUEUE = """
    SELECT r.id AS request_id, m.name AS model, m.model_type, v.version, v.created_by, r.requested_by, r.reason,
           r.created_at, greatest(r.required_approvals, m.required_approvals, 1) AS required_approvals,  -- decide()'s
           (v.metrics->'test'->>'average_precision')::float8 AS challenger_ap,
           p.version AS production_version, (p.metrics->'test'->>'average_precision')::float8 AS champion_ap,
           coalesce((SELECT jsonb_agg(jsonb_build_object('approver', a.approver, 'decision', a.decision,
                                                         'comment', a.comment, 'at', a.created_at) ORDER BY a.id)
                       FROM sira_approvals a WHERE a.request_id = r.id), '[]') AS decisions,
           (SELECT severity FROM sira_data_drift d  -- the version asked for (a retrain checks its challenger)
             WHERE d.model_id = m.id AND d.version = v.version AND d.feature = '__dataset__'
             ORDER BY computed_at DESC LIMIT 1) AS drift_verdict,
           (SELECT jsonb_build_object('run', rr.id, 'decision', rr.decision, 'evaluation', rr.report->'evaluation',
                                      'reasons', rr.report->'reasons', 'blockers', rr.report->'blockers')
              FROM sira_retrain_runs rr WHERE rr.model_id = m.id AND rr.challenger_version = v.version
               AND rr.status = 'succeeded' ORDER BY rr.finished_at DESC LIMIT 1) AS policy
      FROM sira_promotion_requests r
      JOIN sira_model_versions v ON v.id = r.version_id
      JOIN sira_models m ON m.id = v.model_id
      LEFT JOIN sira_model_versions p ON p.model_id = m.id AND p.status = 'production'
     WHERE r.status = 'pending'
     ORDER BY r.created_at, r.id"""


_THRESHOLD_QUEUE = """
    SELECT s.id AS set_id, m.name AS model, m.model_type, v.version, s.revision, s.review, s.block,
           s.requested_by, s.reason, s.created_at, s.evidence,
           greatest(s.required_approvals, m.required_approvals) AS required_approvals,  -- decide_change()'s
           a.review AS current_review, a.block AS current_block,
           coalesce((SELECT jsonb_agg(jsonb_build_object('approver', t.approver, 'decision', t.decision,
                                                         'comment', t.comment, 'at', t.created_at) ORDER BY t.id)
                       FROM sira_threshold_approvals t WHERE t.set_id = s.id), '[]') AS decisions
      FROM sira_threshold_sets s
      JOIN sira_model_versions v ON v.id = s.version_id
      JOIN sira_models m ON m.id = v.model_id
      LEFT JOIN sira_threshold_sets a ON a.id = v.threshold_set
     WHERE s.status = 'pending'
     ORDER BY s.created_at, s.id"""


async def models_overview(conn: Connection, identity: Identity) -> list[dict[str, Any]]:
    """Every model with what its row on the dashboard shows."""
    authorize(identity, "models.read")
    return [jsonable(r) for r in await conn.fetch(_OVERVIEW)]


async def why_not(conn: Connection, identity: Identity, *, creator: str | None, requester: str, already: list[str],
                  what: str = "promotion") -> str | None:
    """Why ``identity`` may not decide on a ``what`` (None: it may; ``creator`` None: a threshold change,
    which the version's creator may decide on): the rules the decision enforces, on the people behind the
    names as it compares them (a job's key acts for its submitter: :func:`sira.core.auth.principals`)."""
    if not may(identity, "promotion.decide"):
        return f"deciding on a {what} needs the approver role"
    people = await principals(conn, identity.name, requester, *([creator] if creator is not None else []), *already)
    approver, requester, *rest = people
    creator, already = (rest[0], rest[1:]) if creator is not None else (None, rest)
    try:
        lifecycle.check_approver(approver, identity.roles, creator=creator, requester=requester,
                                 already=already, what=what)
    except SiraError as exc:
        return str(exc)
    return None


async def approval_queue(conn: Connection, identity: Identity) -> list[dict[str, Any]]:
    """The pending promotion requests, oldest first, with the evidence and the caller's standing on each."""
    return await _queue(conn, identity, _QUEUE, "promotion")


async def threshold_queue(conn: Connection, identity: Identity) -> list[dict[str, Any]]:
    """The pending threshold changes, oldest first: the thresholds asked for against those in force, the
    what-if evidence stored with the request, the decisions so far and the caller's standing (the rules
    :func:`sira.registry.thresholds.decide_change` enforces)."""
    return await _queue(conn, identity, _THRESHOLD_QUEUE, "threshold change")


async def _queue(conn: Connection, identity: Identity, query: str, what: str) -> list[dict[str, Any]]:
    """Each pending row of ``query`` with whether ``identity`` may decide on it, and if not why (a promotion's
    row names the version's creator, who may not approve it; a threshold change bars only its requester)."""
    authorize(identity, "models.read")
    out = []
    for row in await conn.fetch(query):
        item = jsonable(row)
        item["may_decide_reason"] = await why_not(conn, identity, creator=item.get("created_by"),
                                                  requester=row["requested_by"],
                                                  already=[d["approver"] for d in item["decisions"]], what=what)
        item["may_decide"] = item["may_decide_reason"] is None
        out.append(item)
    return out


async def approvals(conn: Connection, identity: Identity) -> dict[str, list[dict[str, Any]]]:
    """Both queues an approver works through, read in one transaction."""
    return {"requests": await approval_queue(conn, identity), "threshold_changes": await threshold_queue(conn, identity)}


# What training measured per window beyond the registry's scalar metrics: the reliability table, the decisions
# and their cost at the thresholds, metrics by segment. The manifest keeps them (the registry's row does not),
# so every version with an artifact has them, however long ago it was registered.
EVALUATION_KEYS = ("calibration", "decisions", "cost", "segments")


def evaluation(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per window (validation, test), what :data:`EVALUATION_KEYS` the manifest's metrics hold."""
    return {window: {k: m[k] for k in EVALUATION_KEYS if k in m}
            for window, m in (manifest.get("metrics") or {}).items() if isinstance(m, dict)}


async def insights(conn: Connection, settings: Any, identity: Identity, model_name: str, version: int
                   ) -> dict[str, Any]:
    """A version's global feature importance (mean |SHAP| on validation rows, as training measured it), its
    evaluation per window (reliability table, decisions, cost, metrics by segment) and its lineage (training
    run, dataset fingerprint, code and library versions, artifact checksum), from the artifact's manifest
    verified against the registered checksum (409 when it does not match); ``verified`` says whether every
    file the manifest lists matches it too (false: a card or a rollout refuses it)."""
    from sira.core.artifacts import ArtifactRef, ArtifactTampered, load_artifact, load_manifest
    from sira.registry.models import get_version

    authorize(identity, "models.read")
    row = await get_version(conn, model_name, version)
    ref = ArtifactRef(row["artifact_uri"], row["artifact_sha256"])
    manifest = load_manifest(settings, ref)
    try:  # the manifest matched: do the files it lists (the model a rollout would load)?
        verified = load_artifact(settings, ref) is not None
    except ArtifactTampered:
        verified = False
    run = await conn.fetchrow(
        """SELECT run_id, kind, status, started_by, started_at, finished_at, ray_job_id, code_version
             FROM sira_training_runs WHERE run_id = $1""", row["run_id"]) if row["run_id"] else None
    importance = (manifest.get("importance") or {}).get("mean_abs_shap") or {}
    return {
        "model": model_name, "version": version,
        "importance": [{"feature": f, "mean_abs_shap": v}
                       for f, v in sorted(importance.items(), key=lambda kv: (-abs(kv[1]), kv[0]))],
        "evaluation": evaluation(manifest),
        "lineage": {
            "training_run": jsonable(run) if run else None,
            "dataset": manifest.get("dataset"),
            "seed": manifest.get("seed"), "num_threads": manifest.get("num_threads"),
            "code_version": manifest.get("code_version"), "lightgbm_version": manifest.get("lightgbm_version"),
            "artifact": {"uri": row["artifact_uri"], "sha256": row["artifact_sha256"], "verified": verified},
            "created_by": row["created_by"], "created_at": row["created_at"].isoformat(),
        },
    }
