"""Model evaluation and decision thresholds: pure functions over labels and scores.

Metrics: average precision, ROC AUC, recall at 1% false-positive rate,
precision at k, Brier score, log loss, a calibration table, and a cost figure
(a missed fraud against a false alarm); the same per segment (country,
channel) when present. Thresholds for approve / review / block are chosen on
validation data from targets (review rate, block precision), never on test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sira.core.errors import InvalidInput
from sira.registry.targets import DecisionTargets


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise InvalidInput("labels and scores must be 1-d arrays of the same length")
    return y, p


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the precision-recall curve, step-wise (as scikit-learn computes it)."""
    y, p = _check(y, p)
    positives = y.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-p, kind="mergesort")
    y_sorted, p_sorted = y[order], p[order]
    # group tied scores: precision/recall are evaluated at distinct thresholds only
    distinct = np.flatnonzero(np.diff(p_sorted)) if p_sorted.size > 1 else np.array([], dtype=int)
    ends = np.concatenate([distinct, [p_sorted.size - 1]])
    tp = np.cumsum(y_sorted)[ends]
    fp = (ends + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / positives
    recall_prev = np.concatenate([[0.0], recall[:-1]])
    return float(np.sum((recall - recall_prev) * precision))


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    y, p = _check(y, p)
    n_pos, n_neg = y.sum(), (1 - y).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(p.size)
    sorted_p = p[order]
    # average ranks over ties
    boundaries = np.concatenate([[0], np.flatnonzero(np.diff(sorted_p)) + 1, [p.size]])
    for lo, hi in zip(boundaries[:-1], boundaries[1:]):
        ranks[order[lo:hi]] = (lo + hi + 1) / 2.0
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recall_at_fpr(y: np.ndarray, p: np.ndarray, fpr: float = 0.01) -> float:
    """Recall at the highest threshold whose false-positive rate stays within ``fpr``."""
    y, p = _check(y, p)
    n_pos, n_neg = y.sum(), (1 - y).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(-p, kind="mergesort")
    y_sorted, p_sorted = y[order], p[order]
    distinct = np.flatnonzero(np.diff(p_sorted))
    ends = np.concatenate([distinct, [p_sorted.size - 1]])
    tp = np.cumsum(y_sorted)[ends]
    fp = (ends + 1) - tp
    ok = fp / n_neg <= fpr + 1e-12
    return float(tp[ok].max() / n_pos) if ok.any() else 0.0


def precision_at_k(y: np.ndarray, p: np.ndarray, k: int) -> float:
    y, p = _check(y, p)
    k = min(k, y.size)
    if k <= 0:
        return float("nan")
    top = np.argsort(-p, kind="mergesort")[:k]
    return float(y[top].mean())


def brier(y: np.ndarray, p: np.ndarray) -> float:
    y, p = _check(y, p)
    return float(np.mean((p - y) ** 2))


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-15) -> float:
    y, p = _check(y, p)
    q = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Mean predicted vs observed rate per equal-count bin of scores."""
    y, p = _check(y, p)
    if y.size == 0:
        return []
    order = np.argsort(p, kind="mergesort")
    out = []
    for chunk in np.array_split(order, min(bins, y.size)):
        if chunk.size:
            out.append({"n": int(chunk.size), "mean_score": float(p[chunk].mean()),
                        "observed_rate": float(y[chunk].mean())})
    return out


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    table = calibration_table(y, p, bins)
    total = sum(b["n"] for b in table)
    return float(sum(b["n"] * abs(b["mean_score"] - b["observed_rate"]) for b in table) / total) if total else 0.0


def choose_thresholds(y: np.ndarray, p: np.ndarray, targets: DecisionTargets) -> dict[str, float]:
    """Review and block thresholds on (validation) scores.

    Block: the lowest threshold whose precision reaches ``block_precision``
    while blocking at most ``max_block_rate`` of traffic (1.0, never, when
    none does). Review: the threshold that sends ``review_rate`` of traffic to
    review or block.
    """
    y, p = _check(y, p)
    if y.size == 0:
        raise InvalidInput("cannot choose thresholds on an empty validation set")
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    tp = np.cumsum(y_sorted)
    n = np.arange(1, y.size + 1)
    precision = tp / n
    rate = n / y.size
    last_of_tie = np.concatenate([np.diff(p_sorted) != 0, [True]])
    ok = last_of_tie & (precision >= targets.block_precision) & (rate <= targets.max_block_rate)
    block = float(p_sorted[np.flatnonzero(ok).max()]) if ok.any() else 1.0
    k = max(1, int(round(targets.review_rate * y.size)))
    review = float(min(p_sorted[k - 1], block))
    return {"review": review, "block": block}


DECISIONS = ("approve", "review", "block")


def decision_codes(scores: np.ndarray, thresholds: Mapping[str, float]) -> np.ndarray:
    """Per score, its decision's index in :data:`DECISIONS`: block at or above the block threshold,
    else review at or above the review threshold, else approve (a NaN score too)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(scores >= thresholds["block"], 2, np.where(scores >= thresholds["review"], 1, 0)).astype(np.int8)


