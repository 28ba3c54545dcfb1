"""The event log as columns, for feature engine v2's offline fold: PostgreSQL ``COPY`` into Arrow.

One ``COPY (SELECT ...) TO STDOUT`` per read, parsed by Arrow's multi-threaded CSV reader into typed columns:
no per-row Python objects between the database and the compiled fold (the JSONB query it replaces built a
dict per row). Times come out as integer microseconds (``extract(epoch ...)`` is exact numeric) and amounts
as integer 1e-4 units (``numeric(20,4)`` exactly), so what the fold sees is what was stored, bit for bit.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pyarrow import csv

from sira.core import db
from sira.features.engine import Engine, EventColumns, Labels
from sira.features.store import to_us
from sira.features.tiles import SUM_CAP

if TYPE_CHECKING:
    from sira.core.db import Connection

US_SQL = "(extract(epoch FROM {0}) * 1000000)::int8"


async def copy_table(conn: Connection, query: str, args: Sequence[object], types: dict[str, pa.DataType]) -> pa.Table:
    buffer = io.BytesIO()
    await conn.copy_from_query(query, *args, output=buffer, format="csv", header=True)
    if buffer.tell() == 0:
        return pa.table({name: pa.array([], type=kind) for name, kind in types.items()})
    buffer.seek(0)
    # PostgreSQL writes NULL as an empty unquoted field, an empty string as "" and any other text unquoted:
    # only the first is missing ("NA", Namibia's country code, is text)
    return csv.read_csv(buffer, convert_options=csv.ConvertOptions(
        column_types=types, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False))


def _key_filter(keys: dict[str, Sequence[str]] | None, first: int) -> tuple[str, list[object]]:
    """``AND (customer_id = ANY($n) OR ...)`` for the entities asked for (all events when ``keys`` is None)."""
    if keys is None:
        return "", []
    parts: list[str] = []
    args: list[object] = []
    for column, values in keys.items():
        parts.append(f"e.{db.quote_ident(column)} = ANY(${first + len(args)}::text[])")
        args.append(list(values))
    return (f" AND ({' OR '.join(parts)})" if parts else " AND false"), args


async def read_events(conn: Connection, engine: Engine, start: datetime, end: datetime,
                      keys: dict[str, Sequence[str]] | None = None, also: Sequence[str] = ()) -> EventColumns:
    """The events with ``start <= occurred_at < end`` (of the entities in ``keys``: key column -> ids, when
    given), with every column the feature set reads and the event columns ``also`` (e.g. segments)."""
    names = list(dict.fromkeys([*engine.columns, *also]))
    selected = ", ".join(f"e.{db.quote_ident(c)}" for c in names)
    where, args = _key_filter(keys, 3)
    # amounts saturate at int64 as tiles.fixed does (the log may hold one from before MAX_AMOUNT bounded them)
    query = (f"SELECT e.event_id, {US_SQL.format('e.occurred_at')} AS ts,"
             f" least(e.amount * 10000, {int(SUM_CAP)})::int8 AS amount,"
             f" {selected} FROM sira_events e WHERE e.occurred_at >= $1 AND e.occurred_at < $2{where}")
    table = await copy_table(conn, query, [start, end, *args],
                        {"event_id": pa.string(), "ts": pa.int64(), "amount": pa.int64(),
                         **{c: pa.string() for c in names}})
    return EventColumns.from_arrow(table, names)


def transitions(event_ids: Sequence[Any], known: Sequence[Any], sources: Sequence[Any], labels: Sequence[Any]
                ) -> tuple[list[int], list[int]]:
    """A label's history (rows sorted by event, known_at, then as written) as changes of the event being
    positive: a source's label is the last it said, an event is positive while any source says so; returns
    the rows where that flips and the sign of each (+1 positive from that row's known_at on, -1 no longer)."""
    rows: list[int] = []
    signs: list[int] = []
    said: dict[str, int] = {}
    for i, event_id in enumerate(event_ids):
        if i == 0 or event_id != event_ids[i - 1]:
            said = {}
        was = any(said.values())
        said[sources[i]] = labels[i]
        now = any(said.values())
        if now != was:
            rows.append(i)
            signs.append(1 if now else -1)
    return rows, signs


def history_query(names: Sequence[str], where: str) -> str:
    """The label history of events with a positive label once (``$1`` the label name), in transition order."""
    selected = "".join(f", e.{db.quote_ident(c)}" for c in names)
    return (f"SELECT e.event_id, {US_SQL.format('greatest(h.known_at, e.occurred_at)')} AS known_at,"
            f" {US_SQL.format('e.occurred_at')} AS ts, h.source, h.label::int AS label{selected}"
            " FROM sira_feedback_history h JOIN sira_events e ON e.event_id = h.event_id"
            f" WHERE h.label_name = $1{where} AND EXISTS (SELECT 1 FROM sira_feedback_history p"
            "  WHERE p.event_id = h.event_id AND p.label_name = $1 AND p.label)"
            " ORDER BY e.event_id, greatest(h.known_at, e.occurred_at), h.id")


async def read_labels(conn: Connection, engine: Engine, known_from: datetime, known_to: datetime,
                      keys: dict[str, Sequence[str]] | None = None) -> Labels:
    """Changes of the feature set's label that became known in ``[known_from, known_to)`` (a label "known"
    before its event counts as known at the event's time; of the entities in ``keys`` when given), read from
    its history (``sira_feedback_history``): an event becomes positive when a source first says so, and stops
    when no source does any more (a chargeback reversed), each at the known_at it was said: a vector never
    reads what was said after its time. With their event's time and entity keys, and the sign of each."""
    names = engine.key_columns
    where, args = _key_filter(keys, 2)
    table = await copy_table(conn, history_query(names, where), [engine.fs.label_name, *args],
                             {"event_id": pa.string(), "known_at": pa.int64(), "ts": pa.int64(),
                              "source": pa.string(), "label": pa.int64(), **{c: pa.string() for c in names}})
    known = table.column("known_at").to_numpy()
    rows, signs = transitions(table.column("event_id").to_pylist(), known.tolist(),
                              table.column("source").to_pylist(), table.column("label").to_pylist())
    chosen = np.array(rows, dtype=np.int64)
    inside = (known[chosen] >= to_us(known_from)) & (known[chosen] < to_us(known_to)) if rows else \
        np.zeros(0, dtype=bool)
    chosen = chosen[inside]
    take = pa.array(chosen, type=pa.int64())
    return Labels(np.array(table.column("event_id").take(take).to_pylist(), dtype=object),
                  np.ascontiguousarray(known[chosen], dtype=np.int64),
                  np.ascontiguousarray(table.column("ts").to_numpy()[chosen], dtype=np.int64),
                  {c: table.column(c).take(take).combine_chunks() for c in names},
                  np.ascontiguousarray(np.array(signs, dtype=np.int64)[inside], dtype=np.int64))
