"""The Kafka consumer under faults, against the real broker (tansu, as in test_kafka.py): the broker away and
back, a topic that does not exist, secrets of a properties file, labels delivered again, a taken metrics port.

tansu keeps its data in memory (its postgres and s3 storages are not compiled into the test wheel), so a broker
"stopped and restarted" here is one behind a TCP proxy that is taken down (its connections cut, its port refusing)
and brought back on the same port: to the consumer, every broker gone, then back with its state."""

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from sira.core.config import Settings
from sira.core.errors import ServiceUnavailable
from sira.features.definitions import PAYMENTS_V1
from sira.ingest.kafka import KafkaSource, client_config, printable
from sira.ingest.stream import consume
from sira.ingest.stream_metrics import StreamMetrics
from tests.integration.test_kafka import free_port, names, produce, start_tansu, topics
from tests.integration.test_stream import assert_exactly_once, stream_events


class Proxy:
    """A TCP proxy to ``backend`` on its own port and loop thread: :meth:`down` cuts every connection and stops
    listening; :meth:`up` listens again on the same port."""

    def __init__(self, backend: int) -> None:
        self.backend, self.port = backend, free_port()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = None
        self.writers: list = []
        self.up()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader, client_writer):
        try:
            backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", self.backend)
        except OSError:
            client_writer.close()
            return
        self.writers += [client_writer, backend_writer]
        await asyncio.gather(self._pipe(client_reader, backend_writer), self._pipe(backend_reader, client_writer))

    def up(self) -> None:
        async def listen():
            return await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

        self.server = self._run(listen())

    def down(self) -> None:
        async def cut():
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
            self.writers = []

        self._run(cut())

    def close(self) -> None:
        self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def proxied(tmp_path):
    """tansu behind a :class:`Proxy` (the address it advertises is the proxy's): (bootstrap, proxy)."""
    backend = free_port()
    proxy = Proxy(backend)
    proc = start_tansu(tmp_path / "tansu.log", backend, advertised=proxy.port)
    try:
        yield f"127.0.0.1:{proxy.port}", proxy
    finally:
        proxy.close()
        proc.terminate()
        proc.wait(timeout=10)


def _outage_after(batches: int, proxy: Proxy, seconds: float | None):
    """An ``on_batch`` that takes the broker down after ``batches`` batches (committed), back ``seconds`` later
    (never: None). The messages the client fetched ahead are read, stored and committed during the outage."""
    done = [0]

    def on_batch(_entries, _summary):
        done[0] += 1
        if done[0] == batches:
            proxy.down()
            if seconds is not None:
                threading.Timer(seconds, proxy.up).start()

    return on_batch


async def test_a_broker_outage_shorter_than_the_bound_is_ridden_out_with_every_event_stored_once(
        proxied, clean_db, settings):
    """A ~10 s broker outage ended the consumer: the commit after a batch failed (`_WAIT_COORD`: waiting for the
    coordinator) and ack() raised it (`error: internal: KafkaException`, exit 1), though the docs promise
    kafka_unavailable only after SIRA_KAFKA_UNREACHABLE_S without a broker (a commit waits for the coordinator
    until the session times out: 10 s). Now a commit failed for now is tried again (the next batch's covers
    it): the consumer carries on and stores every event once."""
    bootstrap, proxy = proxied
    events_topic, _, group = names()
    topics(bootstrap, events_topic)
    n = 300
    produce(bootstrap, events_topic, stream_events(n))
    consumer = KafkaSource(client_config(Settings(), bootstrap, group, f"test-{uuid.uuid4().hex[:6]}"), events_topic,
                           unreachable_after_s=60)
    await consumer.start()
    stop = asyncio.Event()
    metrics = StreamMetrics(events_topic, group)
    held: list = []  # the assigned-partitions gauge as it went: 2, 0 while the group had dropped it, 2 again

    async def watch_assignment():
        while True:
            value = metrics.registry.get_sample_value("sira_stream_assigned_partitions",
                                                      {"stream": events_topic, "group": group})
            if value is not None and (not held or held[-1] != value):
                held.append(value)
            await asyncio.sleep(0.1)

    async def until_all_stored():
        deadline = time.monotonic() + 120
        while await clean_db.fetchval("SELECT count(*) FROM sira_events") < n and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the last batch acknowledged
        stop.set()

    watcher, assignment = asyncio.ensure_future(until_all_stored()), asyncio.ensure_future(watch_assignment())
    try:
        await asyncio.wait_for(consume(consumer, clean_db, settings=settings, feature_sets=[PAYMENTS_V1], batch=20,
                                       block_ms=300, stop=stop, on_batch=_outage_after(3, proxy, 14.0),
                                       metrics=metrics), timeout=180)
    finally:
        watcher.cancel()
        assignment.cancel()
        await consumer.close()
    await assert_exactly_once(clean_db, n)
    # the lag keeps its last value while the brokers are away: the partitions held say the consumer lost them
    held_then = held[held.index(2):] if 2 in held else []
    assert 0 in held_then and 2 in held_then[held_then.index(0):], held
    # the commits caught up once the broker was back: a new member of the group finds nothing left
    again = KafkaSource(client_config(Settings(), bootstrap, group, "test-again"), events_topic)
    await again.start()
    try:
        assert await again.read(50, 3000) == []
    finally:
        await again.close()


