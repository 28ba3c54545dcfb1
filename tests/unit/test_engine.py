"""Feature engine v2 driven online and offline (#21): the same vectors bit for bit, whatever the arrival order,
cache evictions and labels; nothing of an event's vector reads what came after it; a window starting a
horizon before its first event gives the same vectors as the whole history; and an independent engine
(DuckDB, integer SQL over the same hopped windows) agrees on counts, sums, means and maxima."""
from datetime import datetime, timedelta, timezone

import duckdb
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sira.features import hashing, tiles
from sira.features.definitions import PAYMENTS_V1, PAYMENTS_V2, parse_duration
from sira.features.engine import Engine, EventColumns, Labels

ENGINE = Engine(PAYMENTS_V2)
T0 = datetime(2026, 9, 1, tzinfo=timezone.utc)  # midnight: events land on hop boundaries
US = tiles.US
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def us(t):
    return (t - EPOCH) // timedelta(microseconds=1)


gaps = st.one_of(st.just(0), st.integers(1, 900), st.integers(900, 8 * 3600), st.integers(86_400, 9 * 86_400),
                 st.sampled_from([300, 3_600, 86_400, 7 * 86_400]))
event = st.fixed_dictionaries({
    "gap": gaps, "id": st.integers(0, 99), "customer_id": st.sampled_from(["c0", "c1", "c2", None]),
    "card_token": st.sampled_from(["k0", "k1"]), "terminal_id": st.sampled_from(["t0", "t1", None]),
    "amount": st.one_of(st.none(), st.integers(0, 5_000_000).map(lambda u: u / 10_000)),
    "country": st.sampled_from(["SN", "CI", "FR", None]), "device_id": st.sampled_from(["d0", "d1", "d2", "d3"]),
    "label_lag": st.one_of(st.none(), st.integers(0, 3_600), st.integers(3_600, 20 * 86_400)),
    "late_by": st.one_of(st.just(0), st.just(0), st.integers(1, 3 * 86_400)),
})


def make(stream):
    """Events with times and ids (ties broken by id), their positive labels, each event's arrival time."""
    events, labels, arrival = [], [], []
    t = T0
    for i, e in enumerate(stream):
        t += timedelta(seconds=e["gap"])
        row = {k: e[k] for k in ("customer_id", "card_token", "terminal_id", "amount", "country", "device_id")}
        events.append({**row, "event_id": f"e{e['id']:02d}-{i:03d}", "occurred_at": t})
        arrival.append(us(t) + e["late_by"] * US)
        if e["label_lag"] is not None:  # known after the event arrived (the log refuses a label for no event)
            labels.append((events[-1]["event_id"], max(us(t) + e["label_lag"] * US, arrival[-1])))
    return events, labels, arrival


def offline(events, labels):
    cols = EventColumns.from_events(events, ENGINE.columns)
    return ENGINE.build(cols, Labels.of_events(cols, [e for e, _ in labels], [k for _, k in labels]))


def rank(e):
    """Where an event folds: by time, ties by its id's hash."""
    return us(e["occurred_at"]), hashing.value_hash(e["event_id"])


def same(a, b):
    return np.array_equal(a, b, equal_nan=True)


@settings(max_examples=70, deadline=None)
@given(stream=st.lists(event, min_size=1, max_size=40), evict=st.lists(st.integers(0, 80), max_size=6),
       round_trip=st.lists(st.integers(0, 80), max_size=6))
