"""Shared pieces of the benchmarks: a scratch database, percentiles, a results line."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sira.core import db, migrations  # noqa: E402
from sira.core.config import Settings  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {"p50_ms": round(percentile(ms, 0.5), 3), "p95_ms": round(percentile(ms, 0.95), 3),
            "p99_ms": round(percentile(ms, 0.99), 3), "mean_ms": round(statistics.fmean(ms), 3), "n": len(ms)}


@asynccontextmanager
async def scratch_database(settings: Settings) -> AsyncIterator[str]:
    """A fresh, migrated database on the configured server (SIRA_DATABASE_URL or the embedded one)."""
    server = db.resolve_dsn(settings)
    name = f"sira_bench_{uuid.uuid4().hex[:8]}"
    admin = await db.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    try:
        conn = await db.connect(dsn)
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def simulated_database(config) -> AsyncIterator[str]:  # config: sira.demo.simulate.SimulationConfig
    """A scratch database holding the simulator's events (ingested with feature set v1) and labels, and a local
    Ray for it (not timed: what the benchmarks measure comes after)."""
    import tempfile

    from sira.core.ray_runtime import init_ray
    from sira.demo.simulate import simulate
    from sira.features.definitions import PAYMENTS_V1
    from sira.ingest.bulk import ingest_files
    from sira.ingest.labels import import_label_files

    with tempfile.TemporaryDirectory() as tmp:
        sim = simulate(config, Path(tmp))
        async with scratch_database(Settings()) as dsn:
            settings = Settings(database_url=dsn, workspace=Path(tmp) / "ws")
            init_ray(settings, dsn)
            await asyncio.to_thread(ingest_files, settings, [sim.events_path], feature_sets=[PAYMENTS_V1], progress=False)
            await import_label_files(settings, [sim.labels_path])
            yield dsn


def report(name: str, result: dict) -> None:
    """One JSON line per benchmark on stdout (docs/performance.md is made from these)."""
    print(json.dumps({"benchmark": name, **result}, sort_keys=True))
    sys.stdout.flush()


def run(coro) -> None:
    asyncio.run(coro)
