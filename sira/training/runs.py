"""A training run end to end: dataset → split → train → evaluate → artifact → candidate version.

Every run is a row of ``sira_training_runs`` from its start: a run that fails
is recorded as ``failed`` with its error, never lost. Test metrics are
computed once, on a window the model and its thresholds never saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sira.core import artifacts, db, stats
from sira.core.audit import Actor
from sira.core.config import Settings
from sira.core.errors import Conflict, Interrupted, InvalidInput, SiraError
from sira.core.ray_runtime import submission_id
from sira.features.definitions import CURRENT_VERSIONS
from sira.ingest.pii import redactor_for
from sira.registry import models as registry
from sira.registry.settings import check_source
from sira.registry.targets import DecisionTargets
from sira.training.datasets import Dataset, Split, build_feature_dataset, load_table_dataset, split_dataset
from sira.training.evaluation import choose_thresholds, evaluate
from sira.training.trainer import (
    Matrix,
    TrainResult,
    apply_calibration,
    check_params,
    code_version,
    library_versions,
    train_model,
)
from sira.training.windows import (
    Windows,
    check_as_of,
    check_counts,
    check_days,
    check_validation,
    training_windows,
    window_counts,
    window_warnings,
)

SHAP_ROWS = 2_000
REFERENCE_BINS = 10
# How the reference's numeric bins were made: 2, a bin per distinct value when there are few and never a heavy
# value merged with others (sira.core.stats.reference_bin_edges); absent, quantile edges with repeats dropped
# (a 0/1 flag was one bin; sira.monitoring.drift rebins such a feature from the reference sample)
REFERENCE_BINNING = 2
# Drift's Kolmogorov-Smirnov tests compare live values with a sample of the training rows, stored in
# the artifact beside the model (NumPy's format, read without pickle): features in schema order, then the score.
REFERENCE_SAMPLE_FILE = "reference_sample.npy"
REFERENCE_SAMPLE_ROWS = 5_000


@dataclass
class TrainRequest:
    """What `sira train` was asked to do."""

    model: str
    data: list[Path] | None = None
    label: str | None = None
    time_col: str | None = None
    id_col: str | None = None
    positive: str | None = None
    params: dict[str, Any] | None = None
    seed: int = 42
    num_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    model_type: str | None = None  # for a model this run creates (default fraud_detection); an existing one's is kept
    decision_targets: dict[str, Any] | None = None
    # feature-store training (no --data): explicit windows, else derived from the data and the model
    train_from: Any = None
    train_to: Any = None
    test_from: Any = None
    test_to: Any = None
    test_days: float | None = None  # the test window: these days up to the newest usable event
    train_days: float | None = None  # the training window: these days before the label-delay gap (default: all)
    label_delay_days: float = 7.0  # DEFAULT_LABEL_DELAY_DAYS, at most an eighth of the span unless given
    label_delay_given: bool = False  # --label-delay given: the gap is that, never capped (refused when too long)
    label_maturity_days: int | None = None  # for a model created by this run (an existing one's must match)
    as_of: Any = None  # the label cut-off: labels known after it do not exist (default: now)
    dry_run: bool = False  # state the windows (and their counts) and stop
    # search: with trials, Ray Tune + Optuna picks the parameters first
    trials: int | None = None
    time_budget_s: float | None = None
    wait_for_cpus_s: float = 600.0  # when no CPU is free for a trial at the start (Serve may hold them all)
    # set by the retraining pipeline: the run is a 'retrain' run, found again by this key when resumed
    retrain_key: str | None = None


DEFAULT_LABEL_DELAY_DAYS = TrainRequest.label_delay_days
DEFAULT_LABEL_MATURITY_DAYS = 30  # sira_models.label_maturity_days's default (sql/003_registry.sql)
DEFAULT_MODEL_TYPE = "fraud_detection"


def reference_statistics(train: Matrix, scores: np.ndarray) -> dict[str, Any]:
    """What drift detection compares live data with: per-feature bins and histograms of the training rows,
    and the histogram of ``scores``, the out-of-sample (validation) scores: a model's scores of its own training
    rows are more extreme than any it gives later, so a reference made of them read as score drift."""
    features: dict[str, Any] = {}
    for j, spec in enumerate(train.schema):
        column = train.X[:, j]
        present = column[np.isfinite(column)]  # an infinite value is missing, as the table loader reads it
        missing = float(1 - present.size / column.size) if column.size else 0.0
        if spec.kind == "categorical":
            counts = np.bincount(present.astype(np.int64), minlength=len(spec.categories)) if present.size else []
            features[spec.name] = {"type": "categorical", "missing_rate": missing,
                                   "frequencies": {c: float(n / max(present.size, 1))
                                                   for c, n in zip(spec.categories, list(counts))}}
        else:
            edges = stats.reference_bin_edges(present, REFERENCE_BINS)  # a bin per value of a 0/1 flag
            hist = np.histogram(present, bins=edges)[0] if len(edges) > 1 else np.array([present.size])
            features[spec.name] = {"type": "numeric", "missing_rate": missing, "bin_edges": [float(e) for e in edges],
                                   "histogram": [int(h) for h in hist],
                                   "mean": float(present.mean()) if present.size else None,
                                   "std": float(present.std()) if present.size else None}
    score_edges = np.linspace(0, 1, 21)
    return {"rows": int(train.X.shape[0]), "binning": REFERENCE_BINNING, "features": features, "score": {"bin_edges": [float(e) for e in score_edges],
                                            "histogram": [int(h) for h in np.histogram(scores, score_edges)[0]]}}


def reference_sample(train: Matrix, scores: np.ndarray, seed: int) -> bytes:
    """A seeded sample of training rows, and in the last column a seeded sample of the out-of-sample
    (validation) ``scores`` (NaN-padded when fewer), as ``.npy`` bytes (the same inputs, the same bytes)."""
    rng = np.random.default_rng(seed)
    n = train.X.shape[0]
    rows = np.sort(rng.choice(n, size=min(REFERENCE_SAMPLE_ROWS, n), replace=False))
    picked = scores[np.sort(rng.choice(scores.size, size=min(rows.size, scores.size), replace=False))]
    column = np.full(rows.size, np.nan)
    column[:picked.size] = picked
    buffer = io.BytesIO()
    np.save(buffer, np.column_stack([train.X[rows], column]), allow_pickle=False)
    return buffer.getvalue()


def shap_importance(model_text: str, valid: Matrix, seed: int) -> tuple[dict[str, float], bytes]:
    """Global importance as mean |SHAP| on validation rows (the ``shap`` package), and its summary plot."""
    import lightgbm as lgb
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    rng = np.random.default_rng(seed)
    rows = rng.choice(valid.X.shape[0], size=min(SHAP_ROWS, valid.X.shape[0]), replace=False)
    X = valid.X[np.sort(rows)]
    booster = lgb.Booster(model_str=model_text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shap announces its output format for LightGBM on every call
        values = shap.TreeExplainer(booster).shap_values(X)
    values = values[1] if isinstance(values, list) else values
    importance = dict(zip(valid.names, (float(v) for v in np.abs(values).mean(axis=0))))
    plt.figure()
    shap.summary_plot(values, X, feature_names=valid.names, show=False, max_display=20)
    buffer = io.BytesIO()
    plt.savefig(buffer, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close("all")
    return dict(sorted(importance.items(), key=lambda kv: -kv[1])), buffer.getvalue()


def _metrics_block(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "positives", "average_precision", "roc_auc", "recall_at_1pct_fpr", "precision_at_100", "brier",
            "log_loss", "expected_calibration_error")
    return {k: m[k] for k in keys if k in m}


def fit_and_evaluate(ds: Dataset, split: Split, req: TrainRequest,
                     params: dict[str, Any] | None) -> tuple[TrainResult, dict[str, Any], dict[str, float]]:
    """Train on train, calibrate and choose thresholds on validation, evaluate once on test."""
    targets = DecisionTargets.from_dict(req.decision_targets)
    train, valid, test = (ds.matrix.rows(i) for i in (split.train, split.valid, split.test))
    result = train_model(train, valid, params, seed=req.seed, num_threads=req.num_threads)
    thresholds = choose_thresholds(valid.y, result.valid_scores, targets)
    import lightgbm as lgb

    booster = lgb.Booster(model_str=result.model_text)
    test_scores = apply_calibration(result.calibration, booster.predict(test.X, raw_score=True))
    segments = {k: v[split.test] for k, v in ds.segments.items()}
    metrics = {
        "validation": evaluate(valid.y, result.valid_scores, thresholds, targets),
        "test": evaluate(test.y, test_scores, thresholds, targets, segments=segments),
    }
    return result, metrics, thresholds


MAX_SEED = 2**31 - 1  # LightGBM's seeds are 32-bit; NumPy's generators refuse negative ones


def check_request(req: TrainRequest) -> None:
    """Bounds of the request's numbers, checked before anything is read: a --test-days of 1e6 or NaN failed
    as `internal` deep in the window arithmetic, a negative --seed only after the whole run had trained."""
    if req.model_type is not None and req.model_type not in registry.MODEL_TYPES:  # a dry run too (it said nothing)
        raise InvalidInput(f"model type must be one of {', '.join(registry.MODEL_TYPES)}", details={"field": "model_type"})
    if not 0 <= req.seed <= MAX_SEED:
        raise InvalidInput(f"--seed must be between 0 and {MAX_SEED} (got {req.seed})", code="invalid_option")
    check_days("--test-days", req.test_days)
    check_days("--train-days", req.train_days)
    check_days("--label-delay", req.label_delay_days, zero_allowed=True)
    _check_table_options(req)
    check_as_of(req.as_of)
    check_params(req.params)  # a typo, a NaN, a value LightGBM refuses: before anything is created
    if req.trials:
        from sira.training.tuning import check_something_to_search
        check_something_to_search(req.params)


def _check_table_options(req: TrainRequest) -> None:
    """Options of one source given with the other are refused, not ignored: a --test-from with --data was
    dropped without a word, the test window silently the table's newest 15%."""
    if req.data:
        given = [name for name, value in (("--as-of", req.as_of), ("--train-days", req.train_days),
                                          ("--test-days", req.test_days), ("--train-from", req.train_from),
                                          ("--train-to", req.train_to), ("--test-from", req.test_from),
                                          ("--test-to", req.test_to),
                                          ("--label-delay", req.label_delay_given
                                           or req.label_delay_days != DEFAULT_LABEL_DELAY_DAYS))
                 if value]
        if given:
            raise InvalidInput(f"{', '.join(given)} apply to feature-store training (without --data); a table is "
                               "split by its time column", code="invalid_option")
    else:
        given = [name for name, value in (("--label", req.label), ("--time-col", req.time_col),
                                          ("--id-col", req.id_col), ("--positive", req.positive)) if value]
        if given:
            raise InvalidInput(f"{', '.join(given)} describe a table: give it with --data", code="invalid_option")


