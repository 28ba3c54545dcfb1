"""Entity histories as a replica caches them, and when a cached one still holds a snapshot's state."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sira.features.definitions import ENTITY_COLUMNS, History
from sira.serving.schemas import Item


@dataclass
class CachedHistory:
    history: History


def _touches(item: "Item", key: tuple[str, str]) -> bool:
    """Whether a request's event belongs to an entity's history (its folded history must not be cached
    when the request turned out to be a replay)."""
    if item.event is None:
        return False
    column = ENTITY_COLUMNS.get(key[0])
    return column is not None and item.event.get(column) == key[1]


def _holds_state(history: History, last_event_id: str, n_events: int, labelled: int, lookback_us: int) -> bool:
    """Whether a cached history holds the snapshot state a notification describes: the state's newest
    event is in it, with as many events within the lookback up to it and as many labels.

    It may hold newer events too: folded by this replica after the ones its recorder has just
    stored (a busy entity, a terminal, always has some). Dropping it then would make the next
    request read a snapshot that lacks them: behind, not fresher. Another writer's event, a
    late one, a label or a rematerialisation changes the counts or the newest event: dropped.
    """
    if not len(history):
        return False
    at = np.flatnonzero(history.event_id == last_event_id)
    if at.size != 1:
        return False
    upto = int(at[0]) + 1
    ts = history.ts[:upto]
    known = history.label_known_at
    labels = 0 if known is None else int(np.count_nonzero(np.isfinite(known[:upto])))
    return int(np.count_nonzero(ts > int(ts[-1]) - lookback_us)) == n_events and labels == labelled
