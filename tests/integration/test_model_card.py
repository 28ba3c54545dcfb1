"""Model cards rendered for a real trained version."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sira.core.auth import Identity
from sira.registry.card import render_card
from sira.training.runs import TrainRequest, run_training

VIEWER = Identity("vic", frozenset({"viewer"}))


async def test_card_for_a_trained_version(clean_db, settings, tmp_path):
    rng = np.random.default_rng(0)
    n = 5000
    df = pd.DataFrame({"amount": rng.lognormal(3, 1, n), "country": rng.choice(["SN", "FR"], n),
                       "channel": rng.choice(["pos", "ecom"], n)})
    df["fraud"] = (rng.random(n) < np.where(df.amount > 60, 0.15, 0.01)).astype(int)
    df.to_parquet(tmp_path / "t.parquet")
    await run_training(settings, TrainRequest(model="fraud", data=[tmp_path / "t.parquet"], label="fraud",
                                              params={"num_boost_round": 50, "early_stopping_rounds": 10},
                                              num_threads=1))
    async with clean_db.acquire() as conn:
        md = await render_card(conn, settings, VIEWER, "fraud", 1, "md")
        page = await render_card(conn, settings, VIEWER, "fraud", 1, "html")
    for section in ("Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
                    "Quantitative analyses", "Ethical considerations", "Caveats and recommendations"):
        assert f"## {section}" in md and f"<h2>{section}</h2>" in page
    assert "| average_precision |" in md and "mean |SHAP|" in md and "| amount |" in md
    assert "country" in md  # segments and features
    assert page.startswith("<!doctype html>") and 'src="data:image/png;base64,' in page
    # what the dashboard's version view reads: importance and lineage, from the verified manifest
    from sira.core.artifacts import MANIFEST, ArtifactTampered
    from sira.registry.views import insights

    async with clean_db.acquire() as conn:
        found = await insights(conn, settings, VIEWER, "fraud", 1)
        row = await conn.fetchrow("SELECT run_id, artifact_uri, artifact_sha256 FROM sira_model_versions")
    names = [i["feature"] for i in found["importance"]]
    values = [i["mean_abs_shap"] for i in found["importance"]]
    assert set(names) >= {"amount"} and values == sorted(values, reverse=True) and values[0] > 0
    lineage = found["lineage"]
    assert lineage["training_run"]["run_id"] == str(row["run_id"]) and lineage["training_run"]["status"] == "succeeded"
    assert lineage["artifact"] == {"uri": row["artifact_uri"], "sha256": row["artifact_sha256"], "verified": True}
    assert lineage["dataset"]["split"] and lineage["seed"] is not None and lineage["lightgbm_version"]
    model_file = Path(row["artifact_uri"].removeprefix("file://")) / "model.txt"  # a file the manifest lists
    model_file.write_bytes(model_file.read_bytes() + b" ")
    async with clean_db.acquire() as conn:  # the manifest still matches: shown, but not said to be verified
        assert (await insights(conn, settings, VIEWER, "fraud", 1))["lineage"]["artifact"]["verified"] is False
    manifest = Path(row["artifact_uri"].removeprefix("file://")) / MANIFEST  # the local artifact store
    manifest.write_bytes(manifest.read_bytes().replace(b'"amount"', b'"amount" ', 1))
    async with clean_db.acquire() as conn:
        with pytest.raises(ArtifactTampered):  # a tampered manifest is refused, never shown
            await insights(conn, settings, VIEWER, "fraud", 1)
