"""Feature engine v2, first part (#21): bounded per-entity state of time buckets, and one compiled fold.

Not wired into ingest, the stream or serving yet: this module holds the state format and the kernel they
will share, with its semantics pinned by property tests against an independent implementation
(``tests/unit/test_tiles.py``). What it computes so far: per window, count, sum, mean and max of amounts;
per categorical column, distinct values in a window and whether the event's value is new in one.

Semantics (``../shared/FEATURE-ENGINE.md``; they differ from feature set v1's exact windows, so they belong
to a new feature-set version):
- amounts are int64 fixed point in 1e-4 units (``numeric(20,4)`` exactly): counts, sums and maxima are
  exact integers whatever the order of additions; a mean is one float division;
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
  ``risk_count`` its events, ``risk`` the share of them with a positive label known before t. A positive
  label is kept as (its event's bucket, known_at) until an event folded after its known_at settles it into
  the bucket, so the list stays short (:data:`PENDING_CAP`);
- events are folded in time order; an event older than the state's newest is refused (:data:`LATE`):
  late events are the next part of #21 (they need the head's raw events to stay exact).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from numba import njit

from sira.features.definitions import EntityFeatures, parse_duration

US = 1_000_000
HOPS_US = (300 * US, 3_600 * US, 86_400 * US)
SCALE = 10_000  # amounts in 1e-4 units
MISSING = np.int64(np.iinfo(np.int64).min)  # an absent amount, an empty maximum, no event yet
FORMAT = 1  # the first int64 of a state's bytes
# the columns of a bucket
BID, COUNT, SUM, PRESENT, MAX = range(5)
OK, LATE, FULL = 0, 1, 2
DISTINCT_CAP = 64  # values remembered per categorical column
RISK_HOP_US = 3_600 * US  # both edges of a delayed-label window, at an hour (FEATURE-ENGINE.md: never days)
PENDING_CAP = 64  # positive labels known after the newest folded event, waiting for the next event


def hop_us(window_us: int) -> int:
    """The hop of a window's tail: 5 minutes under 12 hours, 1 hour under 12 days, else 1 day."""
    if window_us < 12 * 3_600 * US:
        return HOPS_US[0]
    return HOPS_US[1] if window_us < 12 * 86_400 * US else HOPS_US[2]