def decide(scores: np.ndarray, thresholds: Mapping[str, float]) -> np.ndarray:
    """approve / review / block per score."""
    return np.array(DECISIONS)[decision_codes(scores, thresholds)]


def evaluate(
    y: np.ndarray,
    p: np.ndarray,
    thresholds: Mapping[str, float] | None = None,
    targets: DecisionTargets | None = None,
    segments: Mapping[str, Sequence[Any]] | None = None,
    min_segment_size: int = 200,
) -> dict[str, Any]:
    """Every metric SIRA reports for one set of labels and scores."""
    y, p = _check(y, p)
    targets = targets or DecisionTargets()
    n_pos = int(y.sum())
    metrics: dict[str, Any] = {
        "n": int(y.size), "positives": n_pos, "positive_rate": float(n_pos / y.size) if y.size else 0.0,
        "average_precision": average_precision(y, p), "roc_auc": roc_auc(y, p),
        "recall_at_1pct_fpr": recall_at_fpr(y, p, 0.01),
        "precision_at_100": precision_at_k(y, p, 100), "brier": brier(y, p), "log_loss": log_loss(y, p),
        "expected_calibration_error": expected_calibration_error(y, p),
        "calibration": calibration_table(y, p),
    }
    if thresholds is not None:
        decisions = decide(p, thresholds)
        flagged = decisions != "approve"
        blocked = decisions == "block"
        missed = float(((~flagged) & (y == 1)).sum())
        false_alarms = float((flagged & (y == 0)).sum())
        metrics["decisions"] = {
            "review_rate": float(flagged.mean()) if y.size else 0.0,
            "block_rate": float(blocked.mean()) if y.size else 0.0,
            "precision_flagged": float(y[flagged].mean()) if flagged.any() else float("nan"),
            "recall_flagged": float(y[flagged].sum() / n_pos) if n_pos else float("nan"),
            "precision_blocked": float(y[blocked].mean()) if blocked.any() else float("nan"),
            "recall_blocked": float(y[blocked].sum() / n_pos) if n_pos else float("nan"),
        }
        metrics["cost"] = {
            "missed_fraud": missed, "false_alarms": false_alarms,
            "total": missed * targets.cost_missed_fraud + false_alarms * targets.cost_false_alarm,
            "per_1000_events": (missed * targets.cost_missed_fraud + false_alarms * targets.cost_false_alarm)
            / max(y.size, 1) * 1000,
        }
    if segments:
        by_segment: dict[str, dict[str, Any]] = {}
        for name, values in segments.items():
            values = np.asarray(values, dtype=object)
            for value in sorted({v for v in values.tolist() if v is not None}, key=str):
                mask = values == value
                if mask.sum() >= min_segment_size:
                    by_segment.setdefault(name, {})[str(value)] = {
                        "n": int(mask.sum()), "positives": int(y[mask].sum()),
                        "average_precision": average_precision(y[mask], p[mask]),
                        "roc_auc": roc_auc(y[mask], p[mask]),
                    }
        metrics["segments"] = by_segment
    return metrics
