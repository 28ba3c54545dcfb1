"""Feature set v1's maths ("history" engine): exact windows over an entity's raw events.

It evaluates an entity's :class:`History` (its events sorted by time, as arrays) at query points. Offline,
the history is everything the store holds for the entity and the query points are many events or
timestamps (vectorised with numpy); online, the history is the snapshot's state plus the new event and the
query point is that event. Same function, same vector, by construction (a parity test checks it anyway).
Feature sets with ``engine="tiles"`` use :mod:`sira.features.engine` instead.

Semantics, following the card-fraud literature:
- an event counts in its own windows: a window of length W evaluated for an
  event at time t covers (t - W, t] up to and including that event;
- a timestamp query (no event) covers (t - W, t], events at t included;
- novelty ("new country for the customer") is 1 when the event's value was
  not seen in the entity's previous events of the window;
- a delayed-label risk feature, e.g. a terminal's fraud rate with delay D over
  W, counts the entity's events in (t - D - W, t - D] and, among them, those
  with a positive label whose ``known_at`` is before t.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sira.core.errors import InvalidInput
from sira.features.definitions import US, EntityFeatures, FeatureSet, parse_duration


@dataclass
class History:
    """One entity's events sorted by (time, event id), as parallel arrays."""

    ts: np.ndarray  # int64 microseconds
    amount: np.ndarray  # float64 (NaN when missing)
    event_id: np.ndarray  # object
    categories: dict[str, np.ndarray] = field(default_factory=dict)  # column -> object array
    label_known_at: np.ndarray | None = None  # float64 µs of a positive label's known_at, inf if none

    def __len__(self) -> int:
        return int(self.ts.size)

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], columns: tuple[str, ...] = ()) -> "History":
        """Build from event dicts with ``ts`` (µs), ``amount``, ``event_id``, category columns, ``label_known_at``."""
        return cls.from_columns(
            [r["ts"] for r in rows], [r.get("amount") for r in rows], [r["event_id"] for r in rows],
            {c: [r.get(c) for r in rows] for c in columns}, [r.get("label_known_at") for r in rows],
        )

    @classmethod
    def from_columns(
        cls, ts: Sequence[int], amount: Sequence[float | None], event_id: Sequence[str],
        categories: dict[str, Sequence[Any]], label_known_at: Sequence[int | None],
    ) -> "History":
        """Build from parallel columns (None: a missing amount / no positive label), sorted by (time, event id)."""
        ts_a = np.array(ts, dtype=np.int64)
        ids = np.array(event_id, dtype=object)
        order: slice | np.ndarray
        if ts_a.size < 2 or bool(np.all(ts_a[1:] > ts_a[:-1])):
            order = slice(None)  # already in order (a stored snapshot is): no sort, no copies
        else:
            order = np.lexsort((ids.astype(str), ts_a))
        return cls(
            ts=ts_a[order],
            amount=np.array([np.nan if a is None else a for a in amount], dtype=np.float64)[order],
            event_id=ids[order],
            categories={c: np.array(v, dtype=object)[order] for c, v in categories.items()},
            label_known_at=np.array([np.inf if k is None else k for k in label_known_at], dtype=np.float64)[order],
        )

    def take(self, keep: np.ndarray) -> "History":
        """The events selected by a boolean mask or an index array (order kept)."""
        known = self.label_known_at if self.label_known_at is not None else np.full(len(self), np.inf)
        return History(self.ts[keep], self.amount[keep], self.event_id[keep],
                       {c: v[keep] for c, v in self.categories.items()}, known[keep])


