"""Training sets of a feature engine v2 feature set: the vectors folded from the log as columns.

No per-event feature rows are read: the window's events and labels come out of PostgreSQL as Arrow
columns (``COPY``), start from each entity's daily checkpoint (or a horizon of the log before the window
when there are none), and go through the same compiled fold serving uses, in one call per entity type.
The labels to learn (the dataset's label rule at its cut-off) come from a second ``COPY``. In-process: on
this scale Ray's fixed start would cost more than the fold (FEATURE-ENGINE.md: below ~1M events).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sira.core import db
from sira.features.columns import US_SQL, copy_table, read_events, read_labels
from sira.features.engine import EventColumns, Labels, engine_of
from sira.features.states import day_of, starting_states
from sira.features.store import labels_said_by, to_us
from sira.training.windows import Windows

# What the label rule needs per labelled event, as its labels stood at the cut-off (what each source last said
# by then): when a source saying fraud said so (NULL: none does), and whether one says legitimate (one pass
# over the label history, joined to the events by id in memory).
FEEDBACK_SQL = f"""
SELECT event_id, {US_SQL.format('min(known_at) FILTER (WHERE label)')} AS positive_known_at,
       coalesce(bool_or(NOT label), false)::int AS negative_known
  FROM ({labels_said_by("$1", "$2")}) said GROUP BY event_id
"""
FEEDBACK_TYPES = {"event_id": pa.string(), "positive_known_at": pa.int64(), "negative_known": pa.int64()}
SEGMENTS = ("country", "channel")


async def _columns(dsn: str, fs: Any, lo: datetime, hi: datetime, feedback_of: tuple[datetime, str] | None,
                   ) -> tuple[np.ndarray, EventColumns, pa.Table | None, dict[str, Any]]:
    """The window's vectors (every event read, from its checkpoints or a horizon before ``lo``), its events
    and, with ``feedback_of`` (cut-off, label name), the labels' summary. Two connections: the events on one
    while the labels come on the other, so PostgreSQL's work overlaps; the fold runs in a thread (the
    compiled replay releases the GIL)."""
    engine = engine_of(fs)
    first, second = await db.connect(dsn), await db.connect(dsn)
    pending: list[asyncio.Future[Any]] = []
    try:
        read_from, start = await starting_states(first, engine, day_of(lo))

        async def labels() -> tuple[Labels, pa.Table | None]:
            return (await read_labels(second, engine, read_from, hi),
                    None if feedback_of is None else await copy_table(second, FEEDBACK_SQL, list(feedback_of),
                                                                      FEEDBACK_TYPES))

        pending.append(asyncio.ensure_future(labels()))
        events = await read_events(first, engine, read_from, hi, also=SEGMENTS)
        known, feedback = await pending[0]
    finally:
        for task in pending:
            task.cancel()
        await first.close()
        await second.close()
    rows, _ = await asyncio.to_thread(engine.build, events, known, start, finals=False)
    source = {"engine": "tiles", "from_checkpoints": bool(start), "events_folded": len(events),
              "labels_folded": len(known)}
    return rows, events, feedback, source


def tiles_rows(dsn: str, fs: Any, windows: Windows, *, label_name: str = "fraud", test_only: bool = False,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any], dict[str, np.ndarray], dict[str, Any]]:
    """Labelled vectors of feature set ``fs`` (engine ``tiles``) for the training and test windows, in (time,
    event id) order: (X, y, times, event ids, segments, what was read)."""
    spans = [(windows.test_from, windows.test_to)] if test_only else [(windows.train_from, windows.train_to),
                                                                       (windows.test_from, windows.test_to)]
    X, events, feedback, source = asyncio.run(_columns(dsn, fs, spans[0][0], spans[-1][1],
                                                       (windows.cutoff, label_name)))
    assert feedback is not None
    ts = events.ts
    in_spans = np.zeros(ts.size, dtype=bool)
    for lo, hi in spans:
        in_spans |= (ts >= to_us(lo)) & (ts < to_us(hi))
    # each event's labels, joined by id
    at = pc.index_in(pa.array(events.event_id.tolist(), type=pa.string()), value_set=feedback.column("event_id"))
    found = at.is_valid().to_numpy(zero_copy_only=False)
    where = at.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    positive = np.where(found, feedback.column("positive_known_at").to_numpy(zero_copy_only=False)[where], np.nan) \
        if len(feedback) else np.full(ts.size, np.nan)  # float: NaN where none
    negative = found & (feedback.column("negative_known").to_numpy()[where] == 1) if len(feedback) \
        else np.zeros(ts.size, dtype=bool)
    # the label rule (sira.training.windows.label_rule), on columns
    y = np.where(positive <= to_us(windows.cutoff), 1.0,
                 np.where((ts <= to_us(windows.mature_until)) | negative, 0.0, np.nan))
    keep = np.flatnonzero(in_spans & ~np.isnan(y))
    ids = events.event_id
    order = keep[np.lexsort((ids[keep].astype(str), ts[keep]))]  # (time, event id), as the v1 builder
    segments = {c: np.array(events.columns[c].to_pylist(), dtype=object)[order] for c in SEGMENTS}
    return np.ascontiguousarray(X[order]), y[order], ts[order].astype(np.int64), ids[order].tolist(), segments, source


def tiles_vectors(dsn: str, fs: Any, lo: datetime, hi: datetime) -> tuple[np.ndarray, EventColumns, np.ndarray]:
    """Every stored event with ``lo <= occurred_at < hi`` and its point-in-time vector of feature set ``fs``
    (engine ``tiles``), unlabelled (batch scoring, drift): (X, the events read, the rows of X and of the
    events that are in the range, in (time, event id) order)."""
    X, events, _, _ = asyncio.run(_columns(dsn, fs, lo, hi, None))
    ts = events.ts
    keep = np.flatnonzero(ts >= to_us(lo))
    return X, events, keep[np.lexsort((events.event_id[keep].astype(str), ts[keep]))]
