"""Event-to-snapshot latency on the stream path, against a consumer that only reads and acks.

    python benchmarks/stream_latency.py [--events 2000] [--rate 200]

A producer thread XADDs payment events at a steady rate; latency is the time
from the entry's XADD (its stream id) to the commit of the transaction that
stored the event, its feature rows and its entities' snapshots. The baseline
consumer in the same run reads and acknowledges the same kind of traffic
without touching the database (the floor of the stream itself).
Seed target: p95 < 100 ms. Redis: SIRA_REDIS_URL, else 127.0.0.1:6379 db 15.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import redis
from _common import report, scratch_database, summary_ms

from sira.core import db
from sira.core.config import Settings
from sira.features.definitions import PAYMENTS_V1
from sira.ingest.stream import RedisStreamSource, consume

URL = os.environ.get("SIRA_REDIS_URL", "redis://127.0.0.1:6379/15")


def produce(stream: str, n: int, rate: float, tag: str) -> None:
    client = redis.Redis.from_url(URL)
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    interval = 1.0 / rate
    next_at = time.perf_counter()
    for i in range(n):
        event = {"event_id": f"{tag}-{i}", "occurred_at": (start + timedelta(seconds=30 * i)).isoformat(),
                 "customer_id": f"c{i % 200}", "terminal_id": f"t{i % 40}", "card_number": "4111111111111111",
                 "amount": 10 + i % 90}
        client.xadd(stream, {"kind": "event", "data": json.dumps(event)})
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    client.close()



async def run_consumer(stream: str, n: int, rate: float, pool, settings: Settings, store: bool) -> list[float]:
    source = RedisStreamSource(URL, stream=stream, group="bench", consumer="bench")
    await source.start()
    latencies: list[float] = []

    def on_batch(entries, _summary) -> None:
        now_ms = time.time() * 1000
        latencies.extend((now_ms - int(e.id.split("-")[0])) / 1000 for e in entries)

    producer = threading.Thread(target=produce, args=(stream, n, rate, stream), daemon=True)
    producer.start()
    if store:
        await consume(source, pool, settings=settings, feature_sets=[PAYMENTS_V1], batch=100, block_ms=5, max_events=n,
                      on_batch=on_batch)
    else:
        seen = 0
        while seen < n:
            entries = await source.read(100, 5)
            await source.ack([e.id for e in entries])
            if entries:
                on_batch(entries, None)
            seen += len(entries)
    producer.join()
    await source.redis.delete(stream)
    await source.close()
    return latencies


async def main(events: int, rate: float) -> None:
    async with scratch_database(Settings()) as dsn:
        settings = Settings(database_url=dsn)
        pool = await db.create_pool(dsn, settings)
        floor = await run_consumer(f"sira:bench:{uuid.uuid4().hex[:6]}", events, rate, None, settings, store=False)
        sira = await run_consumer(f"sira:bench:{uuid.uuid4().hex[:6]}", events, rate, pool, settings, store=True)
        await pool.close()
    floor_ms, sira_ms = summary_ms(floor), summary_ms(sira)
    report("stream_latency", {
        "events": events, "rate_per_s": rate, "noop_consumer": floor_ms, "sira_event_to_snapshot": sira_ms,
        "p95_vs_noop": round(sira_ms["p95_ms"] / max(floor_ms["p95_ms"], 0.001), 2),
        "meets_seed_target_p95_under_100ms": sira_ms["p95_ms"] < 100,
    })


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rate))