# -- stopped by SIGTERM or Ctrl-C ------------------------------------------------------------------------
# `ray job stop`, Kubernetes and systemd end a process with SIGTERM (Ray's own handler cancelled the run with no
# reason, its C++ core worker printed a stack). While sigterm_cancels is active, SIGTERM (and Ctrl-C when asked)
# cancels the run's task with its reason (recorded, then Terminated raised) and stops a search under way.
TERMINATED = "terminated by SIGTERM"
INTERRUPTED = "interrupted by Ctrl-C (SIGINT)"
_REASONS: dict[int, str] = {signal.SIGTERM: TERMINATED, signal.SIGINT: INTERRUPTED}
_SIGNAL_NAMES: dict[int, str] = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


class Terminated(Interrupted):
    """The process was asked to stop (SIGTERM: exit 143; Ctrl-C: 130) while a run was under way."""


_searches: list[tuple[threading.Event, threading.Thread]] = []  # searches under way: their stop, their thread
_signalled: list[int] = []  # the signals sigterm_cancels' handlers took


def stopped_by(exc: BaseException) -> int | None:
    """The signal whose cancellation ``exc`` is (SIGTERM, SIGINT), else None."""
    cancelled = isinstance(exc, asyncio.CancelledError)
    return next((signum for signum, reason in _REASONS.items() if cancelled and exc.args[:1] == (reason,)), None)


