"""Performance windows: labels as they mature, provisional windows never flagged."""

from datetime import datetime, timedelta, timezone

import numpy as np

from sira.monitoring.performance import LabelledPredictions, evaluate_windows

CUTOFF = datetime(2026, 6, 1, tzinfo=timezone.utc)


def labelled(rows: list[dict]) -> object:
    return LabelledPredictions.from_rows(({"version": 1, "role": "production", **r} for r in rows), CUTOFF,
                                         30).groups[(1, "production")]


def rows(start: datetime, n: int, seed: int) -> list[dict]:
    """Predictions ranked backwards (AP far below training's), every 10th a known chargeback."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        positive = i % 10 == 0
        out.append({"occurred_at": start + timedelta(hours=i % 160), "score": float(rng.uniform(0, 0.3) if positive
                                                                                       else rng.uniform(0.5, 1)),
                    "positive_known_at": start if positive else None, "negative_known": not positive and i % 5 == 1,
                    "country": "SN", "channel": "pos"})
    return out


def test_only_windows_whose_labels_have_matured_can_be_flagged():
    old, young = CUTOFF - timedelta(days=60), CUTOFF - timedelta(days=7)
    result = evaluate_windows(labelled(rows(old, 400, 1) + rows(young, 400, 2)), lo=old, hi=CUTOFF, window_days=7,
                              cutoff=CUTOFF, maturity_days=30, thresholds={"review": 0.5, "block": 0.9},
                              train_ap=0.8, margin=0.1, min_segment_size=50)
    overall = [r for r in result if r["segment"] == "all"]
    mature = [r for r in overall if r["window_end"] <= CUTOFF - timedelta(days=30)]
    provisional = [r for r in overall if r["window_end"] > CUTOFF - timedelta(days=30)]
    assert mature and provisional
    assert all(r["flagged"] and not r["provisional"] for r in mature)
    # the young window holds its chargebacks and the few events reviewed as legitimate (unlabelled young
    # events are left out): an AP on that sample is not comparable with training's, so no flag
    assert all(r["provisional"] and r["metrics"]["provisional"] and not r["flagged"] for r in provisional)
    assert any(r["average_precision"] is not None and r["average_precision"] < 0.7 for r in provisional)
    assert not any(r["flagged"] for r in result if r["provisional"])


def test_each_row_lands_in_the_window_of_its_time_boundaries_included():
    lo = CUTOFF - timedelta(days=90)
    edge = [{"occurred_at": lo + timedelta(days=7 * k) + delta, "score": 0.5, "positive_known_at": lo,
             "negative_known": False, "country": "SN", "channel": "pos"}
            for k in range(3) for delta in (timedelta(0), timedelta(days=7) - timedelta(microseconds=1))]
    result = evaluate_windows(labelled(edge), lo=lo, hi=lo + timedelta(days=21), window_days=7, cutoff=CUTOFF,
                              maturity_days=30, thresholds={"review": 0.5, "block": 0.9}, train_ap=None,
                              margin=0.1, min_segment_size=1)
    overall = [r for r in result if r["segment"] == "all"]
    assert [(r["window_start"], r["n"]) for r in overall] == [(lo + timedelta(days=7 * k), 2) for k in range(3)]


def test_predictions_are_kept_as_labelled_columns_grouped_by_version_and_role():
    old, young = CUTOFF - timedelta(days=60), CUTOFF - timedelta(days=2)
    stream = [{"version": 1, "role": "production", "occurred_at": old + timedelta(hours=i), "score": i / 10,
               "positive_known_at": old if i % 3 == 0 else None, "negative_known": False,
               "country": ("SN", "CI")[i % 2], "channel": "pos"} for i in range(6)]
    # a shadow version whose events are all too young and unlabelled: no labelled row, still a group
    stream += [{"version": 2, "role": "shadow", "occurred_at": young, "score": 0.5, "positive_known_at": None,
                "negative_known": False, "country": "SN", "channel": "web"}]
    read = LabelledPredictions.from_rows(stream, CUTOFF, 30)
    assert read.seen == 7 and set(read.groups) == {(1, "production"), (2, "shadow")}
    production, shadow = read.groups[(1, "production")], read.groups[(2, "shadow")]
    assert len(production) == 6 and len(shadow) == 0
    assert list(production.y) == [1, 0, 0, 1, 0, 0]
    assert list(production.segment_values("country")[np.asarray(production.codes["country"])]) == [
        "SN", "CI", "SN", "CI", "SN", "CI"]
    assert evaluate_windows(shadow, lo=old, hi=CUTOFF, window_days=7, cutoff=CUTOFF, maturity_days=30,
                            thresholds={"review": 0.5, "block": 0.9}, train_ap=None, margin=0.1,
                            min_segment_size=1) == []


def test_the_default_range_holds_matured_windows_that_can_be_flagged():
    """With the defaults (28 days, a 30-day maturity) and a chargeback known yesterday, the range was the 28
    days before yesterday: every window provisional, the alert never raised. It now holds 28 days of matured
    events, then the provisional ones; a model ranking backwards is flagged there."""
    from sira.monitoring.performance import default_range

    usable = CUTOFF - timedelta(days=1)  # the newest event with a known label: a fast chargeback
    lo, hi = default_range(CUTOFF, 30, usable, 28)
    assert hi > usable and lo == CUTOFF - timedelta(days=30 + 28)
    result = evaluate_windows(labelled(rows(lo, 400, 1) + rows(CUTOFF - timedelta(days=7), 400, 2)), lo=lo, hi=hi,
                              window_days=7, cutoff=CUTOFF, maturity_days=30, thresholds={"review": 0.5, "block": 0.9},
                              train_ap=0.8, margin=0.1, min_segment_size=50)
    overall = [r for r in result if r["segment"] == "all"]
    assert any(r["flagged"] and not r["provisional"] for r in overall)
    assert any(r["provisional"] for r in overall)
    older = CUTOFF - timedelta(days=40)  # nothing newer than the maturity: the 28 days before the newest event
    assert default_range(CUTOFF, 30, older, 28) == (older - timedelta(days=28) + timedelta(microseconds=1),
                                                    older + timedelta(microseconds=1))
