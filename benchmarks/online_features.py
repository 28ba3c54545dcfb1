"""Online feature reads: one entity's snapshot from Postgres and from Redis, against their floors.

    python benchmarks/online_features.py [--entities 300000] [--reads 3000]

In one run, over the same asyncpg pool: `SELECT 1` (the floor) and SIRA's
snapshot read (`feature_store.read_snapshot`, a primary-key lookup of a JSONB
vector); over the same Redis connection: `PING` (the floor) and a `GET` of the
same vector. Redis: SIRA_REDIS_URL, else 127.0.0.1:6379 db 15.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from datetime import datetime, timezone

from _common import report, scratch_database, summary_ms

from sira.core import db
from sira.core.config import Settings
from sira.features.definitions import PAYMENTS_V1
from sira.features.store import read_snapshot


async def timed(n: int, call) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def main(entities: int, reads: int) -> None:
    fs = PAYMENTS_V1
    names = fs.entity("customer").names()
    vector = {n: round(random.random() * 100, 3) for n in names}
    spec = fs.entity("customer")
    # A realistic state: a month of a customer's events (about one a day).
    columns = ["ts", "amount", "event_id", *spec.categorical_columns, "label_known_at"]
    state = {"columns": columns, "rows": [
        [1_790_000_000_000_000 + i * 86_400_000_000, round(random.random() * 100, 2), f"tx-{i:08d}",
         *(f"v{random.randint(0, 9)}" for _ in spec.categorical_columns), None] for i in range(30)]}
    async with scratch_database(Settings()) as dsn:
        settings = Settings(database_url=dsn)
        pool = await db.create_pool(dsn, settings)
        now = datetime.now(timezone.utc)
        await pool.execute(
            """INSERT INTO sira_feature_snapshots (entity_type, entity_id, feature_set, feature_set_version, features,
                                                   as_of, event_count, state)
               SELECT 'customer', 'cus-' || g, $1, $2, $3::jsonb, $4, 30, $6::jsonb FROM generate_series(1, $5) g""",
            fs.name, fs.version, json.dumps(vector), now, entities, json.dumps(state),
        )
        await pool.execute("ANALYZE sira_feature_snapshots")
        keys = [f"cus-{random.randint(1, entities)}" for _ in range(reads)]
        it = iter(keys * 3)

        async def select1() -> None:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")

        async def snapshot() -> None:
            async with pool.acquire() as conn:
                await read_snapshot(conn, fs, "customer", next(it))

        await timed(200, select1)  # warm up both
        await timed(200, snapshot)
        floor = await timed(reads, select1)
        snap = await timed(reads, snapshot)
        await pool.close()

    import redis.asyncio as aioredis

    url = os.environ.get("SIRA_REDIS_URL", "redis://127.0.0.1:6379/15")
    r = aioredis.Redis.from_url(url)
    payload = json.dumps({"features": vector, "state": state})
    for k in set(keys):
        await r.set(f"sira:bench:{k}", payload)
    rk = iter(keys * 3)

    async def get() -> None:
        json.loads(await r.get(f"sira:bench:{next(rk)}"))

    await timed(200, r.ping)
    ping = await timed(reads, r.ping)
    got = await timed(reads, get)
    await r.delete(*[f"sira:bench:{k}" for k in set(keys)])
    await r.aclose()
    pg_floor, pg_snap, redis_floor, redis_get = map(summary_ms, (floor, snap, ping, got))
    report("online_features", {
        "entities": entities, "vector_features": len(names),
        "postgres_select1": pg_floor, "postgres_snapshot": pg_snap,
        "redis_ping": redis_floor, "redis_get": redis_get,
        "snapshot_p95_vs_select1": round(pg_snap["p95_ms"] / pg_floor["p95_ms"], 2),
        "redis_get_p95_vs_ping": round(redis_get["p95_ms"] / redis_floor["p95_ms"], 2),
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=300_000)
    parser.add_argument("--reads", type=int, default=3_000)
    args = parser.parse_args()
    asyncio.run(main(args.entities, args.reads))