def terminated(exc: BaseException) -> bool:
    """Whether ``exc`` is the cancellation SIGTERM caused."""
    return stopped_by(exc) == signal.SIGTERM


def stop_searches() -> list[threading.Thread]:
    """Tell the searches under way to stop; their threads, to wait for before Ray is shut down."""
    for stop, _thread in list(_searches):
        stop.set()
    return [thread for _stop, thread in list(_searches)]


@contextlib.contextmanager
def sigterm_cancels(what: str, *, ctrl_c: bool = False) -> Iterator[None]:
    """In the main thread's loop, SIGTERM (SIGINT too with ``ctrl_c``) cancels the current task with its reason and
    stops the searches under way; a cancellation left unhandled becomes :class:`Terminated` (``what``: its work)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None

    def handler(signum: int, _frame: Any) -> None:
        _signalled.append(signum)
        for stop, _thread in list(_searches):
            stop.set()
        loop.call_soon_threadsafe(task.cancel, _REASONS[signum])

    _signalled.clear()
    signums = (signal.SIGTERM, signal.SIGINT) if ctrl_c else (signal.SIGTERM,)
    previous = {signum: signal.getsignal(signum) for signum in signums}
    for signum in signums:
        signal.signal(signum, handler)
    try:
        yield
    except asyncio.CancelledError as exc:
        by = stopped_by(exc)
        if by is not None:
            raise Terminated(f"{what} stopped by {_SIGNAL_NAMES[by]} before anything was recorded", signum=by) from None
        raise
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before if before is not None else signal.SIG_DFL)


async def run_training(settings: Settings, req: TrainRequest, *, progress: Callable[[str], None] = lambda _m: None,
                       actor: Actor | None = None) -> dict[str, Any]:
    """`sira train`: returns the CLI's JSON result. SIGTERM or Ctrl-C (in the main thread) stops it: the run is
    recorded as failed (:data:`TERMINATED`, :data:`INTERRUPTED`) and :class:`Terminated` raised."""
    if req.data and not req.label:
        raise InvalidInput("--label names the label column of the table")
    check_request(req)
    if req.dry_run:
        return await plan_training(settings, req)
    with sigterm_cancels(f"training {req.model}", ctrl_c=True):
        return await _run(settings, req, progress, actor or Actor.local())


async def _run(settings: Settings, req: TrainRequest, progress: Callable[[str], None], actor: Actor) -> dict[str, Any]:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    table: tuple[Dataset, Split] | None = None
    if req.data:  # a table is checked before anything is created or recorded
        progress("reading the table")
        loaded = await asyncio.to_thread(load_table_dataset, req.data, label=req.label, time_col=req.time_col,
                                         id_col=req.id_col, positive=req.positive,
                                         redactor=redactor_for(settings))
        table = (loaded, split_dataset(loaded, seed=req.seed))
    async with db.open_pool(settings) as pool:
        await _check_existing_model(pool, req)  # before the windows are read (ensure_model checks it again)
        windows = None
        if not req.data:  # the windows are checked before anything is created, recorded or read at length
            async with pool.acquire() as conn:
                windows, _counts = await _model_windows(conn, req)
        async with db.transaction(pool) as conn:
            model, created = await registry.ensure_model(
                conn, req.model, actor=actor, model_type=req.model_type or DEFAULT_MODEL_TYPE,
                feature_set=None if req.data else "payments",
                feature_set_version=None if req.data else CURRENT_VERSIONS["payments"],
                label_maturity_days=req.label_maturity_days,
            )
            kind = "retrain" if req.retrain_key else "tune" if req.trials else "train"
            run_params = {**(req.params or {}), **({"retrain_key": req.retrain_key} if req.retrain_key else {})}
            run_id = await registry.start_run(conn, model["id"], kind=kind, params=run_params, actor=actor,
                                              code_version=code_version(), ray_job_id=submission_id())
        if created:
            progress(f"model {req.model} did not exist: created it with default settings")
        req = dataclasses.replace(req, model_type=model["model_type"])  # the manifest's: the model's own
        if req.decision_targets is None and model["decision_targets"]:  # the model's, as the what-if reads them
            req = dataclasses.replace(req, decision_targets=dict(model["decision_targets"]))
        try:
            ds, split, fs_version = await _dataset(settings, model, table, windows, progress)
            timings["dataset_s"] = time.perf_counter() - started
            warnings_said = _warnings(ds, split, windows)
            if warnings_said:
                ds.fingerprint["warnings"] = warnings_said  # in the run's row and the manifest (dataset.warnings)
            for said in warnings_said:
                progress(f"warning: {said}")
            params, search = req.params, None
            if req.trials:
                phase = time.perf_counter()
                progress(f"tuning: {req.trials} trials on Ray Tune (Optuna TPE + ASHA)")
                from sira.core.ray_runtime import init_ray

                init_ray(settings, db.resolve_dsn(settings))  # in the main thread: Ray's driver lives there
                search = await _search_in_thread(settings, ds, split, req)
                params = search["params"]
                timings["tune_s"] = time.perf_counter() - phase
            phase = time.perf_counter()
            progress(f"training on {split.train.size:,} rows, validating on {split.valid.size:,}")
            result, metrics, thresholds = await asyncio.to_thread(fit_and_evaluate, ds, split, req, params)
            timings["train_s"] = time.perf_counter() - phase
            phase = time.perf_counter()
            artifact = await asyncio.to_thread(_write_artifact, settings, req, ds, split, result, metrics, thresholds,
                                               run_id)
            timings["artifact_s"] = time.perf_counter() - phase
            async with db.transaction(pool) as conn:
                version = await registry.register_candidate(
                    conn, model, run_id=run_id, artifact=artifact,
                    feature_schema=[f.to_dict() for f in ds.matrix.schema], params=result.params,
                    metrics={k: _metrics_block(v) for k, v in metrics.items()}, thresholds=thresholds,
                    feature_set_version=fs_version, actor=actor,
                )
                timings["total_s"] = time.perf_counter() - started
                await registry.finish_run(conn, run_id, metrics={k: _metrics_block(v) for k, v in metrics.items()},
                                          fingerprint=ds.fingerprint, timings=timings,
                                          params={**result.params, **({"search": {k: search["summary"][k] for k in (
                                              "searched", "fixed")}} if search else {})})
        except BaseException as exc:
            timings["total_s"] = time.perf_counter() - started
            # a signal in synchronous work (ray.init) left its cancel pending, which stopped this record: run 'running'
            signum = stopped_by(exc) or (_signalled[-1] if _signalled else None)
            record = asyncio.ensure_future(_record_failure(pool, run_id, _REASONS.get(signum or 0) or _failure(exc), timings))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(record)
            await record
            if signum is not None:
                raise Terminated(f"training {req.model} stopped by {_SIGNAL_NAMES[signum]}: run {run_id} is recorded "
                                 f"as failed ({_REASONS[signum]}); no version was registered", signum=signum,
                                 details={"run_id": str(run_id)}) from None
            raise
    return {
        "model": req.model, "version": version, "run_id": str(run_id), "status": "candidate",
        "metrics": {k: _metrics_block(v) for k, v in metrics.items()},
        "artifact": {"uri": artifact.uri, "sha256": artifact.sha256},
        "feature_schema": [f.to_dict() for f in ds.matrix.schema],
        "dropped_columns": ds.dropped, "thresholds": thresholds, "best_iteration": result.best_iteration,
        "split": {"method": split.method, "train": int(split.train.size), "validation": int(split.valid.size),
                  "test": int(split.test.size)},
        "windows": ds.fingerprint.get("windows") or split.windows,
        **({"time_column": ds.fingerprint["time_column"]} if ds.fingerprint.get("time_column") else {}),
        **({"infinite_values": ds.fingerprint["infinite_values"]} if ds.fingerprint.get("infinite_values") else {}),
        "model_created": created,
        **({"search": search["summary"]} if search else {}),
        **({"warnings": ds.fingerprint["warnings"]} if ds.fingerprint.get("warnings") else {}),
    }


async def _record_failure(pool: Any, run_id: uuid.UUID, error: str, timings: dict[str, float]) -> None:
    async with db.transaction(pool) as conn:
        await registry.fail_run(conn, run_id, error=error, timings=timings)


def _failure(exc: BaseException) -> str:
    """What a failed run's row says of its cause (a cancellation said "CancelledError: ", with no reason)."""
    if isinstance(exc, SiraError):
        return exc.one_line()
    signum = stopped_by(exc)
    if signum is not None:
        return _REASONS[signum]
    if isinstance(exc, asyncio.CancelledError):
        return f"cancelled: {exc}" if str(exc) else "cancelled (interrupted)"
    return f"{type(exc).__name__}: {exc}"