async def test_a_broker_outage_longer_than_the_bound_ends_the_consumer_with_kafka_unavailable(
        proxied, clean_db, settings):
    bootstrap, proxy = proxied
    events_topic, _, group = names()
    topics(bootstrap, events_topic)
    produce(bootstrap, events_topic, stream_events(300))
    consumer = KafkaSource({**client_config(Settings(), bootstrap, group), "reconnect.backoff.max.ms": 200},
                           events_topic, unreachable_after_s=3)
    await consumer.start()
    try:
        with pytest.raises(ServiceUnavailable) as raised:
            await asyncio.wait_for(consume(consumer, clean_db, settings=settings, batch=20, block_ms=300,
                                           on_batch=_outage_after(3, proxy, None)), timeout=120)
    finally:
        await consumer.close()
    assert raised.value.code == "kafka_unavailable" and "3 s" in raised.value.message, raised.value.message


async def test_a_topic_that_does_not_exist_ends_the_consumer_with_a_clear_error(broker, clean_db, settings):
    """A topic that does not exist (a typo, a deleted topic): librdkafka said so once, as a warning, and the
    consumer idled for ever, holding no partition, so exporting no lag and firing no alert. Now it looks the
    topics up while it holds no partition and stops once one has been missing for the bound."""
    _, _, group = names()
    missing = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    consumer = KafkaSource(client_config(Settings(), broker, group), missing, unreachable_after_s=2)
    await consumer.start()
    try:
        with pytest.raises(ServiceUnavailable, match=f"Kafka topic {missing} does not exist at {broker}") as raised:
            await asyncio.wait_for(consume(consumer, clean_db, settings=settings, batch=10, block_ms=300), timeout=60)
    finally:
        await consumer.close()
    assert raised.value.code == "kafka_unavailable"


