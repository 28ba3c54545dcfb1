"""Feature engine v2 (#21), driven: one event online, a whole window of the log offline, the same kernel.

A feature set with ``engine="tiles"`` computes its entity features with :mod:`sira.features.tiles` only.
:class:`Engine` holds its layouts and gives:
- online, :meth:`Engine.event_vector`: one event folded into its entities' states (the serving replica,
  the stream consumer): one compiled call per entity;
- offline, :meth:`Engine.build`: events and labels as columns (from Arrow, see :class:`EventColumns`),
  sorted by (entity, time, event id hash), folded per entity from its starting state (empty, or a daily
  checkpoint) with the same kernel in one compiled call per entity type: the training set comes out as a
  float64 matrix in the feature set's column order, and each entity's final state with it.

Late events: the online fold refuses an event older than the state's newest (:data:`tiles.LATE`); the caller
rebuilds that entity with :meth:`Engine.build` from the log, where the event takes its place in time order,
so a late event gets the vector the offline path gives it. Labels: applied in the order they became known,
each before the first event after its ``known_at`` (a ``known_at`` before its event's time is taken as the
event's time).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sira.features import daily, hashing, packing, tiles
from sira.features.daily import Checkpoints
from sira.features.definitions import FeatureSet
from sira.features.hashing import MISSING
from sira.features.store import to_us
from sira.features.tiles import US, Layout

T = TypeVar("T")
log = logging.getLogger(__name__)
PARALLEL_FROM = 20_000  # events: below this, a thread per entity type costs more than it saves


def _strings(values: Sequence[Any]) -> pa.Array:
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


@dataclass(frozen=True)
class EventColumns:
    """Events as columns: ``ts`` int64 µs, ``amount`` int64 1e-4 units (``MISSING``: none), ``event_id``
    (object array), and every entity key and categorical column the feature set reads (Arrow strings,
    nulls where absent: hashed and grouped from their buffers, no Python object per value)."""

    ts: np.ndarray
    amount: np.ndarray
    event_id: np.ndarray
    columns: dict[str, pa.Array]

    def __len__(self) -> int:
        return int(self.ts.size)

    @classmethod
    def from_arrow(cls, table: pa.Table, names: Sequence[str]) -> "EventColumns":
        """From a table with ``ts`` (int64 µs since the epoch), ``amount`` (1e-4 units, int64, nulls),
        ``event_id`` and the ``names`` columns."""
        ts = table.column("ts").to_numpy()
        amount = cast(pa.ChunkedArray, pc.fill_null(table.column("amount").cast(pa.int64()),
                                                 pa.scalar(int(MISSING), pa.int64()))).to_numpy()
        return cls(np.ascontiguousarray(ts, dtype=np.int64), np.ascontiguousarray(amount, dtype=np.int64),
                   np.array(table.column("event_id").to_pylist(), dtype=object),
                   {n: table.column(n).combine_chunks() for n in names})

    @classmethod
    def from_events(cls, events: Sequence[Mapping[str, Any]], names: Sequence[str]) -> "EventColumns":
        """From event dicts (``occurred_at`` a datetime, ``amount`` a number or None)."""
        return cls(np.array([to_us(e["occurred_at"]) for e in events], dtype=np.int64),
                   np.array([tiles.fixed(None if e.get("amount") is None else float(e["amount"]))
                             for e in events], dtype=np.int64),
                   np.array([e["event_id"] for e in events], dtype=object),
                   {n: _strings([e.get(n) for e in events]) for n in names})

    def merged(self, other: "EventColumns") -> "EventColumns":
        """These events and ``other``'s (same columns); an event in both is taken from ``other``."""
        keep = np.flatnonzero(~np.isin(self.event_id, other.event_id))
        rows = pa.array(keep, type=pa.int64())
        return EventColumns(np.concatenate([self.ts[keep], other.ts]), np.concatenate([self.amount[keep], other.amount]),
                            np.concatenate([self.event_id[keep], other.event_id]),
                            {n: pa.concat_arrays([self.columns[n].take(rows).cast(pa.string()),
                                                  other.columns[n].cast(pa.string())]) for n in self.columns})