def _warnings(ds: Dataset, split: Split, windows: Windows | None) -> list[str]:
    """What the run says of its windows: a test window far richer in positives than the rows it trained on."""
    y = ds.matrix.y
    fit = np.concatenate([split.train, split.valid])
    counts = {"train": {"rows": int(fit.size), "positives": int(y[fit].sum())},
              "test": {"rows": int(split.test.size), "positives": int(y[split.test].sum())}}
    if windows is not None:
        return window_warnings(windows, counts)
    from sira.training.windows import rate_warning

    said = rate_warning(counts["train"]["rows"], counts["train"]["positives"], counts["test"]["rows"],
                        counts["test"]["positives"])
    return [said] if said else []


async def _search_in_thread(settings: Settings, ds: Dataset, split: Split, req: TrainRequest) -> dict[str, Any]:
    """The search in a daemon thread a signal stops (``asyncio.run`` waits for ``to_thread``'s: all trials ran)."""
    from sira.training.tuning import tune_params

    loop, stop = asyncio.get_running_loop(), threading.Event()
    done: asyncio.Future[dict[str, Any]] = loop.create_future()

    def target() -> None:
        try:
            outcome: tuple[Callable[[Any], None], Any] = (done.set_result, tune_params(
                ds.matrix.rows(split.train), ds.matrix.rows(split.valid), trials=int(req.trials or 0), seed=req.seed,
                storage=settings.workspace / "ray_results", time_budget_s=req.time_budget_s, base_params=req.params,
                wait_for_cpus_s=req.wait_for_cpus_s, stop=stop))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome = (done.set_exception, exc)
        finally:
            _searches.remove(search)
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody awaits it any more
            loop.call_soon_threadsafe(lambda: done.done() or outcome[0](outcome[1]))

    _searches.append(search := (stop, threading.Thread(target=target, name="sira-search", daemon=True)))
    search[1].start()
    try:
        return await done
    except BaseException:
        stop.set()  # cancelled: the search stops too (a signal's handler has told it already)
        raise


