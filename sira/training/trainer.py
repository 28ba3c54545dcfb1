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

import contextlib
import difflib
import functools
import hashlib
import io
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from sira import __version__
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
CALIBRATIONS = ("auto", "isotonic", "platt")
# LightGBM's names for SIRA's own keys: their aliases (n_estimators, early_stopping_round, ...) mean SIRA's.
_OWN_NAMES = {"num_iterations": "num_boost_round", "early_stopping_round": "early_stopping_rounds"}
# LightGBM parameters SIRA sets itself: the value it uses, and why. Given with that value (a manifest's params fed
# back) they are accepted; with another, refused naming SIRA's setting: `metric: auc` was recorded as if used
# (early stopping watched AP all the same), `deterministic: false` silently made true, `is_unbalance: true`
# refused by LightGBM as if the user had set scale_pos_weight, `force_col_wise: true` with a message about
# force_row_wise.
_SIRA_SETS: dict[str, tuple[Any, str]] = {
    "metric": ("average_precision", "early stopping, tuning and the thresholds watch validation average precision"),
    "deterministic": (True, "the same data, parameters, seed and threads give the same model file"),
    "force_row_wise": (True, "row-wise histograms, for the same model file on every run"),
    "force_col_wise": (False, "SIRA trains with force_row_wise=true (row-wise histograms, for the same model file "
                              "on every run)"),
    "is_unbalance": (False, "SIRA weights the positive class itself (the square root of the imbalance); set "
                            "scale_pos_weight to choose another weight"),
    "verbosity": (-1, "LightGBM stays quiet, so --json prints one JSON object (--debug shows SIRA's own log)"),
}
# Parameters that describe the data's columns: only checkable against the data itself.
_COLUMN_KEYS = {"monotone_constraints", "feature_contri", "max_bin_by_feature", "interaction_constraints",
                "categorical_feature", "cegb_penalty_feature_lazy", "cegb_penalty_feature_coupled"}
_CHECK_ROWS = 64
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


@functools.cache
def parameter_names() -> dict[str, str]:
    """Every parameter name a caller may use -> the one it means: LightGBM's parameters and their aliases
    (from the library itself: ``LGBM_DumpParamAliases``), and SIRA's own keys."""
    from lightgbm.basic import _ConfigAliases

    names = {key: key for key in _OWN_KEYS}
    for name, aliases in _ConfigAliases._get_all_param_aliases().items():  # name -> [name, *aliases]
        names.update((alias, _OWN_NAMES.get(name, name)) for alias in aliases)
    return names


