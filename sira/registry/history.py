"""The production pointer's history: every change (when, who, from, to, how, why, at whose request) and the
version a rollback would restore now: one answer for ``sira history --json`` and ``GET …/history``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sira.core import audit
from sira.core.errors import Conflict, UnknownModel

if TYPE_CHECKING:
    from sira.core.db import Connection


async def rollback_target(conn: Connection, model_name: str, production: int) -> int | None:
    """The version a rollback of ``production`` restores: the one production was before ``production`` was
    promoted (by approval or policy). A rollback that made it production again is no promotion, else a second
    rollback would go forward again, to the version just rolled back, with no approval."""
    return await conn.fetchval(
        """SELECT (details->>'from')::int FROM sira_audit_log
            WHERE action = 'production.change' AND target_type = 'model' AND target_id = $1
              AND (details->>'to')::int = $2 AND details->>'via' IS DISTINCT FROM 'rollback'
            ORDER BY id DESC LIMIT 1""",
        model_name, production,
    )


async def production_history(conn: Connection, model_name: str) -> list[dict[str, Any]]:
    """Every change of the production pointer: when, who, from, to, how, why and who asked for it (a
    promotion's requester; the actor of a policy's promotion is the policy)."""
    if await conn.fetchval("SELECT id FROM sira_models WHERE name = $1", model_name) is None:
        raise UnknownModel(model_name)
    rows = await conn.fetch(
        """SELECT occurred_at, actor, actor_kind, details FROM sira_audit_log
            WHERE action = 'production.change' AND target_type = 'model' AND target_id = $1
              AND outcome = 'success' ORDER BY id""",
        model_name,
    )
    return [{"at": r["occurred_at"].isoformat(), "actor": r["actor"], "actor_kind": r["actor_kind"],
             "from": r["details"].get("from"), "to": r["details"].get("to"), "via": r["details"].get("via"),
             "reason": r["details"].get("reason"), "requested_by": r["details"].get("requested_by")} for r in rows]


async def history(conn: Connection, identity: Any, model_name: str) -> dict[str, Any]:
    """The history, the production version now and the version a rollback would restore now (``rollback_to``,
    by the rule the rollback applies)."""
    from sira.core.auth import authorize

    authorize(identity, "models.read")
    changes = await production_history(conn, model_name)
    production = await conn.fetchval(
        """SELECT v.version FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id
            WHERE m.name = $1 AND v.status = 'production'""", model_name)
    target = await rollback_target(conn, model_name, production) if production is not None else None
    blocked = None
    if target is not None:  # what the rollback would refuse now, said before anyone tries it
        row = await conn.fetchrow(
            """SELECT m.feature_set, v.version, v.feature_set_version FROM sira_model_versions v
                 JOIN sira_models m ON m.id = v.model_id WHERE m.name = $1 AND v.version = $2""", model_name, target)
        refusal = await features_refusal(conn, model_name, row["feature_set"], row) if row is not None else None
        blocked = {"code": refusal.code, "message": refusal.message} if refusal is not None else None
    return {"model": model_name, "history": changes, "production": production, "rollback_to": target,
            "rollback_blocked": blocked}


async def check_features_kept(conn: Connection, actor: Any, model_name: str, feature_set: str | None,
                              row: Any) -> None:
    """Refuse (409 ``feature_set_retired``, audited) to make ``row`` production when data retention removed the
    stored states of the feature set it reads (``sira retention apply``: a set no live version used) and nothing
    rebuilt them since: it would score every entity as if it had no history, with nothing to say so."""
    refusal = await features_refusal(conn, model_name, feature_set, row)
    if refusal is not None:
        raise audit.denied(refusal, actor, "production.change", target_type="model_version",
                           target_id=f"{model_name}:v{row['version']}")


async def features_refusal(conn: Connection, model_name: str, feature_set: str | None, row: Any) -> Conflict | None:
    """The refusal :func:`check_features_kept` raises for ``row``, if any."""
    if feature_set is None or row["feature_set_version"] is None:
        return None  # trained on a table: it reads no stored state
    name = f"{feature_set}@{row['feature_set_version']}"
    retired = await conn.fetchrow(
        """SELECT occurred_at, details->>'run_id' AS run_id FROM sira_audit_log
            WHERE action = 'retention.apply' AND target_id = 'retired_feature_sets' AND outcome = 'success'
              AND details->'feature_sets' ? $1
              AND occurred_at > coalesce((SELECT max(occurred_at) FROM sira_audit_log
                                           WHERE target_id = $1 AND outcome = 'success'
                                             AND (action = 'features.rebuild' OR (action = 'features.materialize'
                                                  AND (details->>'full')::boolean))), '-infinity')
            ORDER BY id DESC LIMIT 1""", name)
    if retired is None:
        return None
    from sira.features.definitions import FEATURE_SETS

    fs = FEATURE_SETS.get((feature_set, row["feature_set_version"]))
    how = (f"sira features rebuild --feature-set {name}" if fs is not None and fs.engine == "tiles"
           else f"sira features materialize --full --feature-set {name}")
    return Conflict(
        f"{model_name} v{row['version']} reads feature set {name}, whose stored states data retention removed on "
        f"{retired['occurred_at']:%Y-%m-%d} (run {retired['run_id']}): it would score every entity as if it had no "
        f"history. Rebuild them first (`{how}`), then try again", code="feature_set_retired",
        details={"feature_set": name, "version": row["version"], "retention_run": retired["run_id"]})
