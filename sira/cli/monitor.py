"""After deployment: ``sira score`` (batch), ``sira drift``, ``sira performance``, ``sira retrain``."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sira.cli.common import (
    ApiKeyOption,
    DateOption,
    JsonOption,
    ModelOption,
    acting,
    actor_for,
    app,
    emit,
    err,
    fmt,
    kv_table,
    load_yaml_mapping,
)
from sira.cli.train import plan_table, run_until_terminated
from sira.core.config import MAX_VERSION, get_settings


@app.command("score")
def score_cmd(
    model: ModelOption,
    out: Annotated[Path, typer.Option("--out", help="The output .parquet file (replaced atomically; not an input nor "
                                      "inside an input folder; absolute in a Ray job).")],
    version: Annotated[int | None, typer.Option("--version", min=1, max=MAX_VERSION, help="Version (default: production).")] = None,
    data: Annotated[list[Path] | None, typer.Option("--data", help="Parquet/CSV file or folder with the model's "
                                                    "features as columns.")] = None,
    time_from: DateOption("--from", "Score stored events from this time.") = None,
    time_to: DateOption("--to", "... up to this time (exclusive).") = None,
    keep_columns: Annotated[bool, typer.Option("--keep-columns", help="Copy every input column to the output.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Reason codes per row (exact TreeSHAP; slower).")] = False,
    id_col: Annotated[str | None, typer.Option("--id-col", help="Id column (default: event_id or id if present).")] = None,
    time_col: Annotated[str | None, typer.Option("--time-col", help="Time column (default: occurred_at... if present).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1_000_000, help="Rows per model call.")] = 8_192,
    max_actors: Annotated[int | None, typer.Option("--max-actors", min=1, help="Most scoring actors at once.")] = None,
    wait_for_cpus: Annotated[float, typer.Option("--wait-for-cpus", min=1, max=86_400, help="Seconds to wait for a "
                                                 "free CPU when none is free at the start.")] = 600.0,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Batch-score a table or stored events with a model version.

    A table of your own, or a time range of stored events; on Ray Data."""
    from sira.core.files import output_file
    from sira.core.ray_runtime import in_ray_job
    from sira.monitoring.batch import BatchRequest, run_batch_score

    out = output_file(out, data or [], in_job=in_ray_job())  # before anything is read: not an input, nor in one
    request = BatchRequest(model=model, out=out, version=version, data=data, time_from=time_from,
                           time_to=time_to, keep_columns=keep_columns, explain=explain, id_col=id_col,
                           time_col=time_col, batch_size=batch_size, max_actors=max_actors,
                           wait_for_cpus_s=wait_for_cpus)
    actor = asyncio.run(actor_for("batch.score", api_key))
    from sira.core.progress import RowProgress

    progress = None if as_json else RowProgress("scoring")
    try:
        result = asyncio.run(run_batch_score(get_settings(), request, actor=actor, on_rows=progress))
    finally:
        if progress is not None:
            progress.close()

    emit(result, as_json, lambda: err.print(batch_table(result)))


def batch_table(result: dict[str, Any]) -> Table:
    return kv_table("Batch scoring", {
        "model": f"{result['model']} v{result['version']} ({result['status']})", "input": result["input"],
        "rows": f"{result['rows']:,}", "engine": result.get("engine", ""), "seconds": result["seconds"],
        "rows/s": f"{result['rows_per_second']:,}",
        "mean score": f"{result['mean_score']:.4f}",
        "decisions": ", ".join(f"{k} {v:,}" for k, v in result["decisions"].items()),
        "output": result["out"], "sha256": result["sha256"]})


def minute(iso: str) -> str:
    """A window's bound to the minute (2026-10-12T23:59), as the tables show it: a default window ends 1 µs after
    the newest event, so its dates alone named another window than the one measured."""
    return iso[:16]


def exact_range(lo: str, hi: str) -> str | None:
    """The bounds to pass again to read the same rows, when the minutes shown are not them (a default window
    ends 1 µs after the newest event: cut to its minute, it leaves that event out)."""
    if all(datetime.fromisoformat(t).second == 0 and datetime.fromisoformat(t).microsecond == 0 for t in (lo, hi)):
        return None
    short = [t.replace("+00:00", "Z") for t in (lo, hi)]
    return f"exactly --from {short[0]} --to {short[1]} (the same rows again)"


