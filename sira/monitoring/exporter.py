"""The series every replica answers alike, read from PostgreSQL: ``GET /metrics`` on the service port.

Per-replica serving series (latency, decisions, degraded answers, caches, the spool) are counted in each
replica and exported through Ray's metrics export, which sums the replicas (``ray_sira_*``: Ray prefixes
``ray_``). What the database knows is the same from any replica and is served here, in Prometheus's text
format, without Ray's prefix (``sira_*``; the table in ``docs/observability.md``):

- the versions in production and staging per model;
- the last drift run per model: PSI per feature (``__score__`` for the score) and its severity;
- the last live-performance window per model, version and role: average precision, calibration (expected
  calibration error, Brier), its labels, the flag;
- when each kind of job last succeeded (drift, performance, retraining, training, batch scoring), per model;
- ingest from every source: the event log's arrival counter (its ``seq`` high-water mark: ``rate()`` of it
  is events stored per second, whichever path stored them: bulk files, the stream, the API), dead letters
  by source, and the last bulk load (what the ``events.ingest`` audit record says it read and kept).

One scrape reads a handful of small aggregate queries (the newest run per model through the tables'
``(model_id, ...)`` indexes); the answer is kept for ``cache_s`` so that several Prometheus servers, or a
scrape through the load balancer of many replicas, cost the database one read per period.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SEVERITY = {"ok": 0, "warn": 1, "alert": 2}

_VERSIONS = """
    SELECT m.name AS model, m.model_type, v.version, v.status
      FROM sira_model_versions v JOIN sira_models m ON m.id = v.model_id
     WHERE v.status IN ('production', 'staging')"""

# the versions series are kept for: a retired version's drift and performance leave /metrics with it
_SERVED = "SELECT model_id, version FROM sira_model_versions WHERE status IN ('production', 'staging')"

# a drift run over a window someone chose (sira.monitoring.drift.AD_HOC_SQL, on the rows' alias: importing
# sira.monitoring.drift here cost every application start 0.7 s)
_AD_HOC = "coalesce((d.details->>'ad_hoc')::boolean, false)"

# the newest drift run of each version in production or staging (one job writes every feature's row): its
# rows. Per version: the nightly retrain checks its challenger's drift, which is not production's (the alert
# on production's drift joins on the production version; the newest run of any version hid it)
_DRIFT = f"""
    WITH last AS (
        SELECT DISTINCT ON (d.model_id, d.version) d.model_id, d.version, d.job_id, d.computed_at
          FROM sira_data_drift d JOIN ({_SERVED}) s USING (model_id, version)
         WHERE d.feature = '__dataset__'  -- one row per run: whether its window was chosen (AD_HOC_SQL)
         ORDER BY d.model_id, d.version, {_AD_HOC}, d.computed_at DESC)
    SELECT m.name AS model, d.version, d.feature, d.psi, d.severity, extract(epoch FROM last.computed_at) AS at
      FROM last JOIN sira_data_drift d ON d.model_id = last.model_id AND d.version = last.version
           AND d.job_id IS NOT DISTINCT FROM last.job_id
           AND (last.job_id IS NOT NULL OR d.computed_at = last.computed_at)
      JOIN sira_models m ON m.id = last.model_id"""

# a performance run with --as-of (labels as known then): not the model's current performance, nor its job
# running (sira.monitoring.performance.BACKTEST_SQL, on the rows' alias)
_BACKTEST = "coalesce((p.metrics->'run'->>'backtest')::boolean, false)"

# the newest *mature* window of each (model, version, role) of a version in production or staging, the whole
# population (segment 'all'): the newest window is mostly provisional (its young unlabelled events left out,
# its chargebacks counted: AP flattering, never flagged), and exporting it kept the page alert silent
_PERFORMANCE = f"""
    SELECT DISTINCT ON (p.model_id, p.version, p.role)
           m.name AS model, p.version, p.role, p.average_precision, p.n, p.n_positive, p.flagged,
           (p.metrics->>'expected_calibration_error')::float8 AS ece, (p.metrics->>'brier')::float8 AS brier,
           extract(epoch FROM p.window_end) AS window_end
      FROM sira_model_performance p JOIN ({_SERVED}) s USING (model_id, version)
      JOIN sira_models m ON m.id = p.model_id
     WHERE p.segment = 'all' AND NOT coalesce((p.metrics->>'provisional')::boolean, false)
     ORDER BY p.model_id, p.version, p.role, p.window_end DESC, {_BACKTEST},
              p.computed_at DESC"""

# drift and performance: when the model's job last ran for production, whichever version production was then
# (the current production version's runs only: every promotion or rollback looked like a day without a run, and
# the "no run in 26 hours" alerts fired). Drift: a run of the version production was when it ran (the
# registry's production.change records); a challenger's, checked by a retrain before its promotion, would hide
# that production's stopped: never (until 2026-12-07 it counted once the challenger was promoted, and the
# time went backwards on a rollback). Performance: the windows of
# production's answers (role 'production'), whichever version gave them; a shadow's never.
_LAST_RUNS = f"""
    WITH spans AS (
        SELECT a.target_id AS model, (a.details->>'to')::int AS version, a.occurred_at AS since,
               lead(a.occurred_at) OVER (PARTITION BY a.target_id ORDER BY a.occurred_at, a.id) AS until
          FROM sira_audit_log a JOIN sira_models m ON a.target_type = 'model' AND a.target_id = m.name
         WHERE a.action = 'production.change')
    SELECT m.name AS model, 'drift' AS kind, extract(epoch FROM max(d.computed_at)) AS at
      FROM sira_data_drift d JOIN sira_models m ON m.id = d.model_id
     WHERE d.feature = '__dataset__'  -- one row per run: its verdict
       AND NOT {_AD_HOC}  -- a look at a chosen window is no job running
       AND (EXISTS (SELECT 1 FROM spans s WHERE s.model = m.name AND s.version = d.version
                       AND d.computed_at >= s.since AND (s.until IS NULL OR d.computed_at < s.until))
            -- a production version the registry has no production.change of (made so before they were
            -- recorded): its runs, having no time to bound them by
            OR (EXISTS (SELECT 1 FROM sira_model_versions v WHERE v.model_id = d.model_id AND v.version = d.version
                           AND v.status = 'production')
                AND NOT EXISTS (SELECT 1 FROM spans s WHERE s.model = m.name AND s.version = d.version)))
     GROUP BY m.name
    UNION ALL
    SELECT m.name, 'performance', extract(epoch FROM max(p.computed_at))
      FROM sira_model_performance p JOIN sira_models m ON m.id = p.model_id
     WHERE p.role = 'production' AND NOT {_BACKTEST}
     GROUP BY m.name
    UNION ALL
    SELECT m.name, 'retrain', extract(epoch FROM max(r.finished_at))
      FROM sira_retrain_runs r JOIN sira_models m ON m.id = r.model_id
     WHERE r.status = 'succeeded' GROUP BY m.name
    UNION ALL
    SELECT m.name, 'train', extract(epoch FROM max(t.finished_at))
      FROM sira_training_runs t JOIN sira_models m ON m.id = t.model_id
     WHERE t.status = 'succeeded' GROUP BY m.name
    UNION ALL
    SELECT split_part(target_id, ':', 1), 'batch_score', extract(epoch FROM max(occurred_at))
      FROM sira_audit_log WHERE target_type = 'model_version' AND action = 'batch.score' AND outcome = 'success'
     GROUP BY 1"""


# the log's arrival counter (an identity: its newest value through the unique index, gaps left by rolled-back
# inserts included, which a rate over minutes does not notice); dead letters by the kind of their source (what
# precedes a ':': a caller names an API batch's source, a file its own; one series per caller or file would
# grow without end);
# the newest bulk load's audit record (the audit log's (action) rows through its time index, newest first)
_INGEST = """
    SELECT 'stored' AS what, NULL AS source, coalesce((SELECT max(seq) FROM sira_events), 0)::float8 AS n,
           NULL::float8 AS at
    UNION ALL
    SELECT 'rejected', split_part(source, ':', 1), count(*)::float8, NULL FROM sira_rejected_events GROUP BY 2
    UNION ALL
    (SELECT 'bulk_load', target_id, NULL, extract(epoch FROM occurred_at)::float8
       FROM sira_audit_log WHERE target_type = 'source' AND action = 'events.ingest' AND outcome = 'success'
      ORDER BY occurred_at DESC LIMIT 1)"""


async def read(conn: asyncpg.Connection) -> dict[str, list[asyncpg.Record]]:
    """What the exporter reports, read in one snapshot (a repeatable-read transaction)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return {"versions": await conn.fetch(_VERSIONS), "drift": await conn.fetch(_DRIFT),
                "performance": await conn.fetch(_PERFORMANCE), "runs": await conn.fetch(_LAST_RUNS),
                "ingest": await conn.fetch(_INGEST)}