def test_online_equals_offline_whatever_the_arrival_order_evictions_and_labels(stream, evict, round_trip):
    """Online: events and labels processed as they arrive (a late event's entity rebuilt from the log, as the
    engine's callers do), states sometimes stored and read back, sometimes evicted and rebuilt from the log.
    Offline: one build over the whole log. Every event whose predecessors had all arrived gets the same
    vector from both, bit for bit."""
    events, labels, arrival = make(stream)
    expected, finals = offline(events, labels)
    timeline = sorted([(arrival[i], 0, events[i]["occurred_at"], events[i]["event_id"], i) for i in range(len(events))]
                      + [(known, 1, None, eid, j) for j, (eid, known) in enumerate(labels)],
                      key=lambda x: (x[0], x[1], x[2] or T0, x[3]))
    index = {e["event_id"]: i for i, e in enumerate(events)}
    states: dict[tuple[str, str], np.ndarray] = {}
    arrived: list[int] = []
    known: list[int] = []
    online = {}
    processed = {}

    def from_log(spec, key):
        """A cold entity: its state rebuilt from what the log holds (what arrived before this event)."""
        mine = [events[i] for i in arrived[:-1] if events[i].get(spec.key_column) == key]
        _, built = offline(mine, [labels[j] for j in known])
        return built[spec.entity].get(key, ENGINE.layouts[spec.entity].empty())

    for step, (_at, kind, _t, _eid, n) in enumerate(timeline):
        if kind == 1:
            known.append(n)
            e = events[index[labels[n][0]]]
            key = e.get("terminal_id")
            if key is not None and ("terminal", key) in states:
                ENGINE.label("terminal", states[("terminal", key)], us(e["occurred_at"]), labels[n][1])
            continue
        arrived.append(n)
        processed[n] = step
        e = events[n]
        mine = {}
        for spec in PAYMENTS_V2.entities:
            key = e.get(spec.key_column)
            if key is not None:
                if (spec.entity, key) not in states:  # new, or evicted: what the log holds
                    states[(spec.entity, key)] = from_log(spec, key)
                mine[spec.entity] = states[(spec.entity, key)]
        vector, late = ENGINE.event_vector(e, mine)
        for entity in late:  # the log has it in its place: rebuild, then fold nothing more (it is in there)
            spec = PAYMENTS_V2.entity(entity)
            rebuilt_rows, rebuilt = offline([events[i] for i in arrived if events[i].get(spec.key_column)
                                             == e[spec.key_column]], [labels[j] for j in known])
            states[(entity, e[spec.key_column])] = rebuilt[entity][e[spec.key_column]]
            row = [events[i] for i in arrived if events[i].get(spec.key_column) == e[spec.key_column]].index(e)
            vector[ENGINE.slices[entity]] = rebuilt_rows[row, ENGINE.slices[entity]]
        online[n] = vector
        if step in round_trip:  # stored and read back
            for (entity, key), state in list(states.items()):
                states[(entity, key)] = ENGINE.decode(entity, ENGINE.encode(entity, state))
        if step in evict:  # the cache drops everything: the next event of an entity reads the log
            states.clear()
    complete = [i for i in range(len(events))
                if all(processed[j] < processed[i] for j in range(len(events))
                       if rank(events[j]) < rank(events[i]))]
    for i in complete:
        assert same(online[i], expected[i]), (i, stream, evict, round_trip, [(name, a, b) for name, a, b in zip(ENGINE.names, online[i],
                                                                                   expected[i]) if not same(a, b)])


@settings(max_examples=50, deadline=None)
@given(stream=st.lists(event, min_size=2, max_size=40), pick=st.integers(0, 39), change=st.integers(0, 10**6))
def test_an_events_vector_reads_nothing_after_it(stream, pick, change):
    """Drop every event after it and every label known at or after its time, change the amounts of what
    followed: its vector does not move."""
    events, labels, _ = make(stream)
    pick %= len(events)
    target = events[pick]
    key = rank(target)
    expected, _ = offline(events, labels)
    before = [e for e in events if rank(e) <= key]
    known_before = [(eid, k) for eid, k in labels if k < key[0]]
    rows, _ = offline(before, known_before)
    assert same(rows[before.index(target)], expected[pick])
    altered = [e if rank(e) <= key else {**e, "amount": change / 100} for e in events]
    rows, _ = offline(altered, labels)
    assert same(rows[pick], expected[pick])


@settings(max_examples=40, deadline=None)
@given(stream=st.lists(event, min_size=2, max_size=40), cut=st.integers(0, 39))
def test_a_window_read_from_a_horizon_before_it_equals_the_whole_history(stream, cut):
    """What a training window or a cold entity reads: the events from ``horizon_us`` before its first event.
    Its vectors equal those computed over everything before."""
    events, labels, _ = make(stream)
    first = us(events[cut % len(events)]["occurred_at"])
    expected, _ = offline(events, labels)
    kept = [e for e in events if us(e["occurred_at"]) >= first - ENGINE.horizon_us]
    ids = {e["event_id"] for e in kept}
    rows, _ = offline(kept, [(eid, k) for eid, k in labels if eid in ids])
    for i, e in enumerate(events):
        if us(e["occurred_at"]) >= first:
            assert same(rows[kept.index(e)], expected[i])


