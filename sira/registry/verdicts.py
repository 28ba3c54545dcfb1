"""What the retraining policy said of a version it judged as a challenger: a person who stages or promotes a
version the policy rejected (or held) is told so, and the audit entry and the approvers' evidence keep it; and
what the model's policy says of a promotion request when the model requires no approvals."""

from __future__ import annotations

from typing import Any


async def retrain_verdict(conn: Any, model_id: int, version: int) -> dict[str, Any] | None:
    """The last finished retraining run that judged ``version`` as its challenger and did not stage it: its
    id, decision (``reject`` or ``hold``), reasons, and of them those that decided it (a run reported before
    they were kept apart: all its reasons); None when no run did."""
    row = await conn.fetchrow(
        """SELECT id, decision, coalesce(report->'reasons', '[]'::jsonb) AS reasons,
                  report->'deciding' AS deciding FROM sira_retrain_runs
            WHERE model_id = $1 AND challenger_version = $2 AND status = 'succeeded'
            ORDER BY id DESC LIMIT 1""", model_id, version)
    if row is None or row["decision"] == "stage":
        return None
    reasons = row["reasons"] if isinstance(row["reasons"], list) else []
    deciding = row["deciding"] if isinstance(row["deciding"], list) else reasons
    return {"run": row["id"], "decision": row["decision"], "reasons": reasons, "deciding": deciding}


async def policy_decision(conn: Any, policy: Any, model_id: int, version: int) -> Any:
    """The model's promotion policy (its settings now) on the evidence of the last finished retraining run that
    judged ``version`` against the production version now (:class:`sira.registry.policy.Decision`): what decides
    whether a promotion request of a model that requires no approvals promotes on its own. No such run (a
    version a person trained, or one judged against another champion): "hold", the rules unchecked."""
    from sira.registry.policy import Decision, evidence_of

    production = await conn.fetchval(
        "SELECT version FROM sira_model_versions WHERE model_id = $1 AND status = 'production'", model_id)
    run = await conn.fetchrow(
        """SELECT id, champion_version, steps FROM sira_retrain_runs
            WHERE model_id = $1 AND challenger_version = $2 AND status = 'succeeded'
              AND steps ? 'evaluate' AND steps ? 'drift'
            ORDER BY id DESC LIMIT 1""", model_id, version)
    if run is None:
        why = (f"no retraining run evaluated v{version} against the production version on a recent window: the "
               "policy's rules (AP gain, calibration, score drift, blockers) cannot be checked")
        return Decision("hold", (why,), (), {"evidence": False}, (why,))
    if run["champion_version"] != production:
        seen = f"v{run['champion_version']}" if run["champion_version"] is not None else "no production version"
        now = f"v{production}" if production is not None else "none"
        why = f"retrain run {run['id']} evaluated v{version} against {seen}; production is {now} now: the evidence " \
              "no longer applies"
        return Decision("hold", (why,), (), {"evidence": False}, (why,))
    steps = run["steps"]
    return policy.decide(evidence_of(steps["evaluate"], steps["drift"]))


async def policy_says(conn: Any, row: Any, decision: Any) -> dict[str, Any]:
    """Whether the model's policy promotes ``row`` on its own (the rule the nightly retrain applies:
    :meth:`~sira.registry.policy.PromotionPolicy.auto_statuses`), its verdict and reasons."""
    from sira.registry.policy import PromotionPolicy

    policy = PromotionPolicy.from_mapping(
        await conn.fetchval("SELECT promotion_policy FROM sira_models WHERE id = $1", row["model_id"]))
    decision = decision or await policy_decision(conn, policy, row["model_id"], row["version"])
    promotes = "production" in policy.auto_statuses(decision, required_approvals=row["required_approvals"])
    reasons, deciding = list(decision.reasons), list(decision.deciding)
    if not promotes and decision.outcome == "stage":
        reasons.append("the policy does not promote on its own (auto_promote or auto_stage is off)")
        deciding.append(reasons[-1])
    return {"promotes": promotes, "outcome": decision.outcome, "reasons": reasons, "deciding": deciding}
