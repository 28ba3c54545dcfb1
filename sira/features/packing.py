"""The stored form of a feature engine v2 state: the same bytes in PostgreSQL, Redis and a replica's cache.

A dense state (:mod:`sira.features.tiles`) is ~10-46 KB of int64 whatever it holds. Stored, it keeps only the
rows a future read can still use (a bucket inside the longest window of its ring, a value seen inside its
column's longest window, a pending label), each as its distance from the previous row and the columns its
part uses, every number as a zigzag varint relative to what makes it small: a bucket id as its distance
from the newest event's bucket, a time as its distance from the newest event, counts and sums as they are.
A quiet customer's state is a few hundred bytes, a terminal with every hourly bucket of its 37-day risk
ring live a few KB. Decoding gives a state whose every future feature equals the original's.

Format (:data:`tiles.FORMAT`): varints ``format, rows, newest, order``, then per kept row ``row - previous
row`` and its columns.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from sira.features.hashing import MISSING
from sira.features.tiles import FORMAT, RISK_DAY_US, RISK_HOP_US, Layout, _pack_maps, _start

RAW, TIME, SLOT = 0, -1, -2  # stored as is; as its distance from the newest event; not stored (a live bucket's
# id follows from its row: the one bucket of the ring's span in that slot); else: a bucket id's hop


@functools.lru_cache(maxsize=64)
def columns_of(layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the columns it uses (buckets 5, maps 2, risk buckets 3, pending labels 3), per column how it
    is stored (:data:`RAW`, :data:`TIME`, :data:`SLOT`, or the hop of the bucket id it holds), and per
    bucket row its ring (hop, first row, rows)."""
    widths = np.full(layout.rows, 5, dtype=np.int64)
    bases = np.zeros((layout.rows, 5), dtype=np.int64)
    rings = np.zeros((layout.rows, 3), dtype=np.int64)
    for hop, first, size in layout.rings.tolist():
        bases[first:first + size, 0] = SLOT
        rings[first:first + size] = hop, first, size
    maps_start = int(layout.maps[0, 0]) if len(layout.maps) else layout.risk_rows.start
    widths[maps_start:layout.risk_rows.start] = 2
    bases[maps_start:layout.risk_rows.start, 1] = TIME
    widths[layout.risk_rows] = 3
    bases[layout.risk_rows, 0] = SLOT
    rings[layout.risk_rows] = RISK_HOP_US, layout.risk_rows.start, layout.risk[1]
    widths[layout.risk_day_rows] = 3
    bases[layout.risk_day_rows, 0] = SLOT
    rings[layout.risk_day_rows] = RISK_DAY_US, layout.risk_day_rows.start, layout.risk[6]
    widths[layout.pending_rows] = 3  # bucket, known_at, count (format 3 stored no count: each one label)
    bases[layout.pending_rows, 0] = RISK_HOP_US
    bases[layout.pending_rows, 1] = TIME
    return widths, bases, rings


@njit(cache=True)
def live_rows(state, rings, windows, maps, risk, risk_windows, keep):  # pragma: no cover - compiled
    """Mark the rows a future read can still use (``keep``); returns how many."""
    newest = state[0, 1]
    if newest == MISSING:
        return 0
    n = 0
    for level in range(rings.shape[0]):
        hop, first, size = rings[level, 0], rings[level, 1], rings[level, 2]
        longest = 0  # the longest window this ring or a finer one serves (a day ring sums an hourly one's days)
        for w in range(windows.shape[0]):
            if rings[windows[w, 1], 0] <= hop and windows[w, 0] > longest:
                longest = windows[w, 0]
        oldest = (newest - longest) // hop
        for row in range(first, first + size):
            if state[row, 0] >= oldest and state[row, 1] > 0:
                keep[row] = True
                n += 1
    for c in range(maps.shape[0]):
        oldest = _start(newest, maps[c, 1])
        for row in range(maps[c, 0], maps[c, 0] + state[maps[c, 0], 2]):
            if state[row, 1] >= oldest:
                keep[row] = True
                n += 1
    first, size, pending, n_pending, delay = risk[0], risk[1], risk[2], risk[3], risk[4]
    if size > 0:
        longest = 0
        for w in range(risk_windows.size):
            longest = max(longest, risk_windows[w])
        oldest = (newest - delay - longest) // RISK_HOP_US
        for row in range(first, first + size):
            if state[row, 0] >= 0 and state[row, 0] >= oldest:
                keep[row] = True
                n += 1
        oldest = (newest - delay - longest) // RISK_DAY_US
        for row in range(risk[5], risk[5] + risk[6]):
            if state[row, 0] >= 0 and state[row, 0] >= oldest:
                keep[row] = True
                n += 1
        for row in range(pending, pending + n_pending):
            if state[row, 0] >= 0:
                keep[row] = True
                n += 1
    return n


@njit(cache=True)
def _put(buf, k, value):  # pragma: no cover - compiled
    """``value`` (int64) as a zigzag varint at ``buf[k]``; returns the next position."""
    u = np.uint64(value << 1) ^ np.uint64(value >> 63)
    while u >= np.uint64(0x80):
        buf[k] = np.uint8((u & np.uint64(0x7F)) | np.uint64(0x80))
        u >>= np.uint64(7)
        k += 1
    buf[k] = np.uint8(u)
    return k + 1