def normalize_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The caller's parameters, each under the one name it means (LightGBM's, or SIRA's num_boost_round,
    early_stopping_rounds and calibration), their values checked. An unknown name (a typo) was ignored by
    LightGBM yet recorded in the run and the manifest as if used; an alias lost to a default given under the
    main name; a NaN, a fraction of a round or a word where a number belongs failed late, as `internal`."""
    names = parameter_names()
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in (params or {}).items():
        name = names.get(str(key))
        if name is None:
            near = difflib.get_close_matches(str(key), list(names), n=1)
            raise InvalidInput(f"unknown parameter {key}: not a LightGBM parameter nor one of SIRA's "
                               f"({', '.join(sorted(_OWN_KEYS))})" + (f"; did you mean {near[0]}?" if near else ""),
                               details={"parameter": str(key)})
        if name in given:
            raise InvalidInput(f"parameter {name} is given twice (as {given[name]} and {key})",
                               details={"parameter": name})
        given[name] = str(key)
        out[name] = _checked_value(name, value)
    return out


def _checked_value(name: str, value: Any) -> Any:
    if name in ("num_boost_round", "early_stopping_rounds"):
        least = 1 if name == "num_boost_round" else 0  # early_stopping_rounds 0: no early stopping
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidInput(f"parameter {name} must be a whole number of at least {least} (got {value!r})",
                               details={"parameter": name})
    elif name in _SIRA_SETS:
        own, why = _SIRA_SETS[name]
        if value != own and value != [own]:
            raise InvalidInput(f"parameter {name} is set by SIRA ({name}: {_yaml(own)}): {why}; leave it out of "
                               f"--params (got {_yaml(value)})", details={"parameter": name})
    elif name == "calibration":
        if value not in CALIBRATIONS:
            raise InvalidInput(f"parameter calibration must be auto, isotonic or platt (got {value!r})",
                               details={"parameter": name})
    else:
        pending = [value]
        while pending:
            item = pending.pop()
            if isinstance(item, list):
                pending.extend(item)
            elif isinstance(item, float) and not math.isfinite(item):
                raise InvalidInput(f"parameter {name} must be a finite number (got {item})", details={"parameter": name})
            elif not isinstance(item, (str, int, float)):
                raise InvalidInput(f"parameter {name} must be a number, a word or a list of them (got {item!r})",
                                   details={"parameter": name})
    return value


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_params(params: Mapping[str, Any] | None, sample: Matrix | None = None) -> None:
    """Refuse, before anything is stored or trained, parameters that training would refuse: ours
    (``normalize_params``), then LightGBM's own, from a booster built on a few rows: ``sample``'s, else made-up
    rows (and then without the parameters that describe the data's columns)."""
    import lightgbm as lgb

    lgb_params = {k: v for k, v in resolve_params(params, seed=0, num_threads=1).items() if k not in _OWN_KEYS}
    lgb_params.setdefault("scale_pos_weight", 2.0)  # training always sets one (not LightGBM's 1, its "none")
    lgb_params["metric"] = "average_precision"
    if sample is None:
        lgb_params = {k: v for k, v in lgb_params.items() if k not in _COLUMN_KEYS}
        sample = Matrix(np.random.default_rng(0).random((_CHECK_ROWS, 2)), np.arange(_CHECK_ROWS) % 2.0,
                        [FeatureSpec("a", "numeric"), FeatureSpec("b", "numeric")])
    categorical = [s.name for s in sample.schema if s.kind == "categorical"]
    try:
        with _native_output_silenced():
            lgb.Booster(lgb_params, lgb.Dataset(sample.X[:_CHECK_ROWS], label=sample.y[:_CHECK_ROWS],
                                                feature_name=sample.names, categorical_feature=categorical or "auto",
                                                params={"verbosity": -1}))
    except (lgb.basic.LightGBMError, ValueError) as exc:
        raise InvalidInput(f"LightGBM refuses the parameters: {_lightgbm_reason(exc)}") from None


def _lightgbm_reason(exc: Exception) -> str:
    """LightGBM's message without its source location: `Check failed: (max_bin) > (1) at /.../config_auto.cpp,
    line 527 .` -> `max_bin must be > 1`."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    check = re.fullmatch(r"Check failed: \((\w+)\) (\S+) \((.+?)\) at .*", message)
    if check:
        return f"{check[1]} must be {check[2]} {check[3]}"
    sized = re.search(r"num_total_features\(\)\)\) == \(config->(\w+)\.size\(\)\)", message)
    if sized:
        return f"{sized[1]} must have one value per feature"
    return re.sub(r" at \S+, line \d+ \.?$", "", message)


@contextlib.contextmanager
def _native_output_silenced() -> Iterator[None]:
    """LightGBM writes its fatal errors on the process's stderr (fd 2), whatever its verbosity, and its log
    through Python's stdout: a refusal is raised as one line instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


DEFAULT_SEED = 42
MAX_SEED = 2**31 - 1  # LightGBM's seeds are 32-bit; NumPy's generators refuse negative ones
MAX_THREADS = 256  # as --threads


@dataclass(frozen=True)
class SeedAndThreads:
    """The seed and LightGBM thread count a run uses, and where each came from (``--seed``/``--threads``,
    ``--params``, or the default); ``num_threads`` None: every CPU."""

    seed: int
    num_threads: int | None
    origin: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "num_threads": self.num_threads, "from": dict(self.origin)}

    def describe(self) -> str:
        threads = "every CPU" if self.num_threads is None else f"{self.num_threads} thread(s)"
        return f"seed {self.seed} ({self.origin['seed']}), {threads} ({self.origin['num_threads']})"


