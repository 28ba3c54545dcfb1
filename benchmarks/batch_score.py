"""Batch scoring rate and memory: `sira score` on Ray Data against a bare pyarrow read + `Booster.predict`.

    python benchmarks/batch_score.py [--rows 1000000] [--small 100000] [--batch-size 8192] [--repeat 3]

One run. Seeded simulated rows x 30 float features (plus an ``event_id`` string
and an ``occurred_at`` timestamp) are written as 20 Parquet files of one row
group each, once with ``--rows`` (the large set) and once with ``--small`` rows
(default rows/10), so a row group (a read task's block) is rows/20 rows;
a 200-tree LightGBM model (no early stopping, 2 threads) is trained on a
separate labelled 100k-row table through SIRA's bring-your-own-table training
(``sira.training.runs.run_training``) into a scratch database, so version 1 exists.
Then, each in a fresh process (so every peak is its own):

- raw: per file of the large set, ``pyarrow.parquet.read_table`` -> float64
  matrix in the model's schema order -> ``Booster.predict(X, num_threads=2)``;
  nothing written. rows/s.
- sira: a local Ray with 2 CPUs (``sira.core.ray_runtime.init_ray``) started before
  the clock, then ``run_batch_score`` over the folder (scores, decisions,
  event_id and occurred_at written to one Parquet file, run audited); rows/s
  from the wall time of the call. Run on the small and on the large set.

- sira on a running cluster (the shape `ray job submit` sees on a long-lived
  cluster): a host process starts a local Ray with 2 CPUs and keeps it up; the
  small set is scored once by a driver of its own (as any earlier job would,
  it leaves Ray Data's detached system actors running); then each large-set
  run is a fresh driver process that joins the cluster before the clock.

raw and sira alternate ``--repeat`` times on the large set and the fastest of
each is kept (these machines are shared: a burst of load elsewhere easily
doubles a run); all times are in the JSON line. Also reported: the time to
the first scored batch (Ray and Ray Data start-up, the actor loading the
model) and the rate after it.

Goal: sira / raw rows/s >= 0.8 on the large set (MEASURED.md: a plain Ray Data
pipeline reached 0.68 on this kind of machine). Two ratios: ``ratio_vs_raw`` for
a job on a fresh local Ray (it pays for starting Ray Data's system actors,
five processes importing ``ray.data`` on 2 cores), ``ratio_running_cluster``
for a job on a running one, against raw runs interleaved with it (an idle Ray
stays up beside them too).

Memory: a thread samples every 50 ms the RSS summed over the process's
own tree (the driver and its children, recursively: with a local ``ray.init``
the GCS, raylet, dashboard and log monitor are the driver's children) and the
descendants of this Ray session's raylet (the ``ray::`` worker and actor
processes are the raylet's children, not the driver's; the raylet is found by
the session folder in its command line, so another Ray cluster on the machine
is never counted). Membership is refreshed every 0.5 s, RSS read every 50 ms.
RSS counts pages shared between processes (the object store's shared memory)
once per process that touched them; nothing is subtracted. Goal: the large
set's peak (the largest of its runs) within 1.5x the small set's. The same
sampling sums the CPU time (user + system) those processes used during the
call: on a machine shared with other work, CPU seconds move much less than
wall time, so they are reported beside the rates.

In process (``in_process``): both sets scored once more with no Ray at all, as
`sira score` does outside a Ray job for inputs under ``LOCAL_BELOW`` rows
(here forced for the large set too), LightGBM on every CPU of the process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import report, scratch_database

from sira.core.config import Settings

FEATURES = 30
FILES = 20
TRAIN_ROWS = 100_000
ROUNDS = 200
THREADS = 2
MODEL = "bench_batch"
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


# -- data ------------------------------------------------------------------------------------------


def table(rows: int, first: int, seed: int, label: bool = False) -> pa.Table:
    """Rows ``first .. first+rows-1``: event_id, occurred_at (one a second), f0..f29 (and a label)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, FEATURES))
    ids = np.arange(first, first + rows)
    columns = {
        "event_id": pa.array(np.char.add("e", np.char.zfill(ids.astype(str), 10)).astype(object), pa.string()),
        "occurred_at": pa.array(np.datetime64(EPOCH.replace(tzinfo=None), "us") + ids.astype("timedelta64[s]"),
                                pa.timestamp("us", tz="UTC")),
        **{f"f{j}": X[:, j] for j in range(FEATURES)},
    }
    if label:
        logit = -5.0 + 1.5 * X[:, 0] + X[:, 1] * X[:, 2] + 0.8 * (X[:, 3] > 1) + 0.5 * X[:, 4]
        columns["fraud"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pa.table(columns)


def write_set(folder: Path, rows: int, seed: int) -> None:
    """``rows`` rows as FILES Parquet files (one row group each)."""
    folder.mkdir(parents=True)
    bounds = np.linspace(0, rows, FILES + 1).astype(int)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(table(int(hi - lo), int(lo), seed * 1000 + i), folder / f"part-{i:03d}.parquet",
                       row_group_size=max(int(hi - lo), 1))


# -- memory ----------------------------------------------------------------------------------------


class PeakRss:
    """Peak RSS summed over this process's tree and this Ray session's raylet tree, and the CPU time they used,
    sampled in a thread."""

    def __init__(self, session_dir: str | None = None, interval_s: float = 0.05, refresh_s: float = 0.5):
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.interval_s, self.refresh_s = interval_s, refresh_s
        self.raylets = []
        if session_dir:
            for p in psutil.process_iter(["name", "cmdline"]):
                if p.info["name"] == "raylet" and session_dir in " ".join(p.info["cmdline"] or ()):
                    self.raylets.append(p)
        self.peak_bytes = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.members: dict[int, object] = {}
        self.cpu_start: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}

    def _refresh(self) -> None:
        found = {self.me.pid: self.me}
        for root in (self.me, *self.raylets):
            try:
                found[root.pid] = root
                for child in root.children(recursive=True):
                    found.setdefault(child.pid, child)
            except self.psutil.Error:
                continue
        self.members = found

    def sample(self) -> int:
        total = 0
        for p in list(self.members.values()):
            try:
                total += p.memory_info().rss
                times = p.cpu_times()
                self.cpu_last[p.pid] = times.user + times.system
            except self.psutil.Error:
                pass
        return total

    @property
    def cpu_seconds(self) -> float:
        """CPU time the sampled processes used while sampled (a process gone between samples loses < 50 ms)."""
        return sum(last - self.cpu_start.get(pid, 0.0) for pid, last in self.cpu_last.items())

    def _run(self) -> None:
        next_refresh = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_refresh:
                self._refresh()
                next_refresh = now + self.refresh_s
            total = self.sample()
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_processes = total, len(self.members)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakRss":
        self._refresh()
        self.idle_bytes = self.sample()
        self.cpu_start = dict(self.cpu_last)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._refresh()
        self.sample()