def drift_table(result: dict[str, Any], limit: int | None = None) -> Table:
    source = "predictions by scoring time" if result["source"] == "predictions" else result["source"]
    table = Table(title=f"Drift of {result['model']} v{result['version']} ({source}, "
                        f"{minute(result['window']['from'])}..{minute(result['window']['to'])}, "
                        f"{result['n_current']:,} rows): {result['verdict'].upper()}", title_justify="left")
    for column in ("feature", "severity", "PSI", "KS", "JS", "chi2", "p adj", "missing ref→now"):
        table.add_column(column, justify="left" if column in ("feature", "severity") else "right")
    for r in result["features"][:limit]:
        d = r["details"]
        missing = (f"{d['missing_rate_reference']:.3f}→{d['missing_rate_current']:.3f}"
                   if d.get("missing_rate_current") is not None else "")
        table.add_row(r["feature"], r["severity"], fmt(r["psi"]), fmt(r["ks_statistic"]),
                      fmt(r["js_divergence"]), fmt(r["chi2_statistic"], 1), fmt(r["p_value_adjusted"], 4),
                      missing)
    return table


@app.command("drift")
def drift_cmd(
    model: ModelOption,
    version: Annotated[int | None, typer.Option("--version", min=1, max=MAX_VERSION, help="Version (default: production).")] = None,
    source: Annotated[str, typer.Option("--source", help="events (stored events by event time, scored now) or "
                                        "predictions (what the version served, by when it scored them; `sira "
                                        "performance` windows by event time).")] = "events",
    days: Annotated[float | None, typer.Option("--days", min=0.01, help="The window: this many days (default 7) up "
                                               "to the newest data that fills one, walking back over sparse days; "
                                               "after --from or before --to (not with both: docs/windows.md).")] = None,
    time_from: DateOption("--from", "Start of the window (event time; scoring time with --source predictions).") = None,
    time_to: DateOption("--to", "End of the window (exclusive).") = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compare recent data with the training reference; store it.

    A recent window against the version's training reference: PSI, KS, chi-square, JS."""
    from sira.monitoring.drift import DriftRequest, run_drift

    actor = asyncio.run(actor_for("monitoring.run", api_key))
    request = DriftRequest(model=model, version=version, source=source, days=days, time_from=time_from,
                           time_to=time_to)
    result = asyncio.run(run_drift(get_settings(), request, actor=actor))

    def render() -> None:
        err.print(drift_table(result))
        if exact := exact_range(result["window"]["from"], result["window"]["to"]):
            err.print(f"window {exact}")
        if result["window"].get("skipped_after"):
            err.print(f"window: {result['window']['rule']}; the {result['window']['skipped_after']:,} newer rows "
                       f"(up to {minute(result['window']['newest'])}) are too few to fill one")
        for feature, why in (result.get("skipped") or {}).items():
            err.print(f"not compared: {feature}: {why}")
        for feature, why in (result.get("few_bins") or {}).items():
            err.print(f"too few bins: {feature}: {why}")

    emit(result, as_json, render)


def performance_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"Performance of {result['model']} (labels as of {minute(result['as_of'])}"
                        f"{', a backtest' if result.get('backtest') else ''}, AP margin {result['ap_margin']:.2f})",
                  title_justify="left")
    for column in ("version", "role", "window", "n", "positives", "AP", "train AP", "ROC AUC", "precision",
                   "recall", "ECE", "flag"):
        table.add_column(column, justify="left" if column in ("role", "window", "flag") else "right")
    for res in result["results"]:
        for w in res["windows"]:
            decisions = w.get("decisions") or {}
            table.add_row(str(res["version"]), res["role"], f"{minute(w['window_start'])}..{minute(w['window_end'])}",
                          f"{w['n']:,}", f"{w['n_positive']:,}", fmt(w["average_precision"]),
                          fmt(res["training_ap"]), fmt(w["roc_auc"]), fmt(decisions.get("precision_flagged")),
                          fmt(decisions.get("recall_flagged")), fmt(w.get("expected_calibration_error")),
                          "FLAGGED" if w["flagged"] else "provisional" if w.get("provisional") else "")
    flagged = [f"v{res['version']} {res['role']}: {', '.join(res['flagged_segments'])}" for res in result["results"]
               if res["flagged_segments"]]
    notes = ([f"range {exact}"] if (exact := exact_range(result["range"]["from"], result["range"]["to"])) else []) + \
        (["flagged segments: " + "; ".join(flagged)] if flagged else [])
    if notes:
        table.caption, table.caption_justify = "\n".join(notes), "left"
    return table


