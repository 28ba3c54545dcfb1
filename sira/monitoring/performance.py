"""Live model performance: the predictions SIRA answered, against the labels that have since matured.

    sira performance --model fraud [--version V] [--days 28 | --from ... --to ...] [--window-days 7]

Every stored prediction of the model (``sira_predictions``: production and the
staging version's shadow scores alike) with an event is joined with its labels
by the convention of training (CONVENTIONS.md): positive when a fraud label was
known by the cut-off, negative when the event is older than the model's
label-maturity window with no positive label (or a known legitimate outcome),
left out otherwise. Labels are what each source had said by the cut-off (the
label history), so a backtest (``--as-of``) run again gives the same windows.
The same event scored twice by one version counts once (its latest answer).

Per version and role, and per window of event time: average precision, ROC AUC,
precision and recall at the version's decision thresholds, calibration (Brier,
expected calibration error, the reliability table), overall and per segment
(country, channel). A window whose average precision falls more than the margin
below the version's test AP at training is flagged. Rows go to
``sira_model_performance`` with the job's id.
"""

from __future__ import annotations

import dataclasses
import math
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from sira.core import db
from sira.core.artifacts import json_finite
from sira.core.audit import Actor
from sira.core.config import Settings
from sira.core.errors import InvalidInput, check_window_options, inverted_window
from sira.core.ray_runtime import job_id
from sira.features.store import labels_said_by, to_us
from sira.registry import models as registry
from sira.training.windows import Windows, check_as_of, check_days, label_rule

DEFAULT_DAYS = 28.0  # days of matured events when none are given
MAX_WINDOWS = 1_000  # windows of one run: each is a pass over the run's predictions

DEFAULT_AP_MARGIN = 0.10  # absolute AP points below the version's test AP at training
MIN_POSITIVES_TO_FLAG = 10  # fewer positives than this: AP is too noisy to raise a flag
SEGMENTS = ("country", "channel")
CURSOR_ROWS = 20_000  # rows fetched per round trip while streaming the predictions

# The labels of a prediction as they stood at the cut-off ($5): which labels are its comes from sira_feedback,
# what each source had said of them by then from their history (a source's later word overwrites its
# sira_feedback row: a chargeback withdrawn after a backtest's cut-off was a fraud at it, not no label)
PREDICTIONS_SQL = f"""
SELECT DISTINCT ON (p.version, p.role, coalesce(p.event_id, p.prediction_id::text))
       p.version, p.role, p.score, coalesce(e.occurred_at, p.scored_at) AS occurred_at, e.country, e.channel,
       e.amount::float8 AS amount,
       lab.positive_known_at, lab.negative_known
  FROM sira_predictions p
  LEFT JOIN sira_events e ON e.event_id = p.event_id
  LEFT JOIN LATERAL (
        SELECT min(said.known_at) FILTER (WHERE said.label) AS positive_known_at,
               coalesce(bool_or(NOT said.label), false) AS negative_known
          -- the labels of the event or of the prediction: two index lookups (an OR of both
          -- conditions made PostgreSQL read every label of the model once per prediction)
          FROM (SELECT event_id, source FROM sira_feedback WHERE event_id = p.event_id AND label_name = $4
                UNION ALL
                SELECT event_id, source FROM sira_feedback WHERE prediction_id = p.prediction_id AND label_name = $4
                UNION ALL
                -- a shadow score of ready features (no event): the labels of production's answer to its request
                SELECT f.event_id, f.source FROM sira_predictions q
                  JOIN sira_feedback f ON f.prediction_id = q.prediction_id AND f.label_name = $4
                 WHERE p.event_id IS NULL AND p.role = 'shadow' AND q.model_name = p.model_name
                   AND q.request_id = p.request_id AND q.role = 'production'
                   AND q.scored_at BETWEEN p.scored_at - interval '1 hour' AND p.scored_at + interval '1 hour'
               ) fb
         CROSS JOIN LATERAL ({labels_said_by("$5", "$4", " AND h.event_id = fb.event_id AND h.source = fb.source")}) said
       ) lab ON true
 WHERE p.model_name = $1 AND coalesce(e.occurred_at, p.scored_at) >= $2 AND coalesce(e.occurred_at, p.scored_at) < $3
       AND ($6::int IS NULL OR p.version = $6)
 ORDER BY p.version, p.role, coalesce(p.event_id, p.prediction_id::text), p.scored_at DESC
"""


