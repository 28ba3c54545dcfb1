"""``sira train`` and ``sira tune``."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sira.cli.common import (
    ApiKeyOption,
    DateOption,
    JsonOption,
    actor_for,
    app,
    emit,
    err,
    kv_table,
    load_yaml_mapping,
)
from sira.cli.jobs import release_job_key
from sira.core.config import get_settings


def plan_table(title: str, result: dict[str, Any]) -> Table:
    """The windows a training run would use, with the labelled rows and positives each holds."""
    if "windows" not in result:  # a table: its split
        return kv_table(title, {"rows": f"{result['rows']:,}", **{k: f"{v:,}" if isinstance(v, int) else v
                                                                   for k, v in result["split"].items()},
                                 **({"time column": f"{result['time_column']['name']} read as "
                                                    f"{result['time_column']['read_as']}"}
                                    if result.get("time_column") else {}),
                                 **({"infinite values (read as missing)": ", ".join(
                                     f"{k} ({v:,})" for k, v in result["infinite_values"].items())}
                                    if result.get("infinite_values") else {})})
    w, counts = result["windows"], result["counts"]
    # retrain's plan says --as-of among its inputs
    cutoff_by = result.get("cutoff_set_by") or ("--as-of" if (result.get("inputs") or {}).get("as_of") else "now")
    gap = result.get("gap")
    return kv_table(title, {
        "train": f"{w['train_from'][:16]} .. {w['train_to'][:16]}: {counts['train']['rows']:,} labelled events, "
                 f"{counts['train']['positives']:,} positive",
        **({"gap": f"{_days(gap['days'])} ({gap['set_by']})"} if gap else {}),
        "test": f"{w['test_from'][:16]} .. {w['test_to'][:16]}: {counts['test']['rows']:,} labelled events, "
                f"{counts['test']['positives']:,} positive",
        "labels known by": f"{w['cutoff'][:16]} ({'--as-of' if cutoff_by == '--as-of' else 'now: no --as-of'})",
        "label maturity": f"{w['maturity_days']:g} days",
        **{("warning" if i == 0 else f"warning {i + 1}"): said for i, said in enumerate(result.get("warnings") or [])},
        **({"feature rows": f"{rows['feature_set']} stores none for {rows['events_without_feature_rows']:,} events: "
                            "their vectors will be computed from the event log (slower)"}
           if (rows := result.get("feature_rows")) and rows["events_without_feature_rows"] else {}),
    })


def _days(days: float) -> str:
    whole, rest = divmod(round(days * 1440), 1440)  # minutes
    return f"{whole} day{'' if whole == 1 else 's'}" + (f" {rest // 60:02d}:{rest % 60:02d}" if rest else "")


async def _feature_rows(model: str, windows: dict[str, Any]) -> dict[str, Any] | None:
    from sira.core import db
    from sira.training.datasets import events_without_vectors

    async with db.open_pool(get_settings()) as pool:
        async with pool.acquire() as conn:
            return await events_without_vectors(conn, model, windows)


def metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    """A version's metrics at training, validation beside test."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("validation", justify="right")
    table.add_column("test", justify="right")
    for key in ("n", "positives", "average_precision", "roc_auc", "recall_at_1pct_fpr", "precision_at_100",
                "brier", "log_loss", "expected_calibration_error"):
        cells = []
        for part in ("validation", "test"):
            value = (metrics.get(part) or {}).get(key)
            cells.append(f"{value:,}" if isinstance(value, int) else f"{value:.4f}" if value is not None else "")
        table.add_row(key.replace("_", " "), *cells)
    return table