def event_features(fs: FeatureSet, ts: np.ndarray, amount: np.ndarray) -> dict[str, np.ndarray]:
    """Features of the event itself (no history needed)."""
    seconds = ts // US
    hour = (seconds % 86_400) // 3600
    weekday = ((seconds // 86_400) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    start, end = fs.night_hours
    out = {
        "amount": amount.astype(np.float64),
        "log_amount": np.log1p(np.where(amount >= 0, amount, np.nan)),
        "hour_of_day": hour.astype(np.float64),
        "is_weekend": (weekday >= 5).astype(np.float64),
        "is_night": ((hour >= start) & (hour < end)).astype(np.float64),
    }
    return {k: out[k] for k in fs.event_features}


def entity_features(
    spec: EntityFeatures,
    history: History,
    at: np.ndarray,
    positions: np.ndarray | None = None,
    include_labels: bool = True,
    label_at: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Evaluate an entity's features at query points.

    ``at``: query times (µs). ``positions``: for queries that are events of the
    history, their index in it (the window then ends at that event, and
    event-level features such as novelty and amount ratio are defined);
    ``None`` or -1 for plain timestamp queries. ``label_at``: the real query
    times when ``at`` and the history are shifted (see :func:`grouped_features`).

    Every window's edges come from one ``searchsorted`` and every window's sums
    from one ``reduceat`` (the windows side by side): a single query — an online
    request — costs a few dozen NumPy calls, not a few per window.
    """
    label_at = at if label_at is None else label_at
    n_q = at.size
    plan = _plan(spec)
    if n_q == 0:
        return {name: np.zeros(0) for name in plan.names}
    ts, amount = history.ts, history.amount
    if positions is None:
        positions = np.full(n_q, -1, dtype=np.int64)
    is_event = positions >= 0
    right = np.where(is_event, positions + 1, np.searchsorted(ts, at, side="right"))
    # Only the events within the lookback of the earliest query matter: work on that slice (views),
    # so a query's cost follows its windows, not the entity's whole history.
    start = int(np.searchsorted(ts, int(at.min()) - plan.lookback_us, side="right"))
    stop = int(right.max())
    if start > 0 or stop < ts.size:
        history = History(ts[start:stop], amount[start:stop], history.event_id[start:stop],
                          {c: v[start:stop] for c, v in history.categories.items()},
                          None if history.label_known_at is None else history.label_known_at[start:stop])
        ts, amount = history.ts, history.amount
        right = right - start
        positions = np.where(is_event, positions - start, -1)
    # left edge of every span at every query: row k is plan.spans[k]
    lefts = np.searchsorted(ts, (at[None, :] - plan.spans_us[:, None]).ravel(), side="right").reshape(-1, n_q)
    lefts = np.minimum(lefts, right[None, :])
    # Sums over each window's own elements (not cumulative differences), so a
    # window gives bit-identical results whatever history precedes it.
    missing = np.isnan(amount)
    rows = plan.summed  # the spans whose amounts are summed (windows + amount-ratio window)
    w_left = lefts[rows].ravel()
    w_right = np.tile(right, len(rows))
    total = _window_reduce(np.add, np.concatenate([np.where(missing, 0.0, amount), [0.0]]),
                           w_left, w_right, 0.0).reshape(len(rows), n_q)
    n_amount = _window_reduce(np.add, np.concatenate([(~missing).astype(np.float64), [0.0]]),
                              w_left, w_right, 0.0).reshape(len(rows), n_q)
    mean = np.divide(total, n_amount, out=np.full(total.shape, np.nan), where=n_amount > 0)
    maxima = None
    if "max" in spec.aggregations:
        peaks = np.concatenate([np.where(missing, -np.inf, amount), [0.0]])
        maxima = _window_reduce(np.maximum, peaks, w_left, w_right, np.nan).reshape(len(rows), n_q)
        maxima = np.where(np.isinf(maxima), np.nan, maxima)
    out: dict[str, np.ndarray] = {}
    e = spec.entity
    for j, w in enumerate(spec.windows):
        for agg in spec.aggregations:
            if agg == "count":
                out[f"{e}_count_{w}"] = (right - lefts[plan.row[w]]).astype(np.float64)
            elif agg == "sum":
                out[f"{e}_sum_amount_{w}"] = total[j]
            elif agg == "mean":
                out[f"{e}_mean_amount_{w}"] = mean[j]
            elif agg == "max":
                assert maxima is not None  # computed above whenever "max" is among the aggregations
                out[f"{e}_max_amount_{w}"] = maxima[j]
    right_l = right.tolist()
    for column, w in spec.distinct:
        cats = history.categories[column]
        out[f"{e}_distinct_{column.removesuffix('_id')}_{w}"] = np.array(
            [len({v for v in cats[lo:hi] if v is not None}) for lo, hi in zip(lefts[plan.row[w]].tolist(), right_l)],
            dtype=np.float64,
        )
    for column, w in spec.novelty:
        left = lefts[plan.row[w]]
        cats = history.categories[column]
        new = np.full(n_q, np.nan)
        for q in np.flatnonzero(is_event).tolist():
            value = cats[positions[q]]
            if value is not None:
                new[q] = 0.0 if value in set(cats[left[q]: positions[q]].tolist()) else 1.0
        out[f"{e}_new_{column.removesuffix('_id')}_{w}"] = new
    if spec.amount_ratio:
        ratio_mean = mean[plan.summed.index(plan.row[spec.amount_ratio])]
        own = np.where(is_event, amount[np.maximum(positions, 0)] if len(amount) else np.nan, np.nan)
        out[f"{e}_amount_ratio_{spec.amount_ratio}"] = np.divide(
            own, ratio_mean, out=np.full(n_q, np.nan), where=is_event & (ratio_mean > 0)
        )
    if spec.risk_windows:
        delay = plan.delay_us
        known = history.label_known_at if history.label_known_at is not None else np.full(len(history), np.inf)
        hi = np.searchsorted(ts, at - delay, side="right")
        for w, span in zip(spec.risk_windows, plan.risk_us):
            lo = np.searchsorted(ts, at - delay - span, side="right")
            hi_w = np.maximum(hi, lo)
            n = (hi_w - lo).astype(np.float64)
            frauds = np.array(
                [np.count_nonzero(known[a:b] < t) for a, b, t in zip(lo.tolist(), hi_w.tolist(), label_at.tolist())]
                if include_labels else np.zeros(n_q),
                dtype=np.float64,
            )
            out[f"{e}_risk_{w}"] = np.divide(frauds, n, out=np.zeros(n_q), where=n > 0)
            out[f"{e}_risk_count_{w}"] = n
    return {name: out[name] for name in plan.names}


def event_entity_features(spec: EntityFeatures, history: History, position: int,
                          include_labels: bool = True) -> dict[str, float]:
    """:func:`entity_features` for one query that is the event at ``position``: the online request's shape.

    The same windows and arithmetic on Python scalars and slices instead of arrays of queries
    (an online request pays for its windows, not for the vectorised machinery's fixed costs).
    Bit-identical to :func:`entity_features` (a property test holds them together); NaN marks a
    missing value, as there.
    """
    plan = _plan(spec)
    ts, amount = history.ts, history.amount
    at = int(ts[position])
    right = position + 1
    lefts = np.minimum(np.searchsorted(ts, at - plan.spans_us, side="right"), right).tolist()
    lo = min(lefts) if lefts else right
    window = amount[lo:right]
    present = ~np.isnan(window)
    values = np.where(present, window, 0.0)
    nan = math.nan
    out: dict[str, float] = {}
    e = spec.entity
    means: dict[int, float] = {}
    totals: dict[int, float] = {}
    for k in plan.summed:
        a = lefts[k] - lo
        n = int(np.count_nonzero(present[a:]))
        # reduceat, as the vectorised path sums each window (its order of additions, so its bits)
        totals[k] = float(np.add.reduceat(values, [a])[0]) if right - lefts[k] else 0.0
        means[k] = totals[k] / n if n > 0 else nan
    for w in spec.windows:
        k = plan.row[w]
        a = lefts[k] - lo
        for agg in spec.aggregations:
            if agg == "count":
                out[f"{e}_count_{w}"] = float(right - lefts[k])
            elif agg == "sum":
                out[f"{e}_sum_amount_{w}"] = totals[k]
            elif agg == "mean":
                out[f"{e}_mean_amount_{w}"] = means[k]
            elif agg == "max":
                peaks = window[a:][present[a:]]
                out[f"{e}_max_amount_{w}"] = float(peaks.max()) if peaks.size else nan
    for column, w in spec.distinct:
        cats = history.categories[column]
        out[f"{e}_distinct_{column.removesuffix('_id')}_{w}"] = float(
            len({v for v in cats[lefts[plan.row[w]]:right] if v is not None}))
    for column, w in spec.novelty:
        cats = history.categories[column]
        value = cats[position]
        out[f"{e}_new_{column.removesuffix('_id')}_{w}"] = nan if value is None else (
            0.0 if value in set(cats[lefts[plan.row[w]]:position].tolist()) else 1.0)
    if spec.amount_ratio:
        mean = means[plan.row[spec.amount_ratio]]
        own = float(amount[position])
        out[f"{e}_amount_ratio_{spec.amount_ratio}"] = own / mean if mean > 0 else nan
    if spec.risk_windows:
        delay = plan.delay_us
        known = history.label_known_at if history.label_known_at is not None else np.full(len(history), np.inf)
        hi = int(np.searchsorted(ts, at - delay, side="right"))
        for w, span in zip(spec.risk_windows, plan.risk_us):
            lo_w = int(np.searchsorted(ts, at - delay - span, side="right"))
            hi_w = max(hi, lo_w)
            n = hi_w - lo_w
            frauds = int(np.count_nonzero(known[lo_w:hi_w] < at)) if include_labels else 0
            out[f"{e}_risk_{w}"] = frauds / n if n > 0 else 0.0
            out[f"{e}_risk_count_{w}"] = float(n)
    return {name: out[name] for name in plan.names}


@dataclass(frozen=True)
class _Plan:
    """What :func:`entity_features` and :func:`event_entity_features` derive from a spec once: the distinct
    window spans, the risk windows and the feature order."""

    spans_us: np.ndarray  # each distinct span in µs, one row of left edges each
    row: dict[str, int]  # window -> its row
    summed: list[int]  # rows whose amounts are summed: the windows', then the amount-ratio window's if separate
    names: list[str]
    lookback_us: int
    delay_us: int  # the label delay before the risk windows (0: none)
    risk_us: tuple[int, ...]  # each risk window in µs


@functools.lru_cache(maxsize=64)
def _plan(spec: EntityFeatures) -> _Plan:
    spans = list(dict.fromkeys([*spec.windows, *(w for _, w in spec.distinct), *(w for _, w in spec.novelty),
                                *([spec.amount_ratio] if spec.amount_ratio else [])]))
    row = {w: k for k, w in enumerate(spans)}
    summed = [row[w] for w in spec.windows]
    if spec.amount_ratio and row[spec.amount_ratio] not in summed:
        summed.append(row[spec.amount_ratio])
    return _Plan(np.array([parse_duration(w) * US for w in spans], dtype=np.int64), row, summed, spec.names(),
                 spec.lookback_seconds * US, parse_duration(spec.label_delay) * US if spec.label_delay else 0,
                 tuple(parse_duration(w) * US for w in spec.risk_windows))


def grouped_features(
    spec: EntityFeatures,
    histories: Sequence[History],
    groups: np.ndarray,
    at: np.ndarray,
    positions: np.ndarray,
    include_labels: bool = True,
) -> dict[str, np.ndarray]:
    """:func:`entity_features` for many entities in one vectorised call.

    Query ``q`` is evaluated on ``histories[groups[q]]`` at ``at[q]`` (position
    ``positions[q]`` in that history, or -1). The histories are laid end to end
    on one time axis, each shifted by a span longer than the data plus the
    lookback, so no window ever reaches into a neighbour; results are the
    same as one call per entity.
    """
    names = spec.names()
    if at.size == 0:
        return {n: np.zeros(0) for n in names}
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    non_empty = [h.ts for h in histories if len(h)]
    lo = min([int(at.min())] + [int(t[0]) for t in non_empty])
    hi = max([int(at.max())] + [int(t[-1]) for t in non_empty])
    span = hi - lo + spec.lookback_seconds * US + 1
    if span * (len(histories) + 1) >= 2**62:  # too long a time axis: split the entities in two
        half = len(histories) // 2
        if half == 0:
            raise InvalidInput("time range too long to evaluate features")
        first = groups < half
        out = {n: np.empty(at.size) for n in names}
        for mask, offset, part in ((first, 0, histories[:half]), (~first, half, histories[half:])):
            res = grouped_features(spec, part, groups[mask] - offset, at[mask], positions[mask], include_labels)
            for n in names:
                out[n][mask] = res[n]
        return out
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    shift = np.arange(len(histories), dtype=np.int64) * span - lo
    stacked = History(
        ts=np.concatenate([h.ts + shift[g] for g, h in enumerate(histories)] or [np.zeros(0, np.int64)]),
        amount=np.concatenate([h.amount for h in histories] or [np.zeros(0)]),
        event_id=np.concatenate([h.event_id for h in histories] or [np.zeros(0, object)]),
        categories={c: np.concatenate([h.categories[c] for h in histories]) for c in spec.categorical_columns},
        label_known_at=np.concatenate([
            h.label_known_at if h.label_known_at is not None else np.full(len(h), np.inf) for h in histories
        ] or [np.zeros(0)]),
    )
    return entity_features(
        spec, stacked, at + shift[groups], np.where(positions >= 0, positions + offsets[groups], -1),
        include_labels=include_labels, label_at=at,
    )


def _window_reduce(
    ufunc: np.ufunc, padded: np.ndarray, left: np.ndarray, right: np.ndarray, empty: float
) -> np.ndarray:
    """``ufunc.reduce(values[left:right])`` per query, ``empty`` for empty windows (vectorised).

    ``padded``: the float64 values followed by one sentinel element, so that
    ``right == len(values)`` is a valid reduceat index.
    """
    result = np.full(left.size, empty, dtype=np.float64)
    nonempty = np.flatnonzero(right > left)
    if nonempty.size == 0:
        return result
    # reduceat over interleaved [left, right) pairs; the sentinel makes `right == len` a valid index.
    # Queries go in order of their left edge, so the in-between segments reduceat also
    # computes add up to at most the array's length (O(n + q), not O(n * q)).
    order = nonempty[np.argsort(left[nonempty], kind="stable")] if nonempty.size > 1 else nonempty
    idx = np.empty(2 * order.size, dtype=np.int64)
    idx[0::2] = left[order]
    idx[1::2] = right[order]
    result[order] = ufunc.reduceat(padded, idx)[0::2]
    return result


def vector_to_json(values: dict[str, float]) -> dict[str, float | None]:
    """A feature vector as JSON (NaN → null)."""
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)) for k, v in values.items()}


def vectors_to_json(values: dict[str, np.ndarray]) -> list[dict[str, float | None]]:
    """Column arrays of many vectors as one JSON-ready dict per row (NaN → null)."""
    names = list(values)
    columns = [[None if x != x else x for x in values[n].tolist()] for n in names]  # x != x: NaN
    return [dict(zip(names, row)) for row in zip(*columns)]
