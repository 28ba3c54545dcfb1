"""SIRA's Grafana dashboards as code (Grafana's own Python SDK, ``grafana-foundation-sdk``).

    python deploy/grafana/build.py            # writes deploy/grafana/dashboards/*.json
    python deploy/grafana/build.py --check    # exits 1 when a checked-in file differs from what this builds

Three dashboards over the series of docs/observability.md: *Serving* (the replicas' RED metrics through
Ray's export), *Models* (drift, live performance, versions, shadow agreement, from ``GET /metrics``) and
*Pipeline* (the audit spool, ingest from every source, the event stream, monitoring jobs' recency). Grafana
loads them from ``provisioning/`` (a file provider pointing at ``dashboards/``, a Prometheus datasource with uid
``prometheus``). Every query is listed by :func:`queries` for the end-to-end test, which runs each one
against a real Prometheus after real traffic.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.table import Panel as Table
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"


def q(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> Dataquery:
    query = Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        query = query.legend_format(legend)
    return query.instant() if instant else query.range()


def series(title: str, unit: str, *targets: Dataquery, width: int = 12) -> Timeseries:
    panel = Timeseries().title(title).unit(unit).datasource(DATASOURCE).span(width).height(8)
    for t in targets:
        panel = panel.with_target(t)
    return panel


def base(uid: str, title: str, description: str) -> Dashboard:
    return (Dashboard(title).uid(uid).description(description).tags(["sira"]).refresh("30s")
            .time("now-6h", "now").editable()
            .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus")))


def serving() -> Dashboard:
    latency = "ray_sira_request_latency_ms_bucket"
    return (base("sira-serving", "SIRA / Serving", "Online scoring: latency, throughput, errors, degraded answers, "
                 "decisions, batches, caches, versions served (Ray's metrics export, summed across replicas).")
            .with_row(Row("Requests"))
            .with_panel(series("Scoring latency (server side)", "ms",
                               *(q(f"histogram_quantile({p}, sum by (le, model) (rate({latency}{{route=\"score\"}}[{RATE}])))",
                                   f"p{int(p * 100)} {{{{model}}}}", ref) for p, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C")))))
            .with_panel(series("Answers per second", "reqps",
                               q(f"sum by (model, decision) (rate(ray_sira_decisions_total[{RATE}]))", "{{model}} {{decision}}")))
            .with_panel(series("Error answers by code", "reqps",
                               q(f"sum by (route, code, status) (rate(ray_sira_errors_total[{RATE}]))",
                                 "{{status}} {{code}} {{route}}")))
            .with_panel(series("Degraded answers by reason", "reqps",
                               q(f"sum by (reason) (rate(ray_sira_degraded_requests_total[{RATE}]))", "{{reason}}")))
            .with_row(Row("Inside the replicas"))
            .with_panel(series("Requests per batch", "short",
                               q(f"histogram_quantile(0.5, sum by (le) (rate(ray_sira_batch_size_bucket[{RATE}])))", "p50"),
                               q(f"histogram_quantile(0.95, sum by (le) (rate(ray_sira_batch_size_bucket[{RATE}])))", "p95",
                                 "B")))
            .with_panel(series("Entity-state lookups by layer and outcome", "reqps",
                               q(f"sum by (layer, outcome) (rate(ray_sira_feature_cache_lookups_total[{RATE}]))",
                                 "{{layer}} {{outcome}}")))
            .with_panel(Stat().title("Replicas serving").datasource(DATASOURCE).span(6).height(6)
                        .with_target(q('count by (model) (ray_sira_model_version_served{role="production"})',
                                       "{{model}}", instant=True)))
            .with_panel(Table().title("Version served, by model and role").datasource(DATASOURCE).span(18).height(6)
                        .with_target(q("max by (model, role) (ray_sira_model_version_served)", instant=True)))
            .with_panel(series("Late events answered from the log", "reqps",
                               q(f"sum by (entity) (rate(ray_sira_late_events_total[{RATE}]))", "{{entity}}")))
            .with_row(Row("Model loads and configuration"))
            .with_panel(series("Versions that cannot be loaded (1: the registry's version is not served)", "short",
                               q("max by (model, role) (ray_sira_model_load_failing)", "{{model}} {{role}}"),
                               q(f"sum by (model, role, reason) (increase(ray_sira_model_load_failures_total[{RATE}]))",
                                 "failed loads {{model}} {{role}} {{reason}}", "B"), width=16))
            .with_panel(series("Refused user_config updates", "short",
                               q(f"sum(increase(ray_sira_config_rejected_total[{RATE}]))", "refused"), width=8)))


def models() -> Dashboard:
    return (base("sira-models", "SIRA / Models", "Drift, live performance, versions in production and staging, "
                 "shadow agreement (GET /metrics: from the database, the same from every replica).")
            .with_row(Row("Versions"))
            .with_panel(Table().title("Versions in production and staging").datasource(DATASOURCE).span(12).height(7)
                        .with_target(q("sira_model_version_info", instant=True)))
            .with_panel(series("Shadow agreement with production", "percentunit",
                               q(f'sum by (model) (rate(ray_sira_shadow_scores_total{{agreement="same"}}[{RATE}])) '
                                 f"/ sum by (model) (rate(ray_sira_shadow_scores_total[{RATE}]))", "{{model}}")))
            .with_row(Row("Drift"))
            .with_panel(series("PSI by feature (last drift run)", "short",
                               q('sira_drift_psi{feature!="__dataset__"}', "{{model}} v{{version}} {{feature}}"),
                               width=16))
            .with_panel(Stat().title("Drift verdict (0 ok, 1 warn, 2 alert)").datasource(DATASOURCE).span(8).height(8)
                        .with_target(q('max by (model, version) (sira_drift_severity{feature="__dataset__"})',
                                       "{{model}} v{{version}}", instant=True)))
            .with_row(Row("Live performance"))
            .with_panel(series("Average precision, newest labelled window", "short",
                               q("sira_live_average_precision", "{{model}} v{{version}} {{role}}")))
            .with_panel(series("Calibration, newest labelled window", "short",
                               q("sira_live_calibration_error", "ECE {{model}} v{{version}} {{role}}"),
                               q("sira_live_brier_score", "Brier {{model}} v{{version}} {{role}}", "B")))
            .with_panel(series("Labelled predictions in that window", "short",
                               q("sira_live_window_predictions", "{{model}} v{{version}} {{role}} {{label}}")))
            .with_panel(Stat().title("Below the AP margin").datasource(DATASOURCE).span(24).height(5)
                        .with_target(q("sira_live_performance_flagged", "{{model}} v{{version}} {{role}}",
                                       instant=True))))


def pipeline() -> Dashboard:
    return (base("sira-pipeline", "SIRA / Pipeline", "The audit spool, ingest from every source, the event "
                 "stream (entries, the consumer group's lag, dead letters), monitoring jobs' recency.")
            .with_row(Row("Audit trail"))
            .with_panel(series("Answered predictions not yet in PostgreSQL", "short",
                               q("sum(ray_sira_spool_pending_records)", "pending")))
            .with_panel(series("Spooled records refused for good", "short",
                               q(f"sum(increase(ray_sira_spool_refused_records_total[{RATE}]))", "refused")))
            .with_row(Row("Ingest, every source"))
            .with_panel(series("Events stored per second", "reqps",
                               q(f"sum(rate(sira_events_stored_total[{RATE}]))", "stored"), width=8))
            .with_panel(series("Dead letters per second by source", "reqps",
                               q(f"sum by (source) (rate(sira_events_rejected_total[{RATE}]))", "{{source}}"), width=8))
            .with_panel(series("Hours since the last bulk load", "h",
                               q("(time() - sira_ingest_last_load_timestamp_seconds) / 3600", "bulk load"), width=8))
            .with_row(Row("Event stream"))
            .with_panel(series("Stream entries per second by outcome", "reqps",
                               q(f"sum by (outcome) (rate(sira_stream_entries_total[{RATE}]))", "{{outcome}}"), width=8))
            .with_panel(series("Consumer group lag", "short",
                               q("sum by (stream, group) (max by (stream, group, partition) (sira_stream_lag_entries))", "{{group}}"), width=8))
            .with_panel(series("Dead letters by reason", "reqps",
                               q(f"sum by (reason) (rate(sira_stream_dead_letters_total[{RATE}]))", "{{reason}}"),
                               width=8))
            .with_row(Row("Jobs"))
            .with_panel(series("Hours since each job last succeeded (drift, performance, retrain, train, batch score)", "h",
                               q("(time() - sira_job_last_success_timestamp_seconds) / 3600", "{{model}} {{kind}}"),
                               width=24)))


DASHBOARDS = {"serving": serving, "models": models, "pipeline": pipeline}


def render(name: str) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(DASHBOARDS[name]().build()) + "\n"


def queries(name: str) -> list[str]:
    """Every PromQL expression of a dashboard (Grafana's ``$__rate_interval`` left in)."""
    found = []
    for panel in json.loads(render(name))["panels"]:
        found.extend(t["expr"] for t in panel.get("targets", []))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the checked-in files; write nothing")
    args = parser.parse_args(argv)
    stale = []
    OUT.mkdir(exist_ok=True)
    for name in DASHBOARDS:
        path, text = OUT / f"{name}.json", render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(HERE.parent.parent)))
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python deploy/grafana/build.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