def training_table(result: dict[str, Any]) -> Table:
    table = metrics_table(f"{result['model']} v{result['version']} ({result['status']}), run {result['run_id']}",
                          result["metrics"])
    w = result.get("windows") or {}
    if "cutoff" in w:
        table.caption = (f"windows: train {w['train_from'][:16]}..{w['train_to'][:16]}, test {w['test_from'][:16]}.."
                         f"{w['test_to'][:16]}; labels known by {w['cutoff'][:16]}")
    elif result.get("time_column"):
        table.caption = f"time column {result['time_column']['name']} read as {result['time_column']['read_as']}"
    return table


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", help="Model name (created with defaults if new).")],
    data: Annotated[list[Path] | None, typer.Option("--data", help="Bring-your-own table: Parquet/CSV file or folder.")] = None,
    label: Annotated[str | None, typer.Option("--label", help="Label column of the table.")] = None,
    time_col: Annotated[str | None, typer.Option("--time-col", help="Time column: split by time.")] = None,
    id_col: Annotated[str | None, typer.Option("--id-col", help="Id column (never a feature).")] = None,
    positive: Annotated[str | None, typer.Option("--positive", help="The label value that means positive.")] = None,
    params: Annotated[Path | None, typer.Option("--params", help="YAML file of LightGBM parameters (and "
                                                                  "num_boost_round, early_stopping_rounds, calibration); "
                                                                  "with --trials they are fixed, the search tunes the others.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=2**31 - 1, help="Seed: same data, params, seed and "
                                             "threads, same model file (default: the --params file's, else 42).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, max=256, help="LightGBM threads (default: the "
                                                "--params file's, else all CPUs).")] = None,
    model_type: Annotated[str, typer.Option("--type", help="fraud_detection, churn or anomaly (new models).")] = "fraud_detection",
    train_from: DateOption("--train-from", "Start of the training window.") = None,
    train_to: DateOption("--train-to", "End of the training window (exclusive).") = None,
    test_from: DateOption("--test-from", "Start of the test window.") = None,
    test_to: DateOption("--test-to", "End of the test window (exclusive).") = None,
    test_days: Annotated[float | None, typer.Option("--test-days", min=0.01, help="Test window: these days up to the "
                                                    "newest usable event (default: the newest quarter).")] = None,
    train_days: Annotated[float | None, typer.Option("--train-days", min=0.01, help="Training window: these days "
                                                     "before the test window's gap (default: all the history).")] = None,
    as_of: DateOption("--as-of", "Label cut-off: labels known after it do not exist (default: now; for backtests).") = None,
    label_delay: Annotated[float, typer.Option("--label-delay", min=0, help="Days between the train and test windows.")] = 7.0,
    label_maturity: Annotated[
        int | None, typer.Option("--label-maturity", min=0, max=3650, help="Days until an unlabelled event counts as "
                                 "legitimate (for a model this run creates; default 30).")
    ] = None,
    trials: Annotated[int | None, typer.Option("--trials", min=1, max=10_000, help="Tune with this many trials first.")] = None,
    time_budget: Annotated[float | None, typer.Option("--time-budget", min=1, help="Seconds the search may take.")] = None,
    wait_for_cpus: Annotated[float, typer.Option("--wait-for-cpus", min=1, max=86_400, help="Seconds to wait for a "
                                                 "free CPU when none is free for a trial at the start.")] = 600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="State the windows and what they hold; train nothing.")] = False,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train a model and register a candidate version.

    With --trials, tune first, then train the best configuration. Without --data, the training set comes from the feature store (sira ingest); its default windows
    come from where the usable events are (docs/windows.md)."""
    from sira.training.runs import TrainRequest, run_training
    from sira.training.trainer import SeedAndThreads, seed_and_threads

    lightgbm = load_yaml_mapping(params) if params else None
    chosen = seed_and_threads(lightgbm, seed=seed, num_threads=threads)  # the option, the file's, the default
    request = TrainRequest(
        model=model, data=data, label=label, time_col=time_col, id_col=id_col, positive=positive,
        params=lightgbm, seed=chosen.seed, model_type=model_type,
        train_from=train_from, train_to=train_to, test_from=test_from, test_to=test_to,
        label_delay_days=label_delay, label_maturity_days=label_maturity, trials=trials, time_budget_s=time_budget,
        wait_for_cpus_s=wait_for_cpus,
        test_days=test_days, train_days=train_days, as_of=as_of, dry_run=dry_run,
        **({"num_threads": chosen.num_threads} if chosen.num_threads else {}),
    )
    # --type and --label-delay given, not their defaults: a type for a model that exists is refused when it differs
    # (it was ignored), and a gap given is kept as it is (the default one is at most an eighth of the span)
    request = dataclasses.replace(request, model_type=model_type if _given(ctx, "model_type") else None,
                                  label_delay_given=_given(ctx, "label_delay"))
    actor = asyncio.run(actor_for("models.write", api_key))
    result = run_until_terminated(run_training(get_settings(), request, actor=actor,
                                               progress=(lambda _m: None) if as_json else err.print))
    used = SeedAndThreads(request.seed, request.num_threads, chosen.origin)  # the default threads: this machine's
    if not result.get("dry_run"):
        result = {**result, "seed_and_threads": used.to_dict()}
    elif result.get("source") == "feature_store":
        result = {**result, "feature_rows": asyncio.run(_feature_rows(model, result["windows"]))}

    def render() -> None:
        if result.get("dry_run"):
            err.print(plan_table(f"Train {model} (dry run: nothing trained)", result))
            return
        err.print(training_table(result))
        if result.get("search"):
            s = result["search"]
            err.print(f"search: {s['completed']}/{s['trials']} trials, best validation AP "
                       f"{s['best_validation_ap']:.4f}, {s['concurrency']} at a time; searched "
                       f"{', '.join(s['searched'])}" + (f"; fixed by --params: {', '.join(s['fixed'])}"
                                                         if s["fixed"] else ""))
        if result["dropped_columns"]:
            err.print("not features: " + ", ".join(f"{k} ({v})" for k, v in result["dropped_columns"].items()))
        if result.get("infinite_values"):
            err.print("infinite values read as missing: " + ", ".join(f"{k} ({v:,})" for k, v in
                                                                      result["infinite_values"].items()))
        err.print(used.describe())
        err.print(f"artifact {result['artifact']['uri']} sha256 {result['artifact']['sha256']}")

    emit(result, as_json, render)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the option was given (on the command line or by its environment variable), not its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def run_until_terminated(work: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run(work)``; when SIGTERM (``ray job stop``, Kubernetes) or Ctrl-C stops it, once the run is
    recorded: this job's key revoked, a search under way stopped and its thread waited for (it called Ray after
    the shutdown, which started a second Ray from that thread), the Ray this process started shut down (its
    agents were left running, orphaned), one line on stderr, and the process ends at once (exit 143, 130): a
    LightGBM round or a Ray Data read in a worker thread cannot be interrupted, and waiting for it outlives the
    grace period before SIGKILL."""
    from sira.training.runs import Terminated

    async def run() -> Any:
        try:
            return await work
        except Terminated as exc:
            for cleanup, bound in ((release_job_key, 10.0), (searches_stopped, 20.0), (_shutdown_ray, 20.0)):
                try:
                    await asyncio.wait_for(asyncio.to_thread(cleanup), bound)
                except Exception:  # noqa: BLE001 - ending now matters more; the key expires at its TTL anyway
                    pass
            sys.stderr.write(exc.one_line() + "\n")
            sys.stderr.flush()
            os._exit(exc.exit_code)

    return asyncio.run(run())


