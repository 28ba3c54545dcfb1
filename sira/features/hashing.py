"""Stable 64-bit hashes of categorical values and event ids (FNV-1a of their UTF-8 text, compiled).

The same in every process and on both paths: :func:`value_hash` for one value online, :func:`hash_strings`
for a whole Arrow string column offline, straight from its buffers (no Python object per value).
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pyarrow as pa
from numba import njit

MISSING = np.int64(np.iinfo(np.int64).min)  # no value (and, in a state: an absent amount, no event yet)
SCALE = 10_000  # amounts in 1e-4 units (sira.features.tiles)
SUM_CAP = np.int64(2**63 - 1)  # where an amount or a sum of amounts in 1e-4 units saturates
_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


@njit(cache=True)
def _fnv1a(data, first, last):  # pragma: no cover - compiled
    """FNV-1a 64 of ``data[first:last]`` as an int64 (never ``MISSING``: that means no value)."""
    h = np.uint64(_FNV_OFFSET)
    for k in range(first, last):
        h = (h ^ np.uint64(data[k])) * np.uint64(_FNV_PRIME)
    value = np.int64(h)
    return value if value != MISSING else value + 1


@njit(cache=True)
def _fnv1a_all(data, offsets, valid, out):  # pragma: no cover - compiled
    for i in range(out.size):
        out[i] = _fnv1a(data, offsets[i], offsets[i + 1]) if valid[i] else MISSING


def value_hash(value: object) -> int:
    """A categorical value's stable 64-bit hash (FNV-1a of its UTF-8 text: the same in every process, not
    Python's ``hash``); None: ``MISSING``. :func:`hash_strings` gives the same for a whole Arrow column."""
    if value is None:
        return int(MISSING)
    data = np.frombuffer(str(value).encode(), dtype=np.uint8)
    return int(_fnv1a(data, 0, data.size))


def hash_strings(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """:func:`value_hash` of every value of a string column (nulls: ``MISSING``), straight from its buffers."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    array = array.cast(pa.large_string())
    n = len(array)
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    _, offsets_buffer, data_buffer = array.buffers()
    assert offsets_buffer is not None  # a string array of n > 0 values has offsets
    offsets = np.frombuffer(memoryview(offsets_buffer), dtype=np.int64)[array.offset:array.offset + n + 1]
    data = np.frombuffer(memoryview(data_buffer), dtype=np.uint8) if data_buffer is not None \
        else np.zeros(0, np.uint8)
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    _fnv1a_all(data, offsets, valid, out)
    return out


def fixed(amount: float | None) -> int:
    """An amount in 1e-4 units (``MISSING`` when absent), rounded half away from zero as ``numeric(20,4)`` rounds
    the exact value of the float it is sent (what the log holds and offline folds read). The float product
    ``amount * 10000`` is itself rounded: 57.12345 is 57.1234499999... exactly, stored 57.1234, but its
    product is 571234.5, which rounded to 57.1235 online. Near such a tie the exact value decides."""
    if amount is None or amount != amount:
        return int(MISSING)
    scaled = abs(amount) * SCALE
    if scaled >= SUM_CAP:  # saturated as sums are (and as sira.features.columns reads the log)
        units = int(SUM_CAP)
    else:
        units = int(scaled + 0.5)
        if abs(scaled - math.floor(scaled) - 0.5) <= scaled * 1e-15 + 1e-12:  # within the product's rounding error
            units = int(Decimal(abs(amount)).scaleb(4).quantize(_UNIT, rounding=ROUND_HALF_UP))
    return units if amount >= 0 else -units


_UNIT = Decimal(1)