def test_the_secrets_of_a_properties_file_reach_neither_the_log_nor_the_error_line(clean_db, settings, pg_dsn,
                                                                                  tmp_path):
    """sasl.oauthbearer.config=...clientSecret=X was printed in the log and the error line (values were masked
    by key name only: password, secret). Now that setting, private keys' text and the like are secrets too,
    masked whole and part by part (librdkafka quotes the part of the setting it could not read)."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    properties = tmp_path / "client.properties"
    properties.write_text("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=OAUTHBEARER\n"
                          "enable.sasl.oauthbearer.unsecure.jwt=true\n"
                          "sasl.oauthbearer.config=principal=sira clientSecret=TopSecretXYZ42\n")
    env = {**os.environ, "SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(settings.workspace),
           "SIRA_KAFKA_UNREACHABLE_S": "3", "SIRA_KAFKA_PROPERTIES_FILE": str(properties)}
    env.pop("SIRA_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "sira", "ingest", "--kafka", f"127.0.0.1:{port}", "--topic", "x",
                           "--group", "secretive"], env=env, capture_output=True, text=True, timeout=120)
    assert "TopSecretXYZ42" not in done.stdout + done.stderr, done.stderr
    assert done.stderr.splitlines()[-1].startswith("error: kafka_unavailable: Kafka refused this consumer"), done.stderr
    config = {"sasl.oauthbearer.config": "clientId=a clientSecret=s3cr3t-1", "ssl.key.pem": "-----BEGIN KEY-----x",
              "ssl.key.password": "pw-1234", "ssl.keystore.password": "pw-5678",
              "sasl.oauthbearer.client.secret": "cs-9999", "sasl.oauthbearer.assertion.private.key.passphrase": "pp-1",
              "bootstrap.servers": "b:9092"}
    shown = printable(config)
    assert shown["bootstrap.servers"] == "b:9092" and {v for k, v in shown.items() if k != "bootstrap.servers"} == {
        "***"}, shown
    from sira.ingest.kafka import secret_values

    assert "s3cr3t-1" in secret_values(config)


async def test_labels_delivered_again_are_duplicates_and_every_entry_is_in_an_outcome(broker, clean_db, settings):
    """A second consumer group over the same messages reported "labels": 3 with no new row (labels the same again
    were counted as new), and label entries appeared in no outcome of sira_stream_entries_total. Now a label is
    counted stored only when new or changed (else a duplicate), and the outcomes add up to the entries read."""
    events_topic, labels_topic, group = names()
    topics(broker, events_topic, labels_topic, partitions=1)
    events = stream_events(3)
    produce(broker, events_topic, events)
    produce(broker, labels_topic, [{"event_id": e["event_id"], "label": True, "known_at": "2026-09-30T00:00:00Z",
                                    "source": "chargeback"} for e in events])
    runs = []
    for run in ("first", "second"):  # two groups: each reads every message
        consumer = KafkaSource(client_config(Settings(), broker, f"{group}-{run}"), events_topic, labels_topic)
        metrics = StreamMetrics(events_topic, f"{group}-{run}")
        await consumer.start()
        try:
            total = await asyncio.wait_for(consume(consumer, clean_db, settings=settings, batch=10, block_ms=300,
                                                   max_events=6, metrics=metrics), timeout=60)
        finally:
            await consumer.close()
        outcomes = {o: metrics.registry.get_sample_value("sira_stream_entries_total", {"outcome": o}) or 0
                    for o in ("accepted", "labels", "duplicates", "rejected")}
        runs.append(((total.read, total.accepted, total.labels, total.duplicates, total.rejected), outcomes))
    assert runs[0] == ((6, 3, 3, 0, 0), {"accepted": 3, "labels": 3, "duplicates": 0, "rejected": 0}), runs
    assert runs[1] == ((6, 0, 0, 6, 0), {"accepted": 0, "labels": 0, "duplicates": 6, "rejected": 0}), runs
    assert await clean_db.fetchval("SELECT count(*) FROM sira_feedback") == 3


def test_a_taken_metrics_port_is_a_one_line_config_error_before_the_consumer_starts(broker, settings, pg_dsn):
    """SIRA_STREAM_METRICS_PORT taken: `error: internal: OSError: [Errno 98] Address already in use`, the port
    bound after the Kafka consumer had started and joined its group, which was never closed. Now the port is
    bound first, and a taken one is a one-line config error naming the setting."""
    events_topic, _, group = names()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(settings.workspace),
               "SIRA_STREAM_METRICS_PORT": str(port)}
        env.pop("SIRA_DEBUG", None)
        done = subprocess.run([sys.executable, "-m", "sira", "ingest", "--kafka", broker, "--topic", events_topic,
                               "--group", group], env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and lines[-1].startswith(
        f"error: config: SIRA_STREAM_METRICS_PORT: cannot serve the consumer's metrics on port {port}"), done.stderr
    assert "Traceback" not in done.stderr and "consuming" not in done.stdout + done.stderr, done.stderr
