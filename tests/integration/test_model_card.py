"""Model cards rendered for a real trained version."""

import numpy as np
import pandas as pd

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
