"""Reproducible LightGBM training with calibration.

The same data, parameters, seed and thread count give a byte-identical model
file: ``deterministic=True``, row-wise histograms and seeded sampling, and a
model text without timestamps. Imbalance is handled by weighting the positive
class, then calibrating on validation data (isotonic when the validation set
has enough positives, Platt scaling otherwise), so a score is a probability.
Categorical features are passed to LightGBM by name as integer codes whose
vocabulary is stored with the model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sira.core.errors import InvalidInput

# Robust defaults for rare positives: LightGBM's own defaults can collapse on
# 0.1-0.2% fraud with a time split (see MEASURED.md); these keep leaves from
# chasing single frauds and stop on validation average precision.
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "min_sum_hessian_in_leaf": 1e-3,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 255,
    "num_boost_round": 1000,
    "early_stopping_rounds": 100,
}
_OWN_KEYS = {"num_boost_round", "early_stopping_rounds", "calibration"}
# Isotonic regression needs many positives to be reliable; with fewer, Platt scaling.
MIN_POSITIVES_FOR_ISOTONIC = 1_000
# Isotonic calibration is a step function: scores in one step would tie and lose the
# model's ranking. A vanishing share of the raw margin's sigmoid breaks the ties
# without moving any probability by more than this.
_TIE_BREAK = 1e-6


@dataclass(frozen=True)
class FeatureSpec:
    """One model input: its name, kind and, for categoricals, the vocabulary (code = index)."""

    name: str
    kind: str  # "numeric" | "categorical"
    categories: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.kind}
        if self.kind == "categorical":
            out["categories"] = list(self.categories)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureSpec":
        return cls(data["name"], data["type"], tuple(data.get("categories", ())))


@dataclass
class Matrix:
    """Model inputs as a float matrix in schema order (categoricals as codes, missing as NaN)."""

    X: np.ndarray
    y: np.ndarray
    schema: list[FeatureSpec]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.schema]

    def rows(self, index: np.ndarray) -> "Matrix":
        return Matrix(self.X[index], self.y[index], self.schema)


def encode_columns(columns: Mapping[str, Any], schema: list[FeatureSpec]) -> np.ndarray:
    """Columns (name -> values) as the model's float matrix, using the schema's vocabularies."""
    n = len(next(iter(columns.values()))) if columns else 0
    X = np.full((n, len(schema)), np.nan, dtype=np.float64)
    for j, spec in enumerate(schema):
        if spec.name not in columns:
            raise InvalidInput(f"feature {spec.name} is missing", details={"feature": spec.name})
        values = columns[spec.name]
        if spec.kind == "categorical":
            codes = {c: float(i) for i, c in enumerate(spec.categories)}
            X[:, j] = [codes.get(None if v is None else str(v), np.nan) for v in values]
        else:
            X[:, j] = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return X


@dataclass
class TrainResult:
    model_text: str
    best_iteration: int
    params: dict[str, Any]
    calibration: dict[str, Any]
    seconds: float
    raw_valid: np.ndarray
    valid_scores: np.ndarray
    evals: dict[str, list[float]] = field(default_factory=dict)


def resolve_params(params: Mapping[str, Any] | None, *, seed: int, num_threads: int) -> dict[str, Any]:
    """Defaults, the caller's overrides, and the settings that make training reproducible."""
    merged = {**DEFAULT_PARAMS, **(params or {})}
    for key in ("learning_rate", "num_leaves", "num_boost_round"):
        if not isinstance(merged[key], (int, float)) or merged[key] <= 0:
            raise InvalidInput(f"parameter {key} must be a positive number")
    merged.update(seed=seed, deterministic=True, force_row_wise=True, num_threads=num_threads, verbosity=-1,
                  bagging_seed=seed, feature_fraction_seed=seed, data_random_seed=seed)
    return merged


def positive_weight(y: np.ndarray) -> float:
    """Weight of the positive class: sqrt of the imbalance, capped (calibration undoes the skew)."""
    pos = float(y.sum())
    neg = float(y.size - pos)
    if pos == 0:
        raise InvalidInput("the training window has no positive labels")
    if neg == 0:
        raise InvalidInput("the training window has no negative labels")
    return float(min(math.sqrt(neg / pos), 100.0))


