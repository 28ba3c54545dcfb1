"""Monitoring over time, as the ops dashboard draws it: every drift run's PSI by feature, every live
performance window, and the live traffic of the last minutes (decisions, latency, degraded answers) from
the prediction records. Aggregates only: no event, feature value or identifier leaves these reads."""

from __future__ import annotations

from typing import Any

from asyncpg import Connection

from sira.core.auth import Identity, authorize
from sira.core.errors import InvalidInput
from sira.registry.models import get_model, jsonable

MAX_DAYS = 366
MAX_MINUTES = 24 * 60


def _bounded(value: int, top: int, what: str) -> int:
    if not 1 <= value <= top:
        raise InvalidInput(f"{what} must be between 1 and {top}", code="invalid_value", details={"field": what})
    return value


async def drift_history(conn: Connection, identity: Identity, model_name: str, days: int = 90) -> dict[str, Any]:
    """The model's drift runs of the last ``days``, oldest first: each run's verdict and PSI per feature."""
    authorize(identity, "models.read")
    model = await get_model(conn, model_name)
    rows = await conn.fetch(
        """SELECT coalesce(job_id, computed_at::text) AS run, min(computed_at) OVER w AS at, version, feature, psi,
                  severity
             FROM sira_data_drift
            WHERE model_id = $1 AND computed_at >= now() - make_interval(days => $2)
           WINDOW w AS (PARTITION BY coalesce(job_id, computed_at::text))
            ORDER BY at, feature""", model["id"], _bounded(days, MAX_DAYS, "days"))
    runs: dict[str, dict[str, Any]] = {}
    for r in rows:
        run = runs.setdefault(r["run"], {"run": r["run"], "at": r["at"].isoformat(), "version": r["version"],
                                         "verdict": None, "features": {}})
        if r["feature"] == "__dataset__":
            run["verdict"] = r["severity"]
        else:
            run["features"][r["feature"]] = {"psi": r["psi"], "severity": r["severity"]}
    return {"model": model_name, "days": days, "runs": list(runs.values())}


async def performance_history(conn: Connection, identity: Identity, model_name: str, days: int = 90
                              ) -> dict[str, Any]:
    """Every live-performance window of the last ``days`` (the whole population), oldest first, production
    and shadow: AP, calibration, precision and recall of the flagged, whether the labels were mature, and the
    run's label cut-off and whether it was a backtest (a current run's window is preferred to a backtest's)."""
    from sira.monitoring.performance import BACKTEST_SQL

    authorize(identity, "models.read")
    model = await get_model(conn, model_name)
    # a window's newest current run, else its newest backtest (--as-of: labels as known then), marked so
    rows = await conn.fetch(
        f"""SELECT DISTINCT ON (version, role, window_start, window_end)
                  version, role, window_start, window_end, n, n_positive, average_precision, flagged,
                  (metrics->>'expected_calibration_error')::float8 AS ece,
                  (metrics->'decisions'->>'precision_flagged')::float8 AS precision_flagged,
                  (metrics->'decisions'->>'recall_flagged')::float8 AS recall_flagged,
                  coalesce((metrics->>'provisional')::boolean, false) AS provisional,
                  {BACKTEST_SQL} AS backtest, metrics->'run'->>'as_of' AS as_of, computed_at
             FROM sira_model_performance
            WHERE model_id = $1 AND segment = 'all' AND window_end >= now() - make_interval(days => $2)
            ORDER BY version, role, window_start, window_end, {BACKTEST_SQL}, computed_at DESC""",  # noqa: S608
        model["id"], _bounded(days, MAX_DAYS, "days"))
    windows = sorted((jsonable(r) for r in rows), key=lambda w: (w["window_end"], w["role"], w["version"]))
    return {"model": model_name, "days": days, "windows": windows}


async def traffic(conn: Connection, identity: Identity, model_name: str, minutes: int = 60) -> dict[str, Any]:
    """The answers production gave in the last ``minutes``, per minute, every minute from the one ``minutes``
    ago up to the current one (both partial): decisions, degraded answers and server-side latency percentiles
    (from the prediction records: answers not yet flushed from a replica's spool arrive within its flush
    interval). A minute without an answer is there with zero counts and no latency (null): a chart spaces
    minutes as time passed and draws no latency that was not measured."""
    authorize(identity, "models.read")
    await get_model(conn, model_name)
    rows = await conn.fetch(
        """WITH answered AS (
               SELECT date_trunc('minute', scored_at) AS minute, count(*) AS answers,
                      count(*) FILTER (WHERE decision = 'approve') AS approve,
                      count(*) FILTER (WHERE decision = 'review') AS review,
                      count(*) FILTER (WHERE decision = 'block') AS block,
                      count(*) FILTER (WHERE degraded) AS degraded,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_ms,
                      percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_ms,
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99_ms
                 FROM sira_predictions
                WHERE model_name = $1 AND role = 'production' AND scored_at >= now() - make_interval(mins => $2)
                GROUP BY 1)
           SELECT m.minute, coalesce(a.answers, 0) AS answers, coalesce(a.approve, 0) AS approve,
                  coalesce(a.review, 0) AS review, coalesce(a.block, 0) AS block, coalesce(a.degraded, 0) AS degraded,
                  a.p50_ms, a.p95_ms, a.p99_ms
             FROM generate_series(date_trunc('minute', now() - make_interval(mins => $2)),
                                  date_trunc('minute', now()), interval '1 minute') AS m (minute)
             LEFT JOIN answered a ON a.minute = m.minute
            ORDER BY m.minute""", model_name, _bounded(minutes, MAX_MINUTES, "minutes"))
    return {"model": model_name, "minutes": minutes,
            "per_minute": [{**dict(r), "minute": r["minute"].isoformat()} for r in rows]}
