"""Scoring one model version: features in, calibrated score, decision and reason codes out.

A :class:`ModelRuntime` is a registered version loaded for serving: its
artifact read and verified (the manifest's sha256 against the registry, every
file against the manifest), the LightGBM booster, the feature schema, the
calibration and the decision thresholds. It holds no I/O after loading, so the
online service, batch scoring and the tests use the same object.

Feature-store models get their inputs from :func:`event_vectors`: the event's
own features plus, per entity, the entity's snapshot history with the event
folded in, evaluated by the same :func:`sira.features.history.grouped_features` the
offline pipeline uses. Bring-your-own-table models take ready features.

Reason codes are LightGBM's exact TreeSHAP contributions (``pred_contrib``):
the features that pushed this score up the most, at most four, each with its
value, direction and a sentence.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from sira.core import artifacts
from sira.core.config import Settings
from sira.core.errors import InvalidInput
from sira.features.definitions import US, FeatureSet, get_feature_set
from sira.features.history import History, entity_features, event_entity_features, event_features, grouped_features
from sira.features.store import to_us
from sira.training.trainer import FeatureSpec, apply_calibration

MAX_REASONS = 4


def lightgbm_core() -> Any:
    """The ``lightgbm`` module, imported without its scikit-learn wrapper if nothing imported it yet.

    Where scikit-learn is installed (shap needs it), ``import lightgbm`` imports it, and with it
    scipy.stats, only to define the ``LGBMModel`` estimator classes, which scoring never uses: 1.6 s
    of a 1.75 s import measured here, paid by every process that starts to score (a batch actor, a
    Serve replica). LightGBM treats scikit-learn as optional, so it is hidden during the import;
    ``lightgbm.Booster`` is the same either way, and scikit-learn itself stays importable after.
    A LightGBM that cannot import without it is imported the ordinary way.
    """
    if "lightgbm" in sys.modules or "sklearn" in sys.modules:
        import lightgbm

        return lightgbm
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # makes `import sklearn` raise ImportError
    try:
        import lightgbm
    except ImportError:
        for name in [m for m in sys.modules if m == "lightgbm" or m.startswith("lightgbm.")]:
            del sys.modules[name]
        del sys.modules["sklearn"]
        import lightgbm
    finally:
        if sys.modules.get("sklearn", False) is None:
            del sys.modules["sklearn"]
    return lightgbm


class SingleRowPredictor:
    """Raw scores of one row through LightGBM's single-row C API (``...SingleRowFast``).

    ``Booster.predict`` spends ~70 us of Python around a 1-row call (parameter strings, input checks,
    ctypes conversions) on top of walking the trees, and one row is what an online request scores.
    Here the prediction's configuration is parsed once, at load, and each call hands LightGBM the row's
    buffer. The same C++ predictor walks the same trees: the scores are ``Booster.predict``'s, bit for bit
    (tested). LightGBM serialises calls on one booster itself.
    """

    def __init__(self, booster: Any, num_features: int):
        import ctypes
        import weakref

        from lightgbm.basic import _LIB, _c_str, _safe_call

        self._ctypes, self._lib, self._check = ctypes, _LIB, _safe_call
        self.booster = booster  # its handle must outlive the configuration
        self.num_features = num_features
        self._config = ctypes.c_void_p()
        _safe_call(_LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle, ctypes.c_int(1),  # C_API_PREDICT_RAW_SCORE
            ctypes.c_int(0), ctypes.c_int(booster.best_iteration),  # the iterations Booster.predict uses
            ctypes.c_int(1),  # C_API_DTYPE_FLOAT64
            ctypes.c_int32(num_features), _c_str("num_threads=1"), ctypes.byref(self._config)))
        self._double_p = ctypes.POINTER(ctypes.c_double)
        weakref.finalize(self, _LIB.LGBM_FastConfigFree, self._config)

    def raw_score(self, row: np.ndarray) -> float:
        row = np.ascontiguousarray(row, dtype=np.float64)
        if row.shape != (self.num_features,):
            raise ValueError(f"a row of {self.num_features} features, not {row.shape}")
        out, out_len = np.empty(1, dtype=np.float64), self._ctypes.c_int64()  # per call: safe from any thread
        self._check(self._lib.LGBM_BoosterPredictForMatSingleRowFast(
            self._config, row.ctypes.data_as(self._ctypes.c_void_p), self._ctypes.byref(out_len),
            out.ctypes.data_as(self._double_p)))
        return float(out[0])


def category_text(column: Any) -> Any:
    """A categorical column as the text its vocabulary holds: training wrote each value with Python's ``str()``
    (``True``, ``1.0``), so a column of other values is named the same way here, once per distinct value;
    Arrow's own cast would write ``true`` and ``1``, which match nothing (every row then scored as missing)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) \
            or pa.types.is_dictionary(column.type):
        return pc.cast(column, pa.string())
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = pc.dictionary_encode(column)
    names = pa.array([None if v is None else str(v) for v in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(names, encoded.indices)


@dataclass(frozen=True)
class ModelRuntime:
    """One model version, loaded and verified, ready to score."""

    model_name: str
    model_id: int
    version: int
    artifact_sha256: str
    booster: Any  # lightgbm.Booster
    schema: tuple[FeatureSpec, ...]
    calibration: dict[str, Any]
    thresholds: dict[str, float]
    feature_set: FeatureSet | None  # None: a bring-your-own-table model (ready features)
    threshold_set: int | None = None  # the sira_threshold_sets row ``thresholds`` come from (None: the manifest's)
    # per feature, the training data's statistics (the manifest's reference): where a reason's value lies
    reference: Mapping[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.schema]

    @classmethod
    def load(cls, settings: Settings, version_row: Mapping[str, Any]) -> "ModelRuntime":
        """Load a registered version (a row with model_name, model_id, version, artifact uri and sha256)."""
        lgb = lightgbm_core()

        loaded = artifacts.load_artifact(
            settings, artifacts.ArtifactRef(version_row["artifact_uri"], version_row["artifact_sha256"])
        )
        manifest = loaded.manifest
        schema = tuple(FeatureSpec.from_dict(f) for f in manifest["feature_schema"])
        fs = None
        fingerprint = (manifest.get("dataset") or {})
        if fingerprint.get("source") == "feature_store":
            fs = get_feature_set(fingerprint["feature_set"], fingerprint["feature_set_version"])
        booster = lgb.Booster(model_str=loaded.model_text)
        runtime = cls(
            model_name=version_row["model_name"], model_id=int(version_row["model_id"]),
            version=int(version_row["version"]), artifact_sha256=version_row["artifact_sha256"], booster=booster,
            schema=schema, calibration=manifest["calibration"],
            thresholds={k: float(v) for k, v in (version_row.get("thresholds") or manifest["thresholds"]).items()},
            feature_set=fs, threshold_set=version_row.get("threshold_set"),
            reference=(manifest.get("reference") or {}).get("features") or {},
        )
        runtime.predict(np.zeros((1, len(schema))))  # warm up before the first request sees it
        return runtime

    # -- inputs ---------------------------------------------------------------------

    def check_features(self, features: Mapping[str, Any]) -> list[str]:
        """Validate ready features (bring-your-own models); returns the schema's features that are missing."""
        known = {s.name: s for s in self.schema}
        for name, value in features.items():
            spec = known.get(name)
            if spec is None:
                raise InvalidInput(f"features.{name}: not a feature of {self.model_name} v{self.version}",
                                   code="unknown_feature", details={"field": f"features.{name}"})
            if value is None:
                continue
            if spec.kind == "categorical":
                if not isinstance(value, (str, int)) or isinstance(value, bool):
                    raise InvalidInput(f"features.{name}: must be a string category",
                                       code="invalid_feature", details={"field": f"features.{name}"})
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidInput(f"features.{name}: must be a number", code="invalid_feature",
                                   details={"field": f"features.{name}"})
            elif not math.isfinite(value):
                raise InvalidInput(f"features.{name}: must be finite (NaN and infinity are not accepted)",
                                   code="invalid_feature", details={"field": f"features.{name}"})
        return [s.name for s in self.schema if features.get(s.name) is None]

    def matrix(self, vectors: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Vectors (name -> value, None or absent: missing) as the model's float matrix, in schema order."""
        X = np.full((len(vectors), len(self.schema)), np.nan, dtype=np.float64)
        for j, spec in enumerate(self.schema):
            if spec.kind == "categorical":
                codes = self.category_codes[spec.name]
                for i, v in enumerate(vectors):
                    value = v.get(spec.name)
                    X[i, j] = codes.get(str(value), np.nan) if value is not None else np.nan
            else:
                for i, v in enumerate(vectors):
                    value = v.get(spec.name)
                    if value is not None:
                        X[i, j] = value
        return X

    def table_matrix(self, table: Any) -> np.ndarray:
        """A pyarrow table's feature columns as the model's float matrix (batch scoring; no Python loop per row)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from sira.core.files import is_numeric_type

        missing = [s.name for s in self.schema if s.name not in table.column_names]
        if missing:
            raise InvalidInput(f"columns missing for {self.model_name} v{self.version}: {', '.join(missing)}",
                               code="missing_columns", details={"columns": missing})
        X = np.empty((table.num_rows, len(self.schema)), dtype=np.float64)
        for j, spec in enumerate(self.schema):
            column = table.column(spec.name)
            if spec.kind == "categorical":
                codes = pc.index_in(category_text(column), value_set=pa.array(spec.categories, pa.string()))
                X[:, j] = pc.cast(codes, pa.float64()).to_numpy(zero_copy_only=False)
            else:
                if not is_numeric_type(column.type):
                    raise InvalidInput(f"column {spec.name} must be numeric, not {column.type}",
                                       code="invalid_column", details={"column": spec.name})
                X[:, j] = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        X[np.isinf(X)] = np.nan  # missing, as training reads an infinite value (datasets.infinite_as_missing)
        return X

    # -- outputs --------------------------------------------------------------------

    @cached_property
    def single_row(self) -> SingleRowPredictor:
        return SingleRowPredictor(self.booster, len(self.schema))

    @cached_property
    def middle_halves(self) -> dict[str, tuple[float, float] | None]:
        """Per feature, the middle half of its training data (:func:`middle_half`): what a reason's words
        compare its value with."""
        return {s.name: middle_half(self.reference.get(s.name)) for s in self.schema}

    @cached_property
    def category_codes(self) -> dict[str, dict[str, float]]:
        """Per categorical feature: category -> its code (the index in the vocabulary)."""
        return {s.name: {c: float(i) for i, c in enumerate(s.categories)} for s in self.schema
                if s.kind == "categorical"}

    def predict(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """Calibrated probabilities (``threads``: the CPUs the caller holds; one for a request)."""
        if X.shape[0] == 1 and threads == 1:  # an online request
            raw = np.array([self.single_row.raw_score(X[0])])
        else:
            raw = self.booster.predict(X, raw_score=True, num_threads=threads)
        return apply_calibration(self.calibration, raw)

    def decide(self, scores: np.ndarray) -> list[str]:
        block, review = self.thresholds["block"], self.thresholds["review"]
        return ["block" if s >= block else "review" if s >= review else "approve" for s in scores.tolist()]

    def contributions(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """Exact TreeSHAP contributions per feature (last column: the expected value), in raw-score units."""
        return np.asarray(self.booster.predict(X, pred_contrib=True, num_threads=threads))

    def reasons(self, x: np.ndarray, contrib: np.ndarray, limit: int = MAX_REASONS) -> list[dict[str, Any]]:
        """The features that raised this score the most (positive contributions, largest first)."""
        values = contrib[: len(self.schema)]
        order = np.argsort(-values, kind="stable")
        out = []
        for j in order[:limit].tolist():
            if values[j] <= 0:
                break
            spec = self.schema[j]
            value = display_value(spec, x[j])
            out.append({
                "code": reason_code(spec.name), "feature": spec.name, "value": value,
                "contribution": round(float(values[j]), 6), "direction": "increases_risk",
                "text": describe(spec.name, value, value_side(self.middle_halves.get(spec.name), value)),
            })
        return out


def display_value(spec: FeatureSpec, x: float) -> Any:
    if math.isnan(x):
        return None
    if spec.kind == "categorical":
        i = int(x)
        return spec.categories[i] if 0 <= i < len(spec.categories) else None
    return round(float(x), 6)


def reason_code(feature: str) -> str:
    """A stable code per feature: ``R_`` and the feature name in capitals."""
    return "R_" + re.sub(r"[^A-Za-z0-9]+", "_", feature).upper()


_WINDOW = re.compile(r"_(\d+[smhd])$")
_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}
_ENTITY_WORDS = {"customer": "the customer", "card": "the card", "terminal": "the terminal",
                 "merchant": "the merchant", "account": "the account", "device": "the device"}


def _window_words(window: str) -> str:
    n, unit = int(window[:-1]), _UNITS[window[-1]]
    return f"the last {unit}" if n == 1 else f"the last {n} {unit}s"


def shown_number(value: float) -> str:
    """A number as a person reads it in a reason: 7, 4.42, 1,234.50, 0.0123 (never 4.41545 or 1234.5678)."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3g}"


def reference_bins(reference: Mapping[str, Any] | None) -> tuple[list[float], list[int]] | None:
    """A numeric feature's reference histogram (bin edges, counts) from the version's manifest; None: none
    usable (no statistics, a categorical feature, an infinite edge stored as null by versions trained before
    it was read as missing)."""
    if not reference or reference.get("type") == "categorical":
        return None
    edges, counts = reference.get("bin_edges") or [], reference.get("histogram") or []
    if len(edges) < 2 or len(counts) != len(edges) - 1 or not sum(counts) or None in edges:
        return None
    return edges, counts


def yes_no_share(reference: Mapping[str, Any], edges: list[float]) -> float | None:
    """The share of ones of a yes/no feature (values in [0, 1] whose variance is mean * (1 - mean): all 0 or 1);
    None for any other."""
    mean, std = reference.get("mean"), reference.get("std")
    if (edges[0] >= 0 and edges[-1] <= 1 and isinstance(mean, (int, float)) and isinstance(std, (int, float))
            and abs(std * std - mean * (1 - mean)) <= 1e-9):
        return float(mean)
    return None


def middle_half(reference: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """The range holding the middle half of a numeric feature's training data, from its reference statistics
    (the version's manifest): from the lower edge of the reference's bin that holds the 25th percentile to the
    upper edge of the one that holds the 75th (that upper edge is the training maximum when the 75th
    percentile lies in the last bin). None: no usable statistics (:func:`reference_bins`) or a yes/no feature."""
    bins = reference_bins(reference)
    if bins is None or yes_no_share(reference or {}, bins[0]) is not None:
        return None
    edges, counts = bins
    # the bins holding the 25th and 75th percentiles, from their counts: bins are not of equal share (a value
    # many rows share is a bin of its own: sira.core.stats.reference_bin_edges), so their positions say nothing
    share = np.cumsum(counts) / sum(counts)
    lo = edges[int(np.searchsorted(share, 0.25))]
    return float(lo), float(edges[int(np.searchsorted(share, 0.75)) + 1])


def value_side(middle: tuple[float, float] | None, value: Any) -> str | None:
    """Where a value lies against its feature's training data: ``"high"`` above the middle half
    (``middle``, from :func:`middle_half`), ``"low"`` below it, None within it or when unknown (no
    statistics, a missing or categorical value)."""
    if middle is None or not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return None
    return "high" if value > middle[1] else "low" if value < middle[0] else None


def describe(feature: str, value: Any, side: str | None = None) -> str:
    """A plain sentence for a factor (feature names follow :mod:`sira.features.definitions`' patterns). Its
    words follow ``side``, where the value lies against the training data (:func:`value_side`): "Many
    payments by the card ..." for a high count, "Few ..." for a low one, and neutral words ("Payments by the
    card ... (3)") within the usual range or when that is unknown. Never the direction of the factor's
    contribution: a small amount can raise the risk, and is still described as small."""
    shown = "missing" if value is None else shown_number(value) if isinstance(value, float) else str(value)
    high, low = side == "high", side == "low"
    window = _WINDOW.search(feature)
    words = _window_words(window.group(1)) if window else ""
    entity, _, rest = feature.partition("_")
    who = _ENTITY_WORDS.get(entity)
    if who and window:
        base = rest[: window.start() - len(entity) - 1]
        level = "High " if high else "Low " if low else ""
        amounts = {"sum_amount": "total amount", "mean_amount": "average amount", "max_amount": "largest amount"}
        if base in amounts:
            text = f"{level}{amounts[base]} for {who} in {words} ({shown})"
            return text[0].upper() + text[1:]
        if base == "count":
            return f"{'Many p' if high else 'Few p' if low else 'P'}ayments by {who} in {words} ({shown})"
        if base == "amount_ratio":  # the amount over the entity's average: above it when over 1
            above = high and isinstance(value, (int, float)) and value > 1
            below = low and isinstance(value, (int, float)) and value < 1
            how = "well above" if above else "well below" if below else "against"
            return f"Amount {how} {who}'s average over {words} (ratio {shown})"
        if base == "risk":
            return f"{level}{'f' if level else 'F'}raud rate at {who} in {words} ({shown})"
        if base == "risk_count":
            return f"Payments at {who} with known outcomes in {words} ({shown})"
        if base.startswith("distinct_"):
            thing = base.removeprefix("distinct_")
            plural = thing[:-1] + "ies" if thing.endswith("y") else thing + "s"
            many = "Many different" if high else "Few different" if low else "Different"
            return f"{many} {plural} used by {who} in {words} ({shown})"
        if base.startswith("new_"):
            thing = base.removeprefix("new_")
            if value is None:  # the payment named none: neither new nor seen before
                return f"No {thing} given: whether it was new for {who} is unknown (missing)"
            return f"A {thing} new for {who} in {words}" if value == 1 else f"{thing} seen before by {who} ({shown})"
    size = "High payment amount" if high else "Low payment amount" if low else "Payment amount"
    fixed = {"amount": f"{size} ({shown})", "log_amount": f"{size} (log {shown})",
             "hour_of_day": f"Time of day (hour {shown} UTC)", "is_weekend": f"Weekend payment ({shown})",
             "is_night": f"Night-time payment ({shown})"}
    if value in (0, 1):
        fixed.update(is_weekend="A weekend payment" if value == 1 else "A weekday payment",
                     is_night="A night-time payment" if value == 1 else "A daytime payment")
    return fixed.get(feature, f"{feature.replace('_', ' ')} ({shown})")


def empty_history(fs: FeatureSet, entity: str) -> History:
    return History.from_rows([], fs.entity(entity).categorical_columns)


def append_event(history: History, columns: tuple[str, ...], event: Mapping[str, Any]) -> tuple[History, int]:
    """The history with one event folded in (idempotent by event_id), and the event's position.

    Events arriving in time order (the common case) are appended without
    rebuilding the history; others are inserted in (time, event id) order.
    """
    ts = to_us(event["occurred_at"])
    eid = event["event_id"]
    n = len(history)
    known = history.label_known_at if history.label_known_at is not None else np.full(n, np.inf)
    amount = np.nan if event.get("amount") is None else float(event["amount"])
    if n and bool(np.any(history.event_id == eid)):
        keep = history.event_id != eid  # scoring the same event again: it replaces itself
        history = history.take(keep)
        known = known[keep]
        n = len(history)
    at_end = n == 0 or ts > int(history.ts[-1]) or (ts == int(history.ts[-1]) and eid > str(history.event_id[-1]))
    pos = n if at_end else int(np.searchsorted(history.ts, ts, side="left"))
    if not at_end:  # among equal timestamps, order by event id
        while pos < n and int(history.ts[pos]) == ts and str(history.event_id[pos]) < eid:
            pos += 1
    # concatenating slices costs a fraction of np.insert (which goes through its generic axis machinery)
    def put(values: np.ndarray, value: Any, dtype: Any) -> np.ndarray:
        one = np.array([value], dtype=dtype)
        return np.concatenate([values, one]) if at_end else np.concatenate([values[:pos], one, values[pos:]])

    folded = History(
        ts=put(history.ts, ts, np.int64),
        amount=put(history.amount, amount, np.float64),
        event_id=put(history.event_id, eid, object),
        categories={c: put(history.categories[c], event.get(c), object) for c in columns},
        label_known_at=put(known, np.inf, np.float64),
    )
    return folded, pos


@dataclass
class EventInputs:
    """The model inputs of a batch of events, and each entity's history with its events folded in."""

    vectors: list[dict[str, float | None]]
    folded: dict[tuple[str, str], History]


def event_vectors(
    fs: FeatureSet, events: Sequence[Mapping[str, Any]], histories: Mapping[tuple[str, str], History]
) -> EventInputs:
    """Feature vectors of normalized events from their entities' histories (snapshot state).

    ``histories`` maps (entity type, entity id) to what the store knows before
    these events; an entity absent from it starts empty. Events of one entity
    in one batch see each other in time order, as in the offline pipeline.
    """
    n = len(events)
    vectors: list[dict[str, float | None]] = [{} for _ in range(n)]
    if not n:
        return EventInputs(vectors, {})
    ts = np.array([to_us(e["occurred_at"]) for e in events], dtype=np.int64)
    amount = np.array([np.nan if e.get("amount") is None else float(e["amount"]) for e in events])
    for name, values in event_features(fs, ts, amount).items():
        for i, v in enumerate(values.tolist()):
            vectors[i][name] = None if v != v else v
    folded: dict[tuple[str, str], History] = {}
    for spec in fs.entities:
        columns = spec.categorical_columns
        order: list[tuple[str, str]] = []
        members: dict[tuple[str, str], list[int]] = {}
        for i, e in enumerate(events):
            key_value = e.get(spec.key_column)
            if key_value is None:
                continue
            key = (spec.entity, key_value)
            if key not in members:
                members[key] = []
                order.append(key)
            members[key].append(i)
        if not order:
            for v in vectors:
                v.update({name: None for name in spec.names()})
            continue
        hist_list, groups, positions, at, rows = [], [], [], [], []
        for g, key in enumerate(order):
            history = histories.get(key) or History.from_rows([], columns)
            # fold the entity's events in time order; each sees only what precedes it
            idx = sorted(members[key], key=lambda i: (ts[i], str(events[i]["event_id"])))
            for i in idx:
                history, _ = append_event(history, columns, events[i])
            for i in idx:
                pos = int(np.flatnonzero(history.event_id == events[i]["event_id"])[0])
                groups.append(g)
                positions.append(pos)
                at.append(int(history.ts[pos]))
                rows.append(i)
            hist_list.append(history)
            folded[key] = history
        if len(rows) == 1:  # one event of one entity (a request of its own): the scalar path
            one = event_entity_features(spec, hist_list[0], positions[0])
            vectors[rows[0]].update({name: None if v != v else v for name, v in one.items()})
        else:
            at_a, pos_a = np.array(at, dtype=np.int64), np.array(positions, dtype=np.int64)
            if len(hist_list) == 1:  # one entity: no stacking needed
                values = entity_features(spec, hist_list[0], at_a, pos_a)
            else:
                values = grouped_features(spec, hist_list, np.array(groups, dtype=np.int64), at_a, pos_a)
            columns_out = {name: arr.tolist() for name, arr in values.items()}
            for j, i in enumerate(rows):
                for name, col in columns_out.items():
                    v = col[j]
                    vectors[i][name] = None if v != v else v
        missing = [i for i in range(n) if events[i].get(spec.key_column) is None]
        for i in missing:
            vectors[i].update({name: None for name in spec.names()})
    return EventInputs(vectors, folded)


def age_seconds(history: History, now_us: int) -> float | None:
    """Seconds since the entity's newest known event (None: no events)."""
    return (now_us - int(history.ts[-1])) / US if len(history) else None
