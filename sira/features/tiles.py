"""Feature engine v2 (#21): bounded per-entity state of time buckets, and one compiled fold.

The state of an entity and the kernels that fold events and labels into it and read its features. The only
feature maths of feature sets with ``engine="tiles"`` (:mod:`sira.features.engine` drives them online and
offline); its semantics are pinned by property tests against independent implementations
(``tests/unit/test_tiles.py``, ``tests/unit/test_engine.py``).

Semantics (``../shared/FEATURE-ENGINE.md``; they differ from feature set v1's exact windows, so they belong
to a new feature-set version):
- amounts are int64 fixed point in 1e-4 units (``numeric(20,4)`` exactly): counts, sums and maxima are
  exact integers whatever the order of additions; a mean is one float division. A sum (or an amount) past
  int64 stops at :data:`SUM_CAP` instead of wrapping: amounts are never negative, so a saturated sum is
  ``min(exact sum, SUM_CAP)`` whatever the order and grouping of its additions (validation bounds an amount
  at ``sira.ingest.events.MAX_AMOUNT``, ~900 of which fit under the cap);
- a window W evaluated for an event at time t covers the events with
  ``ts >= floor((t - W) / hop) * hop`` up to and including the event itself: an exact head and a hopping
  tail, hop 5 minutes for windows under 12 hours, 1 hour under 12 days, 1 day above (Chronon's sizes);
- the state holds, per hop, a ring of buckets (id, count, sum, amounts present, max) just long enough for
  the longest window at that hop: its size does not depend on the entity's event rate;
- distinct counts and novelty ("a country new for the customer in 30 days") read a small last-seen map per
  column (a stable 64-bit hash of the value -> when it was last seen), at most :data:`DISTINCT_CAP` values,
  the least recently seen evicted first: a count saturates at the cap, and a value evicted and seen again
  within the window counts as new (Fennel's advice: distinct counts are for small cardinalities);
- a delayed-label risk window W with delay D at t covers the hourly buckets from ``floor((t - D - W) / 1h)``
  to ``floor((t - D) / 1h)`` (both edges at an hour: snapping them to days cost 3.7% AP when measured):
  ``risk_count`` its events, ``risk`` the share of them with a positive label known before t. Labels known
  after the newest event wait, grouped by (hour, known_at) with a count (a daily chargeback batch shares one
  known_at), until an event after that known_at settles them into their buckets: at most :data:`PENDING_CAP`
  groups wait (one beyond is :data:`FULL`, counted by the callers); a replay counts a label known before its
  next event at once (that event would settle it: the same counts), so only a state's tail ever waits;
- events are folded in time order (ties in the order of their event id's :func:`value_hash`); an event older than the state's newest is
  refused (:data:`LATE`): the engine rebuilds that entity from the log instead, so a late event gives the
  vector the offline path gives. Labels are applied in the order they became known, each before the first
  event after its ``known_at``.

In memory a state is a dense int64 array (row 0 the header: format, newest event's time and order); stored,
it is its still-readable rows only, packed (:mod:`sira.features.packing`): a quiet entity's bytes are small,
a busy one's bounded by its windows.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from sira.features.definitions import DISTINCT_VALUES, EntityFeatures, parse_duration
from sira.features.hashing import MISSING, SCALE, SUM_CAP, fixed, value_hash  # noqa: F401 (tiles.fixed)

US = 1_000_000
DAY_US = 86_400 * US
HOPS_US = (300 * US, 3_600 * US, DAY_US)
FORMAT = 4  # a state's bytes' first number (1: the prototype's dense rows; 2: no daily risk ring; 3: pending uncounted)
# the columns of a bucket
BID, COUNT, SUM, PRESENT, MAX = range(5)
OK, LATE, FULL = 0, 1, 2
DISTINCT_CAP = DISTINCT_VALUES  # values remembered per categorical column
RISK_HOP_US = 3_600 * US  # both edges of a delayed-label window, at an hour (FEATURE-ENGINE.md: never days)
RISK_DAY_US = 24 * RISK_HOP_US  # the same buckets summed per day, for the full days inside a window
PENDING_CAP = 256  # groups (hour, known_at, count) of labels known after the newest event, awaiting the next
# what each feature of an entity is, in its spec's name order: (op, a, b)
OP_COUNT, OP_SUM, OP_MEAN, OP_MAX, OP_DISTINCT, OP_NEW, OP_RATIO, OP_RISK, OP_RISK_COUNT = range(9)


def hop_us(window_us: int) -> int:
    """The hop of a window's tail: 5 minutes under 12 hours, 1 hour under 12 days, else 1 day."""
    if window_us < 12 * 3_600 * US:
        return HOPS_US[0]
    return HOPS_US[1] if window_us < 12 * 86_400 * US else HOPS_US[2]


