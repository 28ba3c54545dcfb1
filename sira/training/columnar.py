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

from sira.core import db
from sira.features.columns import US_SQL, copy_table, read_events, read_labels
from sira.features.engine import engine_of
from sira.features.states import day_of, starting_states
from sira.training.windows import Windows

TARGET_SQL = f"""
SELECT e.event_id, {US_SQL.format('e.occurred_at')} AS ts, e.country, e.channel,
       {US_SQL.format('lab.positive_known_at')} AS positive_known_at, lab.negative_known::int AS negative_known
  FROM sira_events e
  LEFT JOIN LATERAL (
        SELECT min(fb.known_at) FILTER (WHERE fb.label) AS positive_known_at,
               coalesce(bool_or(NOT fb.label AND fb.known_at <= $3), false) AS negative_known
          FROM sira_feedback fb
         WHERE fb.event_id = e.event_id AND fb.label_name = $4) lab ON true
 WHERE e.occurred_at >= $1 AND e.occurred_at < $2
"""


def _us(value: datetime) -> int:
    from sira.features.store import to_us

    return to_us(value)


async def _columns(dsn: str, fs: Any, windows: Windows, label_name: str, spans: list[tuple[datetime, datetime]]
                   ) -> tuple[np.ndarray, pa.Table, dict[str, Any]]:
    engine = engine_of(fs)
    lo, hi = spans[0][0], spans[-1][1]
    conn = await db.connect(dsn)
    try:
        read_from, start = await starting_states(conn, engine, day_of(lo))
        events = await read_events(conn, engine, read_from, hi)
        labels = await read_labels(conn, engine, read_from, hi)
        targets = await copy_table(conn, TARGET_SQL, [lo, hi, windows.cutoff, label_name],
                              {"event_id": pa.string(), "ts": pa.int64(), "country": pa.string(),
                               "channel": pa.string(), "positive_known_at": pa.int64(), "negative_known": pa.int64()})
    finally:
        await conn.close()
    rows, _ = engine.build(events, labels, start, finals=False)
    position = {eid: i for i, eid in enumerate(events.event_id.tolist())}
    picked = np.array([position[e] for e in targets.column("event_id").to_pylist()], dtype=np.int64)
    source = {"engine": "tiles", "from_checkpoints": bool(start), "events_folded": len(events),
              "labels_folded": len(labels)}
    return rows[picked] if picked.size else np.zeros((0, len(engine.names))), targets, source


def tiles_rows(dsn: str, fs: Any, windows: Windows, *, label_name: str = "fraud", test_only: bool = False,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any], dict[str, np.ndarray], dict[str, Any]]:
    """Labelled vectors of feature set ``fs`` (engine ``tiles``) for the training and test windows, in (time,
    event id) order: (X, y, times, event ids, segments, what was read)."""
    spans = [(windows.test_from, windows.test_to)] if test_only else [(windows.train_from, windows.train_to),
                                                                       (windows.test_from, windows.test_to)]
    X, targets, source = asyncio.run(_columns(dsn, fs, windows, label_name, spans))
    ts = targets.column("ts").to_numpy()
    in_spans = np.zeros(ts.size, dtype=bool)
    for lo, hi in spans:
        in_spans |= (ts >= _us(lo)) & (ts < _us(hi))
    positive = targets.column("positive_known_at").to_numpy(zero_copy_only=False)  # float: NaN where none
    negative = targets.column("negative_known").to_numpy() == 1
    # the label rule (sira.training.windows.label_rule), on columns
    y = np.where(positive <= _us(windows.cutoff), 1.0,
                 np.where((ts <= _us(windows.mature_until)) | negative, 0.0, np.nan))
    keep = np.flatnonzero(in_spans & ~np.isnan(y))
    ids = np.array(targets.column("event_id").to_pylist(), dtype=object)
    order = keep[np.lexsort((ids[keep].astype(str), ts[keep]))]  # (time, event id), as the v1 builder
    segments = {c: np.array(targets.column(c).to_pylist(), dtype=object)[order] for c in ("country", "channel")}
    return np.ascontiguousarray(X[order]), y[order], ts[order].astype(np.int64), ids[order].tolist(), segments, source
