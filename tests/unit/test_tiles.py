"""Feature engine v2's state and compiled fold (#21), against an independent brute-force implementation of
the same semantics over the raw events: equal integers (counts, sums in 1e-4 units, maxima), so equal
features bit for bit, for random event streams with ties, gaps longer than the windows and bytes round
trips; a state whose size does not depend on the entity's event rate."""
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sira.features import tiles
from sira.features.definitions import PAYMENTS_V1, parse_duration

SPECS = [PAYMENTS_V1.entity("customer"), PAYMENTS_V1.entity("card"), PAYMENTS_V1.entity("terminal")]
T0 = 1_790_000_000 * tiles.US


def reference(spec, events, t):
    """Per window: count, sum, present, max over the folded events from the window's hopped start to t."""
    rows = []
    for w in spec.windows:
        window = parse_duration(w) * tiles.US
        hop = tiles.hop_us(window)
        start = ((t - window) // hop) * hop
        inside = [a for ts, a in events if start <= ts <= t]
        amounts = [a for a in inside if a != tiles.MISSING]
        rows.append((len(inside), sum(amounts), len(amounts), max(amounts) if amounts else int(tiles.MISSING)))
    return rows


gaps = st.one_of(st.just(0), st.integers(1, 600), st.integers(600, 6 * 3600), st.integers(86_400, 40 * 86_400))
amounts = st.one_of(st.none(), st.decimals(min_value=0, max_value=100_000, places=4, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(spec_index=st.integers(0, len(SPECS) - 1),
       stream=st.lists(st.tuples(gaps, amounts), min_size=1, max_size=60),
       round_trip_at=st.integers(0, 60))
def test_the_fold_equals_the_brute_force_windows_after_every_event(spec_index, stream, round_trip_at):
    spec = SPECS[spec_index]
    layout = tiles.Layout.of(spec)
    state = layout.empty()
    ts, seen = T0, []
    for i, (gap, amount) in enumerate(stream):
        ts += gap * tiles.US  # a gap of 0: a tie, folded after the one before it
        units = tiles.fixed(None if amount is None else float(amount))
        assert tiles.fold(layout, state, ts, units) == tiles.OK
        seen.append((ts, units))
        if i == round_trip_at:  # what PostgreSQL or Redis gives back continues the same
            state = tiles.from_bytes(layout, tiles.to_bytes(state))
        assert [tuple(int(v) for v in row) for row in tiles.aggregates(layout, state, ts)] == \
            reference(spec, seen, ts)


def test_features_come_from_the_integers_in_one_division():
    spec = PAYMENTS_V1.entity("customer")
    layout = tiles.Layout.of(spec)
    state = layout.empty()
    for k, amount in enumerate([10.1, 20.2, None, 30.3]):
        tiles.fold(layout, state, T0 + k * tiles.US, tiles.fixed(amount))
    values = tiles.window_features(spec, tiles.aggregates(layout, state, T0 + 3 * tiles.US))
    assert values["customer_count_1h"] == 4.0 and values["customer_sum_amount_1h"] == 606_000 / 10_000
    assert values["customer_mean_amount_1h"] == 606_000 / (3 * 10_000) and values["customer_max_amount_1h"] == 30.3
    empty = tiles.window_features(spec, tiles.aggregates(layout, layout.empty(), T0))
    assert empty["customer_count_1d"] == 0.0 and empty["customer_mean_amount_1d"] is None
    assert empty["customer_max_amount_1d"] is None


def test_a_late_event_is_refused_and_changes_nothing():
    layout = tiles.Layout.of(SPECS[0])
    state = layout.empty()
    assert tiles.fold(layout, state, T0, tiles.fixed(5.0)) == tiles.OK
    before = state.copy()
    assert tiles.fold(layout, state, T0 - tiles.US, tiles.fixed(7.0)) == tiles.LATE
    assert np.array_equal(state, before)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.entity)
def test_the_state_is_bounded_whatever_the_event_rate(spec):
    layout = tiles.Layout.of(spec)
    sizes = set()
    for per_day in (1, 100, 10_000):
        state = layout.empty()
        step = 86_400 * tiles.US // per_day
        for k in range(min(per_day * 31, 20_000)):
            tiles.fold(layout, state, T0 + k * step, tiles.fixed(1.0))
        sizes.add(len(tiles.to_bytes(state)))
    # 40 bytes a bucket: the customer's 7-day window at a 1-hour hop dominates (8.1 KB); packing is next
    assert len(sizes) == 1 and sizes.pop() < 10_000


def test_the_hops_follow_the_window_length():
    assert [tiles.hop_us(parse_duration(w) * tiles.US) // tiles.US for w in ("1h", "11h", "12h", "1d", "7d", "11d",
                                                                               "12d", "30d")] == \
        [300, 300, 3600, 3600, 3600, 3600, 86_400, 86_400]


@pytest.mark.parametrize("text", ["0.00005", "1.23445", "1.23455", "99999.99995", "0.0001", "12.5", "7"])
def test_amounts_become_1e4_units_as_numeric_rounds(text):
    expected = int(Decimal(text).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP) * 10_000)
    assert tiles.fixed(float(text)) == expected or abs(float(text) * 10_000 % 1 - 0.5) < 1e-6


def test_a_state_of_another_layout_is_refused():
    customer, terminal = (tiles.Layout.of(s) for s in (SPECS[0], SPECS[2]))
    with pytest.raises(ValueError, match="layout"):
        tiles.from_bytes(customer, tiles.to_bytes(terminal.empty()))