def families(rows: dict[str, list[Any]]) -> list[Metric]:
    """The Prometheus metric families of :func:`read`'s rows."""
    served = GaugeMetricFamily("sira_model_version_info", "A model version in production or staging (1).",
                               labels=["model", "model_type", "version", "status"])
    for r in rows["versions"]:
        served.add_metric([r["model"], r["model_type"], str(r["version"]), r["status"]], 1)
    psi = GaugeMetricFamily("sira_drift_psi", "PSI of a feature (__score__: the score) in the model's last drift run.",
                            labels=["model", "version", "feature"])
    severity = GaugeMetricFamily("sira_drift_severity", "Severity of a feature in the model's last drift run "
                                 "(0 ok, 1 warn, 2 alert; __dataset__: the run's verdict).",
                                 labels=["model", "version", "feature"])
    for r in rows["drift"]:
        labels = [r["model"], str(r["version"]), r["feature"]]
        if r["psi"] is not None:
            psi.add_metric(labels, float(r["psi"]))
        severity.add_metric(labels, SEVERITY[r["severity"]])
    ap = GaugeMetricFamily("sira_live_average_precision", "Average precision on the newest labelled window.",
                           labels=["model", "version", "role"])
    labelled = GaugeMetricFamily("sira_live_window_predictions", "Predictions in the newest labelled window, "
                                 "and of them the positives (label=\"1\").", labels=["model", "version", "role", "label"])
    flagged = GaugeMetricFamily("sira_live_performance_flagged", "1 when the newest window fell below the model's "
                                "margin under its training AP.", labels=["model", "version", "role"])
    ece = GaugeMetricFamily("sira_live_calibration_error", "Expected calibration error on the newest labelled "
                            "window (0: scores are the fraud rates they claim).", labels=["model", "version", "role"])
    brier = GaugeMetricFamily("sira_live_brier_score", "Brier score on the newest labelled window.",
                              labels=["model", "version", "role"])
    window_end = GaugeMetricFamily("sira_live_window_end_timestamp_seconds", "End of the newest labelled window.",
                                   labels=["model", "version", "role"])
    for r in rows["performance"]:
        labels = [r["model"], str(r["version"]), r["role"]]
        if r["average_precision"] is not None:
            ap.add_metric(labels, float(r["average_precision"]))
        labelled.add_metric([*labels, "all"], float(r["n"]))
        labelled.add_metric([*labels, "1"], float(r["n_positive"]))
        flagged.add_metric(labels, 1.0 if r["flagged"] else 0.0)
        if r["ece"] is not None:
            ece.add_metric(labels, r["ece"])
        if r["brier"] is not None:
            brier.add_metric(labels, r["brier"])
        window_end.add_metric(labels, float(r["window_end"]))
    last = GaugeMetricFamily("sira_job_last_success_timestamp_seconds", "When a job last succeeded for the "
                             "model (kind: drift, performance, retrain, train, batch_score; not `job`, "
                             "the label Prometheus gives every target).", labels=["model", "kind"])
    for r in rows["runs"]:
        if r["at"] is not None:
            last.add_metric([r["model"], r["kind"]], float(r["at"]))
    return [served, psi, severity, ap, labelled, flagged, ece, brier, window_end, last, *_ingest(rows["ingest"])]