@app.command("performance")
def performance_cmd(
    model: ModelOption,
    version: Annotated[int | None, typer.Option("--version", min=1, max=MAX_VERSION, help="Only this version (default: all).")] = None,
    days: Annotated[float | None, typer.Option("--days", min=0.01, help="This many days (default 28) of matured "
                                               "events, ending one label maturity before now (or before --to; not "
                                               "with --from), then the provisional windows after them "
                                               "(docs/windows.md).")] = None,
    time_from: DateOption("--from", "Start of the range (event time).") = None,
    time_to: DateOption("--to", "End of the range (exclusive).") = None,
    window_days: Annotated[float, typer.Option("--window-days", min=0.01, help="Days per window.")] = 7.0,
    ap_margin: Annotated[float | None, typer.Option("--ap-margin", min=0, max=1, help="Flag a window whose AP is "
                                                    "this far below the training test AP (default 0.10).")] = None,
    min_segment: Annotated[int, typer.Option("--min-segment", min=1, help="Smallest segment evaluated.")] = 200,
    as_of: DateOption("--as-of", "Labels known by then (default: now).") = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate stored predictions against matured labels.

    Production's and the shadow's; the result is stored."""
    from sira.monitoring.performance import PerformanceRequest, run_performance

    actor = asyncio.run(actor_for("monitoring.run", api_key))
    request = PerformanceRequest(model=model, version=version, days=days, time_from=time_from,
                                 time_to=time_to, window_days=window_days, ap_margin=ap_margin,
                                 min_segment_size=min_segment, as_of=as_of)
    result = asyncio.run(run_performance(get_settings(), request, actor=actor))

    emit(result, as_json, lambda: err.print(performance_table(result)))


@app.command("retrain")
def retrain_cmd(
    model: ModelOption,
    trials: Annotated[int, typer.Option("--trials", min=0, max=10_000, help="Search trials (0: no search).")] = 16,
    time_budget: Annotated[float | None, typer.Option("--time-budget", min=1, help="Seconds the search may take.")] = 600.0,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=2**31 - 1, help="Seed of the search and training "
                                             "(default: the --params file's, else 42).")] = None,
    params: Annotated[Path | None, typer.Option("--params", help="YAML file of LightGBM parameters.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, max=256, help="LightGBM threads (default: the "
                                                "--params file's, else all CPUs).")] = None,
    test_days: Annotated[float | None, typer.Option("--test-days", min=1, help="Held-out window: these many days "
                                                    "up to the newest usable event (default: the newest quarter).")] = None,
    train_days: Annotated[float | None, typer.Option("--train-days", min=1, help="Training window: these many days "
                                                     "before the held-out window (default: all the history).")] = None,
    as_of: DateOption("--as-of", "Label cut-off (default: now).") = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would run and its windows, change nothing.")] = False,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Retrain a challenger and judge it against the champion.

    A challenger on the latest data, judged against the champion on a recent window, staged (or not) by
    the model's promotion policy."""
    from sira.core import db
    from sira.core.auth import Identity
    from sira.monitoring.retrain import RetrainRequest, run_retrain

    settings = get_settings()

    async def run() -> dict[str, Any]:
        async with db.open_pool(settings) as pool:
            async with pool.acquire() as conn:
                if api_key is None and not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM sira_api_keys)"):
                    from sira.core.audit import Actor

                    # a fresh installation: no keys yet, the local user acts (as for `sira train`)
                    identity = Identity(Actor.local().name, frozenset({"data_scientist"}), kind="system")
                else:
                    identity = await acting(conn, api_key)
        request = RetrainRequest(model=model, trials=trials, time_budget_s=time_budget, seed=seed,
                                 params=load_yaml_mapping(params) if params else None, num_threads=threads,
                                 test_days=test_days, train_days=train_days, as_of=as_of, dry_run=dry_run)
        return await run_retrain(settings, request, identity, progress=(lambda _m: None) if as_json else err.print)

    result = run_until_terminated(run())  # SIGTERM: the run recorded, the job's key revoked, its Ray shut down

    def render() -> None:
        if result.get("dry_run"):
            err.print(kv_table(f"Retrain {model} (dry run)", {
                "plan": result["plan"], "steps": ", ".join(result["steps"]) or "none",
                "champion": result["inputs"]["champion"], "events": f"{result['inputs']['events']:,}",
                "labels": f"{result['inputs']['labels']:,}", "input key": result["input_key"][:16]}))
            err.print(plan_table("Windows of the challenger", result))
            return
        from sira.monitoring.retrain import markdown

        err.print(markdown(result))
        if result.get("reused"):
            err.print("(these inputs were retrained before: the earlier run's report, no new version)")
        err.print(f"report: {result['files']['markdown']}")

    emit(result, as_json, render)