async def _dataset(settings: Settings, model: Any, table: tuple[Dataset, Split] | None, windows: Windows | None,
                   progress: Callable[[str], None]) -> tuple[Dataset, Split, int | None]:
    """The training set: the table the user brought (already split), or labelled vectors from the feature store."""
    if table is not None:
        return table[0], table[1], None
    from sira.core.ray_runtime import init_ray
    from sira.features.definitions import get_feature_set

    assert windows is not None
    fs = get_feature_set(model["feature_set"] or "payments", model["feature_set_version"])
    progress(f"building the training set from the feature store ({windows.describe()})")
    dsn = db.resolve_dsn(settings)
    init_ray(settings, dsn)
    ds, split = await asyncio.to_thread(build_feature_dataset, dsn, fs, windows, label_name=model["label_name"])
    return ds, split, fs.version


async def checked_windows(conn: Any, req: TrainRequest, maturity_days: float,
                          label_name: str) -> tuple[Windows, dict[str, Any]]:
    """The request's windows (docs/windows.md), counted and checked before anything expensive is read."""
    windows = await training_windows(
        conn, maturity_days=maturity_days, label_delay_days=req.label_delay_days,
        cutoff=req.as_of, train_from=req.train_from, train_to=req.train_to, test_from=req.test_from,
        test_to=req.test_to, test_days=req.test_days, train_days=req.train_days,
        explicit_label_delay=req.label_delay_given,
    )
    counts = await window_counts(conn, windows, label_name)
    check_counts(windows, counts)
    await check_validation(conn, windows, counts, label_name)
    return windows, counts


