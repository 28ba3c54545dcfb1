"""The feature maths on hand-built timelines, and online/offline parity without services."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sira.core.errors import InvalidInput
from sira.features.definitions import PAYMENTS_V1, EntityFeatures, FeatureSet, parse_duration
from sira.features.history import History, entity_features, event_entity_features, event_features
from sira.features.store import fold_events, history_from_state, state_from_history, to_us

T0 = datetime(2026, 9, 7, 12, tzinfo=timezone.utc)  # a Monday


def ev(i, minutes, amount, **extra):
    return {"ts": to_us(T0 + timedelta(minutes=minutes)), "amount": amount, "event_id": f"e{i:03d}", **extra}


SPEC = EntityFeatures("customer", windows=("1h", "1d"), distinct=(("terminal_id", "1d"),),
                      novelty=(("country", "1d"),), amount_ratio="1d")


def history(rows):
    return History.from_rows(rows, SPEC.categorical_columns)


def test_windows_include_the_event_and_nothing_after():
    h = history([
        ev(0, -1500, 100.0, terminal_id="t1", country="SN"),   # 25 h before: outside 1d
        ev(1, -90, 10.0, terminal_id="t1", country="SN"),
        ev(2, -30, 20.0, terminal_id="t2", country="SN"),
        ev(3, 0, 30.0, terminal_id="t3", country="FR"),
        ev(4, 10, 999.0, terminal_id="t9", country="US"),     # after the query event
    ])
    f = entity_features(SPEC, h, h.ts[3:4], np.array([3]))
    assert f["customer_count_1h"][0] == 2  # e2 and the event itself
    assert f["customer_sum_amount_1h"][0] == 50.0
    assert f["customer_count_1d"][0] == 3
    assert f["customer_max_amount_1d"][0] == 30.0
    assert f["customer_mean_amount_1d"][0] == 20.0
    assert f["customer_distinct_terminal_1d"][0] == 3
    assert f["customer_new_country_1d"][0] == 1.0  # FR not seen in the previous day
    assert f["customer_amount_ratio_1d"][0] == pytest.approx(30.0 / 20.0)


def test_timestamp_queries_and_empty_windows():
    h = history([ev(0, 0, 5.0, terminal_id="t", country="SN")])
    at = np.array([to_us(T0 - timedelta(minutes=1)), to_us(T0), to_us(T0 + timedelta(hours=2))])
    f = entity_features(SPEC, h, at)
    assert f["customer_count_1h"].tolist() == [0, 1, 0]
    assert np.isnan(f["customer_mean_amount_1h"][0]) and np.isnan(f["customer_max_amount_1h"][2])
    assert np.isnan(f["customer_new_country_1d"]).all()  # novelty needs an event


def test_delayed_label_risk_uses_only_labels_known_before_the_event():
    spec = EntityFeatures("terminal", windows=("1d",), aggregations=("count",), label_delay="1d", risk_windows=("2d",))
    day = 24 * 60
    rows = [
        {**ev(0, -3 * day + 60, 1.0), "label_known_at": to_us(T0 - timedelta(hours=1))},  # fraud, known in time
        {**ev(1, -2 * day - 60, 1.0), "label_known_at": to_us(T0 + timedelta(hours=1))},  # fraud, known too late
        ev(2, -int(1.5 * day), 1.0),  # legit, inside the risk window
        {**ev(3, -600, 1.0), "label_known_at": to_us(T0 - timedelta(hours=2))},  # inside the delay gap: excluded
        ev(4, 0, 1.0),
    ]
    h = History.from_rows(rows)
    f = entity_features(spec, h, h.ts[4:5], np.array([4]))
    assert f["terminal_risk_count_2d"][0] == 3  # events 0, 1, 2 fall in (t-3d, t-1d]
    assert f["terminal_risk_2d"][0] == pytest.approx(1 / 3)
    blind = entity_features(spec, h, h.ts[4:5], np.array([4]), include_labels=False)
    assert blind["terminal_risk_2d"][0] == 0.0


def test_event_level_features():
    ts = np.array([to_us(T0), to_us(datetime(2026, 9, 12, 3, tzinfo=timezone.utc))])
    f = event_features(PAYMENTS_V1, ts, np.array([10.0, np.nan]))
    assert f["hour_of_day"].tolist() == [12, 3]
    assert f["is_weekend"].tolist() == [0, 1]  # Monday, Saturday
    assert f["is_night"].tolist() == [0, 1]
    assert np.isnan(f["log_amount"][1])


def test_feature_names_are_stable_and_unique():
    names = PAYMENTS_V1.names()
    assert len(names) == len(set(names))
    assert names[:5] == ["amount", "log_amount", "hour_of_day", "is_weekend", "is_night"]
    assert "terminal_risk_7d" in names and "customer_new_country_30d" in names


def test_invalid_definitions_are_refused():
    with pytest.raises(InvalidInput):
        parse_duration("7 weeks")
    with pytest.raises(InvalidInput):
        EntityFeatures("planet")
    with pytest.raises(InvalidInput):
        EntityFeatures("customer", aggregations=("median",))
    with pytest.raises(InvalidInput):
        FeatureSet("x", 1, (EntityFeatures("customer"), EntityFeatures("customer")))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 60 * 24 * 4), st.floats(0, 1000, allow_nan=False), st.sampled_from(["SN", "FR", "US"]),
                  st.sampled_from(["t1", "t2", "t3", "t4"])),
        min_size=1, max_size=60,
    )
)
def test_online_fold_from_pruned_state_equals_offline(events):
    """Folding events one by one into a pruned snapshot state gives the offline vectors, exactly."""
    spec = PAYMENTS_V1.entity("customer")
    rows = [ev(i, m, a, country=c, terminal_id=t, device_id="d") for i, (m, a, c, t) in enumerate(events)]
    offline_h = History.from_rows(rows, spec.categorical_columns)
    offline = entity_features(spec, offline_h, offline_h.ts, np.arange(len(offline_h)))
    index = {e: i for i, e in enumerate(offline_h.event_id.tolist())}

    state = {"columns": [], "rows": []}
    for r in sorted(rows, key=lambda r: (r["ts"], r["event_id"])):  # arrival in time order
        h = history_from_state(spec, state)
        h, positions = fold_events(spec, h, [{**r, "occurred_at": T0 + timedelta(microseconds=r["ts"] - to_us(T0))}])
        pos = int(positions[0])
        online = entity_features(spec, h, h.ts[pos: pos + 1], np.array([pos]))
        for name, values in online.items():
            expected = offline[name][index[r["event_id"]]]
            got = values[0]
            assert (np.isnan(expected) and np.isnan(got)) or expected == got, (name, expected, got)
        state = state_from_history(spec, h, int(h.ts.max()))


WIDE = EntityFeatures("card", windows=("1h", "1d"), aggregations=("count", "sum", "mean", "max"), amount_ratio="7d",
                      distinct=(("terminal_id", "7d"),), novelty=(("terminal_id", "1d"),), label_delay="1d",
                      risk_windows=("3d",))


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([*PAYMENTS_V1.entities, WIDE]),
    st.lists(
        st.tuples(st.integers(0, 60 * 24 * 60), st.one_of(st.none(), st.floats(1e-3, 1e6, allow_nan=False)),
                  st.sampled_from(["t1", "t2", "t3", None]), st.one_of(st.none(), st.integers(0, 60 * 24 * 20))),
        min_size=1, max_size=80,
    ),
    st.data(),
)
def test_the_single_event_path_is_bit_identical_to_the_vectorised_one(spec, events, data):
    """Online requests take event_entity_features; every value equals entity_features' to the bit."""
    rows = [ev(i, m, a, country=t, terminal_id=t, device_id=t,
               label_known_at=None if k is None else to_us(T0 + timedelta(minutes=m + k)))
            for i, (m, a, t, k) in enumerate(events)]
    h = History.from_rows(rows, spec.categorical_columns)
    pos = data.draw(st.integers(0, len(h) - 1))
    want = entity_features(spec, h, h.ts[pos: pos + 1], np.array([pos]))
    got = event_entity_features(spec, h, pos)
    assert list(got) == list(want)
    for name, values in want.items():
        expected = values[0]
        assert (np.isnan(expected) and np.isnan(got[name])) or expected == got[name], (name, expected, got[name])
