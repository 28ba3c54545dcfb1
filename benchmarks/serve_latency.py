"""Online scoring latency and throughput on Ray Serve, against a no-op Serve endpoint measured in the same run.

    python benchmarks/serve_latency.py [--scale 0.5] [--requests 600] [--total 2000]
    SIRA_REDIS_URL=redis://127.0.0.1:6379/0 python benchmarks/serve_latency.py   # with Redis, as production

One local Ray (the CPUs of this machine), one Serve instance with the HAProxy ingress, two
applications side by side, each one replica of the same size: a no-op FastAPI ingress
(`POST /noop/score` parses the same JSON body and answers a small JSON) and SIRA
(`serve_configs/local.yaml`'s deployment, one replica). The data is `sira demo`'s (simulated
payments, a tuned fraud model in production) in a scratch database.

Measured with the same keep-alive HTTP client:
- concurrency 1: p50/p95/p99 of the no-op, of `/v1/score` with the entities' histories cached in
  the replica (a warm-up pass scores each entity once first), and uncached (the replica's caches
  turned off by `user_config`: every history is a snapshot read from Postgres);
- for each `/v1/score` row also the replica's own share (`*_in_replica`: the answers' `latency_ms`,
  from the route handler's start to the answer), which the shared machine's noise touches less,
  and both split by decision (`*_approve`, `*_review_block`): review and block answers carry reason
  codes computed inline by exact TreeSHAP, which costs more than the rest of the request;
- concurrency 8 and 32: requests/s and p99 of the no-op, of the plainest no-op (`/noop/plain`: the body
  read as bytes, no body model, a constant answer) and of cached `/v1/score`;
- CPU milliseconds per request by process role (`*_cpu_ms`: the SIRA replica, the recorder actor,
  PostgreSQL, Redis, Serve's proxy and controller, the client, the rest of Ray), and their server-side
  sum for SIRA at concurrency 32 (replica + recorder + PostgreSQL + Redis);
- the cached rows again with `record: false` (audited, not folded into the feature pipeline);
- registry change -> every request answered by the new version (a promotion under load).
Every score call carries a request id (idempotency) and is recorded in the audit trail. Events are live:
their times follow one clock from a minute after the newest stored event, a millisecond a request, so
concurrent clients send them slightly out of order, as live traffic does (feature engine v2 folds an event
older than its entity's newest from the events the replica folded since its stored state).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from _common import ProcessCpu, percentile, profiled, report, scratch_database, summary_ms

from sira.core import db
from sira.core.auth import Identity, authenticate, create_key
from sira.core.config import Settings
from sira.registry import models as registry


def noop_application() -> Any:
    from fastapi import FastAPI
    from ray import serve
    from starlette.responses import Response

    app = FastAPI()

    async def plain(request: Any) -> Response:  # the plainest: the body read as bytes, no body model
        await request.body()
        return Response(b'{"ok":true}', media_type="application/json")

    app.add_route("/plain", plain, methods=["POST"])

    @serve.deployment(name="noop", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
    @serve.ingress(app)
    class NoOp:
        @app.post("/score")
        async def score(self, body: dict) -> dict:
            return {"ok": True}

    return NoOp.bind()


def sequential(url: str, bodies: list[dict], headers: dict, answers: list[dict] | None = None) -> list[float]:
    """Round-trip seconds of each request, one after another; ``answers`` collects the JSON answers."""
    import httpx

    samples = []
    with httpx.Client(headers=headers, timeout=30) as client:
        for body in bodies:
            started = time.perf_counter()
            r = client.post(url, json=body)
            samples.append(time.perf_counter() - started)
            if r.status_code != 200:
                raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
            if answers is not None:
                answers.append(r.json())
    return samples


def scored(results: dict[str, Any], name: str, url: str, bodies: list[dict], headers: dict) -> None:
    """A sequential measurement of ``/v1/score``: round trips, and the replica's own share of them
    (the answers' ``latency_ms``: handler start to answer), also split by decision: review and block
    answers carry reason codes computed inline (exact TreeSHAP), approvals defer them."""
    answers: list[dict] = []
    cpu = ProcessCpu()
    trips = sequential(url, bodies, headers, answers)
    results[f"{name}_cpu_ms"] = cpu.per_request_ms(len(bodies))
    inside = [a["latency_ms"] / 1000 for a in answers]
    results[name] = summary_ms(trips)
    results[f"{name}_in_replica"] = summary_ms(inside)
    risky = [a["decision"] != "approve" for a in answers]
    for label, keep in (("approve", False), ("review_block", True)):
        picked = [i for i, r in enumerate(risky) if r == keep]
        if picked:
            results[f"{name}_{label}"] = summary_ms([trips[i] for i in picked])
            results[f"{name}_{label}_in_replica"] = summary_ms([inside[i] for i in picked])


async def concurrent(url: str, bodies: list[dict], headers: dict, clients: int) -> dict[str, float]:
    import httpx

    samples: list[float] = []
    it = iter(bodies)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(client: httpx.AsyncClient) -> None:
        for body in it:
            started = time.perf_counter()
            r = await client.post(url, json=body)
            samples.append(time.perf_counter() - started)
            if r.status_code != 200:
                raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")

    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:
        cpu = ProcessCpu()
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        seconds = time.perf_counter() - started
        used = cpu.per_request_ms(len(samples))
    return {"requests_per_s": round(len(samples) / seconds, 1), "p50_ms": round(percentile(samples, 0.5) * 1000, 3),
            "p99_ms": round(percentile(samples, 0.99) * 1000, 3), "n": len(samples), "cpu_ms": used}


CLOCK = itertools.count()  # milliseconds after LIVE_FROM, one a request body


def score_bodies(entities: list[dict], tag: str, n: int, record: bool = True) -> list[dict]:
    out = []
    for i in range(n):
        e = entities[i % len(entities)]
        at = (datetime.fromisoformat(e["occurred_at"]) + timedelta(milliseconds=next(CLOCK))).isoformat()
        out.append({"model": "fraud", "request_id": f"{tag}-{i}", "record": record, "event": {
            "event_id": f"{tag}-{i}", "occurred_at": at, "customer_id": e["customer_id"],
            "card_token": e["card_token"], "terminal_id": e["terminal_id"], "amount": e["amount"],
            "country": e["country"], "channel": e["channel"]}})
    return out


async def prepare(settings: Settings, scale: float) -> tuple[str, list[dict]]:
    """`sira demo`'s data and production model (no serving), a service key, and live-looking events."""
    from sira.demo.story import read_demo_keys, run_demo

    await run_demo(settings, scale=scale, days=30, serve=False, out_dir=settings.workspace / "data")
    keys = read_demo_keys(settings.workspace / "secrets" / "demo_keys.json")
    pool = await db.create_pool(db.resolve_dsn(settings), settings)
    try:
        async with db.transaction(pool) as conn:
            admin = await authenticate(conn, keys["demo-admin"], pepper=settings.secret("auth_secret"))
            key, _ = await create_key(conn, name="bench-svc", roles=["service"],
                                      pepper=settings.secret("auth_secret"), creator=admin)
        rows = await pool.fetch(
            """SELECT DISTINCT ON (customer_id) customer_id, card_token, terminal_id, country, channel,
                      amount::float8 AS amount, (SELECT max(occurred_at) FROM sira_events) + interval '1 minute'
                      AS occurred_at
                 FROM sira_events ORDER BY customer_id, occurred_at DESC""")
    finally:
        await pool.close()
    entities = [{**dict(r), "occurred_at": r["occurred_at"].isoformat()} for r in rows]
    return key, entities


def swap_under_load(url: str, headers: dict, entities: list[dict], settings: Settings, target: int) -> float:
    """Promote ``target`` (a policy with 0 approvals) while clients score; seconds until every answer is it."""
    import httpx

    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def loop(k: int) -> None:
        with httpx.Client(headers=headers, timeout=30) as client:
            for body in score_bodies(entities, f"swap{k}-{time.time()}", 20_000):
                if stop.is_set():
                    return
                r = client.post(url, json={**body, "record": False})
                results.append((time.time(), r.json()["version"] if r.status_code == 200 else -1))

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    time.sleep(2)

    async def promote() -> float:
        admin = Identity("bench-admin", frozenset({"admin"}))
        pool = await db.create_pool(db.resolve_dsn(settings), settings)
        try:
            async with db.transaction(pool) as conn:
                await registry.update_model(conn, admin, "fraud", required_approvals=0)
                # with no approvals required, the policy promotes on its own only on a retraining run's evidence:
                # here one approver approves it
                if (await registry.request_promotion(conn, settings, admin, "fraud", target, "benchmark")
                        )["status"] == "pending":
                    await registry.decide(conn, Identity("bench-approver", frozenset({"approver"})), "fraud",
                                          target, "approve")
            return time.time()
        finally:
            await pool.close()

    changed = asyncio.run(promote())
    deadline = changed + 120
    while time.time() < deadline:
        recent = [v for t, v in results if t > time.time() - 1]
        if recent and all(v == target for v in recent):
            break
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    if any(v == -1 for _, v in results):
        raise RuntimeError("a request failed during the swap")
    last_old = max((t for t, v in results if v != target), default=changed)
    return max(0.0, last_old - changed)


async def train_second_version(settings: Settings) -> int:
    from sira.training.runs import TrainRequest, run_training

    result = await run_training(settings, TrainRequest(model="fraud", seed=11, num_threads=1,
                                                       label_maturity_days=10, label_delay_days=3.75,
                                                       params={"num_boost_round": 150, "num_leaves": 15}))
    return result["version"]


def main(scale: float, requests: int, total: int, profile: Path | None = None) -> None:
    from ray import serve

    from sira.core.ray_runtime import init_ray, worker_env
    from sira.http.deployment import ServeSpec, SiraIngress

    async def body() -> None:
        async with scratch_database(Settings()) as dsn:
            workspace = Path(tempfile.mkdtemp(prefix="sira-bench-"))
            settings = Settings(database_url=dsn, workspace=workspace)
            init_ray(settings, dsn)  # here, before any thread: Ray's driver lives in the main thread
            key, entities = await prepare(settings, scale)
            await asyncio.to_thread(run, settings, dsn, key, entities)

    def run(settings: Settings, dsn: str, key: str, entities: list[dict]) -> None:
        spec = ServeSpec.local()
        serve.start(http_options={"host": "127.0.0.1", "port": 8000})
        serve.run(noop_application(), name="noop", route_prefix="/noop", blocking=False)
        user_config = dict(spec.options["user_config"])
        env = {"env_vars": worker_env(settings, dsn)}

        def deploy(**config: Any) -> None:
            app = SiraIngress.options(num_replicas=1, max_ongoing_requests=64,
                                      ray_actor_options={"num_cpus": 0.5, "runtime_env": env},
                                      user_config={**user_config, **config}).bind(spec.args)
            serve.run(app, name="sira", route_prefix="/", blocking=False)

        deploy()
        time.sleep(3)
        auth = {"Authorization": f"Bearer {key}"}
        noop, score = "http://127.0.0.1:8000/noop/score", "http://127.0.0.1:8000/v1/score"
        plain = "http://127.0.0.1:8000/noop/plain"
        half = len(entities) // 2
        warm, cold = entities[:half], entities[half:]
        n = min(requests, half)
        sequential(noop, [{"warm": i} for i in range(100)], auth)
        sequential(score, score_bodies(warm, "warm", n), auth)  # fills the replica's caches
        results: dict[str, Any] = {"entities": len(entities), "requests": n}
        cpu = ProcessCpu()
        results["noop_c1"] = summary_ms(sequential(noop, score_bodies(warm, "noop", n), auth))
        results["noop_c1_cpu_ms"] = cpu.per_request_ms(n)
        with profiled(profile, "cached_c1"):
            scored(results, "score_cached_c1", score, score_bodies(warm, "cached", n), auth)
        # the same without recording the events into the feature pipeline (audited all the same)
        scored(results, "score_cached_norecord_c1", score, score_bodies(warm, "cnr", n, False), auth)
        deploy(cache_max_entries=0)  # the same replica, its caches off: every history from Postgres
        time.sleep(2)
        scored(results, "score_uncached_c1", score, score_bodies(cold, "uncached", n), auth)
        deploy()
        time.sleep(2)
        sequential(score, score_bodies(entities, "rewarm", len(entities)), auth)
        for clients in (8, 32):
            results[f"plain_c{clients}"] = asyncio.run(concurrent(plain, score_bodies(entities, f"p{clients}", total),
                                                                  auth, clients))
            results[f"noop_c{clients}"] = asyncio.run(concurrent(noop, score_bodies(entities, f"n{clients}", total), auth,
                                                                 clients))
            with profiled(profile, f"score_c{clients}"):
                results[f"score_c{clients}"] = asyncio.run(concurrent(
                    score, score_bodies(entities, f"s{clients}", total), auth, clients))
            results[f"score_norecord_c{clients}"] = asyncio.run(concurrent(
                score, score_bodies(entities, f"r{clients}", total, False), auth, clients))
        target = asyncio.run(train_second_version(settings))
        results["swap_seconds"] = round(swap_under_load(score, auth, entities, settings, target), 2)
        noop_p95 = results["noop_c1"]["p95_ms"]
        results["ratios"] = {
            "cached_p95_over_noop_p95": round(results["score_cached_c1"]["p95_ms"] / noop_p95, 2),
            "uncached_p95_over_noop_p95": round(results["score_uncached_c1"]["p95_ms"] / noop_p95, 2),
            "cached_approve_p95_over_noop_p95": round(
                results.get("score_cached_c1_approve", {"p95_ms": float("nan")})["p95_ms"] / noop_p95, 2),
            "c32_throughput_over_noop": round(results["score_c32"]["requests_per_s"]
                                              / results["noop_c32"]["requests_per_s"], 2),
            "c32_throughput_over_plain": round(results["score_c32"]["requests_per_s"]
                                               / results["plain_c32"]["requests_per_s"], 2),
            "c8_throughput_over_noop": round(results["score_c8"]["requests_per_s"]
                                             / results["noop_c8"]["requests_per_s"], 2),
        }
        sira_roles = ("replica", "recorder", "postgres", "redis")
        results["server_cpu_ms_per_request_c32"] = round(sum(
            v for k, v in results["score_c32"]["cpu_ms"].items() if k in sira_roles), 3)
        # issue #22's goals
        results["goals"] = {"cached_p95_within_1_6x": results["ratios"]["cached_p95_over_noop_p95"] <= 1.6,
                            "uncached_p95_within_2x": results["ratios"]["uncached_p95_over_noop_p95"] <= 2.0,
                            "c32_throughput_at_least_0_9x_plain": results["ratios"]["c32_throughput_over_plain"] >= 0.9,
                            "server_cpu_at_most_4ms": results["server_cpu_ms_per_request_c32"] <= 4.0}
        results["ingress"] = "haproxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "default"
        results["throughput_optimized"] = os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"
        serve.shutdown()
        report("serve_latency", results)

    asyncio.run(body())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.5, help="demo data scale (customers = 2000 x scale)")
    parser.add_argument("--requests", type=int, default=600, help="sequential requests per measurement")
    parser.add_argument("--total", type=int, default=2000, help="requests per concurrent measurement")
    parser.add_argument("--profile", type=Path, default=None,
                        help="a folder for py-spy's collapsed stacks of the replica and the recorder (cached c1, c8, c32)")
    args = parser.parse_args()
    main(args.scale, args.requests, args.total, args.profile)
