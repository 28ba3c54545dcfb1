"""Labels folded into feature engine v2's stored states as they are written, so a served vector counts them.

A delayed-label risk feature (``terminal_risk_7d``: the share of an entity's events whose positive label was
known before t) reads the positives its entity's state holds. Offline, a label counts from its ``known_at``
(the first positive one of an event, :func:`sira.features.columns.read_labels`); online, every writer of a
label (``POST /v1/feedback``, ``sira feedback import``, stream and Kafka label entries: all through
:func:`sira.ingest.labels.record_labels`) calls :func:`fold_label_changes` in its transaction: what the
write changed in each event's effective ``known_at`` becomes signed label changes (+1 from the new known_at,
-1 from the old one: a label withdrawn, reversed or known earlier), folded under the entities' write locks
into the states of the feature sets in service that read that label, written back with a bumped revision
and notified with no origin, so every replica drops its cached copy (:mod:`sira.serving.states`). The cost:
two indexed reads of the events' labels, and per entity one state read, a compiled call per change and one
write. A label whose event is not stored yet is folded right after that event (:func:`fold_stored_labels`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from sira.core import db
from sira.features.engine import Engine, engine_of
from sira.features.states import lock_entities, read_states, write_states
from sira.features.store import from_us, to_us

if TYPE_CHECKING:
    from sira.core.db import Connection
    from sira.features.definitions import FeatureSet

Known = dict[str, datetime]  # event id -> when its first positive label became known (absent: none positive)


async def effective_known(conn: Connection, label_name: str, event_ids: Iterable[str]) -> Known:
    """Per event, the ``known_at`` its label counts from offline: its earliest positive label's (of any source)."""
    rows = await conn.fetch(
        "SELECT event_id, min(known_at) AS known FROM sira_feedback WHERE event_id = ANY($1::text[])"
        " AND label_name = $2 AND label GROUP BY event_id", sorted(set(event_ids)), label_name)
    return {r["event_id"]: r["known"] for r in rows}


def tiles_reading(feature_sets: Iterable[FeatureSet], label_name: str) -> list[FeatureSet]:
    """The v2 feature sets among ``feature_sets`` with a risk feature on ``label_name``."""
    return [fs for fs in feature_sets if fs.engine == "tiles" and fs.label_name == label_name
            and any(spec.risk_windows for spec in fs.entities)]


async def fold_label_changes(conn: Connection, feature_sets: Sequence[FeatureSet], label_name: str,
                             before: Known, after: Known) -> int:
    """Fold what changed between ``before`` and ``after`` (:func:`effective_known` around a label write) into
    ``feature_sets``' states; returns the states written."""
    changes: list[tuple[str, datetime, int]] = []
    for event_id in sorted(set(before) | set(after)):
        old, new = before.get(event_id), after.get(event_id)
        if old != new:
            changes += [(event_id, old, -1)] if old is not None else []
            changes += [(event_id, new, 1)] if new is not None else []
    if not changes or not feature_sets:
        return 0
    return await _fold(conn, feature_sets, changes, None)


async def fold_stored_labels(conn: Connection, fs: FeatureSet, event_ids: Sequence[str],
                             skip: Collection[tuple[str, str]] = ()) -> int:
    """Labels stored before their events (pending), folded into ``fs``' states right after the events were
    (:func:`sira.features.states.fold_events`; ``skip``: entities it rebuilt from the log, which holds the
    labels already). Returns the states written."""
    if not tiles_reading([fs], fs.label_name):
        return 0
    known = await effective_known(conn, fs.label_name, event_ids)
    if not known:
        return 0
    return await _fold(conn, [fs], [(event_id, at, 1) for event_id, at in sorted(known.items())], None, skip)


def _apply(engine: Engine, changes: Sequence[tuple[str, datetime, int]],
           events: Mapping[str, tuple[int, Mapping[str, object]]], states: dict[tuple[str, str], np.ndarray],
           skip: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Each change into the state of each risk entity of its event that ``states`` holds, in known_at order."""
    changed = set()
    for event_id, known_at, delta in sorted(changes, key=lambda c: (c[1], c[2], c[0])):
        if event_id not in events:
            continue  # not stored yet: folded with its event
        ts, event = events[event_id]
        for spec in engine.fs.entities:
            key = (spec.entity, event.get(spec.key_column))
            if spec.risk_windows and key in states and key not in skip:
                engine.label(spec.entity, states[key], ts, to_us(known_at), delta)
                changed.add(key)
    return changed


async def _fold(conn: Connection, feature_sets: Sequence[FeatureSet], changes: Sequence[tuple[str, datetime, int]],
                origin: str | None, skip: Collection[tuple[str, str]] = ()) -> int:
    columns = sorted({spec.key_column for fs in feature_sets for spec in fs.entities if spec.risk_windows})
    rows = await conn.fetch(
        f"SELECT event_id, occurred_at, {', '.join(db.quote_ident(c) for c in columns)} FROM sira_events"
        " WHERE event_id = ANY($1::text[])", sorted({c[0] for c in changes}))
    events = {r["event_id"]: (to_us(r["occurred_at"]), dict(r)) for r in rows}
    written = 0
    for fs in feature_sets:
        engine = engine_of(fs)
        entities = sorted({(spec.entity, str(e[spec.key_column])) for _, e in events.values()
                           for spec in fs.entities if spec.risk_windows and e.get(spec.key_column) is not None})
        await lock_entities(conn, fs, entities)
        keys: dict[str, list[str]] = defaultdict(list)
        for entity, key in entities:
            keys[entity].append(key)
        states = {}
        for entity, wanted in keys.items():  # an entity with no state yet: its events fold with the log's labels
            states.update({(entity, k): engine.decode(entity, data)
                           for k, data in (await read_states(conn, fs, entity, wanted)).items()})
        changed = _apply(engine, changes, events, states, set(skip))
        for entity in keys:
            mine = {k: states[(e, k)] for e, k in changed if e == entity}
            written += await write_states(conn, fs, entity, {
                k: (engine.encode(entity, s), from_us(int(s[0, 1]))) for k, s in mine.items()}, origin)
    return written


__all__ = ["effective_known", "fold_label_changes", "fold_stored_labels", "tiles_reading"]
