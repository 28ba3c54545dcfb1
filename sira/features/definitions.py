"""Feature definitions as data.

A :class:`FeatureSet` names, per entity (customer, card, terminal, ...), the
time windows and aggregations to compute over the entity's events, plus
event-level features and delayed-label risk features. Its version is part of
every stored vector, and a model version records the one it was trained on.
Its ``engine`` says which maths computes it: ``history`` (feature set v1's exact
windows over raw events, :mod:`sira.features.history`) or ``tiles`` (feature
engine v2's bounded state and compiled fold, :mod:`sira.features.engine`); its
``window_semantics`` say how each reads a window.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Any

from sira.core.errors import InvalidInput

US = 1_000_000  # timestamps are integer microseconds since the epoch
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
AGGREGATIONS = ("count", "sum", "mean", "max")
DISTINCT_VALUES = 64  # values a "tiles" feature set remembers per categorical column (tiles.DISTINCT_CAP)
WINDOW_SEMANTICS = {  # per engine
    "history": "a window W at an event's time t covers the entity's events in (t - W, t], up to and including the"
               " event; delayed-label risk over (t - delay - W, t - delay], positives known before t",
    "tiles": "a window W at an event's time t covers the entity's events from floor((t - W) / hop) * hop up to and"
             " including the event (hop 5 min under 12 h, 1 h under 12 d, else 1 day); delayed-label risk over"
             " hourly buckets from t - delay - W to t - delay, positives known before t; distinct counts and"
             f" novelty from the last {DISTINCT_VALUES} values seen per column",
}
ENGINES = tuple(WINDOW_SEMANTICS)
EVENT_FEATURES = ("amount", "log_amount", "hour_of_day", "is_weekend", "is_night")
# Entity -> the event column that holds its key.
ENTITY_COLUMNS = {
    "customer": "customer_id",
    "account": "account_id",
    "card": "card_token",
    "merchant": "merchant_id",
    "terminal": "terminal_id",
    "device": "device_id",
}


@functools.lru_cache(maxsize=1024)
def parse_duration(text: str) -> int:
    """Seconds in a duration like ``15m``, ``1h``, ``7d``."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise InvalidInput(f"invalid duration {text!r}: use a positive number and s, m, h or d (e.g. 7d)")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class EntityFeatures:
    """What to compute for one entity type."""

    entity: str
    windows: tuple[str, ...] = ("1h", "1d", "7d", "30d")
    aggregations: tuple[str, ...] = AGGREGATIONS
    distinct: tuple[tuple[str, str], ...] = ()  # (column, window): distinct values in the window
    novelty: tuple[tuple[str, str], ...] = ()  # (column, window): 1 if the event's value is new
    amount_ratio: str | None = None  # window: amount / mean amount of the entity over it
    label_delay: str | None = None  # delayed-label risk: the gap before the risk windows
    risk_windows: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.entity not in ENTITY_COLUMNS:
            raise InvalidInput(f"unknown entity {self.entity!r}; known: {', '.join(ENTITY_COLUMNS)}")
        unknown = set(self.aggregations) - set(AGGREGATIONS)
        if unknown:
            raise InvalidInput(f"unknown aggregation(s) {', '.join(sorted(unknown))}")
        for w in (*self.windows, *(w for _, w in self.distinct), *(w for _, w in self.novelty), *self.risk_windows):
            parse_duration(w)
        if self.risk_windows and not self.label_delay:
            raise InvalidInput(f"{self.entity}: risk windows need a label_delay")

    @property
    def key_column(self) -> str:
        return ENTITY_COLUMNS[self.entity]

    @property
    def categorical_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for c, _ in (*self.distinct, *self.novelty)))

    @property
    def lookback_seconds(self) -> int:
        """How far back the history must reach to evaluate every feature."""
        spans = [parse_duration(w) for w in (*self.windows, *(w for _, w in self.distinct), *(w for _, w in self.novelty))]
        if self.amount_ratio:
            spans.append(parse_duration(self.amount_ratio))
        if self.label_delay:
            spans += [parse_duration(self.label_delay) + parse_duration(w) for w in self.risk_windows]
        return max(spans, default=0)

    def names(self) -> list[str]:
        """Feature names in their fixed order."""
        e = self.entity
        out = []
        for w in self.windows:
            for agg in self.aggregations:
                out.append(f"{e}_count_{w}" if agg == "count" else f"{e}_{agg}_amount_{w}")
        out += [f"{e}_distinct_{c.removesuffix('_id')}_{w}" for c, w in self.distinct]
        out += [f"{e}_new_{c.removesuffix('_id')}_{w}" for c, w in self.novelty]
        if self.amount_ratio:
            out.append(f"{e}_amount_ratio_{self.amount_ratio}")
        for w in self.risk_windows:
            out += [f"{e}_risk_{w}", f"{e}_risk_count_{w}"]
        return out

    def label_feature_names(self) -> list[str]:
        return [n for w in self.risk_windows for n in (f"{self.entity}_risk_{w}", f"{self.entity}_risk_count_{w}")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "entity": self.entity, "windows": list(self.windows), "aggregations": list(self.aggregations),
            "distinct": [list(x) for x in self.distinct], "novelty": [list(x) for x in self.novelty],
            "amount_ratio": self.amount_ratio, "label_delay": self.label_delay, "risk_windows": list(self.risk_windows),
        }


