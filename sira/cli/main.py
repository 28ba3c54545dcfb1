"""The ``sira`` command line.

Conventions (see CONVENTIONS.md): ``sira <noun> <verb>``; human output goes to
stderr; ``--json`` prints exactly one JSON object on stdout; errors are one
line, ``error: <code>: <message>``, exit 2 for bad input and 1 for a failure
of the system; a traceback only with ``--debug``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.exceptions import Exit as TyperExit
from typer.exceptions import TyperException

from sira.core.config import MAX_VERSION, get_settings
from sira.core.errors import EXIT_BAD_INPUT, EXIT_FAILURE, InvalidInput, NotFound, SiraError

app = typer.Typer(
    name="sira",
    help="SIRA: risk models for payments: features, training, governance, serving, monitoring.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _group(name: str, help_text: str) -> typer.Typer:
    """A `sira <noun> <verb>` command group."""
    group = typer.Typer(help=help_text, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


db_app = _group("db", "Manage the database: migrations and the embedded server.")
features_app = _group("features", "Feature sets, snapshots and point-in-time values.")
feedback_app = _group("feedback", "Labels: chargebacks, reviews, outcomes.")
webhooks_app = _group("webhooks", "Signed webhooks of registry events.")
keys_app = _group("keys", "API keys and their roles (shown once at creation).")
models_app = _group("models", "Models: create, list, show, change settings.")
versions_app = _group("versions", "Model versions: show one, compare two, model cards.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
ApiKeyOption = Annotated[
    str | None, typer.Option("--api-key", envvar="SIRA_API_KEY", show_envvar=True, help="The API key to act as.")
]

# Not a terminal (CI logs, pipes): wide enough that paths are not folded.
_err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


# With --json, the process's stdout (fd 1) is pointed at stderr for the whole command, so nothing
# that Ray's threads, native libraries or subprocesses print can get mixed into the JSON; the
# result alone goes to the real stdout, kept here.
_JSON_STDOUT: Any = None


def _emit(payload: dict[str, Any], as_json: bool, render: Callable[[], None]) -> None:
    """Print a command's result: one JSON object on stdout, or a human rendering on stderr."""
    if as_json:
        out = _JSON_STDOUT or sys.stdout
        out.write(json.dumps(payload, default=str, sort_keys=True) + "\n")
        out.flush()
    else:
        render()


def _reserve_stdout_for_json() -> None:
    """Keep fd 1 for the JSON result only (see ``_JSON_STDOUT``)."""
    global _JSON_STDOUT
    try:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:
        return
    _JSON_STDOUT = os.fdopen(saved, "w", closefd=True)


def _kv_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, "" if value is None else str(value))
    return table


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors (anywhere on the line).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars (they are drawn on a terminal "
                                        "only, on stderr).")] = False,
) -> None:
    """SIRA: risk models for payments."""
    from sira.core import progress

    progress.set_quiet(quiet)


# -- db ----------------------------------------------------------------------


@db_app.command("migrate")
def db_migrate(as_json: JsonOption = False) -> None:
    """Apply pending schema migrations from sql/."""
    from sira.core import db, migrations

    settings = get_settings()

    async def run() -> tuple[str, list[migrations.Migration], int]:
        dsn = db.resolve_dsn(settings)
        conn = await db.connect(dsn)
        try:
            applied = await migrations.migrate(conn)
            states = await migrations.status(conn)
        finally:
            await conn.close()
        return dsn, applied, max((s.version for s in states), default=0)

    dsn, applied, version = asyncio.run(run())
    payload = {
        "database": db.describe_dsn(dsn),
        "applied": [m.filename for m in applied],
        "schema_version": version,
    }

    def render() -> None:
        if applied:
            for m in applied:
                _err.print(f"applied {m.filename}")
        else:
            _err.print("schema is up to date")
        _err.print(f"schema version {version:03d} on {payload['database']}")

    _emit(payload, as_json, render)


@db_app.command("status")
def db_status(as_json: JsonOption = False) -> None:
    """Show the database in use, the embedded server and the migrations."""
    from sira.core import db, migrations

    settings = get_settings()
    embedded = db.embedded_server(settings).status() if settings.database_url is None else None

    async def run(dsn: str) -> list[migrations.MigrationState]:
        conn = await db.connect(dsn)
        try:
            return await migrations.status(conn)
        finally:
            await conn.close()

    dsn: str | None
    if settings.database_url is not None:
        dsn = settings.database_url.get_secret_value()
    else:
        dsn = embedded.dsn if embedded else None
    states = asyncio.run(run(dsn)) if dsn else []
    pending = [s for s in states if s.applied_at is None]
    payload: dict[str, Any] = {
        "database": db.describe_dsn(dsn) if dsn else None,
        "mode": "external" if settings.database_url is not None else "embedded",
        "reachable": dsn is not None,
        "migrations": [
            {"version": s.version, "name": s.name, "applied_at": s.applied_at.isoformat() if s.applied_at else None}
            for s in states
        ],
        "pending": [f"{s.version:03d}_{s.name}" for s in pending],
        "up_to_date": bool(states) and not pending,
    }
    if embedded is not None:
        payload["embedded"] = {
            "data_dir": str(embedded.data_dir),
            "initialized": embedded.initialized,
            "running": embedded.running,
            "pid": embedded.pid,
        }

    def render() -> None:
        rows: dict[str, Any] = {"mode": payload["mode"], "database": payload["database"] or "(not running)"}
        if embedded is not None:
            rows.update({"data dir": embedded.data_dir, "running": embedded.running, "pid": embedded.pid})
        rows["schema"] = (
            "up to date" if payload["up_to_date"]
            else ("pending: " + ", ".join(payload["pending"]) + " (run `sira db migrate`)") if states
            else "unknown (database not running)"
        )
        _err.print(_kv_table("SIRA database", rows))

    _emit(payload, as_json, render)


@db_app.command("start")
def db_start(as_json: JsonOption = False) -> None:
    """Start the workspace's embedded PostgreSQL (it keeps running until `sira db stop`)."""
    from sira.core import db

    settings = get_settings()
    if settings.database_url is not None:
        raise InvalidInput("SIRA_DATABASE_URL is set: SIRA uses that server and has no embedded one to start")
    server = db.embedded_server(settings)
    was_running = server.status().running
    dsn = server.start()
    payload = {"database": db.describe_dsn(dsn), "data_dir": str(server.data_dir), "already_running": was_running}
    _emit(payload, as_json, lambda: _err.print(
        f"embedded PostgreSQL {'already running' if was_running else 'started'}: {payload['database']}"
        f" (data in {server.data_dir})"
    ))


@db_app.command("stop")
def db_stop(as_json: JsonOption = False) -> None:
    """Stop the workspace's embedded PostgreSQL."""
    from sira.core import db

    settings = get_settings()
    if settings.database_url is not None:
        raise InvalidInput("SIRA_DATABASE_URL is set: SIRA does not own that server and will not stop it")
    server = db.embedded_server(settings)
    stopped = server.stop()
    payload = {"stopped": stopped, "data_dir": str(server.data_dir)}
    _emit(payload, as_json, lambda: _err.print(
        "embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running"
    ))


# -- simulate ----------------------------------------------------------------


