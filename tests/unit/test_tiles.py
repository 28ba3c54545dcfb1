"""Feature engine v2's state and compiled fold (#21), against an independent brute-force implementation of
the same semantics over the raw events: equal integers (counts, sums in 1e-4 units, maxima), so equal
features bit for bit, for random event streams with ties, gaps longer than the windows and bytes round
trips; a state whose size does not depend on the entity's event rate."""
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sira.features import hashing, packing, tiles
from sira.features.definitions import PAYMENTS_V1, parse_duration

SPECS = [PAYMENTS_V1.entity("customer"), PAYMENTS_V1.entity("card"), PAYMENTS_V1.entity("terminal")]
T0 = 20_700 * 86_400 * tiles.US  # midnight: events land on hop boundaries, where off-by-one edges show


def part(layout, vector, op):
    """The features of one kind (an ``OP_*``) in a vector, NaN as None."""
    return [None if v != v else float(v) for (o, _, _), v in zip(layout.ops.tolist(), vector.tolist()) if o == op]


def risk(layout, vector):
    """Per risk window: (risk, risk_count)."""
    return list(zip(part(layout, vector, tiles.OP_RISK), part(layout, vector, tiles.OP_RISK_COUNT)))


def values(layout, value):
    """Every categorical column of an event set to ``value``."""
    return tiles.hashes(layout, {c: value for c in layout.columns})


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


def expected_features(spec, rows):
    """The window features from brute-force integers, with the one division each the kernel makes."""
    out = {}
    for w, (count, total, present, peak) in zip(spec.windows, rows):
        values = {"count": float(count), "sum": total / tiles.SCALE,
                  "mean": total / (present * tiles.SCALE) if present else None,
                  "max": peak / tiles.SCALE if peak != tiles.MISSING else None}
        for agg in spec.aggregations:
            out[f"{spec.entity}_count_{w}" if agg == "count" else f"{spec.entity}_{agg}_amount_{w}"] = values[agg]
    return out


def window_values(spec, features):
    return {k: v for k, v in features.items() if k in expected_features(spec, [(0, 0, 0, 0)] * len(spec.windows))}


gaps = st.one_of(st.just(0), st.integers(1, 600), st.integers(600, 6 * 3600), st.integers(86_400, 40 * 86_400),
                 st.sampled_from([300, 3_600, 86_400, 7 * 86_400, 30 * 86_400]))  # exactly a hop or a window
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
        status, vector = tiles.step(layout, state, ts, units)
        assert status == tiles.OK
        seen.append((ts, units))
        assert window_values(spec, tiles.named(layout, vector)) == expected_features(spec, reference(spec, seen, ts))
        if i == round_trip_at:  # what PostgreSQL or Redis gives back continues the same
            state = packing.decode(layout, packing.encode(layout, state))
            assert window_values(spec, tiles.named(layout, tiles.read(layout, state, ts))) == \
                expected_features(spec, reference(spec, seen, ts))


SUM_CAP = 2**63 - 1  # int64's largest: a window's sum in 1e-4 units stops there
huge = st.one_of(st.none(), st.sampled_from([0.0, 12.5, 1e12, 3e14, 5e14, 9e14]))


@settings(max_examples=60, deadline=None)
@given(spec_index=st.integers(0, len(SPECS) - 1), stream=st.lists(st.tuples(gaps, huge), min_size=1, max_size=40))
@example(spec_index=0, stream=[(0, 5e14), (1, 5e14)])  # the review's customer: a 1h sum of -8.4e14 (wrapped)
def test_window_sums_saturate_at_the_int64_maximum_and_never_wrap(spec_index, stream):
    """Amounts are never negative, so a sum that stops at the cap is min(true sum, cap) whatever the order and
    grouping of its additions (an hourly window's full days are read from the day ring): every fold, online or
    offline, gives the same saturated sum."""
    spec = SPECS[spec_index]
    layout = tiles.Layout.of(spec)
    state = layout.empty()
    ts, seen = T0, []
    for gap, amount in stream:
        ts += gap * tiles.US
        units = tiles.fixed(amount)
        status, vector = tiles.step(layout, state, ts, units)
        assert status == tiles.OK
        seen.append((ts, units))
        # past 2**53 the kernel's divisions take the int64s as floats first (Python's int / int is exact)
        capped = [(n, float(min(total, SUM_CAP)), present, peak if peak == tiles.MISSING else float(peak))
                  for n, total, present, peak in reference(spec, seen, ts)]
        assert window_values(spec, tiles.named(layout, vector)) == expected_features(spec, capped)
        assert all(v >= 0 for v in part(layout, vector, tiles.OP_SUM) + part(layout, vector, tiles.OP_MEAN) if v)