def searches_stopped(wait_s: float = 15.0) -> None:
    """Stop the searches under way (`sira tune`'s) and wait up to ``wait_s`` for their threads, while the Ray this
    process started is whole: a SIGTERM to the process group (`kill -TERM -PID`) ends its raylet and GCS too, and
    then Tune's calls only wait for them."""
    import time

    from sira.training.runs import stop_searches

    deadline = time.monotonic() + wait_s
    for thread in stop_searches():
        while thread.is_alive() and time.monotonic() < deadline and _ray_whole():
            thread.join(0.2)


def _ray_whole() -> bool:
    """Whether every process of the Ray this process started is alive (a cluster it joined: assumed so)."""
    from ray._private import worker

    node = worker._global_node
    return node is None or node.remaining_processes_alive()


def _shutdown_ray() -> None:
    """Shut down this process's Ray, for good: a thread still calling Ray (a search that did not stop in time)
    would start a new one (Ray's auto-init: a second session, and a warning that its SIGTERM handler is not set)."""
    import ray
    from ray._private import auto_init_hook, worker

    auto_init_hook.enable_auto_connect = False
    node = worker._global_node
    if node is not None and not node.remaining_processes_alive():  # a SIGTERM to the process group ended its
        # raylet or GCS too: what is left is killed at once (a shutdown waited ~8 s for the dead ones, and Ray's core
        # worker sometimes ended the process meanwhile: exit 1 and no line)
        node.kill_all_processes(check_alive=False, allow_graceful=False)
    elif ray.is_initialized():
        ray.shutdown()


def tune_cmd(**options: Any) -> None:
    """Tune with Ray Tune and Optuna, then train the best.

    32 trials by default; the best configuration is trained and registered as a candidate. Takes every `sira train` option; without --data the training set comes from the feature store."""
    train_cmd(**options)


# `sira tune` is `sira train` with a search by default: the same options, --trials defaulting to 32.
_train_signature = inspect.signature(train_cmd, eval_str=True)
tune_cmd.__signature__ = _train_signature.replace(parameters=[  # type: ignore[attr-defined]
    p.replace(default=32) if p.name == "trials" else p for p in _train_signature.parameters.values()
])
tune_cmd.__annotations__ = dict(train_cmd.__annotations__)
app.command("tune")(tune_cmd)
