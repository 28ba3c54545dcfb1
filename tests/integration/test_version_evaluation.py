"""What the dashboard's version view draws for a really trained model: the reliability diagram and the metrics
by segment of its test window, read over HTTP from the version's verified artifact (the registry's row keeps
only the scalar metrics: the view showed "No calibration table" and no segment for every trained version)."""

import asyncio

import httpx
import pytest

from sira.http.app import create_app


def read(fraud_model, *paths: str) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        app = create_app(fraud_model.settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
                return [await client.get(p, headers={"Authorization": f"Bearer {fraud_model.keys['viewer']}"})
                        for p in paths]

    return asyncio.run(go())


def test_a_trained_versions_reliability_table_and_segments_are_served(fraud_model):
    base = f"/v1/models/fraud/versions/{fraud_model.version}"
    version, insights = read(fraud_model, base, f"{base}/insights")
    assert version.status_code == 200 and insights.status_code == 200, insights.text
    test = version.json()["metrics"]["test"]
    evaluation = insights.json()["evaluation"]
    assert set(evaluation) == {"validation", "test"}
    bins = evaluation["test"]["calibration"]
    # the table the registry's expected calibration error was computed from: every test row in one bin
    assert len(bins) == 10 and sum(b["n"] for b in bins) == test["n"]
    assert [b["mean_score"] for b in bins] == sorted(b["mean_score"] for b in bins)
    ece = sum(b["n"] * abs(b["mean_score"] - b["observed_rate"]) for b in bins) / test["n"]
    assert ece == pytest.approx(test["expected_calibration_error"])
    assert sum(round(b["n"] * b["observed_rate"]) for b in bins) == test["positives"]
    segments = evaluation["test"]["segments"]
    assert {"channel", "country"} <= set(segments)
    for values in segments.values():
        assert values and sum(m["n"] for m in values.values()) <= test["n"]
        assert all(m["n"] >= 200 and 0 <= m["positives"] <= m["n"] for m in values.values())
    assert {"review_rate", "precision_flagged"} <= set(evaluation["test"]["decisions"])
