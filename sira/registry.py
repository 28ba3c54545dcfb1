"""The model registry: models, training runs and versions.

Versions are numbered per model from 1 under a lock on the model's row, and
every registration writes an audit row in the same transaction. Lifecycle
rules, approvals and rollback build on these tables.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from sira import audit
from sira.artifacts import ArtifactRef
from sira.errors import InvalidInput, NotFound

MODEL_TYPES = ("fraud_detection", "churn", "anomaly")


async def get_model(conn: asyncpg.Connection, name: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM sira_models WHERE name = $1", name)
    if row is None:
        raise NotFound(f"unknown model {name!r}", details={"model": name})
    return row


async def ensure_model(
    conn: asyncpg.Connection, name: str, *, actor: audit.Actor, model_type: str = "fraud_detection",
    entity_type: str = "customer", feature_set: str | None = None, feature_set_version: int | None = None,
    label_maturity_days: int | None = None,
) -> tuple[asyncpg.Record, bool]:
    """The model, created with defaults when it does not exist yet (returns whether it was created)."""
    if model_type not in MODEL_TYPES:
        raise InvalidInput(f"model type must be one of {', '.join(MODEL_TYPES)}")
    row = await conn.fetchrow("SELECT * FROM sira_models WHERE name = $1", name)
    if row is not None:
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
        raise InvalidInput(
            f"invalid model name {name!r}: lowercase letters, digits, '-' and '_', starting with a letter"
        ) from None
    if row is None:  # created concurrently
        return await get_model(conn, name), False
    await audit.record(conn, actor, "model.create", target_type="model", target_id=name,
                       details={"model_type": model_type, "defaults": True})
    return row, True


async def start_run(
    conn: asyncpg.Connection, model_id: int, *, kind: str, params: dict[str, Any], actor: audit.Actor,
    code_version: str | None, ray_job_id: str | None = None,
) -> uuid.UUID:
    return await conn.fetchval(
        """INSERT INTO sira_training_runs (model_id, kind, params, started_by, code_version, ray_job_id)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING run_id""",
        model_id, kind, params, actor.name, code_version, ray_job_id,
    )


async def finish_run(
    conn: asyncpg.Connection, run_id: uuid.UUID, *, metrics: dict[str, Any], fingerprint: dict[str, Any],
    timings: dict[str, float], params: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """UPDATE sira_training_runs SET status = 'succeeded', metrics = $2, dataset_fingerprint = $3, timings = $4,
                  params = coalesce($5, params), finished_at = now()
            WHERE run_id = $1""",
        run_id, metrics, fingerprint, timings, params,
    )


async def fail_run(conn: asyncpg.Connection, run_id: uuid.UUID, *, error: str, timings: dict[str, float]) -> None:
    await conn.execute(
        """UPDATE sira_training_runs SET status = 'failed', error = $2, timings = $3, finished_at = now()
            WHERE run_id = $1 AND status = 'running'""",
        run_id, error[:4000], timings,
    )


async def register_candidate(
    conn: asyncpg.Connection, model: asyncpg.Record, *, run_id: uuid.UUID, artifact: ArtifactRef,
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
                                            feature_set_version, feature_schema, params, metrics, thresholds, created_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
        model["id"], version, run_id, artifact.uri, artifact.sha256, feature_set_version, feature_schema, params,
        metrics, thresholds, actor.name,
    )
    await audit.record(conn, actor, "version.register", target_type="model_version",
                       target_id=f"{model['name']}:v{version}",
                       details={"run_id": str(run_id), "artifact_sha256": artifact.sha256, "status": "candidate"})
    return int(version)
