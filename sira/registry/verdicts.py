"""What the retraining policy said of a version it judged as a challenger: a person who stages or promotes a
version the policy rejected (or held) is told so, and the audit entry and the approvers' evidence keep it."""

from __future__ import annotations

from typing import Any


async def retrain_verdict(conn: Any, model_id: int, version: int) -> dict[str, Any] | None:
    """The last finished retraining run that judged ``version`` as its challenger and did not stage it: its
    id, decision (``reject`` or ``hold``) and reasons; None when no run did."""
    row = await conn.fetchrow(
        """SELECT id, decision, coalesce(report->'reasons', '[]'::jsonb) AS reasons FROM sira_retrain_runs
            WHERE model_id = $1 AND challenger_version = $2 AND status = 'succeeded'
            ORDER BY id DESC LIMIT 1""", model_id, version)
    if row is None or row["decision"] == "stage":
        return None
    reasons = row["reasons"]
    return {"run": row["id"], "decision": row["decision"], "reasons": reasons if isinstance(reasons, list) else []}
