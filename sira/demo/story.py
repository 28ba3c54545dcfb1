"""``sira demo``: the platform end to end on embedded defaults.

Each stage of the pipeline adds its step here as it lands. Today: migrate
the database, simulate weeks of payments with a fraud pattern that shifts
near the end, ingest the events (Ray Data) and the labels, materialise the
online snapshots, tune and train a fraud model from the feature store and
register it as a candidate, create demo API keys, have a data scientist
request promotion and two approvers approve it, serve it and score the held-back
payments live, batch-score the history, check drift and live performance, and
summarise what was written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sira.core import db, migrations
from sira.core.auth import authenticate, create_key
from sira.core.config import Settings
from sira.core.errors import ServiceUnavailable
from sira.core.ray_runtime import init_ray
from sira.demo.simulate import SimulationConfig, simulate
from sira.features.definitions import get_feature_set
from sira.features.states import online_features, refresh
from sira.ingest.bulk import ingest_files
from sira.ingest.events import as_utc
from sira.ingest.labels import import_label_files
from sira.monitoring.retrain import RetrainRequest, run_retrain
from sira.registry.models import decide, production_history, request_promotion
from sira.training.runs import TrainRequest, run_training

DEMO_DAYS = 42
DEMO_SHIFT_DAY = 20  # the fraud pattern shifts here; the first model is trained on the days before
DEMO_CUSTOMERS = 2_000
DEMO_TRIALS = 8
DEMO_FRAUD_RATE = 0.015
DEMO_LABEL_MATURITY_DAYS = 10  # the simulator's chargebacks arrive after ~3 days (median)
DEMO_LABEL_DELAY_DAYS = 4.0
DEMO_STORY_DAYS = 28  # shorter demos (tests) train once on everything: too little data to split by the shift
DEMO_TEST_DAYS = 6  # the retrain's held-out window: the newest usable days, after the shift
# the retrain's training window: the two weeks before it, across the shift (a sliding window, as
# retraining on the latest data does). With the label cut-off at now every simulated day is usable:
# training on all of them made the demo's retrain 205 s against 104 s (measured 2026-12-02).
DEMO_TRAIN_DAYS = 14
# The demo's promotion policy: a challenger must beat the champion by 0.02 AP on the recent window.
# Drift does not block: the shift it reports is what the retraining answers.
DEMO_POLICY = {"min_ap_gain": 0.02, "block_on_drift": "never"}
DEMO_LIVE_EVENTS = 400  # the newest simulated payments, scored live over HTTP (times the scale)
DEMO_MIN_LIVE = 40
DEMO_CLIENTS = 4  # concurrent HTTP clients sending the live payments


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
    serving: dict[str, Any] = field(default_factory=dict)
    batch: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] = field(default_factory=dict)
    performance: dict[str, Any] = field(default_factory=dict)
    retrain: dict[str, Any] = field(default_factory=dict)
    shadow: dict[str, Any] = field(default_factory=dict)
    swap: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "database": self.database, "simulation": self.simulation, "tables": self.tables,
                "ingest": self.ingest, "labels": self.labels, "snapshots": self.snapshots,
                "example_features": self.example_features, "training": self.training,
                "governance": self.governance, "serving": self.serving, "batch": self.batch, "drift": self.drift,
                "performance": self.performance, "retrain": self.retrain, "shadow": self.shadow, "swap": self.swap}


async def run_demo(
    settings: Settings,
    *,
    scale: float = 1.0,
    days: int = DEMO_DAYS,
    seed: int = 7,
    out_dir: Path | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
    serve: bool = True,
    keep_serving: bool = False,
) -> DemoReport:
    """Run every stage that exists on the configured (by default embedded) services."""
    report = DemoReport()
    out_dir = out_dir or settings.workspace / "demo-data"

    def step(name: str, started: float, **info: Any) -> None:
        report.steps.append({"step": name, "seconds": round(time.perf_counter() - started, 2), **info})
        progress(f"{name}: done in {report.steps[-1]['seconds']} s")

    started = time.perf_counter()
    progress("database: starting and migrating")
    dsn = db.resolve_dsn(settings, create=True)  # the demo makes the workspace it fills
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
            fraud_rate=DEMO_FRAUD_RATE, label_delay_days=min(DEMO_LABEL_DELAY_DAYS, days / 4),
            # the simulator's first day, or earlier when a long demo would run past today (events ahead of the
            # clock are refused)
            start=min(SimulationConfig.start, datetime.now(timezone.utc).date() - timedelta(days=days)),
        )
        result = simulate(cfg, out_dir)
        report.simulation = {
            "events_path": str(result.events_path),
            "labels_path": str(result.labels_path),
            **result.summary,
        }
        # The newest events are held back: they arrive later as live scoring requests.
        history_path, live = hold_back(result.events_path, out_dir / "history",
                                       max(DEMO_MIN_LIVE, int(DEMO_LIVE_EVENTS * scale)) if serve else 0)
        report.simulation["held_back_for_serving"] = len(live)
        step("simulate", started, events=result.summary["events"], held_back_for_serving=len(live))

        fs = get_feature_set()
        started = time.perf_counter()
        progress("ingest: loading events through Ray Data, computing features")
        init_ray(settings, dsn)  # in the main thread: Ray's driver lives there
        summary = await asyncio.to_thread(
            ingest_files, settings, [history_path], source="demo", progress=False
        )
        # feature set v2 keeps no row per event (one packed state per entity, daily checkpoints): the summary
        # says which, so "0 feature rows" beside the entity counts reads as the design, not a failure
        report.ingest = {**summary.to_dict(), "feature_set": {"name": fs.name, "version": fs.version,
                                                               "engine": fs.engine}}
        step("ingest", started, accepted=summary.accepted, duplicates=summary.duplicates)

        started = time.perf_counter()
        progress("labels: importing chargebacks and reviews")
        report.labels = (await import_label_files(settings, [result.labels_path], source="demo")).to_dict()
        step("labels", started, inserted=report.labels["inserted"])

        started = time.perf_counter()
        progress("materialize: folding the labels into the online state")
        report.snapshots = await refresh(settings, fs)
        step("materialize", started, **report.snapshots["entities"])

        busiest = await conn.fetchval(
            "SELECT customer_id FROM sira_events GROUP BY customer_id ORDER BY count(*) DESC, customer_id LIMIT 1"
        )
        if busiest is not None:
            snap = await online_features(conn, fs, "customer", busiest)
            report.example_features = {"entity": f"customer {busiest}", "as_of": snap.as_of.isoformat(),
                                       "features": snap.features}
        started = time.perf_counter()
        progress(f"tune: {DEMO_TRIALS} trials on Ray Tune, then train the best and register it")
        keys = await demo_keys(conn, settings)
        dana = await authenticate(conn, keys["demo-dana"], pepper=settings.secret("auth_secret"))
        # A short demo shrinks the label maturity and the train/test gap with its history.
        story = shift is not None and days >= DEMO_STORY_DAYS
        result = await run_training(settings, TrainRequest(
            model="fraud", trials=DEMO_TRIALS, label_maturity_days=min(DEMO_LABEL_MATURITY_DAYS, max(1, days // 3)),
            label_delay_days=min(5.0, days / 8), seed=seed,
            # the champion is trained before the shift: it has never seen the new fraud pattern
            test_to=cfg.start_datetime + timedelta(days=shift) if story else None,
        ), progress=progress, actor=dana.actor())
        report.training = {k: result[k] for k in ("model", "version", "run_id", "status", "metrics", "artifact",
                                                  "thresholds", "search")}
        step("tune_and_train", started, version=result["version"])

        started = time.perf_counter()
        progress("governance: demo keys; a data scientist requests promotion, two approvers approve")
        report.governance = await promote_with_demo_approvers(conn, settings, "fraud", result["version"],
                                                                     "demo: first model")
        step("promote", started, production=result["version"])

        url = None
        first_live, later_live = live[: len(live) // 2], live[len(live) // 2:]
        try:
            if serve:
                started = time.perf_counter()
                progress(f"serve: Ray Serve (HAProxy ingress); scoring {len(first_live)} live payments over HTTP")
                keys = await demo_keys(conn, settings)
                url, configured = await asyncio.to_thread(start_serving, settings, progress)
                report.serving = {**await serve_and_score(url, keys, first_live), "configured_url": configured}
                step("serve_and_score", started, scored=report.serving["scored"])

            await monitor(settings, conn, keys, report, out_dir, progress=progress, step=step)
            await retrain_and_swap(settings, conn, keys, report, url, later_live, story=story, seed=seed, days=days,
                                   progress=progress, step=step)
        finally:
            if url is not None and not keep_serving:
                from ray import serve as ray_serve

                await asyncio.to_thread(ray_serve.shutdown)
        if url is not None:
            report.serving["still_serving"] = keep_serving
        report.tables = await table_counts(conn)
    finally:
        await conn.close()
    return report


async def monitor(settings: Settings, conn: Any, keys: dict[str, str], report: DemoReport, out_dir: Path, *,
                  progress: Callable[[str], None], step: Callable[..., None]) -> None:
    """Batch-score the whole history (a data scientist), then drift of the last week and the live
    performance of what was served (an operator), as the jobs would on a cluster."""
    from sira.monitoring.batch import BatchRequest, run_batch_score
    from sira.monitoring.drift import DriftRequest, run_drift
    from sira.monitoring.performance import PerformanceRequest, run_performance

    pepper = settings.secret("auth_secret")
    dana = (await authenticate(conn, keys["demo-dana"], pepper=pepper)).actor()
    oli = (await authenticate(conn, keys["demo-oli"], pepper=pepper)).actor()
    started = time.perf_counter()
    progress("batch: scoring every stored payment with the production version")  # the summary says where
    first = await conn.fetchval("SELECT min(occurred_at) FROM sira_events")
    report.batch = await run_batch_score(settings, BatchRequest(model="fraud", out=out_dir / "scores.parquet",
                                                                time_from=first), actor=dana)
    step("batch_score", started, rows=report.batch["rows"], rows_per_s=report.batch["rows_per_second"])
    started = time.perf_counter()
    progress("drift: the last 7 days of payments against the training reference")
    report.drift = await run_drift(settings, DriftRequest(model="fraud", days=7), actor=oli)
    step("drift", started, verdict=report.drift["verdict"], **report.drift["severities"])
    if report.serving.get("scored"):
        started = time.perf_counter()
        progress("performance: the live predictions against their (matured) labels")
        report.performance = await run_performance(settings, PerformanceRequest(model="fraud", min_segment_size=50),
                                                   actor=oli)
        step("performance", started, flagged=report.performance["flagged"])


async def retrain_and_swap(settings: Settings, conn: Any, keys: dict[str, str], report: DemoReport, url: str | None,
                           later_live: list[dict[str, Any]], *, story: bool, seed: int, days: int,
                           progress: Callable[[str], None], step: Callable[..., None]) -> None:
    """Retrain; a challenger the policy stages is shadow-scored on the next live payments, promoted by
    the two approvers, and swapped in while serving; the live performance then compares both."""
    from sira.monitoring.performance import PerformanceRequest, run_performance
    from sira.registry.models import update_model

    pepper = settings.secret("auth_secret")
    admin = await authenticate(conn, keys["demo-admin"], pepper=pepper)
    async with conn.transaction():
        await update_model(conn, admin, "fraud", promotion_policy=DEMO_POLICY)
    started = time.perf_counter()
    progress("retrain: a challenger on the latest data against the champion, judged by the model's policy")
    dana = await authenticate(conn, keys["demo-dana"], pepper=pepper)
    report.retrain = await run_retrain(settings, RetrainRequest(
        model="fraud", trials=DEMO_TRIALS // 2, time_budget_s=300, seed=seed, label_delay_days=min(5.0, days / 8),
        test_days=DEMO_TEST_DAYS if story else None, train_days=DEMO_TRAIN_DAYS if story else None), dana,
        progress=progress)
    step("retrain", started, decision=report.retrain["decision"], challenger=report.retrain["challenger"])
    if url is None or not later_live:
        return
    staged = report.retrain["decision"] == "stage"
    challenger = report.retrain["challenger"]
    started = time.perf_counter()
    progress(f"live: {len(later_live)} more payments" + (f", shadow-scored by the staging v{challenger}" if staged
                                                         else ""))
    if staged:
        await asyncio.sleep(3.0)  # the registry's NOTIFY reaches the replicas, which load the staging version
    shadowed = await send_live(url, keys["demo-svc"], later_live, "demo-live")
    report.shadow = {**shadowed.summary(), "challenger": challenger if staged else None}
    step("shadow" if staged else "live", started, scored=len(shadowed.answers))
    if not staged:
        return
    started = time.perf_counter()
    progress(f"promote: demo-dana asks for v{challenger} in production; demo-ann and demo-bob approve")
    report.swap = {"promotion": await promote_with_demo_approvers(
        conn, settings, "fraud", challenger,
        f"demo: retrained challenger v{challenger} beat the champion under the model's policy")}
    report.swap.update(await hot_swap(url, keys["demo-svc"], later_live, challenger))
    step("hot_swap", started, serving=challenger, seconds=report.swap["seconds"])
    started = time.perf_counter()
    progress("performance: champion (production) and challenger (shadow) on the same live payments")
    oli = await authenticate(conn, keys["demo-oli"], pepper=pepper)
    since = as_utc(min(e["occurred_at"] for e in later_live))  # the payments both scored
    await stored(conn, [e["event_id"] for e in later_live])
    report.performance = await run_performance(settings, PerformanceRequest(
        model="fraud", min_segment_size=50, time_from=since), actor=oli.actor())
    step("performance_after", started, flagged=report.performance["flagged"])


async def stored(conn: Any, event_ids: list[str], timeout_s: float = 30.0) -> None:
    """Wait until production's answers to these events are in sira_predictions: a replica flushes its spool
    every moment, and a performance run right after the last answer read the range without them (its end
    before its start: `invalid_window`, seen once in the full suite)."""
    deadline = time.monotonic() + timeout_s
    while await conn.fetchval("SELECT count(DISTINCT event_id) FROM sira_predictions WHERE event_id = ANY($1::text[])"
                              " AND role = 'production'", event_ids) < len(event_ids):
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"the live answers were not stored within {timeout_s:g} s (a replica's spool "
                                     "did not flush: see the replicas' logs)")
        await asyncio.sleep(0.2)


DEMO_KEYS = {"demo-admin": ["admin"], "demo-dana": ["data_scientist"], "demo-ann": ["approver"],
             "demo-bob": ["approver"], "demo-oli": ["operator"], "demo-svc": ["service"], "demo-ana": ["analyst"],
             "demo-prometheus": ["viewer"]}  # read-only: for a proxy in front of /metrics that checks a key
# (`make observe OBSERVE_ARGS="--key-file FILE"`); SIRA's /metrics itself is open


def read_demo_keys(path: Path) -> dict[str, str]:
    """Key by name from ``demo_keys.json`` (``{name: {"roles": [...], "key": ...}}``; older files held bare keys)."""
    import json

    if not path.exists():
        return {}
    stored = json.loads(path.read_text())
    return {name: entry["key"] if isinstance(entry, dict) else entry for name, entry in stored.items()}


async def demo_keys(conn: Any, settings: Settings) -> dict[str, str]:
    """The demo's API keys: created on the first run (bootstrap admin first), kept in the workspace (0600)
    with the roles each holds, so a person picking one knows what it may do."""
    import json
    import os

    path = settings.workspace / "secrets" / "demo_keys.json"
    keys = read_demo_keys(path)
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
        json.dump({name: {"roles": DEMO_KEYS.get(name, []), "key": key} for name, key in keys.items()}, handle, indent=1)
    return keys


async def promote_with_demo_approvers(conn: Any, settings: Settings, model: str, version: int,
                                      reason: str) -> dict[str, Any]:
    """sira promote as demo-dana, then sira approve as demo-ann and demo-bob: the version reaches production."""
    keys = await demo_keys(conn, settings)
    pepper = settings.secret("auth_secret")
    who = {name: await authenticate(conn, key, pepper=pepper) for name, key in keys.items()}
    async with conn.transaction():
        request = await request_promotion(conn, settings, who["demo-dana"], model, version, reason)
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


def hold_back(events_path: Path, out_dir: Path, n: int) -> tuple[Path, list[dict[str, Any]]]:
    """Split the simulated events: all but the newest ``n`` to ingest (a file), the newest ``n`` (records)."""
    import pyarrow.parquet as pq

    table = pq.read_table(events_path)
    if n <= 0:
        return events_path, []
    table = table.sort_by([("occurred_at", "ascending"), ("event_id", "ascending")])
    n = min(n, max(0, table.num_rows - 1))
    history, live = table.slice(0, table.num_rows - n), table.slice(table.num_rows - n)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "events.parquet"
    pq.write_table(history, path)
    return path, live.to_pylist()


def start_serving(settings: Settings, progress: Callable[[str], None]) -> tuple[str, str]:
    """Online scoring on Ray Serve (serve_configs/local.yaml), on its port or, when another process holds it,
    any free one (said: `sira serve` later uses the configured port); returns (its URL, the configured URL)."""
    import socket

    from sira.http.deployment import ServeSpec, run_local

    spec = ServeSpec.local()
    with socket.socket() as probe:
        taken = probe.connect_ex(("127.0.0.1", spec.port)) == 0
    port = spec.port
    if taken:  # something else has the configured port: any free one will do
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        progress(f"serve: port {spec.port} (serve_configs/local.yaml) is taken by another process: the demo serves "
                 f"on {port}; `sira serve` uses {spec.port} (free it, or `sira serve --port N`)")
    return run_local(settings, spec, port=port, progress=progress), f"http://{spec.host}:{spec.port}"


@dataclass
class LiveRun:
    """What a product service saw sending payments: answers, client latencies, failures."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pick(q: float) -> float | None:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else None

        decisions: dict[str, int] = {}
        for a in self.answers:
            decisions[a["decision"]] = decisions.get(a["decision"], 0) + 1
        return {"scored": len(self.answers), "failed": len(self.failures), "failures": self.failures[:5],
                "seconds": round(self.seconds, 2),
                "requests_per_s": round(len(self.answers) / self.seconds, 1) if self.seconds else None,
                "client_latency_ms": {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99)},
                "decisions": decisions, "versions": sorted({a["version"] for a in self.answers}),
                "clients": DEMO_CLIENTS}