def _ingest(rows: list[Any]) -> list[Metric]:
    stored = CounterMetricFamily("sira_events_stored", "Events stored in the event log, every source (the log's "
                                 "arrival counter).")
    rejected = CounterMetricFamily("sira_events_rejected", "Events set aside as dead letters in "
                                   "sira_rejected_events, by the kind of their source (api, file, stream, ...: what precedes a ':').",
                                   labels=["source"])
    loaded = GaugeMetricFamily("sira_ingest_last_load_timestamp_seconds", "When the newest bulk load (sira ingest, "
                               "a file) finished.")
    for r in rows:
        if r["what"] == "stored":
            stored.add_metric([], r["n"])
        elif r["what"] == "rejected":
            rejected.add_metric([r["source"]], r["n"])
        else:
            loaded.add_metric([], r["at"])
    return [stored, rejected, loaded]


class _Fixed:
    def __init__(self, found: Iterable[Metric]):
        self.found = list(found)

    def collect(self) -> Iterable[Metric]:
        return self.found


def exposition(found: Iterable[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(found))
    return generate_latest(registry)


class Exporter:
    """``GET /metrics``' answer, read at most once per ``cache_s`` (concurrent scrapes share one read)."""

    def __init__(self, cache_s: float = 5.0):
        self.cache_s = cache_s
        self._answer: bytes | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def answer(self, pool: asyncpg.Pool) -> bytes:
        async with self._lock:
            if self._answer is None or time.monotonic() - self._at >= self.cache_s:
                async with pool.acquire() as conn:
                    self._answer = exposition(families(await read(conn)))
                self._at = time.monotonic()
            return self._answer