@dataclass(frozen=True)
class PerformanceRequest:
    model: str
    version: int | None = None  # None: every version with predictions in the range
    days: float | None = None  # None: DEFAULT_DAYS; counts back from time_to (given with time_from: refused)
    time_from: datetime | None = None
    time_to: datetime | None = None
    window_days: float = 7.0
    as_of: datetime | None = None  # labels known by then (default: now)
    ap_margin: float | None = None  # default: the model's settings (monitoring.ap_drop_margin), else 0.10
    min_segment_size: int = 200


def _metrics_row(y: np.ndarray, p: np.ndarray, thresholds: dict[str, float], segments: dict[str, np.ndarray],
                 min_segment_size: int) -> dict[str, Any]:
    from sira.training.evaluation import evaluate

    if y.size == 0 or y.min() == y.max():  # one class only: ranking metrics are undefined
        return {"n": int(y.size), "positives": int(y.sum()), "average_precision": None, "roc_auc": None}
    return evaluate(y, p, thresholds, segments=segments, min_segment_size=min_segment_size)


class Labelled:
    """One version and role's labelled predictions as compact columns, in the order read.

    A month of a busy model's predictions held as Python rows costs hundreds of bytes each; here a
    row is ~27 bytes (time in microseconds, label, score, and segment values as codes into small
    tables), and the predictions the label rule leaves out are not kept at all.
    """

    def __init__(self) -> None:
        self.at_us, self.y, self.score = array("q"), array("b"), array("d")
        self.codes = {name: array("i") for name in SEGMENTS}
        self.values: dict[str, dict[Any, int]] = {name: {} for name in SEGMENTS}

    def add(self, occurred_at: datetime, y: float, score: float, segments: tuple[Any, ...]) -> None:
        self.at_us.append(to_us(occurred_at))
        self.y.append(int(y))
        self.score.append(score)
        for name, value in zip(SEGMENTS, segments):
            table = self.values[name]
            code = table.get(value)
            if code is None:
                code = table[value] = len(table)
            self.codes[name].append(code)

    def __len__(self) -> int:
        return len(self.y)

    def segment_values(self, name: str) -> np.ndarray:
        """The segment's distinct values, indexed by code."""
        out = np.empty(len(self.values[name]), dtype=object)
        for value, code in self.values[name].items():
            out[code] = value
        return out


class LabelledPredictions:
    """Rows of :data:`PREDICTIONS_SQL`, labelled by the training convention (:func:`label_rule`) as they
    come, grouped by version and role; ``seen`` counts every row, labelled or not."""

    def __init__(self, cutoff: datetime, maturity_days: float):
        self.rule = Windows(None, None, None, None, cutoff, maturity_days)
        self.groups: dict[tuple[int, str], Labelled] = {}
        self.seen = 0

    def add(self, row: Any) -> None:
        self.seen += 1
        group = self.groups.get((row["version"], row["role"]))
        if group is None:  # a version and role with predictions has a result, labelled or not
            group = self.groups[(row["version"], row["role"])] = Labelled()
        y = label_rule(row["occurred_at"], row["positive_known_at"], row["negative_known"], self.rule)
        if y is not None:
            group.add(row["occurred_at"], y, row["score"], tuple(row[name] for name in SEGMENTS))

    @classmethod
    def from_rows(cls, rows: Iterable[Any], cutoff: datetime, maturity_days: float) -> "LabelledPredictions":
        out = cls(cutoff, maturity_days)
        for row in rows:
            out.add(row)
        return out


async def read_labelled(conn: Any, model: str, lo: datetime, hi: datetime, label_name: str, cutoff: datetime,
                        maturity_days: float, version: int | None = None) -> LabelledPredictions:
    """The model's stored predictions of events in [lo, hi) with their labels as of ``cutoff``, streamed
    through a cursor (never the whole range in memory as rows)."""
    out = LabelledPredictions(cutoff, maturity_days)
    async with conn.transaction(readonly=True):  # a cursor lives in a transaction
        async for row in conn.cursor(PREDICTIONS_SQL, model, lo, hi, label_name, cutoff, version,
                                     prefetch=CURSOR_ROWS):
            out.add(row)
    return out


