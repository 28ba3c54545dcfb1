"""``sira demo``: the platform end to end, and its report."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sira.cli.common import JsonOption, app, emit, err, fmt, kv_table
from sira.cli.monitor import batch_table, drift_table, performance_table
from sira.cli.train import training_table
from sira.core.config import get_settings


def _story_table(report: Any) -> Table:
    """The demo's ending: champion and challenger side by side, what was decided, what served."""
    rt, ev = report.retrain, report.retrain["evaluation"]
    table = Table(title="The story: the fraud pattern shifted; the platform noticed, retrained and swapped",
                  title_justify="left")
    table.add_column("")
    table.add_column(f"champion v{rt['champion']}", justify="right")
    table.add_column(f"challenger v{rt['challenger']}", justify="right")
    for key in ("average_precision", "roc_auc", "recall_at_1pct_fpr", "expected_calibration_error"):
        table.add_row(f"{key.replace('_', ' ')} ({ev['window']['from'][:10]}..{ev['window']['to'][:10]})",
                      fmt((ev.get("champion") or {}).get(key)), fmt(ev["challenger"].get(key)))
    live = {(r["version"], r["role"]): r for r in (report.performance or {}).get("results", [])}
    if report.swap:
        def ap(version: int, role: str) -> str:
            windows = (live.get((version, role)) or {}).get("windows") or []
            n, positives = sum(w["n"] for w in windows), sum(w["n_positive"] for w in windows)
            shown = fmt(windows[-1]["average_precision"]) if windows and positives else "no fraud"
            return f"{shown} ({n:,} payments, {positives} fraud)" if windows else ""

        table.add_row("live: labelled payments (production / shadow)", ap(rt["champion"], "production"),
                      ap(rt["challenger"], "shadow"))
    table.add_row("drift of the last week", report.drift.get("verdict", "") if report.drift else "",
                  (rt.get("drift") or {}).get("verdict") or "")
    table.add_row("policy decision", "", rt["decision"] + (" → staging" if rt["staged"] else ""))
    if report.swap:
        table.add_row("approvals → production", "", "demo-ann, demo-bob")
        table.add_row("hot swap while serving", "", f"{report.swap['seconds']} s" if report.swap["seconds"] is not None
                      else report.swap.get("note", ""))
    if report.serving:
        lat = report.serving["client_latency_ms"]
        table.add_row("client latency p50 / p95 (ms)", f"{lat['p50']} / {lat['p95']}",
                      (lambda s: f"{s['p50']} / {s['p95']}")(report.shadow["client_latency_ms"]) if report.shadow else "")
        table.caption = f"OpenAPI {report.serving['docs']} · report {rt['files']['markdown']}"
    return table


def gov_keys(report: Any) -> str:
    return (report.governance or {}).get("keys_file") or "<workspace>/secrets/demo_keys.json"