def seed_and_threads(params: Mapping[str, Any] | None, *, seed: int | None = None,
                     num_threads: int | None = None) -> SeedAndThreads:
    """An option given wins (``seed``, ``num_threads``), then the parameters file's (under any of LightGBM's
    names: ``random_state``, ``n_jobs``, ...), then the default: seed 42 and every CPU. A tuned version's
    manifest params carry both, so retraining them gives the same model file; :func:`resolve_params` writes the
    chosen pair over whatever the file says, so the choice is made here (it silently took the defaults)."""
    given = normalize_params(params)
    origin = {"seed": "--seed" if seed is not None else "--params" if "seed" in given else "default",
              "num_threads": "--threads" if num_threads is not None else "--params" if "num_threads" in given
              else "default"}
    if seed is None:
        seed = _whole(given, "seed", 0, MAX_SEED) if "seed" in given else DEFAULT_SEED
    if num_threads is None and "num_threads" in given:
        num_threads = _whole(given, "num_threads", 1, MAX_THREADS)
    return SeedAndThreads(seed, num_threads, origin)


def _whole(params: Mapping[str, Any], name: str, least: int, most: int) -> int:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise InvalidInput(f"parameter {name} must be a whole number from {least} to {most} (got {value!r})",
                           details={"parameter": name})
    return value


def resolve_params(params: Mapping[str, Any] | None, *, seed: int, num_threads: int) -> dict[str, Any]:
    """Defaults, the caller's overrides, and the settings that make training reproducible."""
    merged = {**DEFAULT_PARAMS, **normalize_params(params)}
    for key in ("learning_rate", "num_leaves"):
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
    check_params(params, train)
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
    if method not in CALIBRATIONS:
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


# -- what trained a version: the code and the libraries (the manifest's lineage) --------------------------------
# A run in a checkout asks git. A Ray job's working dir is uploaded without ``.git``, so `sira jobs submit` resolves
# the version where the checkout is and passes it in the job's runtime env (CODE_VERSION_ENV), which code_version()
# prefers: a job's runs recorded "sira 0.1.0" alone, and a run from a checkout with uncommitted changes recorded
# the commit as if it were the code.

CODE_VERSION_ENV = "SIRA_CODE_VERSION"
PACKAGE = Path(__file__).resolve().parents[1]  # sira/


def code_version() -> str:
    """The code of this run: :data:`CODE_VERSION_ENV` when set (a submitted job's, resolved where it was
    submitted), else what :func:`resolve_code_version` finds for this installed package."""
    given = os.environ.get(CODE_VERSION_ENV, "").strip()
    return given or resolve_code_version(PACKAGE.parent)


def resolve_code_version(root: Path) -> str:
    """``sira 0.1.0 (<commit>)`` for a git checkout at ``root``, ``(<commit>, uncommitted changes <sha256 of the
    diff>)`` when tracked files differ from it; outside git, ``(package sha256 <digest of root/sira's .py files>)``:
    what was run, in every case, not only which release."""
    commit = _git(root, "rev-parse", "--short=12", "HEAD") if (root / ".git").exists() else ""  # its own checkout
    if commit:
        diff = _git(root, "diff", "HEAD", "--no-ext-diff", "--binary", strip=False)
        if diff:
            return f"sira {__version__} ({commit}, uncommitted changes {_sha(diff.encode())[:12]})"
        return f"sira {__version__} ({commit})"
    files = sorted((root / "sira").rglob("*.py"))
    if not files:
        return f"sira {__version__}"
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"sira {__version__} (package sha256 {digest.hexdigest()[:12]})"


def library_versions() -> dict[str, str]:
    """Python's and the numerical libraries' versions: the same model file needs the same LightGBM, and the
    calibration and metrics the same NumPy and scikit-learn."""
    versions = {"python": platform.python_version()}
    for name in ("lightgbm", "numpy", "scikit-learn", "scipy", "pyarrow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _git(root: Path, *args: str, strip: bool = True) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    if done.returncode != 0:
        return ""
    return done.stdout.strip() if strip else done.stdout


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