def test_an_amount_beyond_int64_units_saturates_too():
    assert tiles.fixed(1e12) == 10**16 and tiles.fixed(1e15) == SUM_CAP and tiles.fixed(1e300) == SUM_CAP


def test_features_come_from_the_integers_in_one_division():
    spec = PAYMENTS_V1.entity("customer")
    layout = tiles.Layout.of(spec)
    state = layout.empty()
    values = tiles.hashes(layout, {})
    for k, amount in enumerate([10.1, 20.2, None, 30.3]):
        tiles.step(layout, state, T0 + k * tiles.US, tiles.fixed(amount), values)
    values = tiles.named(layout, tiles.read(layout, state, T0 + 3 * tiles.US))
    assert values["customer_count_1h"] == 4.0 and values["customer_sum_amount_1h"] == 606_000 / 10_000
    assert values["customer_mean_amount_1h"] == 606_000 / (3 * 10_000) and values["customer_max_amount_1h"] == 30.3
    empty = tiles.named(layout, tiles.read(layout, layout.empty(), T0))
    assert empty["customer_count_1d"] == 0.0 and empty["customer_mean_amount_1d"] is None
    assert empty["customer_max_amount_1d"] is None


def test_a_late_event_is_refused_and_changes_nothing():
    layout = tiles.Layout.of(SPECS[0])
    state = layout.empty()
    none = tiles.hashes(layout, {})
    assert tiles.step(layout, state, T0, tiles.fixed(5.0), none)[0] == tiles.OK
    before = state.copy()
    assert tiles.step(layout, state, T0 - tiles.US, tiles.fixed(7.0), none)[0] == tiles.LATE
    assert np.array_equal(state, before)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.entity)
def test_the_state_is_bounded_whatever_the_event_rate(spec):
    layout = tiles.Layout.of(spec)
    sizes = []
    for per_day in (1, 100, 2_000):
        state = layout.empty()
        step = 86_400 * tiles.US // per_day
        for k in range(per_day * 31):
            tiles.step(layout, state, T0 + k * step, tiles.fixed(1.0), values(layout, f"v{k % 100}"))
        sizes.append(len(packing.encode(layout, state)))
    # stored: the rows still readable, packed; a quiet entity's bytes are small, a busy one's bounded by its
    # windows (the terminal's hourly risk ring over 37 days, the customer's 3 x 64 last-seen values)
    # measured: customer 1.9 / 5.3 / 5.6 KB, card 0.1 / 2.9 / 3.3 KB, terminal 0.6 / 5.8 / 6.9 KB (dense: 46 KB)
    assert sizes[0] < 2_500 and sizes[1] <= sizes[2] < 8_000


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
        packing.decode(customer, packing.encode(terminal, terminal.empty()))