@njit(cache=True)
def _get(buf, k):  # pragma: no cover - compiled
    """The zigzag varint at ``buf[k]`` and the next position (-1: the buffer ends inside it)."""
    u = np.uint64(0)
    shift = np.uint64(0)
    while k < buf.size and shift < np.uint64(70):
        byte = np.uint64(buf[k])
        u |= (byte & np.uint64(0x7F)) << shift
        k += 1
        if byte < np.uint64(0x80):
            return np.int64(u >> np.uint64(1)) ^ -np.int64(u & np.uint64(1)), k
        shift += np.uint64(7)
    return np.int64(0), -1


@njit(cache=True)
def _relative(value, base, newest):  # pragma: no cover - compiled
    """A number as stored (see :func:`columns_of`); its own inverse: applied to a stored number, the value."""
    if base == RAW:
        return value
    if base == TIME:
        return newest - value
    return newest // base - value




@njit(cache=True)
def room(n):  # pragma: no cover - compiled
    """The most bytes a state with ``n`` kept rows packs into (10 per varint at most)."""
    return 40 + 60 * n


@njit(cache=True)
def _pack(state, widths, bases, keep, n):  # pragma: no cover - compiled
    buf = np.empty(room(n), dtype=np.uint8)
    return buf[:pack_at(state, widths, bases, keep, buf, 0)]


@njit(cache=True)
def pack_at(state, widths, bases, keep, buf, k):  # pragma: no cover - compiled
    """Pack ``state`` (its ``keep`` rows, from :func:`live_rows`) into ``buf`` from ``k``, which has
    :func:`room` for it; returns the position after it. The one writer of the stored form."""
    newest = state[0, 1]
    k = _put(buf, k, state[0, 0])
    k = _put(buf, k, state.shape[0])
    k = _put(buf, k, newest)
    k = _put(buf, k, state[0, 2])
    previous = 0
    for row in range(1, state.shape[0]):
        if keep[row]:
            k = _put(buf, k, row - previous)
            previous = row
            for c in range(widths[row]):
                if bases[row, c] != SLOT:
                    k = _put(buf, k, _relative(state[row, c], bases[row, c], newest))
    return k


@njit(cache=True)
def _unpack(buf, widths, bases, rings, state, expect=FORMAT):  # pragma: no cover - compiled
    """Fill ``state`` (an empty one) from ``buf``; False when the bytes are not a state of this layout."""
    version, k = _get(buf, 0)
    if k < 0 or version != expect:
        return False
    rows, k = _get(buf, k)
    if k < 0 or rows != state.shape[0]:
        return False
    newest, k = _get(buf, k)
    if k < 0:
        return False
    order, k = _get(buf, k)
    if k < 0:
        return False
    state[0, 1] = newest
    state[0, 2] = order
    row = 0
    ring_first = -1  # the ring of the previous bucket row, its newest bucket and that bucket's slot
    newest_bucket = 0
    newest_slot = 0
    while k < buf.size:
        step, k = _get(buf, k)
        row += step
        if k < 0 or step < 1 or row >= rows:
            return False
        for c in range(widths[row]):
            if bases[row, c] == SLOT:  # the one bucket of the ring's span ending at the newest in this slot
                if rings[row, 1] != ring_first:
                    ring_first = rings[row, 1]
                    newest_bucket = newest // rings[row, 0]
                    newest_slot = newest_bucket % rings[row, 2]
                slot = row - ring_first
                state[row, c] = newest_bucket - newest_slot + slot - (rings[row, 2] if slot > newest_slot else 0)
                continue
            value, k = _get(buf, k)
            if k < 0:
                return False
            state[row, c] = _relative(value, bases[row, c], newest)
    return True


def encode(layout: Layout, state: np.ndarray) -> bytes:
    """The stored form of a state (PostgreSQL, Redis, a replica's cache)."""
    widths, bases, _ = columns_of(layout)
    keep = np.zeros(state.shape[0], dtype=np.bool_)
    n = live_rows(state, layout.rings, layout.windows, layout.maps, layout.risk, layout.risk_windows, keep)
    return _pack(state, widths, bases, keep, n).tobytes()


def decode(layout: Layout, data: bytes | None) -> np.ndarray:
    """A state from its stored bytes (an empty one for None); bytes of another format or layout are refused."""
    state = layout.empty()
    if data is None:
        return state
    widths, bases, rings = columns_of(layout)
    buf = np.frombuffer(data, dtype=np.uint8)
    if not _unpack(buf, widths, bases, rings, state) and not _format_3(layout, buf, widths, bases, rings, state):
        raise ValueError("an entity state of another format or layout")
    _pack_maps(state, layout.maps)
    return state


def _format_3(layout: Layout, buf: np.ndarray, widths: np.ndarray, bases: np.ndarray, rings: np.ndarray,
              state: np.ndarray) -> bool:
    """Bytes of format 3 (states stored before pending labels were grouped): at most 64 pending rows of one
    label each, anywhere among them; read into ``state`` with its pending labels counted and moved to the front."""
    if not buf.size or buf[0] != 6:  # 3 as a zigzag varint
        return False
    pending = layout.pending_rows
    rows = layout.rows - (pending.stop - pending.start) + (64 if pending.stop > pending.start else 0)
    old = layout.empty()[:rows].copy()
    legacy = widths[:rows].copy()
    legacy[pending.start:rows] = 2
    if not _unpack(buf, legacy, bases[:rows], rings[:rows], old, 3):
        return False
    waiting = old[pending.start:rows]
    waiting = waiting[waiting[:, 0] >= 0]
    state[:pending.start] = old[:pending.start]
    state[pending.start:pending.start + len(waiting), :3] = np.column_stack(
        [waiting[:, 0], waiting[:, 1], np.ones(len(waiting), dtype=np.int64)])
    return True