async def plan_training(settings: Settings, req: TrainRequest) -> dict[str, Any]:
    """`sira train --dry-run`: the windows a run would use and what they hold; nothing is created."""
    check_request(req)
    if req.data:
        loaded = await asyncio.to_thread(load_table_dataset, req.data, label=req.label, time_col=req.time_col,
                                         id_col=req.id_col, positive=req.positive,
                                         redactor=redactor_for(settings))
        split = split_dataset(loaded, seed=req.seed)
        async with db.open_pool(settings) as pool:
            await _check_existing_model(pool, req)
        return {"model": req.model, "dry_run": True, "source": "table", "rows": int(loaded.matrix.y.size),
                "time_column": loaded.fingerprint.get("time_column"),
                **({"infinite_values": loaded.fingerprint["infinite_values"]}
                   if loaded.fingerprint.get("infinite_values") else {}),
                "split": {"method": split.method, "train": int(split.train.size),
                          "validation": int(split.valid.size), "test": int(split.test.size)}}
    async with db.open_pool(settings) as pool:
        await _check_existing_model(pool, req)
        async with pool.acquire() as conn:
            windows, counts = await _model_windows(conn, req)
    return {"model": req.model, "dry_run": True, "source": "feature_store", "windows": windows.to_dict(),
            "counts": counts, "gap": gap_of(req, windows), "cutoff_set_by": "--as-of" if req.as_of else "now",
            "warnings": window_warnings(windows, counts)}