@app.command("demo")
def demo_cmd(
    scale: Annotated[
        float, typer.Option("--scale", envvar="DEMO_SCALE", min=0.01, max=100.0, help="Shrink or grow the demo data.")
    ] = 1.0,
    days: Annotated[int, typer.Option("--days", min=2, max=3650, help="Days of simulated traffic.")] = 42,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for demo data. Default: <workspace>/demo-data.")] = None,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Start online scoring and score live payments.")] = True,
    keep_serving: Annotated[bool, typer.Option("--keep-serving", help="Leave the service up at the end (Ctrl-C stops it).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Run the whole platform end to end on embedded defaults."""
    from sira.demo.story import run_demo

    settings = get_settings()
    report = asyncio.run(run_demo(settings, scale=scale, days=days, out_dir=out, progress=err.print,
                                  serve=serve, keep_serving=keep_serving))

    def render() -> None:
        err.print(kv_table("Database", {
            "database": report.database["dsn"],
            "mode": "embedded" if report.database["embedded"] else "external",
            "schema version": f"{report.database['schema_version']:03d}",
        }))
        sim = report.simulation
        err.print(kv_table("Simulated traffic", {
            "events": f"{sim['events']:,} over {sim['days']} days → {sim['events_path']}",
            "fraud": f"{sim['fraud_events']:,} ({sim['fraud_rate']:.2%}); shift from day {sim['shift_day']}",
            "labels": f"{sim['labels']:,} → {sim['labels_path']}",
        }))
        ing = report.ingest
        err.print(kv_table("Ingested", {
            "events": f"{ing['accepted']:,} accepted, {ing['duplicates']:,} duplicates, {ing['rejected']:,} rejected"
            f" in {ing['seconds']} s",
            "feature rows": f"{ing['features_written']:,}",
            "labels": f"{report.labels['inserted']:,} new, {report.labels['updated']:,} updated",
            "snapshots": ", ".join(f"{k} {v:,}" for k, v in report.snapshots["entities"].items()),
        }))
        if report.example_features:
            ex = report.example_features
            shown = {k: v for k, v in ex["features"].items() if k.startswith("customer_") and v is not None}
            err.print(kv_table(f"Online features of {ex['entity']} as of {ex['as_of']}",
                                 {k: f"{v:,.2f}" for k, v in list(shown.items())[:12]}))
        if report.training:
            tr = report.training
            err.print(training_table(tr))
            if tr.get("search"):
                err.print(f"search: {tr['search']['completed']} trials, best validation AP "
                           f"{tr['search']['best_validation_ap']:.4f}")
        if report.governance:
            gov = report.governance
            err.print(kv_table("Governance", {
                "promotion": "requested by demo-dana, approved by demo-ann and demo-bob",
                "production": f"fraud v{gov['production_version']}",
                "demo keys": gov["keys_file"],
            }))
        if report.serving:
            sv = report.serving
            lat = sv["client_latency_ms"]
            err.print(kv_table("Online scoring (Ray Serve)", {
                "live payments": f"{sv['scored']:,} scored, {sv['failed']} failed, {sv['requests_per_s']} req/s "
                                 f"with {sv['clients']} clients",
                "latency (client)": f"p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms",
                "decisions": ", ".join(f"{k} {v:,}" for k, v in sorted(sv["decisions"].items())),
                "versions": ", ".join(f"fraud v{v}" for v in sv["versions"]),
                "OpenAPI": sv["docs"] + ("" if sv["still_serving"] else " (stopped; `sira serve` starts it)"),
                "ops dashboard": f"{sv['url']}/ui/ (sign in with a key from {gov_keys(report)}; "
                                 "demo-ann approves, demo-oli operates)",
                "metrics": f"{sv['metrics']['platform']} (sira_*; open, no key), "
                           f"{sv['metrics']['replicas']} (ray_sira_*); `make observe`: Prometheus and Alertmanager "
                           "on them (docs/observability.md)",
            }))
            for a in sv["examples"]:
                reasons = "; ".join(r["text"] for r in a["reasons"]) or "(computed when the prediction is read)"
                err.print(f"  {a['decision']:>7}  score {a['score']:.4f}  fraud v{a['version']}  {reasons}")
            if sv.get("explained"):
                ex = sv["explained"]
                err.print(f"  read back by an analyst ({ex['decision']}, score {ex['score']:.4f}): "
                           + ("; ".join(r["text"] for r in ex["reasons"]) or "no feature raised the score"))
            if sv.get("report"):  # `sira explain --prediction ID` gives the whole report
                rep = sv["report"]
                err.print(f"  explained to the person ({rep['decision']}): " + "; ".join(rep["main_factors"][:2])
                          + (f". {rep['what_would_change_it']}" if rep.get("what_would_change_it") else ""))
        if report.batch:
            err.print(batch_table(report.batch))
        if report.drift:
            err.print(drift_table(report.drift, limit=12))
        if report.performance:
            err.print(performance_table(report.performance))
        if report.retrain:
            from sira.monitoring.retrain import markdown

            err.print(markdown(report.retrain))
            err.print(_story_table(report))
        table = Table(title="Tables", title_justify="left")
        table.add_column("table")
        table.add_column("rows", justify="right")
        for name, count in report.tables.items():
            table.add_row(name, f"{count:,}")
        err.print(table)

    emit(report.to_dict(), as_json, render)