def evaluate_windows(data: Labelled, *, lo: datetime, hi: datetime, window_days: float,
                     cutoff: datetime, maturity_days: float, thresholds: dict[str, float], train_ap: float | None,
                     margin: float, min_segment_size: int) -> list[dict[str, Any]]:
    """The performance rows (overall and per segment) of one version and role, window by window.

    A window whose events are not all older than the label maturity is *provisional*: its unlabelled
    young events are left out while its known chargebacks count, so its positives are over-represented
    and its AP is not comparable with training's (measured on mature data). Its metrics are reported,
    marked, and never flagged.
    """
    mature_until = cutoff - timedelta(days=maturity_days)
    at, ys = np.frombuffer(data.at_us, dtype=np.int64), np.frombuffer(data.y, dtype=np.int8)
    scores = np.frombuffer(data.score, dtype=np.float64)
    codes = {name: np.frombuffer(data.codes[name], dtype=np.int32) for name in SEGMENTS}
    values = {name: data.segment_values(name) for name in SEGMENTS}
    step = timedelta(days=window_days)
    step_us = step // timedelta(microseconds=1)
    lo_us, hi_us = to_us(lo), to_us(hi)
    # each row's window, once (-1: outside the range)
    window = np.where((at >= lo_us) & (at < hi_us), (at - lo_us) // max(step_us, 1), -1)
    out = []
    start, index = lo, 0
    while start < hi:
        end = min(start + step, hi)
        part, index = np.flatnonzero(window == index), index + 1
        if part.size == 0:  # nothing scored (or nothing mature) in this window: no row rather than an empty one
            start = end
            continue
        y = ys[part].astype(np.float64)
        p = scores[part]
        segments = {name: values[name][codes[name][part]] for name in SEGMENTS}
        metrics = _metrics_row(y, p, thresholds, segments, min_segment_size)

        provisional = end > mature_until
        metrics["provisional"] = provisional

        def flag(ap: float | None, positives: int) -> bool:
            return (not provisional and ap is not None and train_ap is not None
                    and positives >= MIN_POSITIVES_TO_FLAG and ap == ap and ap < train_ap - margin)

        by_segment = metrics.pop("segments", {}) or {}
        out.append({"window_start": start, "window_end": end, "segment": "all", "segment_value": "all",
                    "n": int(y.size), "n_positive": int(y.sum()), "average_precision": metrics.get("average_precision"),
                    "roc_auc": metrics.get("roc_auc"), "metrics": metrics, "provisional": provisional,
                    "flagged": flag(metrics.get("average_precision"), int(y.sum()))})
        for name, by_value in by_segment.items():
            for value, m in by_value.items():
                out.append({"window_start": start, "window_end": end, "segment": name, "segment_value": value,
                            "n": m["n"], "n_positive": m["positives"], "average_precision": m["average_precision"],
                            "roc_auc": m["roc_auc"], "metrics": {**m, "provisional": provisional},
                            "provisional": provisional, "flagged": flag(m["average_precision"], m["positives"])})
        start = end
    return out


# The newest predicted event, and the newest whose label is usable (docs/windows.md): mature, or labelled by
# the cut-off (by event or by prediction): a source had said something of it by then (its label history).
# $4 in NEWEST_SQL, $5 in NEWEST_LABELLED_SQL: one role's answers only (NULL: every role's).
NEWEST_SQL = """
SELECT max(coalesce(e.occurred_at, p.scored_at)) AS newest,
       max(coalesce(e.occurred_at, p.scored_at)) FILTER (WHERE coalesce(e.occurred_at, p.scored_at) <= $3) AS mature
  FROM sira_predictions p LEFT JOIN sira_events e ON e.event_id = p.event_id
 WHERE p.model_name = $1 AND ($2::int IS NULL OR p.version = $2) AND ($4::text IS NULL OR p.role = $4)
"""
_SAID_BY = """EXISTS (SELECT 1 FROM sira_feedback_history h WHERE h.event_id = f.event_id
                      AND h.label_name = f.label_name AND h.source = f.source AND h.known_at <= $4)"""
NEWEST_LABELLED_SQL = f"""
SELECT max(coalesce(e.occurred_at, p.scored_at))
  FROM (SELECT p.* FROM sira_feedback f JOIN sira_predictions p ON p.event_id = f.event_id
         WHERE f.label_name = $3 AND {_SAID_BY}
        UNION ALL
        SELECT p.* FROM sira_feedback f JOIN sira_predictions p ON p.prediction_id = f.prediction_id
         WHERE f.label_name = $3 AND {_SAID_BY}
        UNION ALL
        SELECT s.* FROM sira_feedback f JOIN sira_predictions q ON q.prediction_id = f.prediction_id
          JOIN sira_predictions s ON s.model_name = q.model_name AND s.request_id = q.request_id
               AND s.role = 'shadow' AND s.event_id IS NULL
               AND s.scored_at BETWEEN q.scored_at - interval '1 hour' AND q.scored_at + interval '1 hour'
         WHERE f.label_name = $3 AND {_SAID_BY} AND q.event_id IS NULL AND q.role = 'production') p
  LEFT JOIN sira_events e ON e.event_id = p.event_id
 WHERE p.model_name = $1 AND ($2::int IS NULL OR p.version = $2) AND ($5::text IS NULL OR p.role = $5)
"""


def default_range(cutoff: datetime, maturity_days: float, usable: datetime, days: float) -> tuple[datetime, datetime]:
    """The range a run reads when none is given: ``days`` of matured events before the label maturity (their
    windows can be flagged), then the provisional ones up to the newest usable event. The range used to be the
    ``days`` before the newest usable event: a recent chargeback or review made that event recent, so with the
    defaults (28 days, a 30-day maturity) every window was provisional and the alert could never fire."""
    hi = usable + timedelta(microseconds=1)
    mature_until = cutoff - timedelta(days=maturity_days)
    return min(hi, mature_until) - timedelta(days=days), hi


async def newest_predictions(conn: Any, model: str, version: int | None, label_name: str, cutoff: datetime,
                             maturity_days: float, role: str | None = None) -> tuple[datetime | None, datetime | None]:
    """(newest predicted event, newest predicted event with a usable label) of the model (of one role's
    answers when ``role`` is given)."""
    row = await conn.fetchrow(NEWEST_SQL, model, version, cutoff - timedelta(days=maturity_days), role)
    labelled = await conn.fetchval(NEWEST_LABELLED_SQL, model, version, label_name, cutoff, role)
    usable = max((t for t in (row["mature"], labelled) if t is not None), default=None)
    return row["newest"], usable


async def predicted_span(conn: Any, model: str, version: int | None) -> str:
    """Where a model's (a version's) stored predictions are, by the event time performance windows by (the
    scoring time of a prediction without an event), for a range that holds none of them."""
    first, last = await conn.fetchrow(
        """SELECT min(coalesce(e.occurred_at, p.scored_at)), max(coalesce(e.occurred_at, p.scored_at))
             FROM sira_predictions p LEFT JOIN sira_events e ON e.event_id = p.event_id
            WHERE p.model_name = $1 AND ($2::int IS NULL OR p.version = $2)""", model, version)
    of = model + (f" v{version}" if version else "")
    if first is None:
        return f"{of} has no stored predictions"
    return f"the predicted events of {of} span {first:%Y-%m-%d %H:%M} .. {last:%Y-%m-%d %H:%M}"


def check_window_count(span: timedelta, window_days: float, what: str) -> None:
    """At most :data:`MAX_WINDOWS` windows in ``span``, the range the run reads (``what`` names it): --days
    alone was checked, so a range of --from/--to was refused or allowed by a --days it does not use."""
    windows = math.ceil(span / timedelta(days=window_days))
    if windows > MAX_WINDOWS:
        raise InvalidInput(f"{what} holds {windows:,} windows of --window-days {window_days:g}: at most "
                           f"{MAX_WINDOWS} windows; widen them or shorten the range", code="invalid_option")


async def run_performance(settings: Settings, req: PerformanceRequest, *,
                          actor: Actor | None = None) -> dict[str, Any]:
    """Evaluate the model's stored predictions against matured labels; store and return the rows."""
    import asyncio

    from sira.core import audit

    check_window_options(req.time_from, req.time_to, req.days, days_after_from=False)
    req = dataclasses.replace(req, days=DEFAULT_DAYS if req.days is None else req.days)
    check_days("--days", req.days)
    check_days("--window-days", req.window_days)
    check_as_of(req.as_of)
    if req.time_from is None:  # the range is --days (ending at --to), or longer: refused before anything is read
        check_window_count(timedelta(days=req.days), req.window_days, f"--days {req.days:g}")
    actor = actor or Actor.local()
    started = time.perf_counter()
    cutoff = req.as_of or datetime.now(timezone.utc)
    async with db.open_pool(settings) as pool:
        async with pool.acquire() as conn:
            model = await registry.get_model(conn, req.model)
            if req.version is not None:
                await registry.get_version(conn, req.model, req.version)
            maturity_days = float(model["label_maturity_days"])
            if req.time_to is None:
                newest, usable = await newest_predictions(conn, req.model, req.version, model["label_name"], cutoff,
                                                          maturity_days)
                if newest is None:
                    raise InvalidInput(f"no stored predictions of {req.model}" +
                                       (f" v{req.version}" if req.version else ""), code="empty_input")
                if usable is None:
                    raise InvalidInput(
                        f"no prediction of {req.model} has a usable label yet: none has a label known by "
                        f"{cutoff:%Y-%m-%d %H:%M} and none is older than the label maturity ({maturity_days:g} days); "
                        "wait for labels or set --from/--to", code="empty_window")
            if req.time_to is None and req.time_from is None:
                lo, hi = default_range(cutoff, maturity_days, usable, req.days)
            else:
                hi = req.time_to or usable + timedelta(microseconds=1)
                lo = req.time_from or hi - timedelta(days=req.days)
            if hi <= lo:
                raise inverted_window(lo, hi)
            check_window_count(hi - lo, req.window_days, f"the range {lo:%Y-%m-%d %H:%M} .. {hi:%Y-%m-%d %H:%M}")
            read = await read_labelled(conn, req.model, lo, hi, model["label_name"], cutoff, maturity_days,
                                       req.version)
            if not read.seen:
                of = f"{req.model}" + (f" v{req.version}" if req.version else "")
                raise InvalidInput(f"no predictions of {of} between {lo:%Y-%m-%d %H:%M} and {hi:%Y-%m-%d %H:%M} "
                                   f"(event time); {await predicted_span(conn, req.model, req.version)}",
                                   code="empty_input")
            versions = {v: await registry.get_version(conn, req.model, v) for v in sorted({v for v, _ in read.groups})}
        margin = req.ap_margin
        if margin is None:
            margin = float(((model["settings"] or {}).get("monitoring") or {}).get("ap_drop_margin", DEFAULT_AP_MARGIN))
        results = []
        for (version, role), labelled in sorted(read.groups.items()):
            row = versions[version]
            test_metrics = (row["metrics"] or {}).get("test") or {}
            evaluated = await asyncio.to_thread(
                evaluate_windows, labelled, lo=lo, hi=hi,
                window_days=req.window_days, cutoff=cutoff, maturity_days=maturity_days,
                thresholds={k: float(v) for k, v in row["thresholds"].items()},
                train_ap=test_metrics.get("average_precision"), margin=margin, min_segment_size=req.min_segment_size)
            results.append({"version": version, "role": role, "model_id": row["model_id"],
                            "training_ap": test_metrics.get("average_precision"), "rows": evaluated})
        run = job_id()
        # which run the rows are: a viewer of the newest rows told a backtest's provisional windows from the
        # current ones by nothing (latest_performance prefers a run that is no backtest)
        about = run_info(cutoff, lo, hi, backtest=req.as_of is not None)
        async with db.transaction(pool) as conn:
            await conn.executemany(
                """INSERT INTO sira_model_performance (model_id, version, role, window_start, window_end, segment,
                       segment_value, n, n_positive, average_precision, roc_auc, metrics, flagged, job_id)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)""",
                [(res["model_id"], res["version"], res["role"], r["window_start"], r["window_end"], r["segment"],
                  str(r["segment_value"]), r["n"], r["n_positive"], json_finite(r["average_precision"]),
                  json_finite(r["roc_auc"]), json_finite({**r["metrics"], "run": about}), r["flagged"], run)
                 for res in results for r in res["rows"]])
            flagged = any(r["flagged"] for res in results for r in res["rows"])
            await audit.record(conn, actor, "performance.run", target_type="model", target_id=req.model,
                               details={"job_id": run, "flagged": flagged,
                                        "versions": sorted({res["version"] for res in results})})
    summary = [{"version": res["version"], "role": res["role"], "training_ap": res["training_ap"],
                "windows": [json_finite({k: (v.isoformat() if isinstance(v, datetime) else v)
                                         for k, v in r.items() if k != "metrics"}
                                        | {"decisions": r["metrics"].get("decisions"),
                                           "expected_calibration_error": r["metrics"].get("expected_calibration_error")})
                            for r in res["rows"] if r["segment"] == "all"],
                "segments": sum(1 for r in res["rows"] if r["segment"] != "all"),
                "flagged_segments": [f"{r['segment']}={r['segment_value']}" for r in res["rows"]
                                     if r["segment"] != "all" and r["flagged"]]}
               for res in results]
    return {"model": req.model, "job_id": run, "range": {"from": lo.isoformat(), "to": hi.isoformat()},
            "as_of": cutoff.isoformat(), "backtest": about["backtest"], "ap_margin": margin, "flagged": flagged, "results": summary,
            "seconds": round(time.perf_counter() - started, 3)}


def run_info(cutoff: datetime, lo: datetime, hi: datetime, *, backtest: bool) -> dict[str, Any]:
    """What a run's rows carry of the run (``metrics.run``): its label cut-off, the range it read, and whether
    it is a backtest (``--as-of``: labels as they were known then, so its young windows are provisional)."""
    return {"as_of": cutoff.isoformat(), "from": lo.isoformat(), "to": hi.isoformat(), "backtest": backtest}


# A run is a backtest by its rows' metrics.run (runs stored before it was written: not known, taken as current)
BACKTEST_SQL = "coalesce((metrics->'run'->>'backtest')::boolean, false)"


async def latest_performance(conn: Any, model_name: str) -> dict[str, Any]:
    """The current performance run of a model, every version, role, window and segment it wrote: the newest
    run that is no backtest (a run with ``--as-of`` reads labels as they were then), else the newest backtest,
    marked so. The answer names the run's label cut-off (``as_of``), ``range`` and ``backtest``."""
    model = await registry.get_model(conn, model_name)
    newest = ("SELECT job_id FROM sira_model_performance WHERE model_id = $1 {} "
              "ORDER BY computed_at DESC, id DESC LIMIT 1")
    job = await conn.fetchval(newest.format(f"AND NOT {BACKTEST_SQL}"), model["id"])
    if job is None:
        job = await conn.fetchval(newest.format(""), model["id"])
    if job is None:
        return {"model": model_name, "latest": None}
    rows = await conn.fetch(
        """SELECT version, role, window_start, window_end, segment, segment_value, n, n_positive, average_precision,
                  roc_auc, flagged, metrics, computed_at
             FROM sira_model_performance WHERE model_id = $1 AND job_id = $2
            ORDER BY version, role, window_start, segment, segment_value""", model["id"], job)
    about = (rows[0]["metrics"] or {}).get("run") or {}
    span = {"from": about.get("from") or min(r["window_start"] for r in rows).isoformat(),
            "to": about.get("to") or max(r["window_end"] for r in rows).isoformat()}
    return {"model": model_name, "latest": {
        "job_id": job, "computed_at": rows[0]["computed_at"].isoformat(), "as_of": about.get("as_of"),
        "range": span, "backtest": about.get("backtest"),
        "flagged": any(r["flagged"] for r in rows),
        "rows": json_finite([{**{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(r).items()
                                 if k != "computed_at"},
                              "metrics": {k: v for k, v in (r["metrics"] or {}).items() if k != "run"}}
                             for r in rows])}}
