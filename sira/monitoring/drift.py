"""Data drift: a window of recent data against the training reference of the version that serves it.

    sira drift --model fraud [--version V] [--source events|predictions] [--days 7 | --from ... --to ...]

The reference is what training stored with the version (:func:`sira.training.runs.reference_statistics`
in the manifest, and a sample of training rows with their scores in
``reference_sample.npy``). The window is either the stored events of the period,
with their point-in-time features, scored by the version through the batch-scoring
pipeline (``events``), or the features and scores production actually served
(``predictions``, from ``sira_predictions``).

Per feature and for the score: PSI on the reference's value bins plus a bin
for missing values (a feature that stops arriving is drift too), Jensen-Shannon
divergence on the same bins, Kolmogorov-Smirnov against the reference sample for
numeric features, chi-square for categorical ones; p-values adjusted with
Benjamini-Hochberg across the run; a severity per row and a verdict for the
dataset (:mod:`sira.core.stats`). Every row goes to ``sira_data_drift`` (``__score__``
for the score, ``__dataset__`` for the verdict) with the job's id.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from sira.core import db, stats
from sira.core.artifacts import json_finite
from sira.core.audit import Actor
from sira.core.config import Settings
from sira.core.errors import InvalidInput, check_window_options, inverted_window
from sira.registry import models as registry
from sira.training import windows
from sira.training.trainer import FeatureSpec

SCORE = "__score__"
DATASET = "__dataset__"
SOURCES = ("events", "predictions")
MIN_ROWS = 100
DEFAULT_DAYS = 7.0  # the window's days when none are given
# Rows of a window compared at most: a longer window is read whole (streamed) and every k-th row kept, in its
# stored order (the same window gives the same sample). 500,000 rows of 60 features: 240 MB in the driver; a
# week of a busy production (10 M predictions) held whole was 4.8 GB. PSI and KS on 500,000 rows move by
# less than their thresholds' resolution.
MAX_ROWS = 500_000
SEVERITY_ORDER = {"alert": 0, "warn": 1, "ok": 2}


@dataclass(frozen=True)
class DriftRequest:
    model: str
    version: int | None = None
    source: str = "events"
    days: float | None = None  # None: DEFAULT_DAYS (given with both time_from and time_to: refused)
    time_from: datetime | None = None
    time_to: datetime | None = None
    thresholds: stats.DriftThresholds = stats.DriftThresholds()
    # nothing at or after this is read (a retrain's --as-of): the default window is the newest data before it,
    # an explicit one ends there at the latest
    until: datetime | None = None


@dataclass(frozen=True)
class Reference:
    """What training recorded of its data, and a sample of its rows (features, then the score)."""

    schema: tuple[FeatureSpec, ...]
    statistics: dict[str, Any]
    sample: np.ndarray | None  # artifacts of older versions have none: KS is then left out

    @classmethod
    def load(cls, settings: Settings, version: dict[str, Any]) -> "Reference":
        from sira.core import artifacts
        from sira.training.runs import REFERENCE_SAMPLE_FILE

        loaded = artifacts.load_artifact(settings, artifacts.ArtifactRef(version["artifact_uri"],
                                                                       version["artifact_sha256"]))
        statistics = loaded.manifest.get("reference")
        if not statistics:
            raise InvalidInput(f"{version['model_name']} v{version['version']} has no training reference to "
                               "compare with; retrain it", code="no_reference")
        raw = loaded.files.get(REFERENCE_SAMPLE_FILE)
        sample = np.load(io.BytesIO(raw), allow_pickle=False) if raw is not None else None
        schema = tuple(FeatureSpec.from_dict(f) for f in loaded.manifest["feature_schema"])
        return cls(schema, statistics, sample)

    @functools.cached_property
    def skipped(self) -> dict[str, str]:
        """Numeric features whose stored bins are not all numbers, each with why it is not compared: a version
        trained before infinite values were read as missing stored an infinite edge (as null), and comparing
        with it failed the whole run."""
        return {name: "its training reference has bin edges that are not finite numbers (infinite values in the "
                      "training data); retrain to compare it"
                for name, ref in self.statistics["features"].items()
                if ref.get("type") == "numeric" and not all(isinstance(e, (int, float)) and math.isfinite(e)
                                                             for e in ref.get("bin_edges") or [])}

    def value_bins(self, j: int, ref: dict[str, Any]) -> tuple[list[float], np.ndarray, str | None, str | None]:
        """The bins a numeric feature's values are compared on: (edges, reference counts, where they come from
        when not the stored reference, a note when they cannot show how its values moved). A version trained
        before bins kept distinct values apart (no ``binning`` in its reference) stored quantile edges with the
        repeats dropped: a 0/1 flag was one closed bin [0, 1] and its PSI 0 whatever moved. Fewer bins than
        asked for means such a merge; the feature is then rebinned from the reference sample (training rows)
        when there is one, else compared as stored with the note."""
        from sira.training.runs import REFERENCE_BINS

        edges, hist = list(ref["bin_edges"]), np.asarray(ref["histogram"], dtype=np.float64)
        old = not self.statistics.get("binning")
        if old and 0 < len(edges) <= REFERENCE_BINS and self.sorted_sample is not None:
            values = self.sorted_sample[j][np.isfinite(self.sorted_sample[j])]
            rebinned = stats.reference_bin_edges(values, REFERENCE_BINS)
            if rebinned.size > len(edges):
                counts = stats.bin_counts(values, rebinned, assume_sorted=True).astype(np.float64)
                return [float(e) for e in rebinned], counts, "reference_sample", None
        retrain = "; retrain to measure it" if old else ""
        if len(edges) in (1, 2):
            return edges, hist, None, ("one bin of values in the training reference: PSI and JS measure only its "
                                       f"missing rate{retrain}")
        if old and 0 < len(edges) <= REFERENCE_BINS:
            return edges, hist, None, ("its training bins merge repeated values: PSI and JS understate a change in "
                                       f"how often it takes them{retrain}")
        return edges, hist, None, None

    @functools.cached_property
    def sorted_sample(self) -> list[np.ndarray] | None:
        """Each column of the sample (the score last), NaN dropped, ascending: sorted once for every window."""
        if self.sample is None:
            return None
        return [np.sort(c[~np.isnan(c)]) for c in self.sample.T]


def _missing_bin(counts: np.ndarray, missing: float) -> np.ndarray:
    return np.append(counts.astype(np.float64), missing)


def compare(reference: Reference, X: np.ndarray, scores: np.ndarray,
            thresholds: stats.DriftThresholds = stats.DriftThresholds(),
            nulls: Mapping[str, int] | None = None) -> tuple[list[dict[str, Any]], str]:
    """One row per feature and one for the score (most severe first), and the dataset's verdict. ``nulls``:
    per categorical feature, the window's values that were absent; its other unencoded values are categories
    training never saw, counted in a bin of their own (they were counted as missing: a category renamed
    upstream read as a feature that stopped arriving, and a retrain's check blocked it as such)."""
    rows: list[dict[str, Any]] = []
    n_ref_total = reference.statistics.get("rows")
    for j, spec in enumerate(reference.schema):
        ref = reference.statistics["features"].get(spec.name)
        if ref is None or spec.name in reference.skipped:
            continue
        column = X[:, j]
        present = column[~np.isnan(column)]
        if spec.kind != "categorical":
            present.sort()  # once, for the bin counts and for KS
        unencoded = float(column.size - present.size)
        unseen = max(0.0, unencoded - nulls[spec.name]) if nulls is not None and spec.name in nulls else 0.0
        missing_current = unencoded - unseen
        row: dict[str, Any] = {"feature": spec.name, "kind": spec.kind, "n_current": int(column.size)}
        details: dict[str, Any] = {"missing_rate_reference": ref["missing_rate"],
                                   "missing_rate_current": missing_current / column.size if column.size else None}
        if spec.kind == "categorical":
            proportions = np.array([ref["frequencies"].get(c, 0.0) for c in spec.categories])
            counts = np.bincount(present.astype(np.int64), minlength=len(spec.categories)).astype(np.float64)
            # no test against a reference with no value (the feature was always missing in training): PSI on
            # the missing bin says how it moved
            statistic, p_value = (stats.chi2_test(proportions, counts)
                                  if counts.sum() and len(counts) > 1 and proportions.sum() > 0 else (None, None))
            ref_counts = proportions * (n_ref_total or 1) * (1 - ref["missing_rate"])
            ref_bins = _missing_bin(ref_counts, (n_ref_total or 1) * ref["missing_rate"])
            cur_bins = _missing_bin(counts, missing_current)
            if unseen:  # a bin training never filled
                ref_bins, cur_bins = np.append(ref_bins, 0.0), np.append(cur_bins, unseen)
                details["unseen_rate_current"] = unseen / column.size
            current_freq = counts / counts.sum() if counts.sum() else counts
            details["largest_changes"] = {
                spec.categories[k]: {"reference": float(proportions[k]), "current": float(current_freq[k])}
                for k in np.argsort(-np.abs(current_freq - proportions))[:3].tolist()}
            row.update(chi2_statistic=statistic, p_value=p_value, ks_statistic=None)
        else:
            edges, hist, rebinned, note = reference.value_bins(j, ref)
            details.update(value_bins=max(len(edges) - 1, 1) if edges else 0,
                           **({"bins_from": rebinned} if rebinned else {}), **({"few_bins": note} if note else {}))
            if not edges:  # the feature was always missing in training
                hist, cur = np.zeros(1), np.array([float(present.size)])
            else:
                cur = stats.bin_counts(present, edges, assume_sorted=True).astype(np.float64)
            n_hist = hist.sum()
            ref_missing = n_hist * ref["missing_rate"] / (1 - ref["missing_rate"]) if ref["missing_rate"] < 1 else 1.0
            ref_bins, cur_bins = _missing_bin(hist, ref_missing), _missing_bin(cur, missing_current)
            ks, p_value = None, None
            if reference.sorted_sample is not None and present.size:
                sample = reference.sorted_sample[j]
                if sample.size:
                    ks, p_value = stats.ks_2samp(sample, present, assume_sorted=True)
            details.update(mean_reference=ref.get("mean"), mean_current=float(present.mean()) if present.size else None)
            row.update(ks_statistic=ks, p_value=p_value, chi2_statistic=None)
        row["n_reference"] = int(round(ref_bins.sum()))
        row["psi"] = stats.psi(ref_bins, cur_bins) if ref_bins.sum() and cur_bins.sum() else None
        row["js_divergence"] = stats.js_divergence(ref_bins, cur_bins) if ref_bins.sum() and cur_bins.sum() else None
        row["details"] = details
        rows.append(row)
    rows.append(_score_row(reference, scores))
    adjusted = stats.benjamini_hochberg(np.array([np.nan if r["p_value"] is None else r["p_value"] for r in rows]))
    for row, p_adj in zip(rows, adjusted.tolist()):
        row["p_value_adjusted"] = None if math.isnan(p_adj) else p_adj
        for key in ("psi", "js_divergence", "ks_statistic", "chi2_statistic", "p_value", "p_value_adjusted"):
            row[key] = json_finite(row[key])
        row["severity"] = thresholds.severity(psi=row["psi"], p_adjusted=row["p_value_adjusted"],
                                              ks=row["ks_statistic"], js=row["js_divergence"])
    rows.sort(key=lambda r: (SEVERITY_ORDER[r["severity"]], -(r["psi"] or 0.0), r["feature"]))
    return rows, stats.verdict(r["severity"] for r in rows)


def _score_row(reference: Reference, scores: np.ndarray) -> dict[str, Any]:
    edges = reference.statistics["score"]["bin_edges"]
    hist = np.asarray(reference.statistics["score"]["histogram"], dtype=np.float64)
    ordered = np.sort(scores[~np.isnan(scores)])  # once, for the bin counts and for KS
    cur = stats.bin_counts(ordered, edges, assume_sorted=True).astype(np.float64)
    ks, p_value = (stats.ks_2samp(reference.sorted_sample[-1], ordered, assume_sorted=True)
                   if reference.sorted_sample is not None and ordered.size and reference.sorted_sample[-1].size
                   else (None, None))
    return {"feature": SCORE, "kind": "score", "n_current": int(scores.size), "n_reference": int(hist.sum()),
            "psi": stats.psi(hist, cur), "js_divergence": stats.js_divergence(hist, cur), "ks_statistic": ks,
            "p_value": p_value, "chi2_statistic": None,
            "details": {"mean_current": float(scores.mean()) if scores.size else None,
                        "mean_reference": float(np.nanmean(reference.sample[:, -1])) if reference.sample is not None
                        else None}}


# -- the window --------------------------------------------------------------------------------


async def _window(conn: Any, req: DriftRequest, version: dict[str, Any]) -> tuple[datetime, datetime, dict[str, Any]]:
    """The explicit window, or the default (docs/windows.md): ``days`` ending at the newest data of the
    source that fills a window of at least :data:`MIN_ROWS`, walking back over sparse days."""
    if req.time_from is not None and req.time_to is not None:
        lo, hi, rule = req.time_from, req.time_to, {"rule": "--from/--to"}
    elif req.time_from is not None or req.time_to is not None:
        lo = req.time_from or req.time_to - timedelta(days=req.days)
        hi = req.time_to or req.time_from + timedelta(days=req.days)
        rule = {"rule": "--from/--to with --days"}
    else:
        before = "" if req.until is None else f" before {req.until:%Y-%m-%d %H:%M}"
        if req.source == "events":
            found = await windows.dense_window(conn, source="sira_events", where="($1::timestamptz IS NULL OR "
                                               "occurred_at < $1)", args=(req.until,), column="occurred_at",
                                               days=req.days, min_rows=MIN_ROWS)
        else:
            found = await windows.dense_window(
                conn, source="sira_predictions", where="model_name = $1 AND version = $2 AND role = $3 AND "
                "($4::timestamptz IS NULL OR scored_at < $4)",
                args=(version["model_name"], version["version"], served_as(version), req.until), column="scored_at",
                days=req.days, min_rows=MIN_ROWS)
        lo, hi = found.lo, found.hi
        what = "events (event time)" if req.source == "events" else "predictions (scoring time)"
        rule = {"rule": f"the {req.days:g} days up to the newest {what}{before} filling a window of {MIN_ROWS}",
                "newest": found.newest.isoformat(), "skipped_after": found.skipped}
    if req.until is not None and hi > req.until:  # a backtest reads nothing after its cut-off
        hi, rule = req.until, {**rule, "until": req.until.isoformat()}
    if hi <= lo:
        raise inverted_window(lo, hi)
    return lo, hi, rule


async def data_span(conn: Any, source: str, version: dict[str, Any]) -> str:
    """Where the source's data is, for a window that holds too little: the oldest and newest stored event
    (event time), or the version's oldest and newest stored prediction (scoring time)."""
    if source == "events":
        first, last = await conn.fetchrow("SELECT min(occurred_at), max(occurred_at) FROM sira_events")
        what = "the stored events"
    else:
        first, last = await conn.fetchrow(
            "SELECT min(scored_at), max(scored_at) FROM sira_predictions WHERE model_name = $1 AND version = $2 "
            "AND role = $3", version["model_name"], version["version"], served_as(version))
        what = f"{version['model_name']} v{version['version']}'s {served_as(version)} predictions"
    if first is None:
        return ("no events are stored" if source == "events" else
                f"{version['model_name']} v{version['version']} has no stored {served_as(version)} predictions")
    return (f"{what} span {first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M}"
            + (" (scoring time)" if source == "predictions" else " (event time)"))


PREDICTION_CHUNK_ROWS = 50_000  # stored predictions read per round trip, as a float matrix at once


def served_as(version: dict[str, Any]) -> str:
    """The role of a version's stored predictions: a staging version scores in the shadow of production."""
    return "shadow" if version.get("status") == "staging" else "production"


def every(total: int) -> int:
    """The stride that keeps at most :data:`MAX_ROWS` of ``total`` rows."""
    return max(1, math.ceil(total / MAX_ROWS))


def _kept(offset: int, size: int, stride: int) -> np.ndarray:
    """Positions in a block of ``size`` rows starting at row ``offset`` of the window that the stride keeps."""
    return np.arange((-offset) % stride, size, stride)


def _events_window(settings: Settings, version: dict[str, Any], fs: Any, label_name: str, lo: datetime,
                   hi: datetime, rows: int, here: bool) -> tuple[np.ndarray, np.ndarray, dict[str, int], int]:
    import pyarrow as pa

    from sira.monitoring.batch import events_source, local_batches, scored_batches
    from sira.serving.scoring import ModelRuntime

    source = events_source(db.resolve_dsn(settings), fs, label_name, lo, hi, rows, keep_columns=True)
    batches = local_batches(settings, version, source) if here else scored_batches(version, source)
    stride, offset, kept = every(rows), 0, []
    for batch in batches:  # streamed: only the sample is held
        kept.append(batch.take(pa.array(_kept(offset, batch.num_rows, stride))))
        offset += batch.num_rows
    table = pa.concat_tables(kept)
    runtime = ModelRuntime.load(settings, version)
    nulls = {s.name: table.column(s.name).null_count for s in runtime.schema if s.kind == "categorical"}
    return runtime.table_matrix(table), table.column("score").to_numpy(), nulls, offset


async def _predictions_window(conn: Any, settings: Settings, version: dict[str, Any], lo: datetime,
                              hi: datetime) -> tuple[np.ndarray, np.ndarray, dict[str, int], int]:
    import asyncio

    from sira.serving.scoring import ModelRuntime

    runtime = await asyncio.to_thread(ModelRuntime.load, settings, version)
    blocks, scores = [], []
    nulls = {s.name: 0 for s in runtime.schema if s.kind == "categorical"}
    where = ("FROM sira_predictions WHERE model_name = $1 AND version = $2 AND role = $5 AND scored_at >= $3 "
             "AND scored_at < $4")
    args = (version["model_name"], version["version"], lo, hi, served_as(version))
    async with conn.transaction():  # a server-side cursor: a week of production never sits in memory as records
        stride, offset = every(await conn.fetchval(f"SELECT count(*) {where}", *args)), 0
        cursor = await conn.cursor(f"SELECT features, score {where} ORDER BY scored_at, prediction_id", *args)
        while chunk := await cursor.fetch(PREDICTION_CHUNK_ROWS):
            sample = [chunk[i] for i in _kept(offset, len(chunk), stride)]  # each chunk's records freed after
            offset += len(chunk)
            blocks.append(runtime.matrix([r["features"] for r in sample]))
            scores.append(np.array([r["score"] for r in sample], dtype=np.float64))
            for name in nulls:
                nulls[name] += sum(1 for r in sample if r["features"].get(name) is None)
    if not blocks:
        return np.empty((0, len(runtime.schema))), np.empty(0), nulls, 0
    return np.vstack(blocks), np.concatenate(scores), nulls, offset


# -- the job --------------------------------------------------------------------------------------


async def run_drift(settings: Settings, req: DriftRequest, *, actor: Actor | None = None) -> dict[str, Any]:
    """Compare the window with the version's reference; store and return the rows and the verdict."""
    import asyncio

    from sira.core import audit
    from sira.core.ray_runtime import init_ray, job_id
    from sira.features.definitions import get_feature_set
    from sira.monitoring.batch import in_process

    if req.source not in SOURCES:
        raise InvalidInput(f"--source must be one of {', '.join(SOURCES)}", code="invalid_input")
    check_window_options(req.time_from, req.time_to, req.days)
    req = dataclasses.replace(req, days=DEFAULT_DAYS if req.days is None else req.days)
    windows.check_days("--days", req.days)
    actor = actor or Actor.local()
    started = time.perf_counter()
    async with db.open_pool(settings) as pool:
        async with pool.acquire() as conn:
            row = await registry.version_in_use(conn, req.model, req.version)
            version = registry.loadable(row)
            lo, hi, rule = await _window(conn, req, version)
            reference = await asyncio.to_thread(Reference.load, settings, version)
            if req.source == "predictions":
                X, scores, nulls, window_rows = await _predictions_window(conn, settings, version, lo, hi)
            else:
                if not row["feature_set"]:
                    raise InvalidInput(f"{req.model} was trained on a table of its own: use --source predictions",
                                       code="invalid_input")
                n = await conn.fetchval(
                    "SELECT count(*) FROM sira_events WHERE occurred_at >= $1 AND occurred_at < $2", lo, hi)
                if n < MIN_ROWS:
                    raise InvalidInput(f"{n} events between {lo:%Y-%m-%d %H:%M} and {hi:%Y-%m-%d %H:%M} (event "
                                       f"time); drift needs at least {MIN_ROWS}: widen or move the window "
                                       f"({await data_span(conn, req.source, version)})", code="insufficient_data")
                model = await registry.get_model(conn, req.model)
                fs = get_feature_set(row["feature_set"], row["feature_set_version"] or row["model_fs_version"])
                here = in_process(settings, n)  # a small window is scored in this process, as `sira score` does
                if not here:
                    init_ray(settings, db.resolve_dsn(settings))
                X, scores, nulls, window_rows = await asyncio.to_thread(
                    _events_window, settings, version, fs, model["label_name"], lo, hi, n, here)
            if scores.size < MIN_ROWS:
                # --source predictions: a window of scoring time (`sira performance` windows by event time)
                scored = ((f" of {req.model} v{version['version']} ({served_as(version)}) scored", "scoring time, "
                           "not event time") if req.source == "predictions" else ("", "event time"))
                raise InvalidInput(
                    f"{scores.size} {req.source}{scored[0]} between {lo:%Y-%m-%d %H:%M} and {hi:%Y-%m-%d %H:%M} "
                    f"({scored[1]}); drift needs at least {MIN_ROWS}: widen or move the window "
                    f"({await data_span(conn, req.source, version)})", code="insufficient_data")
        rows, overall = await asyncio.to_thread(compare, reference, X, scores, req.thresholds, nulls)
        counts = {s: sum(1 for r in rows if r["severity"] == s) for s in SEVERITY_ORDER}
        # features whose bins cannot show how their values moved (a PSI of 0 there is no evidence of stability)
        few = {r["feature"]: r["details"]["few_bins"] for r in rows if r["details"].get("few_bins")}
        run = job_id()
        async with db.transaction(pool) as conn:
            await conn.executemany(
                """INSERT INTO sira_data_drift (model_id, version, feature, window_start, window_end, n_reference,
                       n_current, psi, ks_statistic, js_divergence, chi2_statistic, p_value, p_value_adjusted,
                       severity, details, job_id)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)""",
                [(version["model_id"], version["version"], r["feature"], lo, hi, r["n_reference"], r["n_current"],
                  r["psi"], r["ks_statistic"], r["js_divergence"], r["chi2_statistic"], r["p_value"],
                  r["p_value_adjusted"], r["severity"], {"kind": r["kind"], **r["details"]}, run) for r in rows]
                + [(version["model_id"], version["version"], DATASET, lo, hi, None, int(scores.size), None, None,
                    None, None, None, None, overall, {"source": req.source, "severities": counts,
                                                      "ad_hoc": ad_hoc(req),
                                                      "thresholds": req.thresholds.__dict__,
                                                      "window_rows": window_rows,
                                                      **({"skipped": reference.skipped} if reference.skipped
                                                         else {}), **({"few_bins": few} if few else {})}, run)])
            await audit.record(conn, actor, "drift.run", target_type="model_version",
                               target_id=f"{req.model}:v{version['version']}",
                               details={"job_id": run, "verdict": overall, "source": req.source})
    return {
        "model": req.model, "version": version["version"], "source": req.source, "job_id": run,
        "window": {"from": lo.isoformat(), "to": hi.isoformat(), **rule}, "n_current": int(scores.size),
        "window_rows": window_rows,  # n_current of them compared (every k-th beyond MAX_ROWS)
        "verdict": overall, "severities": counts, "reference_sample": reference.sample is not None,
        "seconds": round(time.perf_counter() - started, 3), "features": rows,
        **({"skipped": reference.skipped} if reference.skipped else {}), **({"few_bins": few} if few else {}),
    }


# a drift run over a window someone chose (--from/--to) or before a cut-off (a backtest retrain's): a look at
# another time, not the model's drift now, nor its nightly job running (a run's __dataset__ row's details)
AD_HOC_SQL = "coalesce((details->>'ad_hoc')::boolean, false)"


def ad_hoc(req: DriftRequest) -> bool:
    """Whether the run looks at a window of someone's choosing (:data:`AD_HOC_SQL`)."""
    return req.time_from is not None or req.time_to is not None or req.until is not None


async def latest_drift(conn: Any, model_name: str, version: int | None = None) -> dict[str, Any]:
    """The newest drift run of a model's production version (of ``version`` when named; of any version while
    none is in production): its verdict and rows, most severe first. A challenger's drift run (a retrain
    checks each challenger) is not the model's drift, nor is a run over a window someone chose (``ad_hoc``)
    while a run over the default window exists (a look back at the training period replaced production's
    drift until 2026-12-07). ``version`` names a version the model has, else ``NotFound``."""
    model = await registry.get_model(conn, model_name)
    if version is not None:  # a version the model never had is not found, as `sira drift --version` says
        await registry.get_version(conn, model_name, version)
    else:
        version = await conn.fetchval("SELECT version FROM sira_model_versions WHERE model_id = $1 AND "
                                      "status = 'production'", model["id"])
    run = await conn.fetchrow(
        f"""SELECT job_id, version, window_start, window_end, severity, details, computed_at FROM sira_data_drift
            WHERE model_id = $1 AND ($2::int IS NULL OR version = $2) AND feature = $3
            ORDER BY {AD_HOC_SQL}, computed_at DESC, id DESC LIMIT 1""", model["id"], version, DATASET)
    if run is None:
        return {"model": model_name, "latest": None}
    rows = await conn.fetch(
        """SELECT feature, severity, psi, ks_statistic, js_divergence, chi2_statistic, p_value, p_value_adjusted,
                  n_reference, n_current, details
             FROM sira_data_drift WHERE model_id = $1 AND job_id = $2 AND feature <> $3""",
        model["id"], run["job_id"], DATASET)
    features = sorted((dict(r) for r in rows), key=lambda r: (SEVERITY_ORDER[r["severity"]], -(r["psi"] or 0.0),
                                                              r["feature"]))
    return {"model": model_name, "latest": {
        "job_id": run["job_id"], "version": run["version"], "verdict": run["severity"],
        "window": {"from": run["window_start"].isoformat(), "to": run["window_end"].isoformat()},
        "computed_at": run["computed_at"].isoformat(), "summary": run["details"],
        "features": json_finite(features)}}
