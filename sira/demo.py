"""``sira demo``: the platform end to end on embedded defaults.

Each stage of the pipeline adds its step here as it lands. Today: migrate
the database, simulate weeks of payments with a fraud pattern that shifts
near the end, ingest the events (Ray Data) and the labels, materialise the
online snapshots, tune and train a fraud model from the feature store and
register it as a candidate, create demo API keys, have a data scientist
request promotion and two approvers approve it, and summarise what was written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sira import db, migrations
from sira.auth import authenticate, create_key
from sira.config import Settings
from sira.feature_store import materialize_all, read_snapshot
from sira.features import get_feature_set
from sira.feedback import import_label_files
from sira.ingest import ingest_files
from sira.ray_runtime import init_ray
from sira.registry import decide, production_history, request_promotion
from sira.runs import TrainRequest, run_training
from sira.simulate import SimulationConfig, simulate

DEMO_DAYS = 42
DEMO_SHIFT_DAY = 32
DEMO_CUSTOMERS = 2_000
DEMO_TRIALS = 8
DEMO_FRAUD_RATE = 0.015
DEMO_LABEL_MATURITY_DAYS = 14  # the simulator's chargebacks arrive after ~10 days (median)


@dataclass
class DemoReport:
    """What the demo did, step by step, for the summary table and ``--json``."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    database: dict[str, Any] = field(default_factory=dict)
    simulation: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)
    ingest: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    snapshots: dict[str, Any] = field(default_factory=dict)
    example_features: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    governance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "database": self.database, "simulation": self.simulation, "tables": self.tables,
                "ingest": self.ingest, "labels": self.labels, "snapshots": self.snapshots,
                "example_features": self.example_features, "training": self.training,
                "governance": self.governance}


