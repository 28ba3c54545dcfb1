"""Which snapshot notifications a replica's cached history already holds (and keeps)."""

import numpy as np

from sira.features.history import History
from sira.serving.histories import _holds_state

DAY = 86_400 * 1_000_000


def history(n: int, labelled: tuple[int, ...] = ()) -> History:
    return History.from_rows([{"ts": i * DAY, "amount": 1.0, "event_id": f"e{i}",
                               "label_known_at": (i * DAY + 1) if i in labelled else None} for i in range(n)])


def test_the_same_state_or_an_older_one_of_it_is_held():
    h = history(6, labelled=(1,))
    assert _holds_state(h, "e5", 6, 1, 30 * DAY)  # the newest event: the same state
    assert _holds_state(h, "e3", 4, 1, 30 * DAY)  # the recorder lags: events after e3 were folded here
    assert _holds_state(h, "e3", 2, 1, 2 * DAY)  # within the lookback: e2, e3 (e1 is out of it)
    assert _holds_state(h, "e0", 1, 0, 30 * DAY)  # the label of e1 is after e0


def test_a_state_with_other_events_or_labels_is_not():
    h = history(6, labelled=(1,))
    assert not _holds_state(h, "e3", 5, 1, 30 * DAY)  # one more event before e3: another writer's
    assert not _holds_state(h, "e3", 4, 2, 30 * DAY)  # one more label: a chargeback arrived
    assert not _holds_state(h, "e9", 4, 1, 30 * DAY)  # an event this replica never saw
    assert not _holds_state(history(0), "e0", 0, 0, 30 * DAY)
    twice = History(ts=np.array([0, 1]), amount=np.ones(2), event_id=np.array(["e0", "e0"], dtype=object),
                    label_known_at=np.full(2, np.inf))
    assert not _holds_state(twice, "e0", 1, 0, 30 * DAY)  # ambiguous: never kept
