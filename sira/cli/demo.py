"""``sira demo``: the platform end to end, and its report."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sira.cli.common import JsonOption, app, emit, err, fmt, kv_table, serve_until_stopped
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
        # the service's address only while it still answers: the caption said OpenAPI after it had stopped
        table.caption = (f"OpenAPI {report.serving['docs']} · " if report.serving.get("still_serving") else "") \
            + f"report {rt['files']['markdown']}"
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
    emit(report.to_dict(), as_json, lambda: render(report))
    if keep_serving and report.serving:
        # the local Ray, and the service on it, live as long as this process: it exited here, and with it
        # the service --keep-serving promised to leave up
        serve_until_stopped()


def render(report: Any) -> None:
    """The demo's report on stderr: what each stage did, then what to do next."""
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
    err.print(kv_table("Ingested", ingested_rows(report)))
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
        err.print(kv_table("Online scoring (Ray Serve)", serving_rows(report)))
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
    # not folded at the console's width: a command cut in two lines does not paste
    err.print("\n".join(next_steps(report, venv=active_venv())), soft_wrap=True, markup=False)


def ingested_rows(report: Any) -> dict[str, str]:
    """The ingestion's summary, saying what a newcomer would otherwise read as a loss or a failure: the
    payments held back for the live step, and a feature set that keeps no row per event."""
    ing, held = report.ingest, report.simulation.get("held_back_for_serving", 0)
    fs = ing.get("feature_set") or {}
    rows = {"events": f"{ing['accepted']:,} accepted, {ing['duplicates']:,} duplicates, {ing['rejected']:,} rejected"
                      f" in {ing['seconds']} s" + (f"; the newest {held:,} of the {report.simulation['events']:,} "
                                                   "simulated are held back: they arrive as live scoring requests"
                                                   if held else "")}
    entities = ", ".join(f"{k} {v:,}" for k, v in report.snapshots["entities"].items())
    if fs.get("engine") == "tiles":  # feature engine v2: state per entity and daily checkpoints
        rows["feature rows"] = (f"none: feature set {fs['name']}@{fs['version']} keeps one packed state per entity "
                                "(sira_entity_states) and daily checkpoints (sira_state_checkpoints), no row per "
                                "event")
        rows["labels"] = f"{report.labels['inserted']:,} new, {report.labels['updated']:,} updated"
        rows["online states"] = f"{entities}: brought up to date with the labels"
    else:
        rows["feature rows"] = f"{ing['features_written']:,}"
        rows["labels"] = f"{report.labels['inserted']:,} new, {report.labels['updated']:,} updated"
        rows["snapshots"] = entities
    return rows


def serving_rows(report: Any) -> dict[str, str]:
    """What the live step did, and where the service is: while it still runs, where the demo served; once
    stopped, where `sira serve` will (the demo may have served on another port: its own was taken)."""
    sv, lat = report.serving, report.serving["client_latency_ms"]
    running = sv.get("still_serving", False)
    configured = sv.get("configured_url", sv["url"])
    base = sv["url"] if running else configured
    rows = {
        "live payments": f"{sv['scored']:,} scored, {sv['failed']} failed, {sv['requests_per_s']} req/s "
                         f"with {sv['clients']} clients",
        "latency (client)": f"p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms",
        "decisions": ", ".join(f"{k} {v:,}" for k, v in sorted(sv["decisions"].items())),
        "versions": ", ".join(f"fraud v{v}" for v in sv["versions"]),
    }
    if sv["url"] != configured:
        rows["port"] = (f"the demo served on {sv['url']}: {configured} was taken by another process; `sira serve` "
                        f"uses {configured.rsplit(':', 1)[1]} (or --port)")
    rows["OpenAPI"] = f"{base}/docs" + ("" if running else " (the demo's service has stopped: `sira serve` starts it)")
    rows["ops dashboard"] = (f"{base}/ui/ (sign in with a key from {gov_keys(report)}; demo-ann approves, demo-oli "
                             "operates)")
    rows["metrics"] = (f"{base}/metrics (sira_*; open, no key), "
                       + (f"{sv['metrics']['replicas']} (ray_sira_*)" if running
                          else "the replicas' ray_sira_* where `sira serve` says")
                       + "; `make observe`: Prometheus and Alertmanager on them (docs/observability.md)")
    return rows


def active_venv() -> Path | None:
    """The virtualenv this ``sira`` runs from when it is not activated (`make demo` calls .venv/bin/sira): the
    shell the person types in next has no `sira` until it is."""
    import os
    import sys

    prefix = Path(sys.prefix)
    if sys.prefix == sys.base_prefix or os.environ.get("VIRTUAL_ENV") == str(prefix):
        return None
    return prefix if (prefix / "bin" / "activate").exists() else None


def shown(path: Path) -> str:
    """A path as the person would type it: relative to the current folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def next_steps(report: Any, *, venv: Path | None) -> list[str]:
    """The demo's last words: how to pick up from here in a shell (the README's five-minute tour goes on)."""
    keys = shown(Path(gov_keys(report)))
    lines = ["Next (the README's five-minute tour goes on from here):"]
    if venv is not None:
        lines.append(f"  source {shown(venv / 'bin' / 'activate')}   # puts `sira` on your PATH")
    if report.governance:
        lines.append(f"  export SIRA_API_KEY=$(python -c 'import json; print(json.load(open(\"{keys}\"))"
                     "[\"demo-admin\"][\"key\"])')")
    serving = report.serving or {}
    if serving.get("still_serving"):
        lines.append(f"  # the service stays up at {serving['url']} until Ctrl-C")
    else:
        where = serving.get("configured_url", "http://127.0.0.1:8000")
        lines.append(f"  sira serve   # online scoring again on {where} (the demo's service has stopped)")
    lines.append("  sira drift --model fraud; sira retrain --model fraud; sira --help")
    if report.database.get("embedded"):
        lines.append("  sira db stop   # when done: the embedded PostgreSQL keeps running until then")
    return lines