def reference_categorical(spec, events, i):
    """Distinct counts at event i (its window up to and including it) and its novelty flags (against the
    events before it), by brute force over the raw events."""
    t = events[i][0]

    def start(w):
        window = parse_duration(w) * tiles.US
        hop = tiles.hop_us(window)
        return ((t - window) // hop) * hop

    distinct = [len({e[2][c] for e in events[:i + 1] if e[0] >= start(w) and e[2][c] is not None})
                for c, w in spec.distinct]
    novelty = []
    for c, w in spec.novelty:
        value = events[i][2][c]
        before = {e[2][c] for e in events[:i] if e[0] >= start(w)}
        novelty.append(None if value is None else 0.0 if value in before else 1.0)
    return distinct, novelty


category = st.one_of(st.none(), st.sampled_from([f"v{k}" for k in range(8)]))


@settings(max_examples=60, deadline=None)
@given(spec_index=st.sampled_from([0, 1]),  # the customer and the card have categorical features
       stream=st.lists(st.tuples(gaps, st.fixed_dictionaries({c: category for c in ("terminal_id", "country",
                                                                                  "device_id")})),
                       min_size=1, max_size=50))
def test_distinct_counts_and_novelty_equal_the_brute_force(spec_index, stream):
    spec = SPECS[spec_index]
    layout = tiles.Layout.of(spec)
    state = layout.empty()
    ts, seen = T0, []
    for i, (gap, row) in enumerate(stream):
        ts += gap * tiles.US
        seen.append((ts, None, row))
        hashes = tiles.hashes(layout, row)
        status, vector = tiles.step(layout, state, ts, tiles.fixed(1.0), hashes)
        assert status == tiles.OK
        distinct, expected_novelty = reference_categorical(spec, seen, i)
        assert (part(layout, vector, tiles.OP_DISTINCT), part(layout, vector, tiles.OP_NEW)) == \
            (distinct, expected_novelty)


def test_distinct_counts_saturate_at_the_cap_and_the_oldest_value_is_forgotten():
    spec = PAYMENTS_V1.entity("card")  # distinct terminals in 1 h and 1 d
    layout = tiles.Layout.of(spec)
    state = layout.empty()
    for k in range(tiles.DISTINCT_CAP + 10):
        tiles.step(layout, state, T0 + k * tiles.US, tiles.fixed(1.0), values(layout, f"t{k}"))
    assert part(layout, tiles.read(layout, state, T0 + 100 * tiles.US), tiles.OP_DISTINCT) == [tiles.DISTINCT_CAP] * 2
    customer = tiles.Layout.of(PAYMENTS_V1.entity("customer"))
    state = customer.empty()
    country = customer.columns.index("country")

    def event(k, value):
        hashes = tiles.hashes(customer, {customer.columns[country]: value})
        return part(customer, tiles.step(customer, state, T0 + k * tiles.US, tiles.fixed(1.0), hashes)[1],
                    tiles.OP_NEW)

    assert event(0, "SN") == [1.0, None, None]  # novelty of country, device, terminal: first seen
    for k in range(1, tiles.DISTINCT_CAP + 1):
        event(k, f"c{k}")  # as many other countries as the map holds: SN, the least recently seen, goes
    assert event(tiles.DISTINCT_CAP + 1, "SN") == [1.0, None, None]
    assert event(tiles.DISTINCT_CAP + 2, "SN") == [0.0, None, None]


def test_a_value_hash_is_stable_across_processes():
    import subprocess
    import sys

    here = hashing.value_hash("ter-000031")
    there = subprocess.run([sys.executable, "-c", "from sira.features.hashing import value_hash; "
                            "print(value_hash('ter-000031'))"], capture_output=True, text=True, check=True)
    assert int(there.stdout) == here and hashing.value_hash(None) == tiles.MISSING


@pytest.mark.parametrize("stored", [False, True], ids=["in memory", "stored between"])
@pytest.mark.parametrize("seen_before_start_us, expected", [(0, 0.0), (1, 1.0)])
def test_novelty_counts_a_value_seen_exactly_at_the_windows_start(seen_before_start_us, expected, stored):
    """The 30-day novelty window of an event at t starts at floor((t - 30d) / 1d) * 1d, inclusive; a state
    stored after an event with the same window start keeps that value."""
    layout = tiles.Layout.of(PAYMENTS_V1.entity("customer"))
    country = layout.columns.index("country")
    t = T0 + 30 * 86_400 * tiles.US + 5 * 3_600 * tiles.US  # 05:00, thirty days on: its window starts at T0
    state = layout.empty()
    hashes = tiles.hashes(layout, {layout.columns[country]: "SN"})
    tiles.step(layout, state, T0 - seen_before_start_us, tiles.fixed(1.0), hashes)
    tiles.step(layout, state, t - 3_600 * tiles.US, tiles.fixed(1.0), tiles.hashes(layout, {}))  # no country
    if stored:
        state = packing.decode(layout, packing.encode(layout, state))
    assert part(layout, tiles.step(layout, state, t, tiles.fixed(1.0), hashes)[1], tiles.OP_NEW)[0] == expected


def reference_risk(spec, events, labels, i):
    """Per risk window at event i: (risk, risk_count) by brute force over the raw events and labels."""
    t = events[i][0]
    delay = parse_duration(spec.label_delay) * tiles.US
    hour = tiles.RISK_HOP_US
    out = []
    for w in spec.risk_windows:
        lo, hi = (t - delay - parse_duration(w) * tiles.US) // hour, (t - delay) // hour
        inside = [j for j in range(i + 1) if lo <= events[j][0] // hour <= hi]
        positives = sum(1 for j in inside if j in labels and labels[j] < t)
        out.append((positives / len(inside) if inside else 0.0, float(len(inside))))
    return out


lags = st.one_of(st.none(), st.integers(0, 3_600), st.integers(3_600, 20 * 86_400), st.sampled_from([7 * 86_400]))


@settings(max_examples=80, deadline=None)
@given(stream=st.lists(st.tuples(gaps, lags), min_size=1, max_size=60),
       round_trip_at=st.integers(0, 60))
# found by CI: a label settled into an hour the ring still held reset the day slot a newer event had taken
@example(stream=[(1, None), (1253545, 0), (3325654, None), (687600, None)], round_trip_at=0)
def test_delayed_label_risk_equals_the_brute_force(stream, round_trip_at):
    """Events in time order and their positive labels applied when they become known (a merged timeline, as
    online), both edges of each delayed window at an hour."""
    spec = PAYMENTS_V1.entity("terminal")
    layout = tiles.Layout.of(spec)
    state = layout.empty()
    ts, events, labels = T0, [], {}
    for gap, lag in stream:
        ts += gap * tiles.US
        events.append((ts, None, {}))
        if lag is not None:
            labels[len(events) - 1] = ts + lag * tiles.US
    timeline = sorted([(e[0], 0, j) for j, e in enumerate(events)] + [(k, 1, j) for j, k in labels.items()])
    for step, (_at, kind, j) in enumerate(timeline):
        if kind == 1:
            assert tiles.label(layout, state, events[j][0], labels[j]) == tiles.OK
            continue
        status, vector = tiles.step(layout, state, events[j][0], tiles.fixed(1.0))
        assert status == tiles.OK and risk(layout, vector) == reference_risk(spec, events, labels, j)
        if step == round_trip_at:
            state = packing.decode(layout, packing.encode(layout, state))
            assert risk(layout, tiles.read(layout, state, events[j][0])) == reference_risk(spec, events, labels, j)


def test_delayed_label_risk_at_its_edges():
    """The cases random streams rarely hit: an event in the oldest and in the newest hour of a window, a label
    known exactly at the event's time (not counted) or a microsecond before (counted), and settled then."""
    spec = PAYMENTS_V1.entity("terminal")  # delay 7 d; risk windows 1 d, 7 d, 30 d
    layout = tiles.Layout.of(spec)
    hour, day = tiles.RISK_HOP_US, 86_400 * tiles.US
    t = T0 + 40 * day + 30 * 60 * tiles.US  # 00:30, forty days on
    oldest = ((t - 8 * day) // hour) * hour  # the first hour of the 1-day window
    newest = ((t - 7 * day) // hour) * hour + 59 * 60 * tiles.US  # the last minute of its last hour
    state = layout.empty()
    times = [oldest - 1, oldest, newest, newest + hour]  # just out, in, in, too recent
    for at in times:
        tiles.step(layout, state, at, tiles.fixed(1.0))
    assert tiles.label(layout, state, oldest, t - 1) == tiles.OK  # known a microsecond before t
    assert tiles.label(layout, state, newest, t) == tiles.OK  # known at t: not yet
    tiles.step(layout, state, t - 1, tiles.fixed(1.0))  # an event between: settles the first label only
    vector = tiles.step(layout, state, t, tiles.fixed(1.0))[1]
    assert risk(layout, vector)[0] == (0.5, 2.0)  # 1 day: oldest and newest, one positive known
    events = [(at, None, {}) for at in [*times, t - 1, t]]
    assert risk(layout, vector) == reference_risk(spec, events, {1: t - 1, 2: t}, 5)


def test_a_label_known_at_the_newest_events_time_waits_for_a_later_event():
    """Known at the newest event's time: not before an event at that same time (a tie), so not settled yet."""
    spec = PAYMENTS_V1.entity("terminal")
    layout = tiles.Layout.of(spec)
    day = 86_400 * tiles.US
    first, t = T0, T0 + 8 * day
    state = layout.empty()
    tiles.step(layout, state, first, tiles.fixed(1.0))
    tiles.step(layout, state, t, tiles.fixed(1.0))
    tiles.label(layout, state, first, t)  # known at t, the newest event's time
    assert risk(layout, tiles.step(layout, state, t, tiles.fixed(1.0))[1])[0] == (0.0, 1.0)  # a second event at t
    assert risk(layout, tiles.step(layout, state, t + 1, tiles.fixed(1.0))[1])[0] == (1.0, 1.0)
