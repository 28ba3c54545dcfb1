"""Event-to-snapshot latency on the stream path, against a consumer that only reads and acks.

    python benchmarks/stream_latency.py [--events 2000] [--rate 200] [--feature-set payments@2]

A producer process XADDs payment events at a steady rate (pipelined in 10 ms ticks
above 500/s); latency is the time from the entry's XADD (its stream id) to the
commit of the transaction that stored the event and folded it into the feature
set named (v2: its entities' packed states; v1: feature rows and snapshots). The baseline
consumer in the same run reads and acknowledges the same kind of traffic
without touching the database (the floor of the stream itself).
Seed target: p95 < 100 ms. Redis: SIRA_REDIS_URL, else 127.0.0.1:6379 db 15.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
import uuid
from datetime import datetime, timedelta, timezone

import redis
from _common import drain, scratch_database, stream_args, stream_report

from sira.core import db
from sira.core.config import Settings
from sira.features.definitions import FeatureSet, parse_feature_set
from sira.ingest.stream import RedisStreamSource

URL = os.environ.get("SIRA_REDIS_URL", "redis://127.0.0.1:6379/15")


def produce(stream: str, n: int, rate: float, tag: str) -> None:
    client = redis.Redis.from_url(URL)
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    per_tick = max(1, int(rate / 100)) if rate > 500 else 1  # a tick of 10 ms at high rates, else one event
    interval = per_tick / rate
    next_at = time.perf_counter()
    for first in range(0, n, per_tick):
        pipe = client.pipeline(transaction=False)
        for i in range(first, min(n, first + per_tick)):
            event = {"event_id": f"{tag}-{i}", "occurred_at": (start + timedelta(seconds=30 * i)).isoformat(),
                     "customer_id": f"c{i % 200}", "terminal_id": f"t{i % 40}", "card_number": "4111111111111111",
                     "amount": 10 + i % 90}
            pipe.xadd(stream, {"kind": "event", "data": json.dumps(event)})
        pipe.execute()
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    client.close()



async def run_consumer(stream: str, n: int, rate: float, pool, settings: Settings, fs: FeatureSet | None
                       ) -> tuple[list[float], float]:
    source = RedisStreamSource(URL, stream=stream, group="bench", consumer="bench")
    await source.start()
    latencies: list[float] = []

    def on_batch(entries, _summary) -> None:
        now_ms = time.time() * 1000
        latencies.extend((now_ms - int(e.id.split("-")[0])) / 1000 for e in entries)

    producer = multiprocessing.get_context("fork").Process(target=produce, args=(stream, n, rate, stream), daemon=True)
    producer.start()
    seconds = await drain(source, n, on_batch, pool=pool, settings=settings, fs=fs)
    producer.join()
    await source.redis.delete(stream)
    await source.close()
    return latencies, seconds


async def main(events: int, rate: float, fs: FeatureSet) -> None:
    if fs.engine == "tiles":
        from sira.features.engine import warm

        warm(fs)  # as a consumer does at start: no compile inside the measured window
    async with scratch_database(Settings()) as dsn:
        settings = Settings(database_url=dsn)
        pool = await db.create_pool(dsn, settings)
        try:  # closed before the scratch database goes, also when a run stalls
            floor, _ = await run_consumer(f"sira:bench:{uuid.uuid4().hex[:6]}", events, rate, None, settings, None)
            sira, seconds = await run_consumer(f"sira:bench:{uuid.uuid4().hex[:6]}", events, rate, pool, settings, fs)
        finally:
            await pool.close()
    stream_report("stream_latency", fs, events, rate, floor, sira, seconds, "sira_event_to_snapshot")


if __name__ == "__main__":
    args = stream_args(__doc__)
    asyncio.run(main(args.events, args.rate, parse_feature_set(args.feature_set)))