@dataclass(frozen=True)
class Labels:
    """Positive labels: the event each is about (its id, time and entity keys) and when it became known (µs).
    A label's event may lie before the events being folded (a checkpoint holds it): its keys and time say
    which state and bucket it lands in."""

    event_id: np.ndarray  # object
    known_at: np.ndarray  # int64
    event_ts: np.ndarray  # int64
    keys: dict[str, pa.Array]  # key column -> Arrow strings
    delta: np.ndarray | None = None  # int64 per label: +1 positive from known_at on, -1 taken back (None: all +1)

    def __len__(self) -> int:
        return int(self.known_at.size)

    def deltas(self) -> np.ndarray:
        return np.ones(len(self), dtype=np.int64) if self.delta is None else self.delta

    @classmethod
    def none(cls) -> "Labels":
        return cls(np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), {})

    @classmethod
    def of_events(cls, events: EventColumns, event_ids: Sequence[str], known_at: Sequence[int]) -> "Labels":
        """Labels of events in ``events`` (found by id; labels of other events are left out)."""
        position = {eid: i for i, eid in enumerate(events.event_id.tolist())}
        found = [(position[e], k) for e, k in zip(event_ids, known_at) if e in position]
        rows = np.array([i for i, _ in found], dtype=np.int64)
        return cls(events.event_id[rows], np.array([k for _, k in found], dtype=np.int64), events.ts[rows],
                   {c: v.take(pa.array(rows, type=pa.int64())) for c, v in events.columns.items()})