def test_a_checkpoint_plus_the_days_events_equals_the_whole_history():
    rng = np.random.default_rng(3)
    events = [{"event_id": f"e{i:05d}", "occurred_at": T0 + timedelta(seconds=int(s)),
               "customer_id": f"c{rng.integers(5)}", "card_token": f"k{rng.integers(5)}",
               "terminal_id": f"t{rng.integers(3)}", "amount": float(rng.integers(100, 90_000)) / 100,
               "country": ["SN", "CI"][rng.integers(2)], "device_id": f"d{rng.integers(4)}"}
              for i, s in enumerate(np.sort(rng.integers(0, 40 * 86_400, 3_000)))]
    labels = [(e["event_id"], us(e["occurred_at"]) + int(rng.integers(1, 10 * 86_400)) * US) for e in events[::17]]
    expected, finals = offline(events, labels)
    day = us(T0 + timedelta(days=30))
    before = [e for e in events if us(e["occurred_at"]) < day]
    _, checkpoint = offline(before, [(eid, k) for eid, k in labels if k < day])
    after = [e for e in events if us(e["occurred_at"]) >= day]
    late_labels = [(eid, k) for eid, k in labels if k >= day]  # for events before the checkpoint too
    start = {entity: {key: ENGINE.decode(entity, ENGINE.encode(entity, s)) for key, s in states.items()}
             for entity, states in checkpoint.items()}
    rows, _ = ENGINE.build(EventColumns.from_events(after, ENGINE.columns),
                           Labels.of_events(EventColumns.from_events(events, ENGINE.columns),
                                            [eid for eid, _ in late_labels], [k for _, k in late_labels]), start)
    assert same(rows, expected[len(before):])


