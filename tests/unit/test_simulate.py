from datetime import timedelta

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sira.core.errors import InvalidInput
from sira.demo.simulate import SimulationConfig, simulate
from sira.ingest.pii import luhn_valid

SMALL = dict(days=20, customers=400, seed=11)


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    cfg = SimulationConfig(**{**SMALL, "customers": 1000}, fraud_rate=0.03, shift_day=14, label_delay_days=8.0)
    out = tmp_path_factory.mktemp("sim")
    result = simulate(cfg, out)
    return cfg, result, pq.read_table(result.events_path), pq.read_table(result.labels_path)


def test_same_seed_gives_byte_identical_files(tmp_path):
    cfg = SimulationConfig(**SMALL, shift_day=10)
    a, _ = simulate(cfg, tmp_path / "a"), simulate(cfg, tmp_path / "b")
    for name in ("events.parquet", "labels.parquet", "simulation.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    c = simulate(SimulationConfig(**{**SMALL, "seed": 12}), tmp_path / "c")
    assert c.events_path.read_bytes() != a.events_path.read_bytes()


def test_payment_ids_belong_to_their_simulation(tmp_path):
    """Ids were the seed and the row number: the demo run again at another scale into the same workspace had its
    payments taken for duplicates and its fraud labels attached to the first run's payments. They now carry a
    digest of the whole configuration: the same configuration, the same ids; any other, none in common."""
    def ids(path):
        return set(pq.read_table(path, columns=["event_id"]).column("event_id").to_pylist())

    base = simulate(SimulationConfig(**SMALL), tmp_path / "base")
    assert ids(base.events_path) == ids(simulate(SimulationConfig(**SMALL), tmp_path / "again").events_path)
    for i, change in enumerate([{"customers": 200}, {"days": 21}, {"shift_day": 10}, {"fraud_rate": 0.02}]):
        other = simulate(SimulationConfig(**{**SMALL, **change}), tmp_path / str(i))
        assert not ids(other.events_path) & ids(base.events_path), change
        assert set(pq.read_table(other.labels_path).column("event_id").to_pylist()) <= ids(other.events_path)


def test_fraud_rate_matches_configuration(shifted):
    cfg, result, events, labels = shifted
    positives = labels.filter(pc.field("label"))
    assert result.summary["fraud_events"] == positives.num_rows
    assert abs(positives.num_rows / events.num_rows - cfg.fraud_rate) < 0.001
    scenarios = set(positives.column("scenario").to_pylist())
    assert {"card_testing", "compromised_terminal", "account_takeover", "wallet_takeover"} <= scenarios


def test_label_delays_match_configuration(shifted):
    cfg, _, _, labels = shifted
    delay_days = (
        pc.subtract(labels.column("known_at"), labels.column("occurred_at")).to_numpy().astype("timedelta64[s]")
        / np.timedelta64(1, "D")
    )
    sources = np.array(labels.column("source").to_pylist())
    assert (delay_days > 0).all(), "a label is never known before its event"
    chargeback = delay_days[sources == "chargeback"]
    assert abs(np.median(chargeback) - cfg.label_delay_days) / cfg.label_delay_days < 0.15
    assert chargeback.max() <= cfg.max_label_delay_days + 1e-6
    review = delay_days[sources == "review"]
    assert review.min() >= 0.5 - 1e-6 and review.max() <= 3.0 + 1e-6
    fraud_by_review = np.array(labels.column("label").to_pylist()) & (sources == "review")
    share = fraud_by_review.sum() / np.array(labels.column("label").to_pylist()).sum()
    assert abs(share - cfg.review_fraction) < 0.08


def test_fraud_pattern_shifts_on_the_configured_day(shifted):
    cfg, _, events, labels = shifted
    shift_at = cfg.start_datetime + timedelta(days=cfg.shift_day)
    wallet_fraud = labels.filter(pc.equal(labels.column("scenario"), "wallet_takeover"))
    assert wallet_fraud.num_rows > 0
    assert min(wallet_fraud.column("occurred_at").to_pylist()) >= shift_at
    before = events.filter(pc.less(events.column("occurred_at"), shift_at))
    after = events.filter(pc.greater_equal(events.column("occurred_at"), shift_at))

    def wallet_share(t):
        return pc.sum(pc.equal(t.column("channel"), "wallet")).as_py() / t.num_rows

    assert wallet_share(after) > 2 * wallet_share(before)


def test_no_shift_means_no_post_shift_scenario(tmp_path):
    result = simulate(SimulationConfig(**SMALL), tmp_path)
    assert "wallet_takeover" not in result.summary["fraud_by_scenario"]


def test_events_look_like_a_payment_feed(shifted):
    _, _, events, _ = shifted
    ids = events.column("event_id").to_pylist()
    assert len(set(ids)) == len(ids)
    times = events.column("occurred_at").to_pylist()
    assert times == sorted(times)
    assert all(luhn_valid(n) and len(n) == 16 for n in events.column("card_number").to_pylist()[:2000])
    assert pc.min(events.column("amount")).as_py() > 0
    assert set(events.column("channel").to_pylist()) == {"pos", "ecom", "atm", "wallet"}
    assert len(set(events.column("currency").to_pylist())) >= 4


def test_luhn_check():
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("4111-1111")


@pytest.mark.parametrize(
    "bad",
    [dict(days=0), dict(fraud_rate=0.7), dict(days=10, shift_day=10), dict(customers=3),
     dict(pre_shift_mix={"made_up": 1.0})],
)
def test_invalid_configuration_is_refused(bad):
    with pytest.raises(InvalidInput):
        SimulationConfig(**bad)


def test_no_payment_id_of_any_simulation_holds_a_card_number():
    """Ids were tx<hex digest>-<row>: the digest's digits, joined to the row by '-', made runs of 13+ digits the
    PII scrubber reads as card numbers when they pass Luhn ("txad3ab64397-00000007": stored as
    "txad3abtok_pan_...", one payment in ten). The digest is spelled in letters: over many configurations and
    rows (up to a trillion), no id holds a run of 13 digits, separators included, and every id is stored as
    it is."""
    import re

    from sira.demo.simulate import payment_id
    from sira.ingest.pii import Redactor

    redactor = Redactor.from_secret("property")
    runs = re.compile(r"\d+(?:(?:[./_-]| {1,3})\d+)*")  # digit groups the scrubber joins into one number
    rng = np.random.default_rng(0)
    configs = [SimulationConfig(days=int(d), customers=int(c), seed=int(s), fraud_rate=float(f))
               for s, d, c, f in zip(range(3_000), rng.integers(1, 120, 3_000), rng.integers(50, 50_000, 3_000),
                                     rng.choice([0.002, 0.01, 0.02, 0.05], 3_000))]
    digests = {cfg.digest for cfg in configs}
    assert len(digests) == len(configs) and not any(ch.isdigit() for d in digests for ch in d)
    rows = [0, 7, 99_999_999, 100_000_000, 10**12 - 1, *rng.integers(0, 10**9, 40).tolist()]
    for digest in digests:
        for row in rows:
            event_id = payment_id(digest, int(row))
            assert max(len(re.sub(r"\D", "", m)) for m in runs.findall(event_id)) < 13, event_id
            assert redactor.scrub_value(event_id) == event_id, event_id