@dataclass(frozen=True, eq=False)
class Layout:  # cached_property needs a __dict__: not slots
    """Where each part of an entity's state lives, and the program that reads its features.

    The kernels take the arrays: ``rings`` (per ring: hop, first row, rows), ``windows`` (per window: µs,
    ring; the amount-ratio window last when it is not one of the spec's), ``maps`` (per categorical column:
    first row, longest window µs), ``ops`` (per feature: op, a, b), ``risk`` (first row, rows, first
    pending row, pending rows, delay µs), ``risk_windows`` (µs)."""

    spec: EntityFeatures
    rings: np.ndarray
    windows: np.ndarray
    maps: np.ndarray
    ops: np.ndarray
    risk: np.ndarray
    risk_windows: np.ndarray
    columns: tuple[str, ...]
    rows: int  # including the header

    @classmethod
    def of(cls, spec: EntityFeatures) -> "Layout":
        spans = list(spec.windows)
        if spec.amount_ratio and spec.amount_ratio not in spans:
            spans.append(spec.amount_ratio)
        windows = [parse_duration(w) * US for w in spans]
        hops = sorted({hop_us(w) for w in windows})
        sizes = [max(w // h for w in windows if hop_us(w) == h) + 2 for h in hops]
        hourly = [w for w in windows if hop_us(w) == HOPS_US[1]]
        if hourly and max(hourly) > 2 * DAY_US:  # its full days read from a day ring (168 hours: ~50 reads)
            if HOPS_US[2] not in hops:
                hops.append(HOPS_US[2])
                sizes.append(0)
            sizes[hops.index(HOPS_US[2])] = max(sizes[hops.index(HOPS_US[2])], max(hourly) // DAY_US + 2)
        offsets = 1 + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        first = 1 + int(sum(sizes))
        columns = spec.categorical_columns
        maps = [(first + k * DISTINCT_CAP,
                 max(parse_duration(w) * US for c, w in (*spec.distinct, *spec.novelty) if c == column))
                for k, column in enumerate(columns)]
        first += DISTINCT_CAP * len(columns)
        delay = parse_duration(spec.label_delay) * US if spec.label_delay else 0
        risk_windows = [parse_duration(w) * US for w in spec.risk_windows]
        risk_size = (delay + max(risk_windows)) // RISK_HOP_US + 2 if risk_windows else 0
        day_size = (delay + max(risk_windows)) // RISK_DAY_US + 2 if risk_windows else 0
        pending = PENDING_CAP if risk_size else 0
        ops = []
        for j, _w in enumerate(spec.windows):
            ops += [({"count": OP_COUNT, "sum": OP_SUM, "mean": OP_MEAN, "max": OP_MAX}[agg], j, 0)
                    for agg in spec.aggregations]
        ops += [(OP_DISTINCT, columns.index(c), parse_duration(w) * US) for c, w in spec.distinct]
        ops += [(OP_NEW, columns.index(c), parse_duration(w) * US) for c, w in spec.novelty]
        if spec.amount_ratio:
            ops.append((OP_RATIO, spans.index(spec.amount_ratio), 0))
        for k in range(len(risk_windows)):
            ops += [(OP_RISK, k, 0), (OP_RISK_COUNT, k, 0)]
        assert len(ops) == len(spec.names())
        return cls(spec, np.array(list(zip(hops, offsets, sizes)), dtype=np.int64).reshape(-1, 3),
                   np.array([(w, hops.index(hop_us(w))) for w in windows], dtype=np.int64).reshape(-1, 2),
                   np.array(maps, dtype=np.int64).reshape(-1, 2), np.array(ops, dtype=np.int64).reshape(-1, 3),
                   np.array([first, risk_size, first + risk_size + day_size, pending, delay, first + risk_size,
                             day_size], dtype=np.int64),
                   np.array(risk_windows, dtype=np.int64), columns, first + risk_size + day_size + pending)

    @property
    def risk_rows(self) -> slice:
        """The hourly risk ring: bucket id, events, settled positives."""
        return slice(int(self.risk[0]), int(self.risk[0] + self.risk[1]))

    @property
    def risk_day_rows(self) -> slice:
        """The same per day (a window's full days are read here: a 30-day window reads ~80 rows, not 720)."""
        return slice(int(self.risk[5]), int(self.risk[5] + self.risk[6]))

    @property
    def pending_rows(self) -> slice:
        """Positive labels not settled yet: their event's bucket (-1: a free row), known_at."""
        return slice(int(self.risk[2]), int(self.risk[2] + self.risk[3]))

    def map_rows(self, column: int) -> slice:
        """A column's last-seen map: column 0 the value's hash, column 1 when it was last seen."""
        return slice(int(self.maps[column, 0]), int(self.maps[column, 0]) + DISTINCT_CAP)

    @property
    def horizon_us(self) -> int:
        """How far before an event the state must have seen events for its vector to be exact: the longest
        window plus its hop, or the label delay and longest risk window plus an hour."""
        spans = [int(w) + hop_us(int(w)) for w in self.windows[:, 0]]
        spans += [int(w) + hop_us(int(w)) for w in self.maps[:, 1]]
        spans += [int(self.risk[4] + w) + RISK_HOP_US for w in self.risk_windows]
        return max(spans, default=0)

    def empty(self) -> np.ndarray:
        """A state with no events (a copy of one made once)."""
        return self._empty.copy()

    @functools.cached_property
    def _empty(self) -> np.ndarray:
        state = np.zeros((self.rows, 5), dtype=np.int64)
        state[0, 0], state[0, 1], state[0, 2] = FORMAT, MISSING, MISSING  # format, newest time, its order
        state[1:, BID] = -1
        state[1:, MAX] = MISSING
        maps_end = self.risk_rows.start
        state[int(self.maps[0, 0]) if len(self.maps) else maps_end:maps_end, 1] = MISSING  # no value seen
        state[maps_end:, 0] = -1  # no risk bucket, no pending label
        state[maps_end:, 1:] = 0
        return state




# -- the kernels ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _hop(window):  # pragma: no cover - compiled
    if window < 12 * 3_600 * US:
        return 300 * US
    return 3_600 * US if window < 12 * 86_400 * US else 86_400 * US


@njit(cache=True)
def _start(t, window):  # pragma: no cover - compiled
    hop = _hop(window)
    return ((t - window) // hop) * hop


@njit(cache=True)
def _add(total, amount):  # pragma: no cover - compiled
    """``total + amount``, at most :data:`SUM_CAP` (never wrapped past it)."""
    if amount > 0 and total > SUM_CAP - amount:
        return SUM_CAP
    return total + amount


@njit(cache=True)
def _fold_rings(state, rings, ts, amount):  # pragma: no cover - compiled
    for level in range(rings.shape[0]):
        hop, first, size = rings[level, 0], rings[level, 1], rings[level, 2]
        bucket = ts // hop
        row = first + bucket % size
        if state[row, BID] != bucket:
            state[row, BID] = bucket
            state[row, COUNT] = 0
            state[row, SUM] = 0
            state[row, PRESENT] = 0
            state[row, MAX] = MISSING
        state[row, COUNT] += 1
        if amount != MISSING:
            state[row, SUM] = _add(state[row, SUM], amount)
            state[row, PRESENT] += 1
            if amount > state[row, MAX]:
                state[row, MAX] = amount


@njit(cache=True)
def _buckets(state, first, size, lo, hi, agg, w):  # pragma: no cover - compiled
    """Add the buckets ``lo..hi`` of a ring (those its slots still hold) to window ``w``'s aggregates."""
    for bucket in range(max(lo, hi - size + 1), hi + 1):
        row = first + bucket % size
        if state[row, BID] == bucket:
            agg[w, 0] += state[row, COUNT]
            agg[w, 1] = _add(agg[w, 1], state[row, SUM])
            agg[w, 2] += state[row, PRESENT]
            if state[row, MAX] > agg[w, 3]:
                agg[w, 3] = state[row, MAX]


@njit(cache=True)
def _aggregate(state, rings, windows, t, agg):  # pragma: no cover - compiled
    """Per window: count, sum, amounts present, max over the buckets from its hopped start to ``t``; an
    hourly window's full days read from the day ring when there is one."""
    day_level = -1
    for level in range(rings.shape[0]):
        if rings[level, 0] == DAY_US:
            day_level = level
    for w in range(windows.shape[0]):
        level = windows[w, 1]
        hop, first, size = rings[level, 0], rings[level, 1], rings[level, 2]
        lo = (t - windows[w, 0]) // hop
        hi = t // hop
        agg[w, 0] = 0
        agg[w, 1] = 0
        agg[w, 2] = 0
        agg[w, 3] = MISSING
        first_day = (lo + 23) // 24
        last_day = (hi + 1) // 24 - 1
        if hop != HOPS_US[1] or day_level < 0 or first_day > last_day:
            _buckets(state, first, size, lo, hi, agg, w)
        else:
            _buckets(state, first, size, lo, first_day * 24 - 1, agg, w)
            _buckets(state, rings[day_level, 1], rings[day_level, 2], first_day, last_day, agg, w)
            _buckets(state, first, size, (last_day + 1) * 24, hi, agg, w)


# A last-seen map: its values in rows first .. first + n (hash, last seen), n in column 2 of its first row;
# what it holds does not depend on where (a stored map comes back packed to the front: packing.decode).


@njit(cache=True)
def _seen_since(state, first, value, start):  # pragma: no cover - compiled
    for row in range(first, first + state[first, 2]):
        if state[row, 0] == value:
            return state[row, 1] >= start
    return False


@njit(cache=True)
def _distinct_since(state, first, start):  # pragma: no cover - compiled
    n = 0
    for row in range(first, first + state[first, 2]):
        if state[row, 1] >= start:
            n += 1
    return n


@njit(cache=True)
def _remember(state, first, value, ts):  # pragma: no cover - compiled
    """Seen at ``ts``: its time updated, or added, or, with the map full, in place of the least recently seen
    value (the smaller hash among equals)."""
    used = state[first, 2]
    oldest = -1
    for row in range(first, first + used):
        if state[row, 0] == value:
            state[row, 1] = ts
            return
        if oldest < 0 or state[row, 1] < state[oldest, 1] or (
                state[row, 1] == state[oldest, 1] and state[row, 0] < state[oldest, 0]):
            oldest = row
    if used < DISTINCT_CAP:
        oldest = first + used
        state[first, 2] = used + 1
    state[oldest, 0] = value
    state[oldest, 1] = ts


@njit(cache=True)
def _pack_maps(state, maps):  # pragma: no cover - compiled
    """Each map's values moved to its front in row order, and counted (after its rows were read back)."""
    for c in range(maps.shape[0]):
        first = maps[c, 0]
        used = 0
        for row in range(first, first + DISTINCT_CAP):
            if state[row, 1] != MISSING:
                if row != first + used:
                    state[first + used, 0] = state[row, 0]
                    state[first + used, 1] = state[row, 1]
                    state[row, 1] = MISSING
                used += 1
        state[first, 2] = used


@njit(cache=True)
def _risk_count(state, risk, bucket, events, positives):  # pragma: no cover - compiled
    """Add to an hourly bucket and its day: an event starts either afresh when its slot held an older one; a
    positive only adds to a bucket and a day their slots still hold."""
    first, size, day_first, day_size = risk[0], risk[1], risk[5], risk[6]
    row = first + bucket % size
    if events > 0 and state[row, 0] != bucket:
        state[row, 0] = bucket
        state[row, 1] = 0
        state[row, 2] = 0
    if state[row, 0] != bucket:
        return  # a positive for a bucket this state no longer holds
    state[row, 1] += events
    state[row, 2] += positives
    day = bucket // 24
    row = day_first + day % day_size
    if events > 0 and state[row, 0] != day:
        state[row, 0] = day
        state[row, 1] = 0
        state[row, 2] = 0
    if state[row, 0] == day:  # (a positive of a day whose slot now holds a newer one: no window reads either)
        state[row, 1] += events
        state[row, 2] += positives


@njit(cache=True)
def _risk_fold(state, risk, ts):  # pragma: no cover - compiled
    _risk_count(state, risk, ts // RISK_HOP_US, 1, 0)
    kept = risk[2]
    for i in range(risk[2], risk[2] + risk[3]):  # what became known before this event: settled; the rest kept
        if state[i, 0] < 0:  # pending groups are kept at the front: the first free row ends them
            break
        if state[i, 1] < ts:
            _risk_count(state, risk, state[i, 0], 0, state[i, 2])
        else:
            state[kept, 0], state[kept, 1], state[kept, 2] = state[i, 0], state[i, 1], state[i, 2]
            kept += 1
    for i in range(kept, risk[2] + risk[3]):
        if state[i, 0] < 0:
            break
        state[i, 0], state[i, 1], state[i, 2] = -1, 0, 0


@njit(cache=True)
def _label(state, risk, event_ts, known_at, delta, soon):  # pragma: no cover - compiled
    """``delta`` (+1 a positive label, -1 one taken back) for the event at ``event_ts`` from ``known_at`` on:
    counted now if known before the newest event or ``soon`` (the next event a replay folds, which would settle
    it: the same counts), else kept pending, grouped by (bucket, known_at); :data:`FULL`: no room, not kept."""
    size, pending, n_pending = risk[1], risk[2], risk[3]
    if size == 0:
        return OK
    newest = state[0, 1]
    bucket = event_ts // RISK_HOP_US
    if newest == MISSING or bucket <= newest // RISK_HOP_US - size:
        return OK  # before anything this state holds: in no future window
    if known_at < newest or known_at < soon:  # every later window counts it
        _risk_count(state, risk, bucket, 0, delta)
        return OK
    for i in range(pending, pending + n_pending):
        if state[i, 0] == bucket and state[i, 1] == known_at:
            state[i, 2] += delta  # (a group back at 0 stays until settled: it adds nothing)
            return OK
        if state[i, 0] < 0:
            state[i, 0], state[i, 1], state[i, 2] = bucket, known_at, delta
            return OK
    return FULL


@njit(cache=True)
def _hours(state, first, size, lo, hi, out, w):  # pragma: no cover - compiled
    for b in range(lo, hi + 1):
        row = first + b % size
        if state[row, 0] == b:
            out[w, 0] += state[row, 1]
            out[w, 1] += state[row, 2]


@njit(cache=True)
def _risk_read(state, risk, risk_windows, t, out):  # pragma: no cover - compiled
    """Per risk window: events and positives in its hourly buckets, the full days among them read from
    the day ring."""
    first, size, pending, n_pending, delay, day_first, day_size = (risk[0], risk[1], risk[2], risk[3], risk[4],
                                                                  risk[5], risk[6])
    hi = (t - delay) // RISK_HOP_US
    out[:] = 0
    for w in range(risk_windows.size):
        lo = max((t - delay - risk_windows[w]) // RISK_HOP_US, hi - size + 1)
        first_day = (lo + 23) // 24
        last_day = (hi + 1) // 24 - 1
        if first_day > last_day:
            _hours(state, first, size, lo, hi, out, w)
        else:
            _hours(state, first, size, lo, first_day * 24 - 1, out, w)
            for d in range(first_day, last_day + 1):
                row = day_first + d % day_size
                if state[row, 0] == d:
                    out[w, 0] += state[row, 1]
                    out[w, 1] += state[row, 2]
            _hours(state, first, size, (last_day + 1) * 24, hi, out, w)
    for i in range(pending, pending + n_pending):
        b = state[i, 0]
        if b < 0:
            break
        if b <= hi and state[i, 1] < t:
            for w in range(risk_windows.size):
                if b >= (t - delay - risk_windows[w]) // RISK_HOP_US:
                    out[w, 1] += state[i, 2]


@njit(cache=True)
def _read(state, rings, windows, maps, ops, risk, risk_windows, t, amount, is_event, out):  # pragma: no cover
    """The entity's features at ``t`` into ``out`` (NaN: undefined). For an event (``is_event``), novelty
    is already in ``out`` and the amount ratio reads ``amount``; for a plain time both are NaN."""
    agg = np.empty((windows.shape[0], 4), dtype=np.int64)
    _aggregate(state, rings, windows, t, agg)
    counts = np.zeros((risk_windows.size, 2), dtype=np.int64)
    if risk[1] > 0:
        _risk_read(state, risk, risk_windows, t, counts)
    for k in range(ops.shape[0]):
        op, a, b = ops[k, 0], ops[k, 1], ops[k, 2]
        if op == OP_COUNT:
            out[k] = agg[a, 0]
        elif op == OP_SUM:
            out[k] = agg[a, 1] / SCALE
        elif op == OP_MEAN:
            out[k] = agg[a, 1] / (agg[a, 2] * SCALE) if agg[a, 2] > 0 else np.nan
        elif op == OP_MAX:
            out[k] = agg[a, 3] / SCALE if agg[a, 3] != MISSING else np.nan
        elif op == OP_DISTINCT:
            out[k] = _distinct_since(state, maps[a, 0], _start(t, b))
        elif op == OP_NEW:
            if not is_event:
                out[k] = np.nan
        elif op == OP_RATIO:
            mean = agg[a, 1] / (agg[a, 2] * SCALE) if agg[a, 2] > 0 else np.nan
            out[k] = (amount / SCALE) / mean if is_event and amount != MISSING and mean > 0 else np.nan
        elif op == OP_RISK:
            out[k] = counts[a, 1] / counts[a, 0] if counts[a, 0] > 0 else 0.0
        elif op == OP_RISK_COUNT:
            out[k] = counts[a, 0]


@njit(cache=True)
def _step(state, rings, windows, maps, ops, risk, risk_windows, ts, order, amount, values, out):  # pragma: no cover
    """Fold one event and write its features into ``out``: the online request and the offline replay both
    call this (and only this) per event. ``order`` breaks ties in time (the event id's hash). :data:`LATE`:
    not after the state's newest event in (time, order), nothing done."""
    newest = state[0, 1]
    if newest != MISSING and (ts < newest or (ts == newest and order <= state[0, 2])):
        return LATE  # an equal (time, order) is the newest event itself again: never folded twice
    for k in range(ops.shape[0]):  # novelty: judged on the events before this one
        if ops[k, 0] == OP_NEW:
            value = values[ops[k, 1]]
            if value == MISSING:
                out[k] = np.nan
            else:
                out[k] = 0.0 if _seen_since(state, maps[ops[k, 1], 0], value, _start(ts, ops[k, 2])) else 1.0
    state[0, 1] = ts
    state[0, 2] = order
    _fold_rings(state, rings, ts, amount)
    if risk[1] > 0:
        _risk_fold(state, risk, ts)
    for c in range(maps.shape[0]):
        if values[c] != MISSING:
            _remember(state, maps[c, 0], values[c], ts)
    _read(state, rings, windows, maps, ops, risk, risk_windows, ts, amount, True, out)
    return OK


EVENT_CODES = {"amount": 0, "log_amount": 1, "hour_of_day": 2, "is_weekend": 3, "is_night": 4}


@njit(cache=True)
def _event_row(ts, amount, codes, night_start, night_end, out):  # pragma: no cover - compiled
    """The event's own features (``codes``: :data:`EVENT_CODES` in the feature set's order) into ``out``."""
    seconds = ts // US
    hour = (seconds % 86_400) // 3_600
    for k in range(codes.size):
        code = codes[k]
        if code == 0:
            out[k] = amount / SCALE if amount != MISSING else np.nan
        elif code == 1:
            out[k] = np.log1p(amount / SCALE) if amount != MISSING and amount >= 0 else np.nan
        elif code == 2:
            out[k] = hour
        elif code == 3:
            out[k] = 1.0 if ((seconds // 86_400) + 3) % 7 >= 5 else 0.0  # 1970-01-01 was a Thursday
        else:
            out[k] = 1.0 if night_start <= hour < night_end else 0.0


@njit(cache=True)
def _event_rows(ts, amounts, codes, night_start, night_end, out):  # pragma: no cover - compiled
    for i in range(ts.size):
        _event_row(ts[i], amounts[i], codes, night_start, night_end, out[i])


@njit(cache=True, nogil=True)  # entity types replay in parallel threads (Engine.build)
def _replay(states, starts, start_of, segments, ts, orders, amounts, values, label_segments, label_ts, label_known,
            label_delta, rings, windows, maps, ops, risk, risk_windows, out):  # pragma: no cover - compiled
    """The offline fold: for each entity (segment s: its events ``segments[s]:segments[s + 1]`` sorted by
    time and order, its labels ``label_segments[s]:...`` sorted by known_at), start from
    ``starts[start_of[s]]``, fold its events with :func:`_step`, each label applied before the first event
    after its known_at, the rest at the end; every event's features into its row of ``out``. The state ends
    in ``states[s]``, or, with one state given, that one is reused for every entity (a training build keeps
    no state: one buffer stays in cache). ``label_delta``: +1 a positive, -1 one taken back. Returns the
    events refused as late (none when the input is sorted) and the labels left out (:data:`FULL`)."""
    late = 0
    full = 0
    for s in range(segments.size - 1):
        state = states[s if states.shape[0] > 1 else 0]
        state[:] = starts[start_of[s]]
        j = label_segments[s]
        for i in range(segments[s], segments[s + 1]):
            while j < label_segments[s + 1] and label_known[j] < ts[i]:
                full += _label(state, risk, label_ts[j], label_known[j], label_delta[j], ts[i]) // FULL
                j += 1
            late += _step(state, rings, windows, maps, ops, risk, risk_windows, ts[i], orders[i], amounts[i],
                          values[i], out[i])
        while j < label_segments[s + 1]:
            full += _label(state, risk, label_ts[j], label_known[j], label_delta[j], 0) // FULL
            j += 1
    return late, full


# -- one entity, from Python ------------------------------------------------------------------------------------

NO_VALUES = np.zeros(0, dtype=np.int64)


def hashes(layout: Layout, event: Mapping[str, Any]) -> np.ndarray:
    """An event's categorical values as the kernels take them: :func:`value_hash` in ``layout.columns`` order."""
    return np.array([value_hash(event.get(c)) for c in layout.columns], dtype=np.int64) if layout.columns \
        else NO_VALUES


def step(layout: Layout, state: np.ndarray, ts_us: int, amount: int, values: np.ndarray = NO_VALUES,
         out: np.ndarray | None = None, order: int | None = None) -> tuple[int, np.ndarray]:
    """Fold one event (time in µs, amount from :func:`fixed`, categorical hashes from :func:`hashes`; events
    at the same time in ``order``: :func:`value_hash` of the event id; None: after the newest) into ``state`` and return :data:`OK`
    and its features in the spec's name order (NaN: undefined), or :data:`LATE` (nothing folded; the
    features are undefined)."""
    out = np.full(len(layout.ops), np.nan) if out is None else out
    if order is None:  # after the newest event, whatever it was (tests and benchmarks folding in order)
        order = int(state[0, 2]) + 1 if state[0, 1] == ts_us else 0
    status = _step(state, layout.rings, layout.windows, layout.maps, layout.ops, layout.risk, layout.risk_windows,
                   ts_us, order, amount, values, out)
    return int(status), out


def read(layout: Layout, state: np.ndarray, t_us: int) -> np.ndarray:
    """The entity's features at ``t_us`` with no event (novelty and amount ratio undefined: NaN)."""
    out = np.full(len(layout.ops), np.nan)
    _read(state, layout.rings, layout.windows, layout.maps, layout.ops, layout.risk, layout.risk_windows, t_us,
          MISSING, False, out)
    return out


def label(layout: Layout, state: np.ndarray, event_ts_us: int, known_at_us: int, delta: int = 1) -> int:
    """A positive label (``delta`` 1; -1: one taken back) for an event already folded (its time, and when the
    label became known): :data:`OK`, or :data:`FULL` when :data:`PENDING_CAP` groups of labels (same hour,
    same known_at) wait for an event already (the label is not kept)."""
    return int(_label(state, layout.risk, event_ts_us, max(known_at_us, event_ts_us), delta, 0))


def named(layout: Layout, vector: np.ndarray) -> dict[str, float | None]:
    """A vector with the spec's feature names (NaN: None)."""
    return {name: (None if v != v else float(v)) for name, v in zip(layout.spec.names(), vector.tolist())}
