"""Daily checkpoints in one replay: each entity's events and labels folded once over a whole range of days,
its packed state emitted at every UTC midnight after a day that changed it (feature engine v2, #21).

A rebuild or an advance used to fold the log one day at a time: per (entity, day) it unpacked the entity's
state, copied it into the day's batch, replayed the day and packed it again (~29 µs of replay and ~25 µs of
unpacking, stacking and packing per pair, with 1.2 checkpoints per event on the simulator's traffic). Here
the kernel keeps one dense state per entity type in cache, walks the entity's events and labels in order,
and packs the state straight into one byte buffer when the next thing it holds falls on a later day: no
state is unpacked except a starting checkpoint, none is copied.

A checkpoint as of midnight ``D`` holds every event before ``D`` and every label known before ``D``: at a
day's end the labels known before the next midnight are applied, as the next event would have applied them.

Once data retention removed events (``sira retention apply``), the checkpoints it keeps hold history the log
no longer has: a rebuild starts each entity from them (:func:`kept_from`), never from the shorter log alone.

The replay folds with :func:`sira.features.tiles._step` itself. numba's disk cache keys a kernel on its own
file only: a change to the kernels it calls in ``tiles.py`` (window sums saturating, not wrapping; pending
labels grouped with counts, signed) must change this file too, or a cached replay keeps folding the old way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from sira.features.hashing import MISSING
from sira.features.packing import _unpack, live_rows, pack_at, room
from sira.features.tiles import DAY_US, FULL, _label, _pack_maps, _step

if TYPE_CHECKING:
    from sira.core.db import Connection
    from sira.features.definitions import FeatureSet

NEVER = np.int64(2**63 - 1)  # after any time


@dataclass(frozen=True)
class Checkpoints:
    """One entity type's checkpoints: per mark, the entity (its index in ``keys``), the midnight it is as of
    (µs), the state's newest event (µs) and its packed bytes (``data[offsets[m]:offsets[m + 1]]``). Marks
    are in entity order, then time: an entity's last mark is its state after everything folded."""

    keys: list[str]
    entity: np.ndarray
    as_of: np.ndarray
    newest: np.ndarray
    data: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return int(self.entity.size)

    def state(self, m: int) -> bytes:
        return self.data[self.offsets[m]:self.offsets[m + 1]].tobytes()

    def last(self) -> np.ndarray:
        """The index of each entity's last mark (entities with none left out)."""
        if not len(self):
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(np.append(self.entity[1:] != self.entity[:-1], True))