def _codes(keys: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Each key's entity number (-1: no key) and the entities' keys, in order of first appearance."""
    encoded = cast(pa.DictionaryArray, pc.dictionary_encode(keys))
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, [str(k) for k in encoded.dictionary.to_pylist()]


@dataclass(frozen=True)
class _Segments:
    """One entity type's events and labels as the replay kernels take them: the rows with a key, sorted by
    (entity, time, order), each entity's segment of them and of its labels (sorted by known_at, then event
    time), and its starting state (0: the empty one)."""

    entity_ids: list[str]
    rows: np.ndarray
    segments: np.ndarray
    ts: np.ndarray
    orders: np.ndarray
    amounts: np.ndarray
    values: np.ndarray
    label_segments: np.ndarray
    label_ts: np.ndarray
    label_known: np.ndarray
    label_delta: np.ndarray
    starts: np.ndarray
    start_of: np.ndarray
    codes: np.ndarray
    label_codes: np.ndarray

    @classmethod
    def of(cls, layout: Layout, events: EventColumns, labels: Labels, start: Mapping[str, np.ndarray],
           orders: np.ndarray, hashed: dict[str, np.ndarray]) -> "_Segments":
        column = layout.spec.key_column
        keys = events.columns[column]
        label_keys = labels.keys.get(column, pa.nulls(len(labels), pa.string()))
        every, entity_ids = _codes(pa.concat_arrays([keys.cast(pa.string()), label_keys.cast(pa.string())]))
        codes, l_codes = every[:len(events)], every[len(events):]
        rows = np.flatnonzero(codes >= 0)
        label_rows = np.flatnonzero(l_codes >= 0)
        codes, l_codes = codes[rows], l_codes[label_rows]
        order = np.lexsort((orders[rows], events.ts[rows], codes))
        rows, codes = rows[order], codes[order]
        segments = np.searchsorted(codes, np.arange(len(entity_ids) + 1)).astype(np.int64)
        values = np.zeros((rows.size, len(layout.columns)), dtype=np.int64)
        for c, name in enumerate(layout.columns):
            values[:, c] = hashed[name][rows]
        # labels by (entity, known_at, event time); known before its event: taken as known at its time
        l_ts = labels.event_ts[label_rows]
        l_known = np.maximum(labels.known_at[label_rows], l_ts)
        l_order = np.lexsort((l_ts, l_known, l_codes))
        l_codes, l_ts, l_known = l_codes[l_order], l_ts[l_order], l_known[l_order]
        l_delta = labels.deltas()[label_rows][l_order]
        label_segments = np.searchsorted(l_codes, np.arange(len(entity_ids) + 1)).astype(np.int64)
        given = [key for key in entity_ids if key in start]
        starts = np.stack([layout.empty(), *(start[key] for key in given)])  # 0: the empty state
        index = {key: k + 1 for k, key in enumerate(given)}
        start_of = np.array([index.get(key, 0) for key in entity_ids], dtype=np.int64)
        return cls(entity_ids, rows, segments, np.ascontiguousarray(events.ts[rows]), orders[rows],
                   np.ascontiguousarray(events.amount[rows]), values, label_segments, np.ascontiguousarray(l_ts),
                   np.ascontiguousarray(l_known), np.ascontiguousarray(l_delta), starts, start_of, codes, l_codes)

    def day_marks(self) -> int:
        return daily.day_marks(self.codes, self.ts, self.label_codes, self.label_known)


class Engine:
    """The compiled feature maths of one ``engine="tiles"`` feature set, online and offline."""

    def __init__(self, fs: FeatureSet) -> None:
        if fs.engine != "tiles":
            raise ValueError(f"feature set {fs.name} v{fs.version} is computed by the {fs.engine!r} engine")
        self.fs = fs
        self.labels_left_out = 0
        self.layouts = {spec.entity: Layout.of(spec) for spec in fs.entities}
        self.names = fs.names()
        self.event_codes = np.array([tiles.EVENT_CODES[f] for f in fs.event_features], dtype=np.int64)
        first = len(fs.event_features)
        self.slices: dict[str, slice] = {}
        for spec in fs.entities:
            self.slices[spec.entity] = slice(first, first + len(spec.names()))
            first += len(spec.names())
        self.categorical = sorted({c for spec in fs.entities for c in spec.categorical_columns})
        self.key_columns = sorted({spec.key_column for spec in fs.entities})
        self.columns = sorted({*self.key_columns, *self.categorical})

    # -- online ---------------------------------------------------------------------------------------------

    def event_vector(self, event: Mapping[str, Any], states: Mapping[str, np.ndarray | None]
                     ) -> tuple[np.ndarray, list[str]]:
        """One event's vector (float64 in :attr:`names` order, NaN: undefined), folding it into
        ``states[entity]`` in place (an entity with no key in the event is left out: its features NaN).
        Returns the vector and the entities whose state refused the event as late (their features NaN:
        rebuild those states from the log with :meth:`build`, then call again)."""
        ts = to_us(event["occurred_at"])
        amount = event.get("amount")
        units = tiles.fixed(None if amount is None else float(amount))
        order = hashing.value_hash(event["event_id"])
        vector = np.full(len(self.names), np.nan)
        tiles._event_row(ts, units, self.event_codes, *self.fs.night_hours, vector)
        hashed = {c: hashing.value_hash(event.get(c)) for c in self.categorical}  # once, whatever reads them
        late = []
        for spec in self.fs.entities:
            state = states.get(spec.entity)
            if state is None or event.get(spec.key_column) is None:
                continue
            layout = self.layouts[spec.entity]
            values = np.array([hashed[c] for c in layout.columns], dtype=np.int64) if layout.columns \
                else tiles.NO_VALUES
            if tiles._step(state, layout.rings, layout.windows, layout.maps, layout.ops, layout.risk,
                           layout.risk_windows, ts, order, units, values, vector[self.slices[spec.entity]]):
                late.append(spec.entity)
        return vector, late

    def label(self, entity: str, state: np.ndarray, event_ts_us: int, known_at_us: int, delta: int = 1) -> int:
        full = tiles.label(self.layouts[entity], state, event_ts_us, known_at_us, delta) == tiles.FULL
        self.left_out(int(full), entity)
        return tiles.FULL if full else tiles.OK

    def left_out(self, labels: int, entity: str) -> None:
        """Count (:attr:`labels_left_out`) and log labels a state had no room to keep waiting
        (:data:`tiles.PENDING_CAP` groups waiting for its next event already): never silently."""
        if labels:
            self.labels_left_out += labels
            log.warning("%d label(s) left out of %s %s states: more than %d (hour, known_at) groups waiting for "
                        "the next event (the bound: PENDING_CAP)", labels, self.fs.name, entity, tiles.PENDING_CAP)

    def features_at(self, entity: str, state: np.ndarray, t_us: int) -> dict[str, float | None]:
        """An entity's features at a time with no event (windows age; novelty and amount ratio None)."""
        layout = self.layouts[entity]
        return tiles.named(layout, tiles.read(layout, state, t_us))

    def encode(self, entity: str, state: np.ndarray) -> bytes:
        return packing.encode(self.layouts[entity], state)

    def decode(self, entity: str, data: bytes | None) -> np.ndarray:
        return packing.decode(self.layouts[entity], data)

    # -- offline --------------------------------------------------------------------------------------------

    def build(self, events: EventColumns, labels: Labels | None = None,
              start: Mapping[str, Mapping[str, np.ndarray]] | None = None, *, finals: bool = True,
              ) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
        """Every event's vector (rows in ``events`` order, :attr:`names` columns) and each entity's final
        state, folding the events in (time, event id hash) order per entity from ``start[entity][key]`` (a
        checkpoint: copied, not changed) or an empty state. ``labels``: positive labels known since the
        starting states, of these events or of events the starting states hold. ``finals=False``: no final
        states (a training set needs only the vectors: one state buffer is reused, and stays in cache)."""
        labels = labels or Labels.none()
        out = np.full((len(events), len(self.names)), np.nan)
        tiles._event_rows(events.ts, events.amount, self.event_codes, *self.fs.night_hours, out)
        orders, hashed = self._hashes(events)
        return out, self._each_type(len(events), lambda entity: self._build_entity(
            entity, events, labels, (start or {}).get(entity, {}), out, orders, hashed, finals))

    def _hashes(self, events: EventColumns) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The events' order among ties in time (their ids' hashes) and their categorical values' hashes."""
        return (hashing.hash_strings(_strings(events.event_id.tolist())),
                {c: hashing.hash_strings(events.columns[c]) for c in self.categorical})

    def _each_type(self, n_events: int, one: Callable[[str], T]) -> dict[str, T]:
        """``one(entity)`` for each entity type: a thread each when the events are many (the compiled replays
        release the GIL), else one after another."""
        entities = [spec.entity for spec in self.fs.entities]
        if n_events < PARALLEL_FROM:
            return {entity: one(entity) for entity in entities}
        with ThreadPoolExecutor(max_workers=min(len(entities), os.cpu_count() or 1)) as pool:
            return dict(zip(entities, pool.map(one, entities)))

    def _build_entity(self, entity: str, events: EventColumns, labels: Labels, start: Mapping[str, np.ndarray],
                      out: np.ndarray, orders: np.ndarray, hashed: dict[str, np.ndarray], finals: bool,
                      ) -> dict[str, np.ndarray]:
        layout = self.layouts[entity]
        seg = _Segments.of(layout, events, labels, start, orders, hashed)
        if not seg.entity_ids:
            return {}
        states = np.empty((len(seg.entity_ids) if finals else 1, layout.rows, 5), dtype=np.int64)
        part = np.full((seg.rows.size, len(layout.ops)), np.nan)
        late, full = tiles._replay(states, seg.starts, seg.start_of, seg.segments, seg.ts, seg.orders, seg.amounts,
                                   seg.values, seg.label_segments, seg.label_ts, seg.label_known, seg.label_delta,
                                   layout.rings, layout.windows, layout.maps, layout.ops, layout.risk,
                                   layout.risk_windows, part)
        _refuse_late(late, entity)
        self.left_out(full, entity)
        out[seg.rows, self.slices[entity]] = part
        return dict(zip(seg.entity_ids, states)) if finals else {}

    def checkpoints(self, events: EventColumns, labels: Labels | None = None,
                    start: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> dict[str, Checkpoints]:
        """Per entity type, the packed state of each entity at every UTC midnight after a day that changed it
        (its events and the labels known that day), folding from ``start`` as :meth:`build` does, in one
        replay per entity (:mod:`sira.features.daily`); no vectors."""
        labels = labels or Labels.none()
        orders, hashed = self._hashes(events)

        def one(entity: str) -> Checkpoints:
            layout = self.layouts[entity]
            seg = _Segments.of(layout, events, labels, (start or {}).get(entity, {}), orders, hashed)
            widths, bases, row_rings = packing.columns_of(layout)
            late, full, m, owner, as_of, newest, data, offsets = daily.replay_days(
                layout.empty(), seg.starts, seg.start_of, seg.segments, seg.ts, seg.orders, seg.amounts, seg.values,
                seg.label_segments, seg.label_ts, seg.label_known, seg.label_delta, layout.rings, layout.windows, layout.maps,
                layout.ops, layout.risk, layout.risk_windows, widths, bases, row_rings, seg.day_marks())
            _refuse_late(late, entity)
            self.left_out(full, entity)
            return Checkpoints(seg.entity_ids, owner[:m], as_of[:m], newest[:m], data, offsets[:m + 1])

        return self._each_type(len(events), one)

    @property
    def horizon_us(self) -> int:
        """How far before a window the events must be read for its vectors to be exact."""
        return max(layout.horizon_us for layout in self.layouts.values())


def _refuse_late(late: int, entity: str) -> None:
    if late:
        raise ValueError(f"{late} {entity} event(s) older than their starting state (a checkpoint after them)")


@functools.lru_cache(maxsize=8)
def engine_of(fs: FeatureSet) -> Engine:
    return Engine(fs)


_WARMED: set[tuple[str, int]] = set()  # the feature sets this process has warmed


def prepare_worker() -> None:
    """Ray's ``worker_process_setup_hook`` (:data:`sira.core.ray_runtime.WORKER_SETUP_HOOK`): loading it imported
    this module, and numba with it, in the worker's main thread before any task."""


def warm(fs: FeatureSet) -> float:
    """Compile every kernel of the fold (or load it from numba's cache on disk) before traffic: one event and
    one label through the online and offline paths and a state's bytes both ways. Returns the seconds it took
    (a few seconds the first time on a machine, well under one once cached; 0 for a set this process warmed
    already: the kernels stay compiled, and a replica loading a version warms its set again)."""
    import time

    if (fs.name, fs.version) in _WARMED:
        return 0.0
    started = time.perf_counter()
    engine = engine_of(fs)
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    event = {"event_id": "warm-up", "occurred_at": at, "amount": 1.0, **{c: "warm-up" for c in engine.columns}}
    states = {entity: layout.empty() for entity, layout in engine.layouts.items()}
    engine.event_vector(event, states)
    ts = to_us(at)
    for entity, state in states.items():
        engine.label(entity, state, ts, ts + 1)
        engine.features_at(entity, engine.decode(entity, engine.encode(entity, state)), ts)
    events = EventColumns.from_events([event], engine.columns)
    engine.build(events, Labels.of_events(events, ["warm-up"], [ts + 1]))
    many = [{**event, "event_id": f"warm-up-{i}"} for i in range(PARALLEL_FROM)]  # the threaded path
    engine.build(EventColumns.from_events(many, engine.columns), finals=False)
    _WARMED.add((fs.name, fs.version))
    return time.perf_counter() - started


def warm_current() -> float:
    """:func:`warm` for each current feature set of engine v2, the ones every new event is folded into: what a
    process that stores events (``sira api``, a stream or Kafka consumer) runs before it takes any, so that its
    first batch does not wait for the kernels (~25 s compiled the first time on a machine, 1-2 s loaded from
    numba's cache; either way on the event loop, holding every other request); 0 s once done in the process."""
    from sira.features.definitions import CURRENT_VERSIONS, FEATURE_SETS

    took = sum(warm(FEATURE_SETS[key]) for key in sorted(CURRENT_VERSIONS.items())
               if FEATURE_SETS[key].engine == "tiles")
    if took:
        log.info("feature engine ready in %.1f s", took)
    return took

__all__ = ["Engine", "EventColumns", "Labels", "engine_of", "warm", "warm_current", "US"]