def test_duckdb_agrees_on_counts_sums_means_and_maxima():
    """An independent engine: integer SQL over the raw events with the same hopped window starts (ties in
    the order of the event ids' hashes), against the kernel's buckets."""
    rng = np.random.default_rng(11)
    n = 1_500
    seconds = np.sort(rng.integers(0, 45 * 86_400, n))
    seconds[100:110] = seconds[100]  # ties
    seconds[500] = seconds[499] = (seconds[499] // 86_400) * 86_400  # on a day's edge
    events = [{"event_id": f"e{rng.integers(10_000):05d}-{i}", "occurred_at": T0 + timedelta(seconds=int(s)),
               "customer_id": f"c{rng.integers(8)}", "card_token": f"k{rng.integers(20)}",
               "terminal_id": f"t{rng.integers(3)}",
               "amount": None if rng.random() < 0.05 else float(rng.integers(1, 5_000_000)) / 10_000,
               "country": "SN", "device_id": "d"} for i, s in enumerate(seconds)]
    rows, _ = offline(events, [])
    con = duckdb.connect()
    con.execute("CREATE TABLE ev (i INTEGER, h BIGINT, ts BIGINT, amount BIGINT, customer_id VARCHAR,"
                " card_token VARCHAR, terminal_id VARCHAR)")
    con.executemany("INSERT INTO ev VALUES (?, ?, ?, ?, ?, ?, ?)", [
        (i, hashing.value_hash(e["event_id"]), us(e["occurred_at"]), None if e["amount"] is None else tiles.fixed(e["amount"]),
         e["customer_id"], e["card_token"], e["terminal_id"]) for i, e in enumerate(events)])
    checked = 0
    for spec in PAYMENTS_V2.entities:
        for w in spec.windows:
            window = parse_duration(w) * US
            hop = tiles.hop_us(window)
            result = con.execute(f"""
                SELECT a.i, count(b.i), sum(b.amount), count(b.amount), max(b.amount)
                  FROM ev a JOIN ev b ON a.{spec.key_column} = b.{spec.key_column}
                   AND b.ts >= ((a.ts - {window}) // {hop}) * {hop}
                   AND (b.ts < a.ts OR (b.ts = a.ts AND b.h <= a.h))
                 GROUP BY a.i ORDER BY a.i""").fetchall()
            for i, count, total, present, peak in result:
                got = dict(zip(ENGINE.names, rows[i].tolist()))
                e = spec.entity
                if "count" in spec.aggregations:
                    assert got[f"{e}_count_{w}"] == float(count)
                if "sum" in spec.aggregations:
                    assert got[f"{e}_sum_amount_{w}"] == float(total or 0) / tiles.SCALE
                if "mean" in spec.aggregations:
                    mean = float(total) / float(present * tiles.SCALE) if present else None
                    assert got[f"{e}_mean_amount_{w}"] == mean or (mean is None and got[f"{e}_mean_amount_{w}"] != got[f"{e}_mean_amount_{w}"])
                if "max" in spec.aggregations:
                    top = None if peak is None else float(peak) / tiles.SCALE
                    assert got[f"{e}_max_amount_{w}"] == top or (top is None and got[f"{e}_max_amount_{w}"] != got[f"{e}_max_amount_{w}"])
                checked += 1
    assert checked == n * sum(len(s.windows) for s in PAYMENTS_V2.entities)


def test_v2_names_the_same_features_as_v1_with_its_own_semantics():
    assert PAYMENTS_V2.names() == PAYMENTS_V1.names() and ENGINE.names == PAYMENTS_V2.names()
    assert PAYMENTS_V2.engine == "tiles" and "floor((t - W) / hop)" in PAYMENTS_V2.to_dict()["window_semantics"]
    assert "(t - W, t]" in PAYMENTS_V1.window_semantics


def test_warming_up_leaves_nothing_for_traffic_to_compile():
    """What a replica or a job calls before traffic: in a fresh process, after ``warm``, scoring events,
    storing states, labels and an offline build compile nothing more (every kernel Python calls has its
    signature; the kernels they call are compiled into them)."""
    import subprocess
    import sys

    probe = (
        "import numba, random\n"
        "from datetime import datetime, timedelta, timezone\n"
        "from sira.features import engine as E, hashing, packing, tiles\n"
        "from sira.features.store import to_us\n"
        "from sira.features.definitions import PAYMENTS_V2\n"
        "E.warm(PAYMENTS_V2)\n"
        "def compiled():\n"
        "    return {f'{m.__name__}.{n}': len(k.signatures) for m in (tiles, packing, hashing)\n"
        "            for n, k in vars(m).items() if isinstance(k, numba.core.registry.CPUDispatcher)}\n"
        "before = compiled()\n"
        "eng = E.engine_of(PAYMENTS_V2)\n"
        "t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)\n"
        "events = [{'event_id': f'e{i}', 'occurred_at': t0 + timedelta(minutes=7 * i), 'amount': [12.5, None][i % 2],\n"
        "           'customer_id': f'c{i % 3}', 'card_token': 'k', 'terminal_id': f't{i % 2}', 'country': 'SN',\n"
        "           'device_id': None} for i in range(40)]\n"
        "states = {s.entity: {} for s in PAYMENTS_V2.entities}\n"
        "for e in events:\n"
        "    mine = {s.entity: states[s.entity].setdefault(e[s.key_column], eng.layouts[s.entity].empty())\n"
        "            for s in PAYMENTS_V2.entities}\n"
        "    eng.event_vector(e, mine)\n"
        "    eng.label('terminal', mine['terminal'], to_us(e['occurred_at']), to_us(e['occurred_at']) + 10**9)\n"
        "    for entity, state in mine.items():\n"
        "        eng.features_at(entity, eng.decode(entity, eng.encode(entity, state)), to_us(e['occurred_at']))\n"
        "cols = E.EventColumns.from_events(events, eng.columns)\n"
        "eng.build(cols, E.Labels.of_events(cols, ['e3'], [to_us(t0) + 10**10]))\n"
        "eng.build(cols, finals=False)\n"
        "after = compiled()\n"
        "print(sum(before.values()), sorted(n for n in after if after[n] != before[n]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    warmed, compiled_later = done.stdout.strip().split(" ", 1)
    assert int(warmed) >= 10 and compiled_later == "[]", done.stdout


def burst(n_events, n_labels):
    """``n_events`` payments at one terminal over one day (each hour), the first ``n_labels`` of them
    chargebacks known together 4 days later (one daily batch), and one payment 8 days after the day."""
    day = [{"event_id": f"b{i:03d}", "occurred_at": T0 + timedelta(minutes=14 * i), "terminal_id": "t-busy",
            "customer_id": f"c{i}", "card_token": f"k{i}", "amount": 10.0, "country": "SN", "device_id": "d0"}
           for i in range(n_events)]
    known = us(T0 + timedelta(days=4, hours=3))
    later = {**day[0], "event_id": "later", "occurred_at": T0 + timedelta(days=8, minutes=1)}
    return day, later, [(e["event_id"], known) for e in day[:n_labels]]


def terminal_risk(vector):
    names = ENGINE.names
    return {w: (vector[names.index(f"terminal_risk_{w}")], vector[names.index(f"terminal_risk_count_{w}")])
            for w in ("1d", "7d", "30d")}


def test_a_burst_of_positive_labels_known_together_counts_every_one_online_offline_and_from_a_checkpoint():
    """Finding: at most 64 pending positives per entity; the 65th and later were dropped silently (risk 0.64 for
    100 chargebacks of 100 payments). Labels now wait grouped by (hour, known_at) with a count, and a replay
    counts a label known before its next event at once."""
    day, later, labels = burst(100, 100)
    expected = {"1d": (1.0, 100.0), "7d": (1.0, 100.0), "30d": (1.0, 100.0)}
    rows, _ = offline([*day, later], labels)  # the labels between two events of the replay
    assert terminal_risk(rows[-1]) == expected
    _, finals = offline(day, labels)  # the labels after the last event: waiting in the final state
    for stored in (finals, {"terminal": {"t-busy": ENGINE.decode("terminal", ENGINE.encode("terminal",
                                                                                            finals["terminal"]["t-busy"]))}}):
        state = stored["terminal"]["t-busy"].copy()
        vector, late = ENGINE.event_vector(later, {"terminal": state})
        assert not late and terminal_risk(vector) == expected
    cols = EventColumns.from_events(day, ENGINE.columns)  # a materialize: the day's checkpoint holds them waiting
    marks = ENGINE.checkpoints(cols, Labels.of_events(cols, [e for e, _ in labels], [k for _, k in labels]))
    terminal = marks["terminal"]
    state = ENGINE.decode("terminal", terminal.state(int(terminal.last()[0])))
    vector, _ = ENGINE.event_vector(later, {"terminal": state})
    assert terminal_risk(vector) == expected
    assert ENGINE.labels_left_out == 0


def test_labels_beyond_the_bound_are_counted_not_silently_dropped():
    layout = ENGINE.layouts["terminal"]
    state = layout.empty()
    t = us(T0)
    for h in range(tiles.PENDING_CAP + 1):  # one event an hour, each labelled, each label known at its own time
        tiles.step(layout, state, t + h * 3_600 * US, tiles.fixed(1.0))
    before = ENGINE.labels_left_out
    newest = int(state[0, 1])
    statuses = [ENGINE.label("terminal", state, t + h * 3_600 * US, newest + 1 + h)
                for h in range(tiles.PENDING_CAP + 1)]
    assert statuses.count(tiles.FULL) == 1 and ENGINE.labels_left_out == before + 1


def test_a_label_taken_back_before_the_next_event_counts_nothing():
    layout = ENGINE.layouts["terminal"]
    day, later, _ = burst(10, 0)
    state = layout.empty()
    for e in day:
        ENGINE.event_vector(e, {"terminal": state})
    known = us(T0 + timedelta(days=4))
    first = us(day[0]["occurred_at"])
    assert ENGINE.label("terminal", state, first, known) == tiles.OK
    assert ENGINE.label("terminal", state, us(day[1]["occurred_at"]), known) == tiles.OK
    assert ENGINE.label("terminal", state, first, known + 5, -1) == tiles.OK  # the first one taken back
    vector, _ = ENGINE.event_vector(later, {"terminal": state})
    assert terminal_risk(vector)["1d"] == (0.1, 10.0)


def test_a_state_stored_in_format_3_is_read_with_its_waiting_labels():
    """States stored before pending labels were grouped (format 3: up to 64 rows of one label each) still
    decode, their waiting labels counted, and fold on as the same state in format 4 does."""
    from sira.features import packing

    layout = ENGINE.layouts["terminal"]
    day, later, labels = burst(30, 20)
    state = layout.empty()
    for e in day:
        ENGINE.event_vector(e, {"terminal": state})
    for event_id, known in labels:
        ENGINE.label("terminal", state, us(next(e for e in day if e["event_id"] == event_id)["occurred_at"]), known)
    widths, bases, _ = packing.columns_of(layout)
    keep = np.zeros(layout.rows, dtype=np.bool_)
    packing.live_rows(state, layout.rings, layout.windows, layout.maps, layout.risk, layout.risk_windows, keep)
    old_rows = layout.rows - tiles.PENDING_CAP + 64
    old = state[:old_rows].copy()  # format 3 kept one label a row: spread the groups back out
    pending = layout.pending_rows.start
    groups = [tuple(r) for r in state[pending:layout.rows, :3] if r[0] >= 0]
    old[pending:] = [-1, 0, 0, 0, 0]
    ones = [(b, k) for b, k, n in groups for _ in range(n)]
    for i, (b, k) in enumerate(ones):
        old[pending + 2 * i] = [b, k, 0, 0, 0]  # with free rows between, as format 3 left them
    keep = np.concatenate([keep[:pending], old[pending:, 0] >= 0])
    legacy = widths[:old_rows].copy()
    legacy[pending:] = 2
    old[0, 0] = 3
    buf = np.empty(packing.room(int(keep.sum())), dtype=np.uint8)
    data = buf[:packing.pack_at(old, legacy, bases[:old_rows], keep, buf, 0)].tobytes()
    read = ENGINE.decode("terminal", data)
    expected, _ = ENGINE.event_vector(later, {"terminal": state.copy()})
    vector, _ = ENGINE.event_vector(later, {"terminal": read})
    assert same(vector, expected) and terminal_risk(vector)["1d"] == (20 / 30, 30.0)