async def send_live(url: str, token: str, events: list[dict[str, Any]], prefix: str, *,
                    record: bool = True) -> LiveRun:
    """Send payments to /v1/score as a product service would, from a few concurrent clients."""
    import httpx

    run = LiveRun()
    headers = {"Authorization": f"Bearer {token}"}
    queue: asyncio.Queue = asyncio.Queue()
    for e in events:
        queue.put_nowait(e)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            e = queue.get_nowait()
            body = {"model": "fraud", "request_id": f"{prefix}-{e['event_id']}", "record": record,
                    "event": {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in e.items()
                              if v is not None}}
            started = time.perf_counter()
            r = await client.post("/v1/score", json=body, headers=headers)
            run.latencies.append((time.perf_counter() - started) * 1000)
            if r.status_code == 200:
                run.answers.append(r.json())
            else:
                run.failures.append(f"{r.status_code} {r.text[:200]}")

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(DEMO_CLIENTS)))
        run.seconds = time.perf_counter() - started
    return run


async def serve_and_score(url: str, keys: dict[str, str], live: list[dict[str, Any]]) -> dict[str, Any]:
    """Send the live payments, show a few answers, have an analyst read one back, post a chargeback."""
    import httpx

    run = await send_live(url, keys["demo-svc"], live, "demo-live")
    service = {"Authorization": f"Bearer {keys['demo-svc']}"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        # An analyst reads one approved payment back: its reasons are computed from the stored features.
        await asyncio.sleep(0.5)
        explained = None
        approved = next((a for a in run.answers if a["decision"] == "approve"), None)
        if approved is not None:
            r = await client.get(f"/v1/predictions/{approved['prediction_id']}",
                                 headers={"Authorization": f"Bearer {keys['demo-ana']}"})
            explained = r.json() if r.status_code == 200 else None
        # A chargeback arrives for the riskiest payment: the service posts it as feedback.
        feedback = report = None
        if run.answers:
            riskiest = max(run.answers, key=lambda a: a["score"])
            for _ in range(20):  # another replica may still hold it in its spool (flushed within moments)
                r = await client.post("/v1/feedback", json={"prediction_id": riskiest["prediction_id"],
                                                            "label": True, "source": "chargeback"}, headers=service)
                if r.status_code != 404:
                    break
                await asyncio.sleep(0.25)
            feedback = r.json()
            # ...and the person it blocked (or sent to review) asks why: the report a support agent reads
            r = await client.get(f"/v1/predictions/{riskiest['prediction_id']}/explanation",
                                 headers={"Authorization": f"Bearer {keys['demo-ana']}"})
            report = r.json()["summary"] if r.status_code == 200 else None
    from sira.core.ray_runtime import metrics_url

    return {"url": url, "docs": f"{url}/docs", **run.summary(), "examples": _examples(run.answers),
            "explained": explained, "feedback": feedback, "report": report,
            "metrics": {"platform": f"{url}/metrics", "replicas": metrics_url()}}


async def hot_swap(url: str, token: str, events: list[dict[str, Any]], version: int,
                   timeout_s: float = 60.0) -> dict[str, Any]:
    """After a promotion: send payments until an answer names the new version; how long that took."""
    started = time.perf_counter()
    rounds = 0
    while time.perf_counter() - started < timeout_s:
        rounds += 1
        run = await send_live(url, token, events[:DEMO_CLIENTS], f"demo-swap-{rounds}", record=False)
        if run.answers and all(a["version"] == version for a in run.answers):
            return {"version": version, "seconds": round(time.perf_counter() - started, 2), "failed": 0}
        await asyncio.sleep(0.2)
    return {"version": version, "seconds": None, "failed": 0, "note": f"not serving v{version} after {timeout_s} s"}


def _examples(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A few answers worth showing: the riskiest, one per decision."""
    out: list[dict[str, Any]] = []
    for decision in ("block", "review", "approve"):
        mine = [a for a in answers if a["decision"] == decision]
        if mine:
            out.append(max(mine, key=lambda a: a["score"]))
    return out