@dataclass(frozen=True)
class Layout:
    """Where each hop's ring lives in a state, which ring each window reads, and the last-seen maps."""

    windows_us: np.ndarray  # int64, per window
    window_level: np.ndarray  # int64, per window: its ring
    level_hop: np.ndarray  # int64, per ring
    level_offset: np.ndarray  # int64, per ring: first row
    level_size: np.ndarray  # int64, per ring: rows
    columns: tuple[str, ...] = ()  # categorical columns with a last-seen map, DISTINCT_CAP rows each after the rings
    distinct: tuple[tuple[int, int], ...] = ()  # per distinct feature: (its column's map, window µs)
    novelty: tuple[tuple[int, int], ...] = ()  # per novelty feature: (its column's map, window µs)
    risk_delay_us: int = 0
    risk_windows_us: tuple[int, ...] = ()
    risk_size: int = 0  # hourly buckets: (delay + longest risk window) / 1h + 2

    @classmethod
    def of(cls, spec: EntityFeatures) -> "Layout":
        windows = [parse_duration(w) * US for w in spec.windows]
        hops = sorted({hop_us(w) for w in windows})
        sizes = [max(w // h for w in windows if hop_us(w) == h) + 2 for h in hops]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        columns = spec.categorical_columns
        delay = parse_duration(spec.label_delay) * US if spec.label_delay else 0
        risk = tuple(parse_duration(w) * US for w in spec.risk_windows)
        return cls(np.array(windows, dtype=np.int64), np.array([hops.index(hop_us(w)) for w in windows], dtype=np.int64),
                   np.array(hops, dtype=np.int64), offsets, np.array(sizes, dtype=np.int64), columns,
                   tuple((columns.index(c), parse_duration(w) * US) for c, w in spec.distinct),
                   tuple((columns.index(c), parse_duration(w) * US) for c, w in spec.novelty),
                   delay, risk, (delay + max(risk)) // RISK_HOP_US + 2 if risk else 0)

    @property
    def ring_rows(self) -> int:
        return int(self.level_size.sum())

    @property
    def rows(self) -> int:
        return self.ring_rows + DISTINCT_CAP * len(self.columns) + self.risk_size + (PENDING_CAP if self.risk_size else 0)

    @property
    def risk_rows(self) -> slice:
        """The hourly risk ring: bucket id, events, settled positives."""
        first = 1 + self.ring_rows + DISTINCT_CAP * len(self.columns)
        return slice(first, first + self.risk_size)

    @property
    def pending_rows(self) -> slice:
        """Positive labels not settled yet: their event's bucket (-1: a free row), known_at."""
        first = self.risk_rows.stop
        return slice(first, first + (PENDING_CAP if self.risk_size else 0))

    def map_rows(self, column: int) -> slice:
        """A column's last-seen map in a state: column 0 the value's hash, column 1 when it was last seen."""
        first = 1 + self.ring_rows + column * DISTINCT_CAP
        return slice(first, first + DISTINCT_CAP)

    def empty(self) -> np.ndarray:
        """A state with no events: row 0 is the header (format, newest ts), then the rings' buckets, then the
        columns' last-seen maps."""
        state = np.zeros((1 + self.rows, 5), dtype=np.int64)
        state[0, 0], state[0, 1] = FORMAT, MISSING
        state[1:, BID] = -1
        state[1:, MAX] = MISSING
        state[1 + self.ring_rows:self.risk_rows.start, 1] = MISSING  # no value seen
        state[self.risk_rows.start:, 0] = -1  # no risk bucket, no pending label
        state[self.risk_rows.start:, 1] = 0
        return state


def value_hash(value: object) -> int:
    """A categorical value's stable 64-bit hash (the same in every process: not Python's ``hash``); None: none."""
    if value is None:
        return int(MISSING)
    digest = hashlib.blake2b(str(value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def to_bytes(state: np.ndarray) -> bytes:
    """One binary value per entity: the same bytes in PostgreSQL, Redis and a replica's cache."""
    return state.tobytes()


def from_bytes(layout: Layout, data: bytes) -> np.ndarray:
    state = np.frombuffer(data, dtype=np.int64).reshape(-1, 5).copy()
    if state.shape[0] != 1 + layout.rows or state[0, 0] != FORMAT:
        raise ValueError("an entity state of another format or layout")
    return state


def fixed(amount: float | None) -> int:
    """An amount in 1e-4 units (``MISSING`` when absent), rounded half away from zero as numeric does."""
    if amount is None or amount != amount:
        return int(MISSING)
    scaled = abs(amount) * SCALE
    units = int(scaled + 0.5)
    return units if amount >= 0 else -units


@njit(cache=True)
def _fold(state, level_hop, level_offset, level_size, ts, amount):  # pragma: no cover - compiled
    newest = state[0, 1]
    if newest != MISSING and ts < newest:
        return 1
    state[0, 1] = ts
    for level in range(level_hop.size):
        hop = level_hop[level]
        bucket = ts // hop
        row = 1 + level_offset[level] + bucket % level_size[level]
        if state[row, 0] != bucket:
            state[row, 0] = bucket
            state[row, 1] = 0
            state[row, 2] = 0
            state[row, 3] = 0
            state[row, 4] = MISSING
        state[row, 1] += 1
        if amount != MISSING:
            state[row, 2] += amount
            state[row, 3] += 1
            if amount > state[row, 4]:
                state[row, 4] = amount
    return 0


@njit(cache=True)
def _query(state, windows_us, window_level, level_hop, level_offset, level_size, t, out):  # pragma: no cover
    for w in range(windows_us.size):
        level = window_level[w]
        hop = level_hop[level]
        lo = (t - windows_us[w]) // hop
        hi = t // hop
        count = 0
        total = 0
        present = 0
        peak = MISSING
        first = 1 + level_offset[level]
        for row in range(first, first + level_size[level]):
            bucket = state[row, 0]
            if lo <= bucket <= hi:
                count += state[row, 1]
                total += state[row, 2]
                present += state[row, 3]
                if state[row, 4] > peak:
                    peak = state[row, 4]
        out[w, 0] = count
        out[w, 1] = total
        out[w, 2] = present
        out[w, 3] = peak


@njit(cache=True)
def _seen_since(keys, times, value, start):  # pragma: no cover - compiled
    for i in range(keys.size):
        if times[i] != MISSING and keys[i] == value:
            return times[i] >= start
    return False


@njit(cache=True)
def _distinct_since(times, start):  # pragma: no cover - compiled
    n = 0
    for i in range(times.size):
        if times[i] != MISSING and times[i] >= start:
            n += 1
    return n


@njit(cache=True)
def _remember(keys, times, value, ts):  # pragma: no cover - compiled
    free = -1
    oldest = 0
    for i in range(keys.size):
        if times[i] == MISSING:
            if free < 0:
                free = i
        elif keys[i] == value:
            times[i] = ts
            return
        elif times[oldest] == MISSING or times[i] < times[oldest]:
            oldest = i
    slot = free if free >= 0 else oldest
    keys[slot] = value
    times[slot] = ts


@njit(cache=True)
def _risk_fold(ring, pending, size, ts):  # pragma: no cover - compiled
    bucket = ts // RISK_HOP_US
    row = bucket % size
    if ring[row, 0] != bucket:
        ring[row, 0] = bucket
        ring[row, 1] = 0
        ring[row, 2] = 0
    ring[row, 1] += 1
    for i in range(pending.shape[0]):  # what became known before this event: settled into its bucket
        b = pending[i, 0]
        if b >= 0 and pending[i, 1] < ts:
            if ring[b % size, 0] == b:
                ring[b % size, 2] += 1
            pending[i, 0] = -1


@njit(cache=True)
def _risk_label(ring, pending, size, newest, event_ts, known_at):  # pragma: no cover - compiled
    bucket = event_ts // RISK_HOP_US
    if newest == MISSING or bucket <= newest // RISK_HOP_US - size:
        return 0  # before anything this state holds: in no future window
    if known_at < newest:  # known before the newest event: every later window counts it
        if ring[bucket % size, 0] == bucket:
            ring[bucket % size, 2] += 1
        return 0
    for i in range(pending.shape[0]):
        if pending[i, 0] < 0:
            pending[i, 0] = bucket
            pending[i, 1] = known_at
            return 0
    return 2


@njit(cache=True)
def _risk_query(ring, pending, size, delay, windows, t, out):  # pragma: no cover - compiled
    hi = (t - delay) // RISK_HOP_US
    for w in range(windows.size):
        lo = (t - delay - windows[w]) // RISK_HOP_US
        n = 0
        positives = 0
        for row in range(size):
            b = ring[row, 0]
            if lo <= b <= hi:
                n += ring[row, 1]
                positives += ring[row, 2]
        for i in range(pending.shape[0]):
            b = pending[i, 0]
            if b >= 0 and lo <= b <= hi and pending[i, 1] < t:
                positives += 1
        out[w, 0] = n
        out[w, 1] = positives


def fold_label(layout: Layout, state: np.ndarray, event_ts_us: int, known_at_us: int) -> int:
    """A positive label for an event already folded (its time, and when the label became known): :data:`OK`,
    or :data:`FULL` when :data:`PENDING_CAP` labels wait for an event already (fold events first)."""
    if not layout.risk_size:
        return OK
    ring, pending = state[layout.risk_rows], state[layout.pending_rows]  # views: written in place
    return int(_risk_label(ring, pending, layout.risk_size, state[0, 1], event_ts_us, known_at_us))


def risk(layout: Layout, state: np.ndarray, t_us: int) -> list[tuple[float, float]]:
    """Per risk window: (risk, risk_count) at ``t_us``: the share of the window's events with a positive label
    known before ``t_us`` (0.0 without events), and their number."""
    if not layout.risk_size:
        return []
    out = np.zeros((len(layout.risk_windows_us), 2), dtype=np.int64)
    _risk_query(state[layout.risk_rows], state[layout.pending_rows], layout.risk_size, layout.risk_delay_us,
                np.array(layout.risk_windows_us, dtype=np.int64), t_us, out)
    return [(int(p) / int(n) if n else 0.0, float(n)) for n, p in out.tolist()]


def _start(t_us: int, window_us: int) -> int:
    hop = hop_us(window_us)
    return ((t_us - window_us) // hop) * hop


def fold_event(layout: Layout, state: np.ndarray, ts_us: int, amount: int, values: tuple[int, ...] = ()
               ) -> tuple[int, list[float | None]]:
    """Fold one event and read what only an event has: whether each novelty feature's value is new in its
    window (1.0, 0.0, None without a value), judged on the events before it. ``values``: the hashes of the
    event's categorical values (:func:`value_hash`) in ``layout.columns`` order. Returns :data:`OK` or
    :data:`LATE` (not folded), and the novelty flags."""
    if state[0, 1] != MISSING and ts_us < state[0, 1]:
        return LATE, []
    flags: list[float | None] = []
    for column, window in layout.novelty:
        value = values[column]
        rows = layout.map_rows(column)
        flags.append(None if value == MISSING else
                     0.0 if _seen_since(state[rows, 0], state[rows, 1], value, _start(ts_us, window)) else 1.0)
    fold(layout, state, ts_us, amount)
    if layout.risk_size:
        _risk_fold(state[layout.risk_rows], state[layout.pending_rows], layout.risk_size, ts_us)
    for column, value in enumerate(values):
        if value != MISSING:
            rows = layout.map_rows(column)
            _remember(state[rows, 0], state[rows, 1], value, ts_us)  # views: written in place
    return OK, flags


def distinct_counts(layout: Layout, state: np.ndarray, t_us: int) -> list[int]:
    """Per distinct feature: the values seen in its window up to ``t_us`` (at most :data:`DISTINCT_CAP`)."""
    out = []
    for column, window in layout.distinct:
        rows = layout.map_rows(column)
        out.append(int(_distinct_since(state[rows, 1], _start(t_us, window))))
    return out


def fold(layout: Layout, state: np.ndarray, ts_us: int, amount: int) -> int:
    """Fold one event (its time in µs, its amount from :func:`fixed`) into ``state``: :data:`OK`, or
    :data:`LATE` (older than the state's newest event: not folded)."""
    return int(_fold(state, layout.level_hop, layout.level_offset, layout.level_size, ts_us, amount))


def aggregates(layout: Layout, state: np.ndarray, t_us: int) -> np.ndarray:
    """Per window (rows in the spec's order): count, sum, amounts present, max (int64; max ``MISSING``
    when no amount), over what the state holds up to ``t_us``."""
    out = np.empty((layout.windows_us.size, 4), dtype=np.int64)
    _query(state, layout.windows_us, layout.window_level, layout.level_hop, layout.level_offset,
           layout.level_size, t_us, out)
    return out


def window_features(spec: EntityFeatures, values: np.ndarray) -> dict[str, float | None]:
    """The spec's window features from :func:`aggregates` (v1's names; None where undefined)."""
    out: dict[str, float | None] = {}
    e = spec.entity
    for j, w in enumerate(spec.windows):
        count, total, present, peak = (int(v) for v in values[j])
        for agg in spec.aggregations:
            if agg == "count":
                out[f"{e}_count_{w}"] = float(count)
            elif agg == "sum":
                out[f"{e}_sum_amount_{w}"] = total / SCALE
            elif agg == "mean":
                out[f"{e}_mean_amount_{w}"] = total / (present * SCALE) if present else None
            elif agg == "max":
                out[f"{e}_max_amount_{w}"] = peak / SCALE if peak != MISSING else None
    return out