@dataclass(frozen=True)
class FeatureSet:
    """A versioned set of feature definitions."""

    name: str
    version: int
    entities: tuple[EntityFeatures, ...]
    event_features: tuple[str, ...] = EVENT_FEATURES
    label_name: str = "fraud"
    ttl: str = "1d"  # a snapshot older than this is reported stale
    night_hours: tuple[int, int] = (0, 6)  # [start, end) in UTC
    engine: str = "history"  # "history": v1's exact windows over raw events; "tiles": sira.features.tiles

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InvalidInput(f"unknown feature engine {self.engine!r}; known: {', '.join(ENGINES)}")
        unknown = set(self.event_features) - set(EVENT_FEATURES)
        if unknown:
            raise InvalidInput(f"unknown event feature(s) {', '.join(sorted(unknown))}")
        seen = [e.entity for e in self.entities]
        if len(seen) != len(set(seen)):
            raise InvalidInput("each entity may appear once in a feature set")
        parse_duration(self.ttl)

    def entity(self, name: str) -> EntityFeatures:
        for spec in self.entities:
            if spec.entity == name:
                return spec
        raise InvalidInput(f"feature set {self.name} v{self.version} has no entity {name!r}")

    def names(self) -> list[str]:
        """Every feature of the set, in model order: event features, then each entity's."""
        return list(self.event_features) + [n for e in self.entities for n in e.names()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "entities": [e.to_dict() for e in self.entities],
            "event_features": list(self.event_features), "label_name": self.label_name, "ttl": self.ttl,
            "night_hours": list(self.night_hours), "engine": self.engine, "window_semantics": self.window_semantics,
        }

    @property
    def window_semantics(self) -> str:
        """How its windows read events, in a sentence (the model card quotes it)."""
        return WINDOW_SEMANTICS[self.engine]


# The default feature set for card payments.
PAYMENTS_V1 = FeatureSet(
    name="payments",
    version=1,
    entities=(
        EntityFeatures(
            "customer",
            windows=("1h", "1d", "7d", "30d"),
            distinct=(("terminal_id", "1d"), ("country", "30d")),
            novelty=(("country", "30d"), ("device_id", "30d"), ("terminal_id", "30d")),
            amount_ratio="30d",
        ),
        EntityFeatures(
            "card",
            windows=("1h", "1d", "7d"),
            distinct=(("terminal_id", "1h"), ("terminal_id", "1d")),
        ),
        EntityFeatures(
            "terminal",
            windows=("1d", "7d", "30d"),
            aggregations=("count", "mean"),
            label_delay="7d",
            risk_windows=("1d", "7d", "30d"),
        ),
    ),
)

# The same features from feature engine v2 (bounded state, one compiled fold: sira.features.tiles), with its
# hopped windows: a new version, since values differ from v1's exact windows.
PAYMENTS_V2 = dataclasses.replace(PAYMENTS_V1, version=2, engine="tiles")

FEATURE_SETS = {(fs.name, fs.version): fs for fs in (PAYMENTS_V1, PAYMENTS_V2)}
# The version ingest, the stream, training and new models use when none is named. v1 stays computable (kept up
# to date while a production or staging version was trained on it: see sira.ingest.bulk.feature_sets_in_service)
# until its last such version is retired; then it is read-only.
CURRENT_VERSIONS = {"payments": 2}
# A label's name (fraud, chargeback, churn_90d): labels carry it, models train on one, training sets join it
LABEL_NAME = r"^[a-z][a-z0-9_]{0,62}$"


def get_feature_set(name: str = "payments", version: int | None = None) -> FeatureSet:
    """A registered feature set (its current version when none is given)."""
    versions = sorted(v for n, v in FEATURE_SETS if n == name)
    if not versions:  # one code for a name and a version there is not (an unknown name was invalid_input)
        known = sorted({n for n, _ in FEATURE_SETS})
        raise InvalidInput(f"unknown feature set {name!r} (feature sets: {', '.join(known)})",
                           code="unknown_feature_set", details={"feature_set": name, "feature_sets": known})
    version = CURRENT_VERSIONS.get(name, versions[-1]) if version is None else version
    if (name, version) not in FEATURE_SETS:
        raise InvalidInput(f"feature set {name} has no version {version} (versions: {', '.join(map(str, versions))})",
                           code="unknown_feature_set", details={"feature_set": name, "versions": versions})
    return FEATURE_SETS[(name, version)]


def parse_feature_set(text: str) -> FeatureSet:
    """A registered feature set from ``NAME@VERSION`` (or ``NAME``: its current version)."""
    name, _, version = text.strip().partition("@")
    if not name or (version and not version.isdigit()):
        raise InvalidInput(f"invalid feature set {text!r}: use NAME@VERSION, e.g. payments@2")
    return get_feature_set(name, int(version) if version else None)
