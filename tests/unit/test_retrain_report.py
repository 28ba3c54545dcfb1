"""The retrain report as people read it (`sira retrain`'s markdown)."""

from sira.monitoring.retrain import markdown


def test_the_live_table_rounds_its_average_precision_and_says_when_there_is_none():
    report = {
        "model": "fraud", "run": 7, "decision": "reject", "challenger": 3, "champion": 2, "staged": False,
        "reasons": ["the challenger's AP is lower"], "blockers": [], "drift": {"verdict": "ok"},
        "evaluation": {
            "window": {"from": "2026-10-01T00:00:00+00:00", "to": "2026-10-15T00:00:00+00:00"},
            "rows": 1200, "positives": 30, "score_psi": 0.01234,
            "champion": {"average_precision": 0.5123456}, "challenger": {"average_precision": 0.4876543},
            "live": [{"version": 2, "role": "production", "n": 800, "positives": 20, "average_precision": 0.8882792333950816},
                     {"version": 3, "role": "shadow", "n": 0, "positives": 0, "average_precision": None}],
        },
    }
    text = markdown(report)
    assert "| 2 | production | 800 | 20 | 0.8883 |" in text
    assert "| 3 | shadow | 0 | 0 | — |" in text
    assert "None" not in text and "0.8882792333950816" not in text
