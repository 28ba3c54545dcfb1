"""Model quality of feature set v2 (feature engine v2's hopped windows) against v1 (exact windows), 3 seeds.

    python benchmarks/feature_quality.py [--seeds 21,22,23] [--days 36] [--customers 600]

Per seed: the simulator's events and labels are ingested (not timed) into a scratch database; the training
and test windows come from SIRA's own rules (maturity 10 days, label delay 4 days); each feature set's
training set is built by SIRA's builder for it (v1: the per-event JSONB rows; v2: the log folded as columns)
with the same rows and labels; LightGBM is trained with the same parameters, seed and thread count on
each and scored on the held-out test window. Printed per seed and on average: average precision and ROC
AUC of v1 and v2 and their differences (#21's target: not worse beyond seed noise).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from _common import report, simulated_database

from sira.core import db
from sira.demo.simulate import SimulationConfig
from sira.features.definitions import PAYMENTS_V1, PAYMENTS_V2
from sira.training.datasets import build_feature_dataset
from sira.training.evaluation import average_precision, roc_auc
from sira.training.trainer import apply_calibration, train_model
from sira.training.windows import training_windows


def fit_and_score(fs, dsn, windows, seed: int) -> dict[str, float]:
    import lightgbm as lgb

    ds, split = build_feature_dataset(dsn, fs, windows)
    m = ds.matrix
    result = train_model(m.rows(split.train), m.rows(split.valid), seed=seed, num_threads=2)
    booster = lgb.Booster(model_str=result.model_text)
    scores = apply_calibration(result.calibration, booster.predict(m.X[split.test], raw_score=True))
    y = m.y[split.test]
    return {"ap": average_precision(y, scores), "auc": roc_auc(y, scores), "test_rows": int(y.size),
            "test_positives": int(y.sum())}


async def one_seed(seed: int, days: int, customers: int) -> dict[str, float]:
    config = SimulationConfig(days=days, customers=customers, seed=seed, fraud_rate=0.02, label_delay_days=5)
    async with simulated_database(config) as dsn:
        conn = await db.connect(dsn)
        try:
            windows = await training_windows(conn, maturity_days=10, label_delay_days=4)
        finally:
            await conn.close()
        v1 = await asyncio.to_thread(fit_and_score, PAYMENTS_V1, dsn, windows, seed)
        v2 = await asyncio.to_thread(fit_and_score, PAYMENTS_V2, dsn, windows, seed)
    assert v1["test_rows"] == v2["test_rows"]
    return {"seed": seed, "test_rows": v1["test_rows"], "test_positives": v1["test_positives"],
            "v1_ap": round(v1["ap"], 4), "v2_ap": round(v2["ap"], 4), "v1_auc": round(v1["auc"], 4),
            "v2_auc": round(v2["auc"], 4), "ap_delta": round(v2["ap"] - v1["ap"], 4),
            "auc_delta": round(v2["auc"] - v1["auc"], 4)}


async def main(seeds: list[int], days: int, customers: int) -> None:
    results = []
    for seed in seeds:
        results.append(await one_seed(seed, days, customers))
        report("feature_quality_seed", results[-1])
    mean = {k: round(statistics.fmean(r[k] for r in results), 4)
            for k in ("v1_ap", "v2_ap", "v1_auc", "v2_auc", "ap_delta", "auc_delta")}
    spread = {"v1_ap_sd_across_seeds": round(statistics.pstdev(r["v1_ap"] for r in results), 4),
              "v1_auc_sd_across_seeds": round(statistics.pstdev(r["v1_auc"] for r in results), 4)}
    report("feature_quality", {"seeds": seeds, **mean, **spread})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="21,22,23")
    parser.add_argument("--days", type=int, default=36)
    parser.add_argument("--customers", type=int, default=600)
    args = parser.parse_args()
    asyncio.run(main([int(s) for s in args.seeds.split(",")], args.days, args.customers))
