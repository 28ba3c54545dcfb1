"""The model card's content, built from a registry row and a manifest (no services)."""

from sira.registry.card import build_card, format_windows, to_html, to_markdown

MODEL = {"name": "fraud", "model_type": "fraud_detection", "description": "Card payments."}
VERSION = {"version": 2, "status": "staging", "created_by": "dana", "created_at": "2026-11-01T00:00:00",
           "artifact_uri": "file:///a", "artifact_sha256": "ab" * 32, "thresholds": {"review": 0.2, "block": 0.6}}
# 20 features whose names sort opposite to their importance: alphabetical order is the wrong one
IMPORTANCE = {f"f{i:02d}": float(i) for i in range(20)}
MANIFEST = {
    "importance": {"mean_abs_shap": IMPORTANCE},
    "dataset": {"split": "time", "windows": {"train": {"from": 1_767_225_600_000_000, "to": 1_769_904_000_000_000},
                                             "test": {"from": 1_770_000_000_000_000, "to": 1_772_323_200_000_000}}},
    "metrics": {"test": {"segments": {"channel": {"ecom": {"n": 300, "positives": 9, "average_precision": 0.5}}}}},
}


def _analyses_md() -> str:
    md = to_markdown("fraud v2", build_card(MODEL, VERSION, MANIFEST, [], None))
    return md.split("## Quantitative analyses")[1].split("## Ethical")[0]


def test_importance_lists_the_most_important_features_first():
    part = _analyses_md()
    rows = [line.split("|")[1].strip() for line in part.splitlines() if line.startswith("| f") and not line.startswith("| feature")]
    assert rows == [f"f{i:02d}" for i in range(19, 4, -1)]  # the 15 largest, largest first


def test_each_caption_sits_right_above_its_own_table():
    lines = [line for line in _analyses_md().splitlines() if line]
    importance_caption = next(i for i, line in enumerate(lines) if line.startswith("Global importance"))
    assert lines[importance_caption + 1] == "| feature | mean |SHAP| |"
    segment_caption = next(i for i, line in enumerate(lines) if line.startswith("Test metrics by segment"))
    assert lines[segment_caption + 1].startswith("| segment | value |")
    page = to_html("fraud v2", build_card(MODEL, VERSION, MANIFEST, [], None))
    assert "Global importance" in page.split("<th>feature</th>")[0].rsplit("<table>", 1)[0].rsplit("</table>", 1)[-1]


def test_windows_read_as_dates_not_a_dict():
    md = to_markdown("fraud v2", build_card(MODEL, VERSION, MANIFEST, [], None))
    assert "{'train'" not in md and "'from'" not in md
    assert "Windows: train 2026-01-01 00:00:00 UTC → 2026-02-01 00:00:00 UTC; test 2026-02-02" in md
    assert format_windows({"test": {"from": None, "to": None}}) == "test — → —"


def test_a_feature_store_versions_card_shows_its_windows_cut_off_and_maturity():
    """A feature-store run records its windows as {"train": {train_from, ..., cutoff, maturity_days}}: the card
    printed "Windows: train — → —." for every such version."""
    windows = {"train": {"train_from": "2026-09-01T00:23:54+00:00", "train_to": "2026-09-24T00:05:57.750001+00:00",
                         "test_from": "2026-09-28T00:05:57.750001+00:00", "test_to": "2026-10-06T23:59:59.000001+00:00",
                         "cutoff": "2026-11-01T00:00:00+00:00", "maturity_days": 10}}
    manifest = {**MANIFEST, "dataset": {"split": "time", "windows": windows, "feature_set": "payments",
                                        "feature_set_version": 2}}
    md = to_markdown("fraud v2", build_card(MODEL, VERSION, manifest, [], None))
    assert "— → —" not in md
    assert ("Windows: train 2026-09-01 00:23:54 UTC → 2026-09-24 00:05:57 UTC (validation: its latest part); "
            "test 2026-09-28 00:05:57 UTC → 2026-10-06 23:59:59 UTC; labels as known at 2026-11-01 00:00:00 UTC; "
            "label maturity 10 days.") in md
    assert format_windows(windows["train"]) == format_windows(windows)  # the fingerprint's own shape
    assert "labels as known at 2026-11-01" in to_html("fraud v2", build_card(MODEL, VERSION, manifest, [], None))


def test_the_card_names_the_feature_set_and_its_window_semantics():
    for version, engine, words in ((1, "history", "(t - W, t]"), (2, "tiles", "floor((t - W) / hop) * hop")):
        manifest = {**MANIFEST, "dataset": {**MANIFEST["dataset"], "feature_set": "payments",
                                            "feature_set_version": version}}
        md = to_markdown("fraud v2", build_card(MODEL, VERSION, manifest, [], None))
        training = md.split("## Training data")[1].split("## ")[0]
        assert f"feature set payments v{version} ({engine} engine)" in training and words in training
    gone = {**MANIFEST, "dataset": {**MANIFEST["dataset"], "feature_set": "payments", "feature_set_version": 9}}
    assert "no longer defined" in to_markdown("fraud v2", build_card(MODEL, VERSION, gone, [], None))


def test_the_warnings_said_of_a_runs_windows_are_on_its_card():
    """A run whose test window was far richer in positives than its training window records a warning in its
    manifest (dataset.warnings); the card, what approvers read, did not show it."""
    said = "the test window is 9.1x richer in positives than training: its metrics may flatter the model"
    manifest = {**MANIFEST, "dataset": {**MANIFEST["dataset"], "warnings": [said]}}
    md = to_markdown("fraud v2", build_card(MODEL, VERSION, manifest, [], None))
    evaluation = md.split("## Evaluation data")[1].split("## ")[0]
    assert f"Warning, said when it was trained: {said}" in evaluation
    assert "Warning" not in to_markdown("fraud v2", build_card(MODEL, VERSION, MANIFEST, [], None))
