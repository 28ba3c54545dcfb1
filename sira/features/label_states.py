"""Labels folded into feature engine v2's stored states as they are written, so a served vector counts them.

A delayed-label risk feature (``terminal_risk_7d``: the share of an entity's events whose positive label was
known before t) reads the positives its entity's state holds. Offline, an event counts as positive from
when a source first said so until no source says so any more, each at its ``known_at``
(:func:`sira.features.columns.read_labels`, from ``sira_feedback_history``); online, every writer of a
label (``POST /v1/feedback``, ``sira feedback import``, stream and Kafka label entries: all through
:func:`sira.ingest.labels.record_labels`) calls :func:`fold_label_changes` in its transaction: what the
write changed in the events' histories becomes signed changes (+1 positive from a known_at, -1 no longer
from one: a chargeback reversed), folded under the entities' write locks into the states of the feature sets
in service that read that label, written back with a bumped revision and notified with no origin, so every
replica drops its cached copy (:mod:`sira.serving.states`). The cost: two indexed reads of the events'
label histories, and per entity one state read, a compiled call per change and one write. A label whose event is not stored yet is folded right after that event (:func:`fold_stored_labels`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from sira.core import db
from sira.features.columns import history_query, transitions
from sira.features.engine import Engine, engine_of
from sira.features.states import lock_entities, read_states, write_states
from sira.features.store import from_us, to_us

if TYPE_CHECKING:
    from sira.core.db import Connection
    from sira.features.definitions import FeatureSet

Changes = Counter  # (event id, known_at µs, +1 / -1) -> how many: an event's label history as changes


async def label_changes(conn: Connection, label_name: str, event_ids: Iterable[str]) -> Changes:
    """The events' label history as the changes the features count (:func:`sira.features.columns.transitions`:
    positive from when a source first says so, until no source does)."""
    rows = await conn.fetch(history_query([], " AND h.event_id = ANY($2::text[])"), label_name, sorted(set(event_ids)))
    chosen, signs = transitions([r["event_id"] for r in rows], [r["known_at"] for r in rows],
                                [r["source"] for r in rows], [r["label"] for r in rows])
    return Counter((rows[i]["event_id"], rows[i]["known_at"], sign) for i, sign in zip(chosen, signs))


def tiles_reading(feature_sets: Iterable[FeatureSet], label_name: str) -> list[FeatureSet]:
    """The v2 feature sets among ``feature_sets`` with a risk feature on ``label_name``."""
    return [fs for fs in feature_sets if fs.engine == "tiles" and fs.label_name == label_name
            and any(spec.risk_windows for spec in fs.entities)]


async def fold_label_changes(conn: Connection, feature_sets: Sequence[FeatureSet], label_name: str,
                             before: Changes, after: Changes) -> int:
    """Fold what a label write changed (:func:`label_changes` before and after it) into ``feature_sets``'
    states: a change it added, and the opposite of one it took away (a history row deleted); returns the
    states written."""
    changes = [(e, k, sign) for (e, k, sign), n in (after - before).items() for _ in range(n)]
    changes += [(e, k, -sign) for (e, k, sign), n in (before - after).items() for _ in range(n)]
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
    known = await label_changes(conn, fs.label_name, event_ids)
    if not known:
        return 0
    return await _fold(conn, [fs], [c for c, n in sorted(known.items()) for _ in range(n)], None, skip)


def _apply(engine: Engine, changes: Sequence[tuple[str, int, int]],
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
                engine.label(spec.entity, states[key], ts, known_at, delta)
                changed.add(key)
    return changed


async def _fold(conn: Connection, feature_sets: Sequence[FeatureSet], changes: Sequence[tuple[str, int, int]],
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


__all__ = ["fold_label_changes", "fold_stored_labels", "label_changes", "tiles_reading"]