# -- the two sides (each in its own process) ---------------------------------------------------


def run_raw(data: Path, model_file: Path, names: list[str]) -> dict:
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(model_file))
    files = sorted(data.glob("*.parquet"))
    rows = 0
    with PeakRss() as memory:
        started = time.perf_counter()
        for path in files:
            t = pq.read_table(path)
            X = np.empty((t.num_rows, len(names)), dtype=np.float64)
            for j, name in enumerate(names):
                X[:, j] = t.column(name).to_numpy()
            booster.predict(X, num_threads=THREADS)
            rows += t.num_rows
        seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "peak_bytes": memory.peak_bytes, "idle_bytes": memory.idle_bytes,
            "cpu_seconds": memory.cpu_seconds, "trees": booster.num_trees()}


def run_host(dsn: str, workspace: Path) -> None:
    """A running cluster: a local Ray kept up until stdin closes; its address is printed first."""
    import ray

    from sira.core.ray_runtime import init_ray

    print(json.dumps(init_ray(Settings(database_url=dsn, workspace=workspace), dsn, num_cpus=THREADS)), flush=True)
    sys.stdin.read()
    ray.shutdown()


def run_sira(data: Path, out: Path, dsn: str, workspace: Path, batch_size: int, address: str | None = None,
             local: bool = False) -> dict:
    """``local``: scored in this process (what `sira score` does with a small input); else on Ray Data."""
    import ray

    from sira.core.ray_runtime import init_ray
    from sira.monitoring.batch import BatchRequest, run_batch_score

    settings = Settings(database_url=dsn, workspace=workspace, ray_address=address)
    session_dir = None
    if not local:
        init_ray(settings, dsn, num_cpus=THREADS)
        session_dir = ray._private.worker._global_node.get_session_dir_path()
    first: list[tuple[float, int]] = []

    def on_rows(done: int, total: int | None) -> None:
        if not first:
            first.append((time.perf_counter(), done))

    try:
        with PeakRss(session_dir) as memory:
            started = time.perf_counter()
            request = BatchRequest(model=MODEL, version=1, data=[data], out=out, batch_size=batch_size,
                                   local_below=10**12 if local else 0)
            result = asyncio.run(run_batch_score(settings, request, on_rows=on_rows))
            seconds = time.perf_counter() - started
    finally:
        if not local:
            ray.shutdown()
    return {"rows": result["rows"], "engine": result["engine"], "seconds": seconds, "job_seconds": result["seconds"],
            "first_batch_seconds": first[0][0] - started, "first_batch_rows": first[0][1],
            "cpu_seconds": memory.cpu_seconds,
            "peak_bytes": memory.peak_bytes, "idle_bytes": memory.idle_bytes, "processes": memory.peak_processes,
            "raylets": len(memory.raylets)}