@njit(cache=True, nogil=True)
def replay_days(state, starts, start_of, segments, ts, orders, amounts, values, label_segments, label_ts,
                label_known, label_delta, rings, windows, maps, ops, risk, risk_windows, widths, bases, row_rings, marks):
    # pragma: no cover - compiled
    """Fold each entity (segment ``s``: events ``segments[s]:segments[s + 1]`` sorted by time and order,
    labels ``label_segments[s]:...`` sorted by known_at) from ``starts[start_of[s]]`` into ``state`` (one
    buffer, reused), packing it at the end of every day that changed it (an entity with no event yet is
    not kept) and going on from the packed state read back (``starts[0]``: the empty state), so the bytes
    are those of a fold that starts from any of these checkpoints. ``widths``, ``bases``, ``row_rings``:
    :func:`packing.columns_of`. ``marks``: at least the number of (entity, day) pairs. ``label_delta``: +1 a
    positive, -1 one taken back. Returns (events refused as late, labels left out (:data:`tiles.FULL`), marks
    written, mark entity, as_of, newest, bytes, offsets)."""
    late = 0
    full = 0
    m = 0
    entity = np.empty(marks, dtype=np.int64)
    as_of = np.empty(marks, dtype=np.int64)
    newest = np.empty(marks, dtype=np.int64)
    offsets = np.zeros(marks + 1, dtype=np.int64)
    data = np.empty(max(1024, marks * 64), dtype=np.uint8)  # grown by doubling
    keep = np.zeros(state.shape[0], dtype=np.bool_)
    out = np.empty(ops.shape[0])
    for s in range(segments.size - 1):
        state[:] = starts[start_of[s]]
        i, i_end = segments[s], segments[s + 1]
        j, j_end = label_segments[s], label_segments[s + 1]
        while i < i_end or j < j_end:
            next_event = ts[i] if i < i_end else NEVER
            next_label = label_known[j] if j < j_end else NEVER
            midnight = (min(next_event, next_label) // DAY_US + 1) * DAY_US
            while i < i_end and ts[i] < midnight:
                while j < j_end and label_known[j] < ts[i]:
                    full += _label(state, risk, label_ts[j], label_known[j], label_delta[j], ts[i]) // FULL
                    j += 1
                late += _step(state, rings, windows, maps, ops, risk, risk_windows, ts[i], orders[i], amounts[i],
                              values[i], out)
                i += 1
            while j < j_end and label_known[j] < midnight:  # a checkpoint keeps them waiting, as a state does
                full += _label(state, risk, label_ts[j], label_known[j], label_delta[j], 0) // FULL
                j += 1
            if state[0, 1] == MISSING:
                continue  # labels of an entity with no event yet: nothing to keep
            keep[:] = False
            n = live_rows(state, rings, windows, maps, risk, risk_windows, keep)
            k = offsets[m]
            if k + room(n) > data.size:
                bigger = np.empty(max(2 * data.size, k + room(n)), dtype=np.uint8)
                bigger[:k] = data[:k]
                data = bigger
            offsets[m + 1] = pack_at(state, widths, bases, keep, data, k)
            state[:] = starts[0]  # the next day starts from the checkpoint as read back, as a fold from it does
            _unpack(data[k:offsets[m + 1]], widths, bases, row_rings, state)
            _pack_maps(state, maps)
            entity[m] = s
            as_of[m] = midnight
            newest[m] = state[0, 1]
            m += 1
    return late, full, m, entity, as_of, newest, data, offsets


def day_marks(codes: np.ndarray, ts: np.ndarray, label_codes: np.ndarray, label_known: np.ndarray) -> int:
    """How many (entity, day) pairs the events and labels touch: the room :func:`replay_days` needs."""
    pairs = np.concatenate([codes * (1 << 24) + ts // DAY_US, label_codes * (1 << 24) + label_known // DAY_US])
    return int(np.unique(pairs).size)


async def kept_from(conn: Connection, fs: FeatureSet) -> datetime | None:
    """The UTC midnight from which a rebuild of ``fs`` must fold the log, starting each entity from its latest
    checkpoint at or before it, or None (the whole log: nothing was removed, or no checkpoint of ``fs`` is
    that old to start from, e.g. retention removed a retired set's).

    Retention removed the events before its cut-off (the latest of its runs that removed any, from their
    ``retention.apply`` audit entries) and keeps the checkpoints from before it on purpose: a fold of the log
    alone restarted every entity empty at the oldest kept event (a card's 7-day count at its newest event
    12 -> 2). The midnight after the cut-off holds every kept event after it; it moves on past the last label
    known of an event no longer stored (a refold cannot place it, the checkpoints hold it)."""
    cut = await conn.fetchval(
        """SELECT max((details->>'cutoff')::timestamptz) FROM sira_audit_log
            WHERE action = 'retention.apply' AND target_id = 'events' AND outcome = 'success'
              AND coalesce((details->'removed'->>'sira_events')::bigint, 0) > 0""")
    if cut is None:
        return None
    orphan = await conn.fetchval(
        """SELECT max(h.known_at) FROM sira_feedback_history h WHERE h.label_name = $1
            AND NOT EXISTS (SELECT 1 FROM sira_events e WHERE e.event_id = h.event_id)""", fs.label_name)
    last = max(cut, orphan or cut).astimezone(timezone.utc)
    start = last.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM sira_state_checkpoints WHERE feature_set = $1 AND feature_set_version = $2"
        " AND as_of <= $3)", fs.name, fs.version, start)
    return start if found else None


__all__ = ["Checkpoints", "day_marks", "kept_from", "replay_days"]