def _load_yaml_mapping(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise NotFound(f"file not found: {path}", details={"path": str(path)})
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: expected a mapping of settings at the top level")
    return data


@app.command("simulate")
def simulate_cmd(
    out: Annotated[Path | None, typer.Option("--out", help="Output folder. Default: <workspace>/simulation.")] = None,
    days: Annotated[int | None, typer.Option("--days", help="Days of traffic (default 30).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed: same seed, same files.")] = None,
    start: Annotated[
        datetime | None, typer.Option("--start", formats=["%Y-%m-%d"], help="First day, YYYY-MM-DD (default 2026-09-01).")
    ] = None,
    customers: Annotated[int | None, typer.Option("--customers", help="Number of customers (default 2000).")] = None,
    fraud_rate: Annotated[float | None, typer.Option("--fraud-rate", help="Share of fraudulent events (default 0.01).")] = None,
    shift_day: Annotated[
        int | None, typer.Option("--shift-day", help="Day from which the fraud pattern shifts (default: none).")
    ] = None,
    label_delay_days: Annotated[
        float | None, typer.Option("--label-delay-days", help="Median chargeback delay in days (default 10).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file of simulation settings; options override it.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Simulate payments, fraud and delayed labels into events.parquet and labels.parquet."""
    from sira.demo.simulate import SimulationConfig, simulate

    values: dict[str, Any] = _load_yaml_mapping(config) if config else {}
    unknown = set(values) - set(SimulationConfig.__dataclass_fields__)
    if unknown:
        raise InvalidInput(f"{config}: unknown setting(s) {', '.join(sorted(unknown))}")
    overrides = {
        "days": days, "seed": seed, "start": start.date() if start else None, "customers": customers,
        "fraud_rate": fraud_rate, "shift_day": shift_day, "label_delay_days": label_delay_days,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(values.get("start"), str):
        try:
            values["start"] = datetime.strptime(values["start"], "%Y-%m-%d").date()
        except ValueError:
            raise InvalidInput(f"start: expected YYYY-MM-DD, got {values['start']!r}") from None
    try:
        cfg = SimulationConfig(**values)
    except TypeError as exc:
        raise InvalidInput(f"invalid simulation settings: {exc}") from None
    out_dir = (out or get_settings().workspace / "simulation").resolve()
    with _err.status("simulating payments…"):
        result = simulate(cfg, out_dir)
    payload = {
        "events": str(result.events_path), "labels": str(result.labels_path),
        "manifest": str(result.manifest_path), "summary": result.summary,
    }

    def render() -> None:
        s = result.summary
        _err.print(_kv_table("Simulation", {
            "events": f"{s['events']:,} → {result.events_path}",
            "fraud": f"{s['fraud_events']:,} ({s['fraud_rate']:.2%})",
            "by scenario": ", ".join(f"{k} {v:,}" for k, v in s["fraud_by_scenario"].items()) or "none",
            "labels": f"{s['labels']:,} ({s['positive_labels']:,} fraud, {s['negative_labels']:,} reviewed legit)"
            f" → {result.labels_path}",
            "median chargeback delay": f"{s['median_chargeback_delay_days']} days",
            "shift day": s["shift_day"],
        }))

    _emit(payload, as_json, render)


# -- ingest, feedback, features ------------------------------------------------

MapOption = Annotated[
    str | None, typer.Option("--map", help="Column mapping: sira_name=SOURCE_COLUMN,... (e.g. occurred_at=TX_DATETIME).")
]
MapFileOption = Annotated[Path | None, typer.Option("--map-file", help="YAML file with a `columns:` mapping.")]


def _summary_table(title: str, summary: dict[str, Any]) -> Table:
    rows = {k.replace("_", " "): v for k, v in summary.items() if not isinstance(v, dict)}
    reasons = summary.get("rejected_by_reason") or {}
    if reasons:
        rows["rejected by reason"] = ", ".join(f"{k} {v:,}" for k, v in reasons.items())
    return _kv_table(title, rows)


@app.command("ingest")
def ingest_cmd(
    paths: Annotated[list[Path] | None, typer.Argument(help="Event files or folders (.parquet, .csv, .jsonl).")] = None,
    mapping: MapOption = None,
    map_file: MapFileOption = None,
    source: Annotated[str | None, typer.Option("--source", help="Name of the source system (default: the file).")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Consume the Redis stream sira:events until stopped.")] = False,
    max_events: Annotated[
        int | None, typer.Option("--max-events", min=1, help="With --stream: stop after this many events.")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, max=10_000, help="With --stream: entries per transaction.")] = 200,
    consumer: Annotated[
        str | None,
        typer.Option("--consumer", help="With --stream: consumer name; a restarted consumer of the same name "
                     "first finishes its own unacknowledged entries (default: host-pid)."),
    ] = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ingest events: validate, redact PII, deduplicate, compute features."""
    from sira.core.files import parse_mapping
    from sira.features.definitions import get_feature_set

    settings = get_settings()
    column_map = parse_mapping(mapping, map_file)
    fs = get_feature_set()
    if stream:
        if paths:
            raise InvalidInput("give files or --stream, not both")
        asyncio.run(_actor_for("events.write", api_key))
        from sira.ingest.stream import consume_forever

        summary = asyncio.run(consume_forever(settings, fs=fs, mapping=column_map, max_events=max_events,
                                              batch=batch, consumer=consumer, notify=None if as_json else _err.print))
        payload = summary.to_dict()
    else:
        if not paths:
            raise InvalidInput("name at least one file or folder to ingest (or use --stream)")
        from sira.core.files import find_files
        from sira.ingest.bulk import ingest_files

        find_files(paths)  # a missing or unsupported file fails before anything else
        asyncio.run(_actor_for("events.write", api_key))

        summary = ingest_files(settings, paths, fs=fs, mapping=column_map, source=source,
                               progress=not as_json, notify=(lambda _m: None) if as_json else _err.print)
        payload = summary.to_dict()
    _emit(payload, as_json, lambda: _err.print(_summary_table("Ingest", payload)))


@feedback_app.command("import")
def feedback_import_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Label files or folders (.parquet, .csv, .jsonl).")],
    mapping: MapOption = None,
    map_file: MapFileOption = None,
    source: Annotated[str, typer.Option("--source", help="Source of labels without a source column.")] = "import",
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import labels (event_id, label, known_at[, source, label_name, occurred_at])."""
    from sira.core.files import find_files, parse_mapping
    from sira.ingest.labels import import_label_files

    find_files(paths)  # a missing or unsupported file fails before anything else
    from sira.core.audit import Actor

    actor = asyncio.run(_actor_for("feedback.write", api_key)) or Actor.local()

    summary = asyncio.run(import_label_files(get_settings(), paths, mapping=parse_mapping(mapping, map_file),
                                             source=source, created_by=actor.name))
    payload = summary.to_dict()
    _emit(payload, as_json, lambda: _err.print(_summary_table("Labels", payload)))


@features_app.command("materialize")
def features_materialize_cmd(
    full: Annotated[bool, typer.Option("--full", help="Rebuild every snapshot, not only changed entities.")] = False,
    as_json: JsonOption = False,
    api_key: ApiKeyOption = None,
) -> None:
    """Refresh online snapshots of entities with new events or labels (operator or data scientist)."""
    from sira.features.store import materialize_all

    asyncio.run(_actor_for("features.materialize", api_key))
    payload = asyncio.run(materialize_all(get_settings(), full=full))
    _emit(payload, as_json, lambda: _err.print(_kv_table("Snapshots refreshed", payload["entities"])))


@features_app.command("list")
def features_list_cmd(as_json: JsonOption = False) -> None:
    """Show the feature set definition and its feature names."""
    from sira.features.definitions import get_feature_set

    fs = get_feature_set()
    payload = {**fs.to_dict(), "features": fs.names()}

    def render() -> None:
        table = Table(title=f"Feature set {fs.name} v{fs.version}", title_justify="left")
        table.add_column("entity")
        table.add_column("features")
        table.add_row("event", ", ".join(fs.event_features))
        for spec in fs.entities:
            table.add_row(spec.entity, ", ".join(spec.names()))
        _err.print(table)

    _emit(payload, as_json, render)


@features_app.command("show")
def features_show_cmd(
    entity_type: Annotated[str, typer.Argument(help="customer, card, terminal, ...")],
    entity_id: Annotated[str, typer.Argument(help="The entity's id (card: its token).")],
    as_json: JsonOption = False,
    api_key: ApiKeyOption = None,
) -> None:
    """Show one entity's online snapshot and how fresh it is (analyst or data scientist)."""
    from sira.core import db
    from sira.features.definitions import get_feature_set
    from sira.features.store import read_snapshot

    settings = get_settings()
    asyncio.run(_actor_for("features.read", api_key))

    async def run():
        async with db.open_pool(settings) as pool:
            async with pool.acquire() as conn:
                return await read_snapshot(conn, get_feature_set(), entity_type, entity_id)

    snap = asyncio.run(run())
    payload = {"entity_type": snap.entity_type, "entity_id": snap.entity_id, "as_of": snap.as_of.isoformat(),
               "age_seconds": round(snap.age_seconds, 3), "stale": snap.stale, "features": snap.features}
    _emit(payload, as_json, lambda: _err.print(_kv_table(
        f"{entity_type} {entity_id} as of {payload['as_of']}{' (STALE)' if snap.stale else ''}", snap.features
    )))


# -- training ------------------------------------------------------------------


async def _actor_for(action: str, api_key: str | None) -> Any:
    """Who acts: the key's owner, allowed to perform ``action``; before any key exists, the local user."""
    from sira.core import db
    from sira.core.auth import authorize

    async with db.open_pool(get_settings()) as pool:
        async with pool.acquire() as conn:
            if api_key is None and not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM sira_api_keys)"):
                return None  # a fresh installation: no keys yet, the local user acts
            identity = await _acting(conn, api_key)
            authorize(identity, action)
            return identity.actor()


def DateOption(flag: str, help_text: str) -> Any:  # noqa: N802 - reads as a type in signatures
    return Annotated[datetime | None, typer.Option(flag, formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
                                                   help=f"{help_text} YYYY-MM-DD, UTC.")]


def _utc(value: datetime | None) -> datetime | None:
    from sira.ingest.events import as_utc

    return None if value is None else as_utc(value)


def _plan_table(title: str, result: dict[str, Any]) -> Table:
    """The windows a training run would use, with the labelled rows and positives each holds."""
    if "windows" not in result:  # a table: its split
        return _kv_table(title, {"rows": f"{result['rows']:,}", **{k: f"{v:,}" if isinstance(v, int) else v
                                                                   for k, v in result["split"].items()},
                                 **({"time column": f"{result['time_column']['name']} read as "
                                                    f"{result['time_column']['read_as']}"}
                                    if result.get("time_column") else {})})
    w, counts = result["windows"], result["counts"]
    return _kv_table(title, {
        "train": f"{w['train_from'][:16]} .. {w['train_to'][:16]}: {counts['train']['rows']:,} labelled events, "
                 f"{counts['train']['positives']:,} positive",
        "test": f"{w['test_from'][:16]} .. {w['test_to'][:16]}: {counts['test']['rows']:,} labelled events, "
                f"{counts['test']['positives']:,} positive",
        "labels known by": f"{w['cutoff'][:16]} (--as-of)", "label maturity": f"{w['maturity_days']:g} days",
    })


def _training_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"{result['model']} v{result['version']} ({result['status']}), run {result['run_id']}",
                  title_justify="left")
    table.add_column("metric")
    table.add_column("validation", justify="right")
    table.add_column("test", justify="right")
    for key in ("n", "positives", "average_precision", "roc_auc", "recall_at_1pct_fpr", "precision_at_100",
                "brier", "log_loss", "expected_calibration_error"):
        cells = []
        for part in ("validation", "test"):
            value = result["metrics"][part].get(key)
            cells.append(f"{value:,}" if isinstance(value, int) else f"{value:.4f}" if value is not None else "")
        table.add_row(key.replace("_", " "), *cells)
    w = result.get("windows") or {}
    if "cutoff" in w:
        table.caption = (f"windows: train {w['train_from'][:16]}..{w['train_to'][:16]}, test {w['test_from'][:16]}.."
                         f"{w['test_to'][:16]}; labels known by {w['cutoff'][:16]}")
    elif result.get("time_column"):
        table.caption = f"time column {result['time_column']['name']} read as {result['time_column']['read_as']}"
    return table


@app.command("train")
def train_cmd(
    model: Annotated[str, typer.Option("--model", help="Model name (created with defaults if new).")],
    data: Annotated[list[Path] | None, typer.Option("--data", help="Bring-your-own table: Parquet/CSV file or folder.")] = None,
    label: Annotated[str | None, typer.Option("--label", help="Label column of the table.")] = None,
    time_col: Annotated[str | None, typer.Option("--time-col", help="Time column: split by time.")] = None,
    id_col: Annotated[str | None, typer.Option("--id-col", help="Id column (never a feature).")] = None,
    positive: Annotated[str | None, typer.Option("--positive", help="The label value that means positive.")] = None,
    params: Annotated[Path | None, typer.Option("--params", help="YAML file of LightGBM parameters.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed: same data, params, seed and threads, same model file.")] = 42,
    threads: Annotated[int | None, typer.Option("--threads", min=1, max=256, help="LightGBM threads (default: all CPUs).")] = None,
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
    dry_run: Annotated[bool, typer.Option("--dry-run", help="State the windows and what they hold; train nothing.")] = False,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train (or, with --trials, tune then train) and register a candidate version.

    Without --data, the training set comes from the feature store (sira ingest); its default windows
    come from where the usable events are (docs/windows.md)."""
    from sira.training.runs import TrainRequest, run_training

    request = TrainRequest(
        model=model, data=data, label=label, time_col=time_col, id_col=id_col, positive=positive,
        params=_load_yaml_mapping(params) if params else None, seed=seed, model_type=model_type,
        train_from=_utc(train_from), train_to=_utc(train_to), test_from=_utc(test_from), test_to=_utc(test_to),
        label_delay_days=label_delay, label_maturity_days=label_maturity, trials=trials, time_budget_s=time_budget,
        test_days=test_days, train_days=train_days, as_of=_utc(as_of), dry_run=dry_run,
        **({"num_threads": threads} if threads else {}),
    )
    actor = asyncio.run(_actor_for("models.write", api_key))
    result = asyncio.run(run_training(get_settings(), request, actor=actor,
                                      progress=(lambda _m: None) if as_json else _err.print))

    def render() -> None:
        if result.get("dry_run"):
            _err.print(_plan_table(f"Train {model} (dry run: nothing trained)", result))
            return
        _err.print(_training_table(result))
        if result.get("search"):
            s = result["search"]
            _err.print(f"search: {s['completed']}/{s['trials']} trials, best validation AP "
                       f"{s['best_validation_ap']:.4f}, {s['concurrency']} at a time")
        if result["dropped_columns"]:
            _err.print("not features: " + ", ".join(f"{k} ({v})" for k, v in result["dropped_columns"].items()))
        _err.print(f"artifact {result['artifact']['uri']} sha256 {result['artifact']['sha256']}")

    _emit(result, as_json, render)


def tune_cmd(**options: Any) -> None:
    """Tune with Ray Tune + Optuna (default 32 trials), then train the best configuration and register it.

    Takes every `sira train` option; without --data the training set comes from the feature store."""
    train_cmd(**options)


# `sira tune` is `sira train` with a search by default: the same options, --trials defaulting to 32.
_train_signature = inspect.signature(train_cmd, eval_str=True)
tune_cmd.__signature__ = _train_signature.replace(parameters=[  # type: ignore[attr-defined]
    p.replace(default=32) if p.name == "trials" else p for p in _train_signature.parameters.values()
])
tune_cmd.__annotations__ = dict(train_cmd.__annotations__)
app.command("tune")(tune_cmd)


# -- governance --------------------------------------------------------------------


def _governed(action: Callable[..., Any], api_key: str | None, *args: Any, notify: bool = False) -> Any:
    """Run one registry operation as the key's owner, in one transaction (then deliver its webhooks)."""
    from sira.core import db
    from sira.registry import webhooks

    settings = get_settings()

    async def run() -> Any:
        from sira.core import audit
        from sira.core.errors import PermissionDenied

        async with db.open_pool(settings) as pool:
            async with pool.acquire() as conn:
                identity = await _acting(conn, api_key)
            try:
                async with db.transaction(pool) as conn:
                    result = await action(conn, identity, *args)
            except PermissionDenied as exc:
                await audit.record_denied(pool, identity.actor(), exc.details.get("action", "cli"), exc.message)
                raise
            if notify:  # after the commit; failures are retried by `sira webhooks deliver`
                await webhooks.deliver_due(pool, settings)
            return result

    return asyncio.run(run())


ModelOption = Annotated[str, typer.Option("--model", help="Model name.")]
VersionOption = Annotated[int, typer.Option("--version", min=1, max=MAX_VERSION, help="Version number.")]
CommentOption = Annotated[str | None, typer.Option("--comment", help="Why (stored with the decision).")]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="Why this version.")]


@app.command("promote")
def promote_cmd(model: ModelOption, version: VersionOption, reason: ReasonOption = None,
                api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """Request production for a version (validates a candidate first); approvals complete it."""
    from sira.registry.models import request_promotion

    result = _governed(lambda conn, who: request_promotion(conn, get_settings(), who, model, version, reason), api_key,
                       notify=True)
    _emit(result, as_json, lambda: _err.print(
        f"{model} v{version}: promotion request {result['request_id']} {result['status']}"
        + (f", needs {result['required_approvals']} approval(s)" if result["status"] == "pending" else "")))


@app.command("stage")
def stage_cmd(model: ModelOption, version: VersionOption, reason: ReasonOption = None,
              api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """Put a version in staging: serving scores it in shadow beside production (validates a candidate first)."""
    from sira.registry.models import stage_version

    result = _governed(lambda conn, who: stage_version(conn, get_settings(), who, model, version, reason), api_key,
                       notify=True)
    _emit(result, as_json, lambda: _err.print(
        f"{model} v{version}: staging (shadow scoring)"
        + (f"; v{result['replaced']} back to validated" if result["replaced"] else "")))


def _decide(decision: str, model: str, version: int, comment: str | None, api_key: str | None, as_json: bool) -> None:
    from sira.registry.models import decide

    result = _governed(lambda conn, who: decide(conn, who, model, version, decision, comment), api_key, notify=True)
    _emit(result, as_json, lambda: _err.print(
        f"{model} v{version}: {decision} recorded; request {result['outcome']} "
        f"({result['approvals']}/{result['required_approvals']} approvals)"))


@app.command("approve")
def approve_cmd(model: ModelOption, version: VersionOption, comment: CommentOption = None,
                api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """Approve a version's pending promotion request (the last required approval promotes it)."""
    _decide("approve", model, version, comment, api_key, as_json)


@app.command("reject")
def reject_cmd(model: ModelOption, version: VersionOption, comment: CommentOption = None,
               api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """Reject a version's pending promotion request (closes it)."""
    _decide("reject", model, version, comment, api_key, as_json)


@app.command("rollback")
def rollback_cmd(model: ModelOption,
                 reason: Annotated[str, typer.Option("--reason", help="Why (required, kept in the history).")],
                 expected_version: Annotated[int | None, typer.Option(
                     "--expected-version", min=1, max=MAX_VERSION,
                     help="The production version to replace (default: the one production is as the command "
                          "starts); refused if production is another.")] = None,
                 api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """Make the previous production version production again, in one step.

    The command names the version it replaces, so two rollbacks started together step back once."""
    from sira.registry.models import rollback, show_model

    async def action(conn: Any, who: Any) -> dict[str, Any]:
        expected = expected_version
        if expected is None:  # read before the rollback locks the model, as a person reads it before acting
            versions = (await show_model(conn, who, model))["versions"]
            expected = next((v["version"] for v in versions if v["status"] == "production"), None)
        return await rollback(conn, who, model, reason, expected)

    result = _governed(action, api_key, notify=True)
    _emit(result, as_json, lambda: _err.print(
        f"{model}: v{result['production']} is production again, v{result['archived']} archived"))


@app.command("history")
def history_cmd(model: ModelOption, api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """Every change of the production version: when, who, from, to, how and why."""
    from sira.core.auth import authorize
    from sira.registry.models import production_history

    async def action(conn: Any, who: Any) -> list[dict[str, Any]]:
        authorize(who, "models.read")
        return await production_history(conn, model)

    rows = _governed(action, api_key)

    def render() -> None:
        table = Table(title=f"Production history of {model}", title_justify="left")
        for column in ("at", "from", "to", "via", "actor", "reason"):
            table.add_column(column)
        for r in rows:
            table.add_row(r["at"], str(r["from"] or ""), str(r["to"]), r["via"] or "", r["actor"], r["reason"] or "")
        _err.print(table)

    _emit({"model": model, "history": rows}, as_json, render)


def _model_settings(targets: Path | None, policy: Path | None, **values: Any) -> dict[str, Any]:
    out = {k: v for k, v in values.items() if v is not None}
    if targets is not None:
        out["decision_targets"] = _load_yaml_mapping(targets)
    if policy is not None:
        out["promotion_policy"] = _load_yaml_mapping(policy)
    return out


ApprovalsOption = Annotated[int | None, typer.Option("--required-approvals", min=0, max=20,
                                                     help="Distinct approvers production needs (0: policy may promote).")]
TargetsOption = Annotated[Path | None, typer.Option("--targets", help="YAML: review_rate, block_precision, costs.")]
PolicyOption = Annotated[Path | None, typer.Option("--policy", help="YAML promotion policy.")]
MaturityOption = Annotated[int | None, typer.Option("--label-maturity", min=0, max=3650,
                                                    help="Days until an unlabelled event counts as legitimate.")]


@models_app.command("create")
def models_create_cmd(
    name: Annotated[str, typer.Argument(help="Model name: lowercase letters, digits, - and _.")],
    model_type: Annotated[str, typer.Option("--type", help="fraud_detection, churn or anomaly.")] = "fraud_detection",
    entity: Annotated[str, typer.Option("--entity", help="The entity it scores.")] = "customer",
    label: Annotated[str | None, typer.Option("--label-source", help="Label name in sira_feedback (default fraud).")] = None,
    required_approvals: ApprovalsOption = None, targets: TargetsOption = None, policy: PolicyOption = None,
    label_maturity: MaturityOption = None,
    description: Annotated[str | None, typer.Option("--description", help="What it is for.")] = None,
    api_key: ApiKeyOption = None, as_json: JsonOption = False,
) -> None:
    """Create a model (governance settings need an admin key)."""
    from sira.registry.models import create_model

    settings = _model_settings(targets, policy, required_approvals=required_approvals, label_name=label,
                               label_maturity_days=label_maturity, description=description)
    row = _governed(lambda conn, who: create_model(conn, who, name, model_type=model_type, entity_type=entity,
                                                   **settings), api_key)
    _emit(row, as_json, lambda: _err.print(f"created model {name} ({model_type}), {row['required_approvals']} "
                                           "approval(s) for production"))


@models_app.command("update")
def models_update_cmd(
    name: Annotated[str, typer.Argument(help="Model name.")],
    required_approvals: ApprovalsOption = None, targets: TargetsOption = None, policy: PolicyOption = None,
    label_maturity: MaturityOption = None,
    description: Annotated[str | None, typer.Option("--description", help="What it is for.")] = None,
    api_key: ApiKeyOption = None, as_json: JsonOption = False,
) -> None:
    """Change a model's settings (admin)."""
    from sira.registry.models import update_model

    changes = _model_settings(targets, policy, required_approvals=required_approvals,
                              label_maturity_days=label_maturity, description=description)
    row = _governed(lambda conn, who: update_model(conn, who, name, **changes), api_key)
    _emit(row, as_json, lambda: _err.print(f"updated {name}: {', '.join(changes)}"))


@models_app.command("list")
def models_list_cmd(api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """List models with their latest, staging and production versions."""
    from sira.registry.models import list_models

    rows = _governed(list_models, api_key)

    def render() -> None:
        table = Table(title="Models", title_justify="left")
        for column in ("name", "type", "latest", "staging", "production", "approvals"):
            table.add_column(column)
        for r in rows:
            table.add_row(r["name"], r["model_type"], str(r["latest_version"] or ""), str(r["staging_version"] or ""),
                          str(r["production_version"] or ""), str(r["required_approvals"]))
        _err.print(table)

    _emit({"models": rows}, as_json, render)


@models_app.command("show")
def models_show_cmd(name: Annotated[str, typer.Argument(help="Model name.")], api_key: ApiKeyOption = None,
                    as_json: JsonOption = False) -> None:
    """Show a model's settings and versions."""
    from sira.registry.models import show_model

    model = _governed(lambda conn, who: show_model(conn, who, name), api_key)

    def render() -> None:
        _err.print(_kv_table(f"Model {name}", {k: model[k] for k in (
            "model_type", "entity_type", "feature_set", "label_name", "label_maturity_days", "required_approvals",
            "decision_targets", "promotion_policy", "created_by")}))
        table = Table(title="Versions", title_justify="left")
        for column in ("version", "status", "test AP", "created by", "last request"):
            table.add_column(column)
        for v in model["versions"]:
            table.add_row(str(v["version"]), v["status"], v["test_ap"] or "", v["created_by"], v["last_request"] or "")
        _err.print(table)

    _emit(model, as_json, render)


@versions_app.command("show")
def versions_show_cmd(model: ModelOption, version: VersionOption, api_key: ApiKeyOption = None,
                      as_json: JsonOption = False) -> None:
    """Show one version: status, metrics, thresholds, artifact, promotion requests."""
    from sira.registry.models import show_version

    row = _governed(lambda conn, who: show_version(conn, who, model, version), api_key)
    _emit(row, as_json, lambda: _err.print(_kv_table(f"{model} v{version}", {k: row[k] for k in (
        "status", "created_by", "created_at", "artifact_uri", "artifact_sha256", "thresholds", "promotion_requests")})))


@versions_app.command("compare")
def versions_compare_cmd(model: ModelOption, a: Annotated[int, typer.Argument(help="First version.")],
                         b: Annotated[int, typer.Argument(help="Second version.")], api_key: ApiKeyOption = None,
                         as_json: JsonOption = False) -> None:
    """Two versions' metrics side by side."""
    from sira.registry.models import compare_versions

    result = _governed(lambda conn, who: compare_versions(conn, who, model, a, b), api_key)

    def render() -> None:
        table = Table(title=f"{model}: v{a} against v{b}", title_justify="left")
        for column in ("window", "metric", f"v{a}", f"v{b}", "difference"):
            table.add_column(column, justify="right")
        fmt = lambda v: "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
        for r in result["metrics"]:
            table.add_row(r["window"], r["metric"], fmt(r[f"v{a}"]), fmt(r[f"v{b}"]), fmt(r["difference"]))
        _err.print(table)

    _emit(result, as_json, render)


@versions_app.command("card")
def versions_card_cmd(
    model: ModelOption, version: VersionOption,
    fmt: Annotated[str, typer.Option("--format", help="md or html.")] = "md",
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout.")] = None,
    api_key: ApiKeyOption = None,
) -> None:
    """The version's model card (Markdown or self-contained HTML)."""
    from sira.registry.card import render_card

    text = _governed(lambda conn, who: render_card(conn, get_settings(), who, model, version, fmt), api_key)
    if out is not None:
        out.write_text(text, encoding="utf-8")
        _err.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


@webhooks_app.command("deliver")
def webhooks_deliver_cmd(as_json: JsonOption = False) -> None:
    """Deliver pending webhook events now (retries; run it from cron or a scheduler)."""
    from sira.core import db
    from sira.registry import webhooks

    settings = get_settings()

    async def run() -> dict[str, int]:
        async with db.open_pool(settings) as pool:
            return await webhooks.deliver_due(pool, settings)

    counts = asyncio.run(run())
    _emit(counts, as_json, lambda: _err.print(", ".join(f"{k} {v}" for k, v in counts.items())))


@app.command("audit")
def audit_cmd(
    target: Annotated[str | None, typer.Option("--target", help="A target id, e.g. fraud or fraud:v3.")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Who acted.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="Action prefix, e.g. promotion.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="Most rows to show.")] = 100,
    api_key: ApiKeyOption = None, as_json: JsonOption = False,
) -> None:
    """Read the audit log, newest first (admin)."""
    from sira.registry.models import read_audit

    rows = _governed(lambda conn, who: read_audit(conn, who, target=target, actor=actor, action=action, limit=limit),
                     api_key)

    def render() -> None:
        table = Table(title="Audit log", title_justify="left")
        for column in ("at", "actor", "action", "target", "outcome"):
            table.add_column(column)
        for r in rows:
            table.add_row(r["occurred_at"], r["actor"], r["action"], r["target_id"] or "", r["outcome"])
        _err.print(table)

    _emit({"entries": rows}, as_json, render)


# -- keys ------------------------------------------------------------------------


async def _acting(conn: Any, key: str | None, *, required: bool = True) -> Any:
    """The identity of the CLI's caller (None when no key is given and none is required)."""
    from sira.core.auth import authenticate

    if key is None and not required:
        return None
    return await authenticate(conn, key, pepper=get_settings().secret("auth_secret"))


@keys_app.command("create")
def keys_create_cmd(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
    role: Annotated[list[str], typer.Option("--role", help="A role (repeat for several): " + ", ".join(
        ("service", "viewer", "analyst", "data_scientist", "approver", "operator", "admin")))],
    expires: Annotated[str | None, typer.Option(
        "--expires", help="When the key stops working, ISO 8601: 2030-01-31, 2030-01-31T18:00:00Z or with an offset "
        "(+02:00); without one, UTC. Not in the past.")] = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API key (the first one, an admin key, needs no key)."""
    from sira.core import db
    from sira.core.auth import create_key, parse_expiry

    settings = get_settings()
    expires_at = parse_expiry(expires) if expires is not None else None

    async def run() -> tuple[str, dict[str, Any]]:
        async with db.open_pool(settings) as pool:
            async with db.transaction(pool) as conn:
                creator = await _acting(conn, api_key, required=False)
                return await create_key(conn, name=name, roles=role, pepper=settings.secret("auth_secret"),
                                        creator=creator, expires_at=expires_at)

    key, info = asyncio.run(run())
    payload = {"name": info["name"], "roles": info["roles"], "key": key}
    _emit(payload, as_json, lambda: (
        _err.print(f"created key {info['name']} with roles {', '.join(info['roles'])}"),
        _err.print("the key is shown once; store it now:"),
        print(key),
    ))


@keys_app.command("list")
def keys_list_cmd(api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """List API keys (never the keys themselves)."""
    from sira.core import db
    from sira.core.auth import list_keys

    settings = get_settings()

    async def run() -> list[dict[str, Any]]:
        async with db.open_pool(settings) as pool:
            async with pool.acquire() as conn:
                return await list_keys(conn, await _acting(conn, api_key))

    keys = asyncio.run(run())

    def render() -> None:
        table = Table(title="API keys", title_justify="left")
        for column in ("name", "roles", "created_by", "last_used_at", "revoked_at"):
            table.add_column(column)
        for k in keys:
            table.add_row(k["name"], ", ".join(k["roles"]), k["created_by"], k["last_used_at"] or "",
                          k["revoked_at"] or "")
        _err.print(table)

    _emit({"keys": keys}, as_json, render)


@keys_app.command("revoke")
def keys_revoke_cmd(name: Annotated[str, typer.Argument(help="The key's name.")], api_key: ApiKeyOption = None,
                    as_json: JsonOption = False) -> None:
    """Revoke an API key (it stops working at once)."""
    from sira.core import db
    from sira.core.auth import revoke_key

    settings = get_settings()

    async def run() -> None:
        async with db.open_pool(settings) as pool:
            async with db.transaction(pool) as conn:
                await revoke_key(conn, await _acting(conn, api_key), name)

    asyncio.run(run())
    _emit({"revoked": name}, as_json, lambda: _err.print(f"revoked key {name}"))


# -- batch jobs --------------------------------------------------------------------


@app.command("score")
def score_cmd(
    model: ModelOption,
    out: Annotated[Path, typer.Option("--out", help="The output .parquet file (replaced atomically).")],
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
    """Batch-score a table or a time range of stored events with a model version (Ray Data)."""
    from sira.monitoring.batch import BatchRequest, run_batch_score

    request = BatchRequest(model=model, out=out.resolve(), version=version, data=data, time_from=_utc(time_from),
                           time_to=_utc(time_to), keep_columns=keep_columns, explain=explain, id_col=id_col,
                           time_col=time_col, batch_size=batch_size, max_actors=max_actors,
                           wait_for_cpus_s=wait_for_cpus)
    actor = asyncio.run(_actor_for("batch.score", api_key))
    from sira.core.progress import RowProgress

    progress = None if as_json else RowProgress("scoring")
    try:
        result = asyncio.run(run_batch_score(get_settings(), request, actor=actor, on_rows=progress))
    finally:
        if progress is not None:
            progress.close()

    _emit(result, as_json, lambda: _err.print(_batch_table(result)))


def _batch_table(result: dict[str, Any]) -> Table:
    return _kv_table("Batch scoring", {
        "model": f"{result['model']} v{result['version']} ({result['status']})", "input": result["input"],
        "rows": f"{result['rows']:,}", "seconds": result["seconds"], "rows/s": f"{result['rows_per_second']:,}",
        "mean score": f"{result['mean_score']:.4f}",
        "decisions": ", ".join(f"{k} {v:,}" for k, v in result["decisions"].items()),
        "output": result["out"], "sha256": result["sha256"]})


def _fmt(value: Any, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _drift_table(result: dict[str, Any], limit: int | None = None) -> Table:
    table = Table(title=f"Drift of {result['model']} v{result['version']} ({result['source']}, "
                        f"{result['window']['from'][:16]}..{result['window']['to'][:16]}, "
                        f"{result['n_current']:,} rows): {result['verdict'].upper()}", title_justify="left")
    for column in ("feature", "severity", "PSI", "KS", "JS", "chi2", "p adj", "missing ref→now"):
        table.add_column(column, justify="left" if column in ("feature", "severity") else "right")
    for r in result["features"][:limit]:
        d = r["details"]
        missing = (f"{d['missing_rate_reference']:.3f}→{d['missing_rate_current']:.3f}"
                   if d.get("missing_rate_current") is not None else "")
        table.add_row(r["feature"], r["severity"], _fmt(r["psi"]), _fmt(r["ks_statistic"]),
                      _fmt(r["js_divergence"]), _fmt(r["chi2_statistic"], 1), _fmt(r["p_value_adjusted"], 4),
                      missing)
    return table


@app.command("drift")
def drift_cmd(
    model: ModelOption,
    version: Annotated[int | None, typer.Option("--version", min=1, max=MAX_VERSION, help="Version (default: production).")] = None,
    source: Annotated[str, typer.Option("--source", help="events (stored events, scored now) or predictions "
                                        "(what production served).")] = "events",
    days: Annotated[float, typer.Option("--days", min=0.01, help="The window: this many days up to the newest data "
                                        "that fills one, walking back over sparse days (docs/windows.md).")] = 7.0,
    time_from: DateOption("--from", "Start of the window.") = None,
    time_to: DateOption("--to", "End of the window (exclusive).") = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compare a recent window with the version's training reference (PSI, KS, chi-square, JS); store it."""
    from sira.monitoring.drift import DriftRequest, run_drift

    actor = asyncio.run(_actor_for("monitoring.run", api_key))
    request = DriftRequest(model=model, version=version, source=source, days=days, time_from=_utc(time_from),
                           time_to=_utc(time_to))
    result = asyncio.run(run_drift(get_settings(), request, actor=actor))

    def render() -> None:
        _err.print(_drift_table(result))
        if result["window"].get("skipped_after"):
            _err.print(f"window: {result['window']['rule']}; the {result['window']['skipped_after']:,} newer rows "
                       f"(up to {result['window']['newest'][:16]}) are too few to fill one")

    _emit(result, as_json, render)


def _performance_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"Performance of {result['model']} (labels as of {result['as_of'][:16]}, "
                        f"AP margin {result['ap_margin']:.2f})", title_justify="left")
    for column in ("version", "role", "window", "n", "positives", "AP", "train AP", "ROC AUC", "precision",
                   "recall", "ECE", "flag"):
        table.add_column(column, justify="left" if column in ("role", "window", "flag") else "right")
    for res in result["results"]:
        for w in res["windows"]:
            decisions = w.get("decisions") or {}
            table.add_row(str(res["version"]), res["role"], f"{w['window_start'][:10]}..{w['window_end'][:10]}",
                          f"{w['n']:,}", f"{w['n_positive']:,}", _fmt(w["average_precision"]),
                          _fmt(res["training_ap"]), _fmt(w["roc_auc"]), _fmt(decisions.get("precision_flagged")),
                          _fmt(decisions.get("recall_flagged")), _fmt(w.get("expected_calibration_error")),
                          "FLAGGED" if w["flagged"] else "provisional" if w.get("provisional") else "")
    flagged = [f"v{res['version']} {res['role']}: {', '.join(res['flagged_segments'])}" for res in result["results"]
               if res["flagged_segments"]]
    if flagged:
        table.caption = "flagged segments: " + "; ".join(flagged)
    return table


@app.command("performance")
def performance_cmd(
    model: ModelOption,
    version: Annotated[int | None, typer.Option("--version", min=1, max=MAX_VERSION, help="Only this version (default: all).")] = None,
    days: Annotated[float, typer.Option("--days", min=0.01, help="This many days up to the newest prediction with a "
                                        "usable label (docs/windows.md).")] = 28.0,
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
    """Evaluate stored predictions (production and shadow) against matured labels; store it."""
    from sira.monitoring.performance import PerformanceRequest, run_performance

    actor = asyncio.run(_actor_for("monitoring.run", api_key))
    request = PerformanceRequest(model=model, version=version, days=days, time_from=_utc(time_from),
                                 time_to=_utc(time_to), window_days=window_days, ap_margin=ap_margin,
                                 min_segment_size=min_segment, as_of=_utc(as_of))
    result = asyncio.run(run_performance(get_settings(), request, actor=actor))

    _emit(result, as_json, lambda: _err.print(_performance_table(result)))


@app.command("retrain")
def retrain_cmd(
    model: ModelOption,
    trials: Annotated[int, typer.Option("--trials", min=0, max=10_000, help="Search trials (0: no search).")] = 16,
    time_budget: Annotated[float | None, typer.Option("--time-budget", min=1, help="Seconds the search may take.")] = 600.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the search and training.")] = 42,
    params: Annotated[Path | None, typer.Option("--params", help="YAML file of LightGBM parameters.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, max=256, help="LightGBM threads.")] = None,
    test_days: Annotated[float | None, typer.Option("--test-days", min=1, help="Held-out window: these many days "
                                                    "up to the newest usable event (default: the newest quarter).")] = None,
    train_days: Annotated[float | None, typer.Option("--train-days", min=1, help="Training window: these many days "
                                                     "before the held-out window (default: all the history).")] = None,
    as_of: DateOption("--as-of", "Label cut-off (default: now).") = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would run and its windows, change nothing.")] = False,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Retrain: challenger on the latest data, judged against the champion, staged by the model's policy."""
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
                    identity = await _acting(conn, api_key)
        request = RetrainRequest(model=model, trials=trials, time_budget_s=time_budget, seed=seed,
                                 params=_load_yaml_mapping(params) if params else None, num_threads=threads,
                                 test_days=test_days, train_days=train_days, as_of=_utc(as_of), dry_run=dry_run)
        return await run_retrain(settings, request, identity, progress=(lambda _m: None) if as_json else _err.print)

    result = asyncio.run(run())

    def render() -> None:
        if result.get("dry_run"):
            _err.print(_kv_table(f"Retrain {model} (dry run)", {
                "plan": result["plan"], "steps": ", ".join(result["steps"]) or "none",
                "champion": result["inputs"]["champion"], "events": f"{result['inputs']['events']:,}",
                "labels": f"{result['inputs']['labels']:,}", "input key": result["input_key"][:16]}))
            _err.print(_plan_table("Windows of the challenger", result))
            return
        from sira.monitoring.retrain import markdown

        _err.print(markdown(result))
        if result.get("reused"):
            _err.print("(these inputs were retrained before: the earlier run's report, no new version)")
        _err.print(f"report: {result['files']['markdown']}")

    _emit(result, as_json, render)


@app.command("api")
def api_cmd(
    host: Annotated[str | None, typer.Option("--host", help="Listen address (default SIRA_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="Port (default SIRA_API_PORT).")] = None,
    models: Annotated[list[str] | None, typer.Option("--model", help="A model to score (repeat; default fraud).")] = None,
    scoring: Annotated[bool, typer.Option("--scoring/--no-scoring", help="Serve /v1/score too.")] = True,
) -> None:
    """Run the HTTP API alone under uvicorn (development: scoring without Serve's batching and replicas)."""
    import uvicorn

    from sira.http.app import create_app
    from sira.serving.config import ServingConfig
    from sira.serving.service import ScoringService

    settings = get_settings()
    service = ScoringService(settings, ServingConfig.from_dict({"models": models or ["fraud"]})) if scoring else None
    uvicorn.run(create_app(settings, scoring=service), host=host or settings.api_host, port=port or settings.api_port,
                log_level="warning")


serve_app = typer.Typer(help="Online scoring on Ray Serve: run it locally, or check a config before "
                               "`serve deploy`.", invoke_without_command=True)
app.add_typer(serve_app, name="serve")


@serve_app.callback()
def serve_cmd(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", help="A serve_configs/*.yaml file (default: serve_configs/local.yaml).")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Listen address (default: the config's).")] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="Port (default: the config's).")] = None,
) -> None:
    """Run online scoring on Ray Serve locally (the same application `serve deploy` runs); Ctrl-C stops it."""
    if ctx.invoked_subcommand is not None:
        return
    import signal
    import time

    from ray import serve

    from sira.http.deployment import ServeSpec, run_local

    spec = ServeSpec.from_file(config) if config else ServeSpec.local()
    run_local(get_settings(), spec, host=host, port=port, progress=_err.print)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    _err.print("stopping SIRA serving")
    serve.shutdown()


@serve_app.command("check")
def serve_check_cmd(
    config: Annotated[Path, typer.Argument(help="The serve_configs/*.yaml file `serve deploy` will be given.")],
    as_json: JsonOption = False,
) -> None:
    """Validate a Serve config before `serve deploy`: the application, its deployment options, its args and
    user_config (a bad user_config would be refused by every replica, which keeps its last good one)."""
    from sira.http.deployment import ServeSpec

    spec = ServeSpec.from_file(config)  # raises invalid_config (exit 2) naming the field
    payload = {"config": str(config), "valid": True, "models": spec.args.get("models") or ["fraud"],
               "options": sorted(spec.options)}
    _emit(payload, as_json, lambda: _err.print(f"{config}: valid (models {', '.join(payload['models'])}; "
                                               f"deployment options {', '.join(payload['options']) or 'none'})"))


# -- demo --------------------------------------------------------------------


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
                      _fmt((ev.get("champion") or {}).get(key)), _fmt(ev["challenger"].get(key)))
    live = {(r["version"], r["role"]): r for r in (report.performance or {}).get("results", [])}
    if report.swap:
        def ap(version: int, role: str) -> str:
            windows = (live.get((version, role)) or {}).get("windows") or []
            n, positives = sum(w["n"] for w in windows), sum(w["n_positive"] for w in windows)
            shown = _fmt(windows[-1]["average_precision"]) if windows and positives else "no fraud"
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
    report = asyncio.run(run_demo(settings, scale=scale, days=days, out_dir=out, progress=_err.print,
                                  serve=serve, keep_serving=keep_serving))

    def render() -> None:
        _err.print(_kv_table("Database", {
            "database": report.database["dsn"],
            "mode": "embedded" if report.database["embedded"] else "external",
            "schema version": f"{report.database['schema_version']:03d}",
        }))
        sim = report.simulation
        _err.print(_kv_table("Simulated traffic", {
            "events": f"{sim['events']:,} over {sim['days']} days → {sim['events_path']}",
            "fraud": f"{sim['fraud_events']:,} ({sim['fraud_rate']:.2%}); shift from day {sim['shift_day']}",
            "labels": f"{sim['labels']:,} → {sim['labels_path']}",
        }))
        ing = report.ingest
        _err.print(_kv_table("Ingested", {
            "events": f"{ing['accepted']:,} accepted, {ing['duplicates']:,} duplicates, {ing['rejected']:,} rejected"
            f" in {ing['seconds']} s",
            "feature rows": f"{ing['features_written']:,}",
            "labels": f"{report.labels['inserted']:,} new, {report.labels['updated']:,} updated",
            "snapshots": ", ".join(f"{k} {v:,}" for k, v in report.snapshots["entities"].items()),
        }))
        if report.example_features:
            ex = report.example_features
            shown = {k: v for k, v in ex["features"].items() if k.startswith("customer_") and v is not None}
            _err.print(_kv_table(f"Online features of {ex['entity']} as of {ex['as_of']}",
                                 {k: f"{v:,.2f}" for k, v in list(shown.items())[:12]}))
        if report.training:
            tr = report.training
            _err.print(_training_table(tr))
            if tr.get("search"):
                _err.print(f"search: {tr['search']['completed']} trials, best validation AP "
                           f"{tr['search']['best_validation_ap']:.4f}")
        if report.governance:
            gov = report.governance
            _err.print(_kv_table("Governance", {
                "promotion": "requested by demo-dana, approved by demo-ann and demo-bob",
                "production": f"fraud v{gov['production_version']}",
                "demo keys": gov["keys_file"],
            }))
        if report.serving:
            sv = report.serving
            lat = sv["client_latency_ms"]
            _err.print(_kv_table("Online scoring (Ray Serve)", {
                "live payments": f"{sv['scored']:,} scored, {sv['failed']} failed, {sv['requests_per_s']} req/s "
                                 f"with {sv['clients']} clients",
                "latency (client)": f"p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms",
                "decisions": ", ".join(f"{k} {v:,}" for k, v in sorted(sv["decisions"].items())),
                "versions": ", ".join(f"fraud v{v}" for v in sv["versions"]),
                "OpenAPI": sv["docs"] + ("" if sv["still_serving"] else " (stopped; `sira serve` starts it)"),
            }))
            for a in sv["examples"]:
                reasons = "; ".join(r["text"] for r in a["reasons"]) or "(computed when the prediction is read)"
                _err.print(f"  {a['decision']:>7}  score {a['score']:.4f}  fraud v{a['version']}  {reasons}")
            if sv.get("explained"):
                ex = sv["explained"]
                _err.print(f"  read back by an analyst ({ex['decision']}, score {ex['score']:.4f}): "
                           + ("; ".join(r["text"] for r in ex["reasons"]) or "no feature raised the score"))
        if report.batch:
            _err.print(_batch_table(report.batch))
        if report.drift:
            _err.print(_drift_table(report.drift, limit=12))
        if report.performance:
            _err.print(_performance_table(report.performance))
        if report.retrain:
            from sira.monitoring.retrain import markdown

            _err.print(markdown(report.retrain))
            _err.print(_story_table(report))
        table = Table(title="Tables", title_justify="left")
        table.add_column("table")
        table.add_column("rows", justify="right")
        for name, count in report.tables.items():
            table.add_row(name, f"{count:,}")
        _err.print(table)

    _emit(report.to_dict(), as_json, render)


# -- Ray jobs --------------------------------------------------------------------

jobs_app = _group("jobs", "Submit SIRA's Ray jobs to a cluster, each with a short-lived key of its own.")
JobArgs = Annotated[list[str] | None, typer.Argument(help="The job's own options, after `--` (see "
                                                       "`python jobs/<job>.py --help`).")]
KeyTtlOption = Annotated[float, typer.Option("--key-ttl", min=0.01, max=168,
                                             help="Hours the job's key lives at most (it is revoked when the "
                                                  "job ends).")]


def _job_root(working_dir: Path | None) -> Path:
    """The folder uploaded as the job's working dir: given, else the checkout that holds ``jobs/``."""
    root = working_dir or next((p for p in (Path.cwd(), Path(__file__).resolve().parents[2])
                                if (p / "jobs").is_dir()), None)
    if root is None or not (root / "jobs").is_dir():
        raise InvalidInput("no jobs/ folder here: run from SIRA's checkout or pass --working-dir",
                           details={"field": "working_dir"})
    return root.resolve()


async def _mint_job_key(settings: Any, api_key: str | None, actions: tuple[str, ...], job_name: str,
                        ttl_hours: float) -> tuple[str | None, str | None]:
    """(key, its name) for one job; (None, None) on an installation with no keys yet (the local user acts)."""
    from datetime import timedelta

    from sira.core import db
    from sira.core.auth import create_job_key

    async with db.open_pool(settings) as pool:
        async with db.transaction(pool) as conn:
            if api_key is None and not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM sira_api_keys)"):
                return None, None
            submitter = await _acting(conn, api_key)
            key, info = await create_job_key(conn, submitter, actions=actions, job_name=job_name,
                                             ttl=timedelta(hours=ttl_hours), pepper=settings.secret("auth_secret"))
            return key, info["name"]


async def _revoke_job_key(settings: Any, acting_key: str | None, name: str) -> None:
    from sira.core import db
    from sira.core.auth import revoke_job_key

    async with db.open_pool(settings) as pool:
        async with db.transaction(pool) as conn:
            await revoke_job_key(conn, await _acting(conn, acting_key), name)


@jobs_app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def jobs_submit_cmd(
    job: Annotated[str, typer.Argument(help="train, retrain, batch_score, drift, performance or materialize.")],
    job_args: JobArgs = None,
    address: Annotated[str, typer.Option("--address", envvar="RAY_JOB_ADDRESS", show_envvar=True,
                                         help="Ray's job server (the dashboard's HTTP address).")
                       ] = "http://127.0.0.1:8265",
    working_dir: Annotated[Path | None, typer.Option("--working-dir", help="Folder uploaded as the job's "
                                                     "working dir (default: this checkout).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job to its end (its logs on "
                                       "stderr) and exit with its status.")] = True,
    key_ttl: KeyTtlOption = 6.0,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> int:
    """Submit a job with the current settings (database, workspace, artifacts) in its runtime env.

    The job acts with a key minted for it: one role that the job needs and you hold, named
    job-<submission id>, revoked when the job ends (or at --key-ttl at the latest). Your own key
    never reaches the cluster: runtime envs are visible in `ray job list` and the dashboard.
    """
    import shlex
    import time
    import uuid

    from sira.core import db
    from sira.core.ray_runtime import WORKING_DIR_EXCLUDES, job_client, job_env_vars, job_kind, submit_job

    settings = get_settings()
    kind = job_kind(job)
    root = _job_root(working_dir)
    client = job_client(address)
    submission_id = f"sira-{job.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    dsn = db.resolve_dsn(settings)
    key, key_name = asyncio.run(_mint_job_key(settings, api_key, kind.actions, submission_id, key_ttl))
    entrypoint = shlex.join(["python", kind.script, *(job_args or [])])
    try:
        submit_job(client, entrypoint=entrypoint, submission_id=submission_id, runtime_env={
            "working_dir": str(root), "excludes": WORKING_DIR_EXCLUDES,
            "env_vars": job_env_vars(settings, dsn, key)})
    except BaseException:
        if key_name:
            asyncio.run(_revoke_job_key(settings, api_key, key_name))
        raise
    _err.print(f"submitted {submission_id}: {entrypoint}" + (f" (acting as {key_name})" if key_name else ""))
    payload: dict[str, Any] = {"submission_id": submission_id, "job": job, "entrypoint": entrypoint,
                               "address": address, "key": key_name, "status": "PENDING"}
    if not wait:
        _emit(payload, as_json, lambda: _err.print(f"follow it with: ray job logs --follow {submission_id}"))
        return 0
    printed = 0
    try:
        while not (status := client.get_job_status(submission_id)).is_terminal():
            printed = _print_new_logs(client, submission_id, printed)
            time.sleep(1.0)
        _print_new_logs(client, submission_id, printed)
    finally:
        if key_name:  # the job revokes its key itself; this covers a job that died before it could
            asyncio.run(_revoke_job_key(settings, api_key, key_name))
    info = client.get_job_info(submission_id)
    payload.update(status=str(status.value), driver_exit_code=info.driver_exit_code)
    _emit(payload, as_json, lambda: _err.print(f"{submission_id}: {status.value}"))
    if status.value == "SUCCEEDED":
        return 0
    return info.driver_exit_code or EXIT_FAILURE


def _print_new_logs(client: Any, submission_id: str, printed: int) -> int:
    logs = client.get_job_logs(submission_id)
    if len(logs) > printed:
        sys.stderr.write(logs[printed:])
        sys.stderr.flush()
    return len(logs)


@jobs_app.command("runtime-env")
def jobs_runtime_env_cmd(
    job: Annotated[str, typer.Argument(help="The job the env is for (its key gets that job's role).")],
    key_ttl: KeyTtlOption = 6.0,
    api_key: ApiKeyOption = None,
) -> None:
    """Print a runtime-env YAML for `ray job submit --runtime-env FILE` with the current settings and a
    key minted for one job (it expires after --key-ttl hours; the job revokes it when it ends)."""
    import uuid

    import yaml

    from sira.core import db
    from sira.core.ray_runtime import WORKING_DIR_EXCLUDES, job_env_vars, job_kind

    settings = get_settings()
    kind = job_kind(job)
    name = f"{job.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    key, key_name = asyncio.run(_mint_job_key(settings, api_key, kind.actions, name, key_ttl))
    env = {"working_dir": str(_job_root(None)), "excludes": WORKING_DIR_EXCLUDES,
           "env_vars": job_env_vars(settings, db.resolve_dsn(settings), key)}
    sys.stdout.write(f"# runtime env for one `{job}` job" + (f", acting as {key_name}" if key_name else "")
                     + "; made by `sira jobs runtime-env`\n" + yaml.safe_dump(env, sort_keys=True))


def run_job(args: list[str]) -> int:
    """A Ray job's entry point (``jobs/*.py``): the CLI command, then the job's own key revoked, so it is
    worth nothing once the job has ended, whoever submitted it and however."""
    try:
        return main(args, own_process=True)
    finally:
        _release_job_key()


def _release_job_key() -> None:
    from sira.core.auth import JOB_KEY_PREFIX

    key = os.environ.get("SIRA_API_KEY")
    if not key or os.environ.get("SIRA_DATABASE_URL") is None:
        return

    async def release() -> None:
        from sira.core import db
        from sira.core.auth import authenticate, revoke_job_key

        settings = get_settings()
        async with db.open_pool(settings, check_schema=False) as pool:
            async with db.transaction(pool) as conn:
                identity = await authenticate(conn, key, pepper=settings.secret("auth_secret"))
                if identity.name.startswith(JOB_KEY_PREFIX):
                    await revoke_job_key(conn, identity, identity.name)

    try:
        asyncio.run(release())
    except Exception as exc:  # noqa: BLE001 - the key still expires at its TTL; say so, do not fail the job
        logging.getLogger(__name__).warning("could not revoke this job's key (%s); it expires at its TTL",
                                            type(exc).__name__)


# -- entry point -------------------------------------------------------------


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """Run the CLI; returns the exit status (the console script exits with it).

    ``own_process``: the CLI owns the process (console script, ``python -m sira``, a job), so
    with ``--json`` it may reserve the process's stdout for the result.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    own_args = args[:args.index("--")] if "--" in args else args  # after `--`: a job's own options
    if own_process and "--json" in own_args:
        _reserve_stdout_for_json()
    debug = "--debug" in args or os.environ.get("SIRA_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="sira", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except TyperExit as exc:
        return exc.exit_code
    except TyperException as exc:
        # Typer's (vendored click's) usage errors: unknown option, bad value, no such command.
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.stderr.write(ctx.get_help() + "\n" if ctx is not None else "")
            return 0
        where = f"{ctx.command_path}: " if ctx is not None else ""
        code = "usage" if getattr(exc, "exit_code", 1) == EXIT_BAD_INPUT else "cli"
        sys.stderr.write(f"error: {code}: {where}{' '.join(exc.format_message().split())}\n")
        return EXIT_BAD_INPUT
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        return 130
    except SiraError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(exc.one_line() + "\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as exc:  # a bug or an unexpected failure of a dependency
        if debug:
            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__
        sys.stderr.write(f"error: internal: {type(exc).__name__}: {message} (run with --debug for a traceback)\n")
        return EXIT_FAILURE


def run() -> None:
    """Console-script entry point."""
    sys.exit(main(own_process=True))
