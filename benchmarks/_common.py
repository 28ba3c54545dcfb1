"""Shared pieces of the benchmarks: a scratch database, percentiles, a results line."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
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


class ProcessCpu:
    """CPU seconds of this machine's processes between two readings, by role: a Serve replica by its
    deployment's name, SIRA's recorder actor, Serve's proxy and controller, PostgreSQL's and Redis's
    processes, this process (the benchmark's client), the rest of Ray. A process that ends between the
    readings is not counted; one that starts counts from zero."""

    ROLES = (("ServeReplica:sira", "replica"), ("ServeReplica:noop", "noop_replica"), ("Recorder", "recorder"),
             ("ProxyActor", "proxy"), ("haproxy", "proxy"), ("ServeController", "controller"),
             ("postgres", "postgres"), ("redis-server", "redis"), ("ray", "ray_other"))

    def __init__(self) -> None:
        import os

        import psutil

        self.psutil, self.me = psutil, os.getpid()
        self.start = self.read()

    def role(self, p) -> str | None:
        if p.pid == self.me:
            return "client"
        text = " ".join(p.info["cmdline"] or ()) or (p.info["name"] or "")
        for needle, role in self.ROLES:
            if needle in text:
                return role
        return None

    def read(self) -> dict[int, tuple[str, float]]:
        out = {}
        for p in self.psutil.process_iter(["name", "cmdline"]):
            try:
                role = self.role(p)
                if role is not None:
                    t = p.cpu_times()
                    out[p.pid] = (role, t.user + t.system)
            except self.psutil.Error:
                continue
        return out

    def per_request_ms(self, requests: int) -> dict[str, float]:
        """CPU milliseconds per request by role since this meter started."""
        end, used = self.read(), {}
        for pid, (role, seconds) in end.items():
            used[role] = used.get(role, 0.0) + seconds - self.start.get(pid, (role, 0.0))[1]
        return {role: round(s * 1000 / requests, 3) for role, s in sorted(used.items())}


@contextmanager
def profiled(folder: Path | None, name: str, roles: tuple[str, ...] = ("replica", "recorder")) -> Iterator[None]:
    """py-spy's collapsed stacks (the thread holding the GIL: Python's CPU) of the processes in ``roles`` while the block runs,
    written to ``folder/name-role-pid.txt`` (nothing when ``folder`` is None)."""
    import shutil
    import signal
    import subprocess

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if folder is None or not Path(spy).exists():
        if folder is not None:
            print("py-spy is not installed (pip install py-spy): no profiles", file=sys.stderr)
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    cpu = ProcessCpu()
    spies = [subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "250", "--gil", "--format", "raw",
                               "--output", str(folder / f"{name}-{role}-{pid}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for pid, (role, _) in cpu.start.items() if role in roles]
    try:
        yield
    finally:
        for s in spies:
            s.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        for s in spies:
            s.wait(timeout=30)


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {"p50_ms": round(percentile(ms, 0.5), 3), "p95_ms": round(percentile(ms, 0.95), 3),
            "p99_ms": round(percentile(ms, 0.99), 3), "mean_ms": round(statistics.fmean(ms), 3), "n": len(ms)}


@asynccontextmanager
async def scratch_database(settings: Settings) -> AsyncIterator[str]:
    """A fresh, migrated database on the configured server (SIRA_DATABASE_URL or the embedded one)."""
    server = db.resolve_dsn(settings, create=True)  # its own databases: the server may be new
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


async def drain(source: Any, n: int, on_batch: Any, *, pool: Any = None, settings: Any = None,
                fs: Any = None, stall_s: float = 30.0) -> float:
    """Seconds to take ``n`` entries off a stream source: stored and folded into ``fs`` by SIRA's consumer, or
    (``fs`` None: the baseline) only read and acknowledged; ``on_batch(entries, summary)`` sees each batch.
    When no entry arrives for ``stall_s`` the run stops with how many had (a stalled broker or consumer ends
    the benchmark with a reason instead of waiting forever; a slow one that moves goes on)."""
    from sira.ingest.stream import consume

    seen = 0
    moved = time.monotonic()

    def counted(entries: Any, summary: Any) -> None:
        nonlocal seen, moved
        seen += len(entries)
        moved = time.monotonic()
        on_batch(entries, summary)

    async def run() -> None:
        if fs is not None:
            await consume(source, pool, settings=settings, feature_sets=[fs], batch=500, block_ms=5, max_events=n,
                          on_batch=counted)
            return
        while seen < n:
            entries = await source.read(100, 5)
            await source.ack([e.id for e in entries])
            if entries:
                counted(entries, None)

    started = time.perf_counter()
    task = asyncio.ensure_future(run())
    while not (await asyncio.wait({task}, timeout=1.0))[0]:
        if time.monotonic() - moved > stall_s:
            task.cancel()
            consumer = "SIRA's consumer" if fs is not None else "the no-op consumer"
            raise SystemExit(f"stalled: {consumer} had taken {seen} of {n} entries and none in the last "
                             f"{stall_s:.0f} s")
    task.result()
    return time.perf_counter() - started


def stream_report(name: str, fs: Any, events: int, rate: float, floor: list[float], sira: list[float], seconds: float,
                  sira_key: str, **extra: Any) -> None:
    """A stream benchmark's line: SIRA's latencies (under ``sira_key``) against the baseline consumer's."""
    floor_ms, sira_ms = summary_ms(floor), summary_ms(sira)
    report(name, {
        "feature_set": f"{fs.name}@{fs.version}", "events": events, "rate_per_s": rate, **extra,
        "sira_sustained_events_per_s": round(events / seconds), "noop_consumer": floor_ms, sira_key: sira_ms,
        "p95_vs_noop": round(sira_ms["p95_ms"] / max(floor_ms["p95_ms"], 0.001), 2),
        "meets_seed_target_p95_under_100ms": sira_ms["p95_ms"] < 100,
    })


def stream_args(doc: str, *extra: tuple[str, dict[str, Any]]) -> Any:
    """--events, --rate, --feature-set and a benchmark's ``extra`` (flag, argparse keywords) options."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for flag, options in extra:
        parser.add_argument(flag, **options)
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--feature-set", default="payments@2", help="NAME@VERSION the events are folded into")
    return parser.parse_args()