def child(*args: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"{' '.join(args[:2])} failed ({out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the run ---------------------------------------------------------------------------------------


async def main(rows: int, small: int, batch_size: int, repeat: int) -> None:
    import lightgbm
    import ray

    from sira.core import artifacts, db
    from sira.registry import models as registry
    from sira.training.runs import TrainRequest, run_training

    with tempfile.TemporaryDirectory(prefix="sira-bench-batch-") as tmp_name:
        tmp = Path(tmp_name)
        write_set(tmp / "large", rows, seed=1)
        write_set(tmp / "small", small, seed=2)
        pq.write_table(table(TRAIN_ROWS, 0, seed=3, label=True), tmp / "train.parquet")
        async with scratch_database(Settings()) as dsn:
            settings = Settings(database_url=dsn, workspace=tmp / "ws")
            trained = await run_training(settings, TrainRequest(
                model=MODEL, data=[tmp / "train.parquet"], label="fraud", id_col="event_id", time_col="occurred_at",
                params={"num_boost_round": ROUNDS, "early_stopping_rounds": 0}, num_threads=THREADS, seed=1))
            names = [f["name"] for f in trained["feature_schema"]]
            conn = await db.connect(dsn)
            try:
                row = await registry.get_version(conn, MODEL, trained["version"])
            finally:
                await conn.close()
            ref = artifacts.ArtifactRef(row["artifact_uri"], row["artifact_sha256"])
            loaded = artifacts.load_artifact(settings, ref)
            (tmp / "model.txt").write_text(loaded.model_text)
            common = ["--dsn", dsn, "--workspace", str(tmp / "ws"), "--batch-size", str(batch_size)]
            raws, larges = [], []
            for _ in range(repeat):  # interleaved, so a burst of load elsewhere hits both sides alike
                raws.append(child("--mode", "raw", "--data", str(tmp / "large"), "--model-file",
                                  str(tmp / "model.txt"), "--names", ",".join(names)))
                larges.append(child("--mode", "sira", "--data", str(tmp / "large"), "--out",
                                    str(tmp / "out.parquet"), *common))
            sira_small = child("--mode", "sira", "--data", str(tmp / "small"), "--out", str(tmp / "small.parquet"),
                               *common)
            local_small, local_large = (  # `sira score`'s in-process path (taken below LOCAL_BELOW rows)
                child("--mode", "sira", "--local", "--data", str(tmp / name), "--out", str(tmp / f"{name}-here.parquet"),
                      *common) for name in ("small", "large"))
            # The cluster's own token (Ray 2.60 authenticates drivers that join): the host and its drivers use it.
            (tmp / "auth_token").write_text(secrets.token_hex(32))
            (tmp / "auth_token").chmod(0o600)
            cluster_env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp / "auth_token")}
            host = subprocess.Popen([sys.executable, __file__, "--mode", "host", "--dsn", dsn, "--workspace",
                                     str(tmp / "ws")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    env=cluster_env)
            try:
                line = host.stdout.readline()
                while line and not line.startswith('{"address"'):  # anything Ray itself printed first
                    line = host.stdout.readline()
                if not line:
                    raise SystemExit(f"the host process ended before Ray was up ({host.wait()})")
                address = json.loads(line)["address"]
                on_cluster = ["--address", address]
                child("--mode", "sira", "--data", str(tmp / "small"), "--out", str(tmp / "warm.parquet"), *common,
                      *on_cluster, env=cluster_env)  # an earlier job: Ray Data's system actors are up from here on
                raws_running, runnings = [], []
                for _ in range(repeat):
                    raws_running.append(child("--mode", "raw", "--data", str(tmp / "large"), "--model-file",
                                              str(tmp / "model.txt"), "--names", ",".join(names)))
                    runnings.append(child("--mode", "sira", "--data", str(tmp / "large"), "--out",
                                          str(tmp / "out.parquet"), *common, *on_cluster, env=cluster_env))
            finally:
                host.stdin.close()
                host.wait(timeout=120)
    raw = min(raws, key=lambda r: r["seconds"])
    sira_large = {**min(larges, key=lambda r: r["seconds"]), "peak_bytes": max(r["peak_bytes"] for r in larges)}
    assert all(r["rows"] == rows for r in raws + larges) and sira_small["rows"] == small, (raws, larges, sira_small)
    raw_running = min(raws_running, key=lambda r: r["seconds"])
    running = min(runnings, key=lambda r: r["seconds"])
    assert all(r["rows"] == rows for r in raws_running + runnings), (raws_running, runnings)
    running_ratio = (rows / running["seconds"]) / (rows / raw_running["seconds"])
    raw_rate, sira_rate = rows / raw["seconds"], rows / sira_large["seconds"]
    after_first = (rows - sira_large["first_batch_rows"]) / (sira_large["seconds"] - sira_large["first_batch_seconds"])
    peak_ratio = sira_large["peak_bytes"] / sira_small["peak_bytes"]

    def mib(n: float) -> int:
        return round(n / (1024 * 1024))

    report("batch_score", {
        "rows": rows, "small_rows": small, "files": FILES, "features": FEATURES, "trees": raw["trees"],
        "threads": THREADS, "batch_size": batch_size, "repeat": repeat,
        "raw_seconds_all": [round(r["seconds"], 2) for r in raws],
        "sira_seconds_all": [round(r["seconds"], 2) for r in larges],
        "raw_rows_per_s": round(raw_rate), "sira_rows_per_s": round(sira_rate),
        "ratio_vs_raw": round(sira_rate / raw_rate, 3), "goal_ratio": 0.8, "ratio_met": sira_rate / raw_rate >= 0.8,
        "raw_seconds": round(raw["seconds"], 3), "sira_wall_seconds": round(sira_large["seconds"], 3),
        "sira_job_seconds": sira_large["job_seconds"],
        "sira_first_batch_seconds": round(sira_large["first_batch_seconds"], 3),
        "sira_after_first_batch_rows_per_s": round(after_first),
        "sira_small_rows_per_s": round(small / sira_small["seconds"]),
        "in_process": {"small_rows_per_s": round(small / local_small["seconds"]),
                       "large_rows_per_s": round(rows / local_large["seconds"]),
                       "large_ratio_vs_raw": round(rows / local_large["seconds"] / raw_rate, 3),
                       "peak_small_mib": mib(local_small["peak_bytes"]), "peak_large_mib": mib(local_large["peak_bytes"])},
        "running_cluster": {
            "raw_seconds_all": [round(r["seconds"], 2) for r in raws_running],
            "sira_seconds_all": [round(r["seconds"], 2) for r in runnings],
            "raw_rows_per_s": round(rows / raw_running["seconds"]), "sira_rows_per_s": round(rows / running["seconds"]),
            "sira_first_batch_seconds": round(running["first_batch_seconds"], 3),
            "sira_cpu_seconds": round(running["cpu_seconds"], 2)},
        "ratio_running_cluster": round(running_ratio, 3), "ratio_running_cluster_met": running_ratio >= 0.8,
        "raw_cpu_seconds": round(raw["cpu_seconds"], 2), "sira_cpu_seconds": round(sira_large["cpu_seconds"], 2),
        "peak_small_mib": mib(sira_small["peak_bytes"]), "peak_large_mib": mib(sira_large["peak_bytes"]),
        "idle_small_mib": mib(sira_small["idle_bytes"]), "idle_large_mib": mib(sira_large["idle_bytes"]),
        "peak_ratio": round(peak_ratio, 3), "goal_peak_ratio": 1.5, "peak_ratio_met": peak_ratio <= 1.5,
        "raw_peak_mib": mib(raw["peak_bytes"]), "processes_sampled": sira_large["processes"],
        "ray": ray.__version__, "lightgbm": lightgbm.__version__, "pyarrow": pa.__version__,
    })

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, help="rows of the small set (default: rows / 10)")
    parser.add_argument("--batch-size", type=int, default=8_192, help="BatchRequest.batch_size")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved raw/sira runs on the large set; best kept")
    parser.add_argument("--mode", choices=["raw", "sira", "host"])
    parser.add_argument("--address", help="sira: join this running Ray cluster")
    parser.add_argument("--local", action="store_true", help="sira: score in this process, not on Ray Data")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--model-file", type=Path)
    parser.add_argument("--names")
    parser.add_argument("--dsn")
    parser.add_argument("--workspace", type=Path)
    args = parser.parse_args()
    if args.mode == "raw":
        print(json.dumps(run_raw(args.data, args.model_file, args.names.split(","))))
    elif args.mode == "sira":
        print(json.dumps(run_sira(args.data, args.out, args.dsn, args.workspace, args.batch_size, args.address,
                                  args.local)))
    elif args.mode == "host":
        run_host(args.dsn, args.workspace)
    else:
        asyncio.run(main(args.rows, args.small or args.rows // 10, args.batch_size, args.repeat))