def train_model(
    train: Matrix, valid: Matrix, params: Mapping[str, Any] | None = None, *, seed: int = 42, num_threads: int = 1
) -> TrainResult:
    """Train with early stopping on validation average precision, then calibrate on validation."""
    import lightgbm as lgb

    if valid.y.sum() == 0:
        raise InvalidInput("the validation window has no positive labels; widen the windows")
    if valid.y.sum() == valid.y.size:
        raise InvalidInput("the validation window has no negative labels; widen the windows")
    started = time.perf_counter()
    full = resolve_params(params, seed=seed, num_threads=num_threads)
    rounds = int(full["num_boost_round"])
    patience = int(full["early_stopping_rounds"])
    calibration_method = full.get("calibration", "auto")
    lgb_params = {k: v for k, v in full.items() if k not in _OWN_KEYS}
    lgb_params.setdefault("scale_pos_weight", positive_weight(train.y))
    lgb_params["metric"] = "average_precision"
    categorical = [s.name for s in train.schema if s.kind == "categorical"]
    dtrain = lgb.Dataset(train.X, label=train.y, feature_name=train.names, categorical_feature=categorical or "auto",
                         free_raw_data=False, params={"verbosity": -1})
    dvalid = lgb.Dataset(valid.X, label=valid.y, reference=dtrain)
    evals: dict[str, Any] = {}
    booster = lgb.train(
        lgb_params, dtrain, num_boost_round=rounds, valid_sets=[dvalid], valid_names=["validation"],
        callbacks=[lgb.early_stopping(patience, verbose=False), lgb.record_evaluation(evals)],
    )
    best = booster.best_iteration or booster.current_iteration()
    model_text = booster.model_to_string(num_iteration=best)
    raw_valid = booster.predict(valid.X, num_iteration=best, raw_score=True)
    calibration = fit_calibration(raw_valid, valid.y, calibration_method)
    return TrainResult(
        model_text=model_text, best_iteration=int(best), params={**full, "scale_pos_weight": lgb_params["scale_pos_weight"]},
        calibration=calibration, seconds=time.perf_counter() - started, raw_valid=raw_valid,
        valid_scores=apply_calibration(calibration, raw_valid),
        evals={k: [float(x) for x in v] for k, v in evals.get("validation", {}).items()},
    )


def fit_calibration(raw: np.ndarray, y: np.ndarray, method: str = "auto") -> dict[str, Any]:
    """Map raw margins to probabilities: isotonic (enough positives) or Platt; stored as plain numbers."""
    if method not in ("auto", "isotonic", "platt"):
        raise InvalidInput("calibration must be auto, isotonic or platt")
    if method == "auto":
        method = "isotonic" if y.sum() >= MIN_POSITIVES_FOR_ISOTONIC else "platt"
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
        return {"method": "isotonic", "x": [float(v) for v in iso.X_thresholds_],
                "y": [float(v) for v in iso.y_thresholds_]}
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6, max_iter=1000).fit(raw.reshape(-1, 1), y)
    return {"method": "platt", "a": float(lr.coef_[0][0]), "b": float(lr.intercept_[0])}


def apply_calibration(calibration: Mapping[str, Any], raw: np.ndarray) -> np.ndarray:
    """Probabilities from raw margins with a stored calibration."""
    raw = np.asarray(raw, dtype=np.float64)
    if calibration["method"] == "isotonic":
        stepped = np.interp(raw, calibration["x"], calibration["y"])
        return np.clip(stepped * (1 - _TIE_BREAK) + _TIE_BREAK / (1.0 + np.exp(-raw)), 0.0, 1.0)
    if calibration["method"] == "platt":
        return 1.0 / (1.0 + np.exp(-(calibration["a"] * raw + calibration["b"])))
    raise InvalidInput(f"unknown calibration method {calibration['method']!r}")