async def run_demo(
    settings: Settings,
    *,
    scale: float = 1.0,
    days: int = DEMO_DAYS,
    seed: int = 7,
    out_dir: Path | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> DemoReport:
    """Run every stage that exists on the configured (by default embedded) services."""
    report = DemoReport()
    out_dir = out_dir or settings.workspace / "demo-data"

    def step(name: str, started: float, **info: Any) -> None:
        report.steps.append({"step": name, "seconds": round(time.perf_counter() - started, 2), **info})
        progress(f"{name}: done in {report.steps[-1]['seconds']} s")

    started = time.perf_counter()
    progress("database: starting and migrating")
    dsn = db.resolve_dsn(settings)
    conn = await db.connect(dsn)
    try:
        applied = await migrations.migrate(conn)
        report.database = {
            "dsn": db.describe_dsn(dsn),
            "embedded": settings.database_url is None,
            "migrations_applied_now": [m.filename for m in applied],
            "schema_version": max(m.version for m in migrations.discover()),
        }
        step("migrate", started, applied=len(applied))

        started = time.perf_counter()
        progress("simulate: generating payments, fraud and labels")
        shift = min(DEMO_SHIFT_DAY, days - 1) if days > 1 else None
        cfg = SimulationConfig(
            days=days, seed=seed, customers=max(50, int(DEMO_CUSTOMERS * scale)), shift_day=shift,
            fraud_rate=DEMO_FRAUD_RATE, label_delay_days=min(10.0, days / 4),
        )
        result = simulate(cfg, out_dir)
        report.simulation = {
            "events_path": str(result.events_path),
            "labels_path": str(result.labels_path),
            **result.summary,
        }
        step("simulate", started, events=result.summary["events"])

        fs = get_feature_set()
        started = time.perf_counter()
        progress("ingest: loading events through Ray Data, computing features")
        init_ray(settings, dsn)  # in the main thread: Ray's driver lives there
        summary = await asyncio.to_thread(
            ingest_files, settings, [result.events_path], fs=fs, source="demo", progress=False
        )
        report.ingest = summary.to_dict()
        step("ingest", started, accepted=summary.accepted, duplicates=summary.duplicates)

        started = time.perf_counter()
        progress("labels: importing chargebacks and reviews")
        report.labels = (await import_label_files(settings, [result.labels_path], source="demo")).to_dict()
        step("labels", started, inserted=report.labels["inserted"])

        started = time.perf_counter()
        progress("materialize: refreshing online snapshots")
        report.snapshots = await materialize_all(settings, fs=fs)
        step("materialize", started, **report.snapshots["entities"])

        busiest = await conn.fetchval(
            "SELECT customer_id FROM sira_events GROUP BY customer_id ORDER BY count(*) DESC, customer_id LIMIT 1"
        )
        if busiest is not None:
            snap = await read_snapshot(conn, fs, "customer", busiest)
            report.example_features = {"entity": f"customer {busiest}", "as_of": snap.as_of.isoformat(),
                                       "features": snap.features}
        started = time.perf_counter()
        progress(f"tune: {DEMO_TRIALS} trials on Ray Tune, then train the best and register it")
        keys = await demo_keys(conn, settings)
        dana = await authenticate(conn, keys["demo-dana"], pepper=settings.secret("auth_secret"))
        # A short demo shrinks the label maturity and the train/test gap with its history.
        result = await run_training(settings, TrainRequest(
            model="fraud", trials=DEMO_TRIALS, label_maturity_days=min(DEMO_LABEL_MATURITY_DAYS, max(1, days // 3)),
            label_delay_days=min(5.0, days / 8), seed=seed,
        ), progress=progress, actor=dana.actor())
        report.training = {k: result[k] for k in ("model", "version", "run_id", "status", "metrics", "artifact",
                                                  "thresholds", "search")}
        step("tune_and_train", started, version=result["version"])

        started = time.perf_counter()
        progress("governance: demo keys; a data scientist requests promotion, two approvers approve")
        report.governance = await promote_with_demo_approvers(conn, settings, "fraud", result["version"])
        step("promote", started, production=result["version"])
        report.tables = await table_counts(conn)
    finally:
        await conn.close()
    return report


DEMO_KEYS = {"demo-admin": ["admin"], "demo-dana": ["data_scientist"], "demo-ann": ["approver"],
             "demo-bob": ["approver"], "demo-oli": ["operator"]}


async def demo_keys(conn: Any, settings: Settings) -> dict[str, str]:
    """The demo's API keys: created on the first run (bootstrap admin first), kept in the workspace (0600)."""
    import json
    import os

    path = settings.workspace / "secrets" / "demo_keys.json"
    keys: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    pepper = settings.secret("auth_secret")
    admin = None
    for name, roles in DEMO_KEYS.items():
        if name in keys:
            continue
        if name != "demo-admin" and admin is None:
            admin = await authenticate(conn, keys["demo-admin"], pepper=pepper)
        async with conn.transaction():
            keys[name], _ = await create_key(conn, name=name, roles=roles, pepper=pepper, creator=admin)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(keys, handle)
    return keys


async def promote_with_demo_approvers(conn: Any, settings: Settings, model: str, version: int) -> dict[str, Any]:
    """sira promote as demo-dana, then sira approve as demo-ann and demo-bob: the version reaches production."""
    keys = await demo_keys(conn, settings)
    pepper = settings.secret("auth_secret")
    who = {name: await authenticate(conn, key, pepper=pepper) for name, key in keys.items()}
    async with conn.transaction():
        request = await request_promotion(conn, settings, who["demo-dana"], model, version, "demo: first model")
    decisions = []
    for approver in ("demo-ann", "demo-bob"):
        async with conn.transaction():
            decisions.append(await decide(conn, who[approver], model, version, "approve", "demo approval"))
    return {"request": request, "decisions": decisions, "production_version": version,
            "history": await production_history(conn, model),
            "keys_file": str(settings.workspace / "secrets" / "demo_keys.json")}


async def table_counts(conn: Any) -> dict[str, int]:
    """Row counts of SIRA's tables (partition parents only)."""
    names = await conn.fetch(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = current_schema() AND c.relname LIKE 'sira\\_%' AND c.relkind IN ('r', 'p')
              AND NOT c.relispartition
            ORDER BY c.relname"""
    )
    counts = {}
    for row in names:
        # Names come from the catalogue, quoted as identifiers all the same.
        counts[row["relname"]] = await conn.fetchval(f'SELECT count(*) FROM "{row["relname"]}"')
    return counts