def gap_of(req: TrainRequest, windows: Windows) -> dict[str, Any]:
    """The gap between the training and test windows, and what set it."""
    from datetime import timedelta

    set_by = ("--train-to" if req.train_to else f"--label-delay {req.label_delay_days:g}" if req.label_delay_given
              else f"default: {req.label_delay_days:g} days, at most an eighth of the span")
    return {"days": round((windows.test_from - windows.train_to) / timedelta(days=1), 6), "set_by": set_by}


async def _check_existing_model(pool: Any, req: TrainRequest) -> None:
    """A run (and its dry run) on a model that exists refuses what the model decides otherwise: the other source
    (a table for a feature-store model, or the other way round), and a model setting given for a model this run
    would create (--label-maturity, --type) that differs from the model's: it was silently ignored."""
    model = await pool.fetchrow("""SELECT name, feature_set, feature_set_version, label_maturity_days, model_type
                                     FROM sira_models WHERE name = $1""", req.model)
    if model is None:
        return
    check_source(model, not req.data)
    if req.label_maturity_days is not None and req.label_maturity_days != model["label_maturity_days"]:
        raise Conflict(f"model {req.model} exists, with a label maturity of {model['label_maturity_days']} days: "
                       f"--label-maturity sets it for a model this run creates; change the model's with `sira models "
                       f"update {req.model} --label-maturity {req.label_maturity_days}`, or leave it out",
                       code="model_setting", details={"model": req.model, "setting": "label_maturity_days"})
    if req.model_type is not None and req.model_type != model["model_type"]:
        raise Conflict(f"model {req.model} exists, as a {model['model_type']} model: --type sets the type of a model "
                       "this run creates, and a model's type does not change; leave it out, or use another model name",
                       code="model_setting", details={"model": req.model, "setting": "model_type"})


async def _model_windows(conn: Any, req: TrainRequest) -> tuple[Windows, dict[str, Any]]:
    """The checked windows of the model's training set (a model this run would create: its defaults)."""
    model = await conn.fetchrow("SELECT label_maturity_days, label_name FROM sira_models WHERE name = $1", req.model)
    maturity = model["label_maturity_days"] if model else (DEFAULT_LABEL_MATURITY_DAYS if req.label_maturity_days is None
                                                       else req.label_maturity_days)
    return await checked_windows(conn, req, maturity, model["label_name"] if model else "fraud")


def _write_artifact(settings: Settings, req: TrainRequest, ds: Dataset, split: Split, result: TrainResult,
                    metrics: dict[str, Any], thresholds: dict[str, float], run_id: uuid.UUID) -> artifacts.ArtifactRef:
    import lightgbm as lgb

    train = ds.matrix.rows(split.train)
    valid = ds.matrix.rows(split.valid)
    importance, plot = shap_importance(result.model_text, valid, req.seed)
    manifest = {
        "format": "sira-model/1", "model": req.model, "model_type": req.model_type, "run_id": str(run_id),
        "feature_schema": [f.to_dict() for f in ds.matrix.schema], "params": result.params, "seed": req.seed,
        "num_threads": req.num_threads, "best_iteration": result.best_iteration, "calibration": result.calibration,
        "thresholds": thresholds, "decision_targets": DecisionTargets.from_dict(req.decision_targets).__dict__,
        "metrics": metrics, "dataset": {**ds.fingerprint, "split": split.method, "windows": split.windows,
                                        "dropped_columns": ds.dropped},
        "code_version": code_version(), "lightgbm_version": lgb.__version__, "versions": library_versions(),
        "reference": reference_statistics(train, result.valid_scores), "importance": {"mean_abs_shap": importance},
    }
    files = {artifacts.MODEL_FILE: result.model_text.encode("utf-8"), "shap_summary.png": plot,
             REFERENCE_SAMPLE_FILE: reference_sample(train, result.valid_scores, req.seed)}
    return artifacts.save_artifact(settings, f"{req.model}/runs/{run_id}", files, manifest)
