"""The counterfactual's amount search covers every amount: the crossings of split thresholds it locates are
the exact cents a brute force over every cent finds, the ranges between them are each scored at the cent
nearest the paid amount, and the features the amount drives never decrease as it grows (what makes the
ranges' scores constant)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from sira.features.definitions import get_feature_set
from sira.features.engine import engine_of
from sira.monitoring.counterfactual import crossings, nearest_per_range

TOP = 300_000  # cents: 3,000.00, small enough to try every cent


def columns(cents: np.ndarray) -> np.ndarray:
    """What an amount drives, as feature engine v2 computes it for a payment that is the newest of its
    windows: the amount, its log, a sum and a mean over others' 812.37 in 3 payments, a maximum over a
    largest other of 450.00, an amount ratio, and a column the amount does not move."""
    a = cents / 100
    return np.column_stack([a, np.log1p(a), 812.37 + a, (812.37 + a) / 4, np.maximum(450.0, a),
                            a / ((812.37 + a) / 4), np.full(a.shape, 7.0)])


def brute(column: int, threshold: float) -> int:
    every = columns(np.arange(1, TOP + 1))[:, column]
    above = np.flatnonzero(every > threshold)
    return -1 if not above.size or above[0] == 0 else int(above[0]) + 1


@pytest.mark.unit
def test_the_crossings_are_the_cents_a_brute_force_finds():
    rng = np.random.default_rng(7)
    pairs = [(0, 149.985), (0, 12.0), (1, 5.01), (2, 1000.5), (2, 800.0), (3, 300.0), (4, 449.0), (4, 1234.567),
             (5, 1.0), (5, 2.5), (5, 3.999), (6, 6.5), (6, 7.5), (0, 5000.0)]
    pairs += [(int(c), float(t)) for c, t in zip(rng.integers(0, 6, 40), rng.uniform(0, 3000, 40))]
    evaluated = []

    def evaluate(cents):
        evaluated.append(len(cents))
        return columns(cents)

    found, tried = crossings(evaluate, pairs, TOP, seeds=[17325])
    assert found.tolist() == [brute(c, t) for c, t in pairs]
    # beyond reach on either side: none (a column that never moves, a threshold above its largest value)
    assert found[pairs.index((6, 6.5))] == -1 and found[pairs.index((0, 5000.0))] == -1
    assert tried == sum(evaluated) < 60 * len(pairs)  # far from every cent (300,000)


@pytest.mark.unit
def test_each_range_is_scored_at_its_cent_nearest_the_paid_amount():
    starts = np.array([1, 5000, 14999, 15000, 20000])  # ranges 1-4999, 5000-14998, 14999, 15000-19999, 20000-TOP
    assert nearest_per_range(starts, 17325.0, TOP) == [4999, 14998, 14999, 17324, 17326, 20000]
    # a paid amount between two cents: the cents on either side, within its range
    assert nearest_per_range(starts, 14999.5, TOP) == [4999, 14998, 14999, 15000, 20000]
    assert nearest_per_range(np.array([1]), 1.0, TOP) == [2]


@pytest.mark.unit
def test_the_features_the_amount_drives_never_decrease_as_it_grows():
    engine = engine_of(get_feature_set("payments", 2))
    t = datetime(2026, 10, 10, 12, tzinfo=timezone.utc)
    rng = np.random.default_rng(3)
    states = {entity: layout.empty() for entity, layout in engine.layouts.items()}
    for k in range(40):  # a history: the customer's, their card's and the terminal's payments of 30 days
        engine.event_vector({"event_id": f"h-{k}", "occurred_at": t - timedelta(hours=int(rng.integers(1, 700))
                                                                                + k / 100),
                             "amount": float(rng.uniform(1, 900)), "customer_id": "c", "card_token": "k",
                             "terminal_id": f"t-{k % 3}", "country": "GB", "device_id": None}, states)
    amounts = np.unique(np.concatenate([np.geomspace(0.01, 1e12, 400), rng.uniform(1, 2000, 400)]))
    rows = []
    for amount in amounts:
        copies = {entity: state.copy() for entity, state in states.items()}
        vector, late = engine.event_vector({"event_id": "p", "occurred_at": t, "amount": float(amount),
                                            "customer_id": "c", "card_token": "k", "terminal_id": "t-0",
                                            "country": "GB", "device_id": None}, copies)
        assert not late
        rows.append(vector)
    values = np.array(rows)
    moved = [n for j, n in enumerate(engine.names)
             if not np.array_equal(values[:, j], np.full(len(amounts), values[0, j]), equal_nan=True)]
    assert {"amount", "log_amount", "customer_sum_amount_1h", "customer_max_amount_30d",
            "customer_amount_ratio_30d", "terminal_mean_amount_7d"} <= set(moved)
    for name in moved:
        column = values[:, engine.names.index(name)]
        assert np.all(np.diff(column) >= 0), name
