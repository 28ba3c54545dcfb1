"""Kafka as an event source, behind the same interface as the Redis stream (:class:`sira.ingest.stream.EventSource`).

``sira ingest --kafka BOOTSTRAP --topic payments [--labels-topic chargebacks] [--group sira-features]``.
The guarantees are the Redis path's: at least once, offsets committed only after the batch's database
transaction has committed (never auto-commit), events idempotent by ``event_id`` (a redelivered message
is counted as a duplicate, never twice), undecodable messages dead-lettered in ``sira_rejected_events`` and
committed past, labels on their own topic or on the events' topic with a ``kind: label`` header. A consumer
group splits the partitions between consumers; a consumer that dies leaves its partitions to the others,
which resume from its last commit.

The client is librdkafka (``confluent-kafka``). Its security comes from ``SIRA_KAFKA_*`` settings or a
librdkafka properties file: TLS (a CA file, optionally a client certificate and key), SASL PLAIN or
SCRAM-SHA-256/512; passwords are read from files, never from the command line, and never logged
(:func:`printable` masks them wherever the configuration is shown).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sira.core.config import Settings, read_secret_file
from sira.core.errors import ConfigError, ServiceUnavailable
from sira.ingest.log_limits import limit
from sira.ingest.stream import Entry, decoded, text

log = logging.getLogger(__name__)
# librdkafka's own log (its `logger` setting), through SIRA's logging rather than raw stderr
CLIENT_LOG = logging.getLogger(f"{__name__}.client")

DEFAULT_GROUP = "sira-features"
OURS = ("enable.auto.commit", "enable.auto.offset.store")  # what a properties file may not turn on
# A commit the group refuses because its partitions moved (a rebalance between the read and the commit): the
# new owner reads again from the last commit, and the events are idempotent, so the consumer goes on.
MOVED = ("REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "FENCED_INSTANCE_ID",
         "_ASSIGNMENT_LOST")
# Errors librdkafka reports to the error callback and retries for ever: credentials or rights refused (no
# retry fixes them), and every broker unreachable (checked again before it ends the consumer).
REFUSALS = ("_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "TOPIC_AUTHORIZATION_FAILED",
            "GROUP_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED", "_SSL")
UNREACHABLE = ("_ALL_BROKERS_DOWN",)
# A commit that failed because the group coordinator or the brokers are away for now (a broker restarting, a
# network cut): kept and tried again before each read (the next batch's commit covers it anyway; the events are
# idempotent by event_id), for at most ``unreachable_after_s``. A ~10 s outage ended the consumer (exit 1).
TRANSIENT = ("_WAIT_COORD", "_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_TIMED_OUT_QUEUE", "REQUEST_TIMED_OUT",
             "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR", "COORDINATOR_LOAD_IN_PROGRESS", "NETWORK_EXCEPTION",
             "_RESOLVE", "_WAIT_CACHE", "_IN_PROGRESS")
# How often a partition whose watermarks librdkafka has not cached (not fetched yet) is asked of its leader
WATERMARKS_EVERY_S = 5.0
# How often the topics are looked up while this consumer holds no partition or the client said one is unknown
TOPICS_EVERY_S = 5.0
# Settings whose values are secrets (masked wherever the configuration is shown, and in every log line and error):
# these, and any whose name says password, secret, passphrase, credential or token, or a private key's text
SECRET_KEYS = ("sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret",
               "sasl.oauthbearer.config", "ssl.key.pem", "sasl.oauthbearer.assertion.private.key.pem",
               "sasl.oauthbearer.assertion.private.key.passphrase", "sasl.kerberos.keytab")
SECRET_WORDS = ("password", "secret", "passphrase", "credential", "token", "private.key", "key.pem")


def _properties(path: Path) -> dict[str, str]:
    """A librdkafka properties file: ``key=value`` lines, ``#`` comments."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read SIRA_KAFKA_PROPERTIES_FILE: {exc.strerror}") from None
    out = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"SIRA_KAFKA_PROPERTIES_FILE line {n}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def client_config(settings: Settings, bootstrap: str, group: str, client_id: str | None = None) -> dict[str, Any]:
    """The consumer's librdkafka configuration: manual commits only, from the earliest offset for a new group,
    and the security the settings describe (checked here, so a mistake is one line, not a librdkafka trace)."""
    if not bootstrap or any(c.isspace() for c in bootstrap):
        raise ConfigError("--kafka needs the brokers as host:port[,host:port]")
    protocol = settings.kafka_security_protocol
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap, "group.id": group, "client.id": client_id or f"sira-{socket.gethostname()}",
        "enable.auto.commit": False, "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
        "security.protocol": protocol, "session.timeout.ms": 10_000,
    }
    sasl = protocol.startswith("SASL_")
    if sasl:
        if not settings.kafka_sasl_mechanism or not settings.kafka_sasl_username or not settings.kafka_sasl_password_file:
            raise ConfigError(f"security protocol {protocol} needs SIRA_KAFKA_SASL_MECHANISM, SIRA_KAFKA_SASL_USERNAME "
                              "and SIRA_KAFKA_SASL_PASSWORD_FILE")
        config.update({"sasl.mechanism": settings.kafka_sasl_mechanism,
                       "sasl.username": settings.kafka_sasl_username,
                       "sasl.password": read_secret_file(settings.kafka_sasl_password_file,
                                                     "SIRA_KAFKA_SASL_PASSWORD_FILE")})
    elif settings.kafka_sasl_mechanism:
        raise ConfigError(f"SIRA_KAFKA_SASL_MECHANISM needs security protocol SASL_PLAINTEXT or SASL_SSL, "
                          f"not {protocol}")
    tls = protocol in ("SSL", "SASL_SSL")
    files = {"ssl.ca.location": settings.kafka_ssl_ca_file, "ssl.certificate.location": settings.kafka_ssl_cert_file,
             "ssl.key.location": settings.kafka_ssl_key_file}
    if any(files.values()) and not tls:
        raise ConfigError(f"SIRA_KAFKA_SSL_* files need security protocol SSL or SASL_SSL, not {protocol}")
    for key, path in files.items():
        if path is not None:
            if not path.is_file():
                raise ConfigError(f"{key.replace('.', '_')}: no file {path}")
            config[key] = str(path)
    if bool(settings.kafka_ssl_cert_file) != bool(settings.kafka_ssl_key_file):
        raise ConfigError("mutual TLS needs both SIRA_KAFKA_SSL_CERT_FILE and SIRA_KAFKA_SSL_KEY_FILE")
    if settings.kafka_ssl_key_password_file:
        config["ssl.key.password"] = read_secret_file(settings.kafka_ssl_key_password_file,
                                                  "SIRA_KAFKA_SSL_KEY_PASSWORD_FILE")
    if settings.kafka_properties_file:
        extra = _properties(settings.kafka_properties_file)
        for key in OURS:
            if key in extra and str(extra[key]).strip().lower() != str(config[key]).lower():
                raise ConfigError(f"SIRA_KAFKA_PROPERTIES_FILE sets {key}={extra[key]}: SIRA commits offsets "
                                  "itself, only after the database commit (at least once)")
        config.update(extra)
    return config


def printable(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration as it may be shown or logged: secrets masked."""
    return {k: ("***" if secret(k) else v) for k, v in config.items()}


def secret(key: str) -> bool:
    """Whether a librdkafka setting's value is a secret (:data:`SECRET_KEYS`, :data:`SECRET_WORDS`)."""
    key = key.strip().lower()
    return key in SECRET_KEYS or any(word in key for word in SECRET_WORDS)


def secret_values(config: Mapping[str, Any]) -> set[str]:
    """The secret values of a configuration as they may appear in a message: each whole, and the value of each
    secret-named ``k=v`` part of one (``sasl.oauthbearer.config=clientId=a clientSecret=X``: librdkafka quotes
    ``clientSecret=X ...`` alone)."""
    out = set()
    for key, value in config.items():
        if not secret(key) or value is None:
            continue
        out.add(str(value))
        for part in str(value).replace(",", " ").split():
            name, sep, inner = part.partition("=")
            if sep and (secret(name) or any(w in name.lower() for w in ("secret", "key", "assertion"))):
                out.add(inner)
    return {v for v in out if len(v) >= 4}


class KafkaSource:
    """A consumer in a Kafka consumer group, reading the events topic (and the labels topic, when apart)."""

    def __init__(self, config: Mapping[str, Any], topic: str, labels_topic: str | None = None, *,
                 unreachable_after_s: float = 120.0):
        self.config = dict(config)
        # librdkafka reports brokers down and refused credentials to its error callback only, retrying for
        # ever: a wrong password or a broker address that never answers left the consumer running, reading
        # nothing, exporting no lag, firing no alert. Refusals end it at once, unreachable brokers after this.
        self.unreachable_after_s = unreachable_after_s
        self._refused: str | None = None
        self._down_since: float | None = None
        self.topic, self.labels_topic = topic, labels_topic
        self.stream, self.group = topic, str(config["group.id"])
        self.source_name = "kafka"  # what stored events and dead letters name as their source
        self.consumer: Any = None
        self._asked: dict[tuple[str, int], tuple[float, tuple[int, int]]] = {}  # watermarks asked, and when
        # offsets stored in the database whose commit failed for now (TRANSIENT), and since when commits fail
        self._uncommitted: dict[tuple[str, int], int] = {}
        self._commit_failing_since: float | None = None
        # a subscribed topic the brokers do not know (a typo, a deleted topic): since when, and when last looked up
        self._topic_doubt = False
        self._missing_since: float | None = None
        self._topics_at = float("-inf")

    async def start(self) -> None:
        from confluent_kafka import Consumer, KafkaException

        _Quiet.secrets.update(secret_values(self.config))
        try:
            self.consumer = Consumer({**self.config, "error_cb": self._client_error, "logger": CLIENT_LOG})
        except KafkaException as exc:
            raise ConfigError(f"Kafka client configuration refused: {_masked(exc.args[0].str())}") from None
        self.consumer.subscribe([t for t in (self.topic, self.labels_topic) if t])

    def _kind(self, message: Any) -> str | None:
        if self.labels_topic and message.topic() == self.labels_topic:
            return "label"
        for key, value in message.headers() or []:
            if key == "kind":
                return text(value) if value is not None else ""  # a kind header with no value: no kind
        return None

    def _entry(self, message: Any) -> Entry:
        return decoded(f"{message.topic()}:{message.partition()}:{message.offset()}", self._kind(message),
                       message.value())

    def _client_error(self, error: Any) -> None:
        log.warning("Kafka client: %s", _masked(error.str()))
        if error.name() == "UNKNOWN_TOPIC_OR_PART":
            self._topic_doubt = True
        if error.name() in REFUSALS:
            self._refused = self._refused or error.str()
        elif error.name() in UNREACHABLE and self._down_since is None:
            self._down_since = time.monotonic()

    def _check_client(self) -> None:
        """Raise when the brokers refused this consumer, or none has answered for ``unreachable_after_s``
        (checked by asking one for the topic's metadata: a reconnection is not reported)."""
        from confluent_kafka import KafkaException

        if self._refused:
            raise ServiceUnavailable(f"Kafka refused this consumer: {_masked(self._refused)}", code="kafka_unavailable")
        if self._down_since is None or time.monotonic() - self._down_since < self.unreachable_after_s:
            return
        try:
            self.consumer.list_topics(self.topic, timeout=5)
        except KafkaException:
            raise ServiceUnavailable(f"no Kafka broker reachable at {self.config['bootstrap.servers']} for "
                                     f"{self.unreachable_after_s:g} s", code="kafka_unavailable") from None
        self._down_since = None  # back: it had reconnected

    def _check_topics(self) -> None:
        """Raise when a subscribed topic has been unknown to the brokers for ``unreachable_after_s``: librdkafka
        says so once, as a warning, and the consumer idled for ever (no partition, so no lag series and no
        alert). Looked up while this consumer holds no partition or the client said a topic is unknown, at most
        every :data:`TOPICS_EVERY_S`; brokers that do not answer are :meth:`_check_client`'s."""
        from confluent_kafka import KafkaException

        now = time.monotonic()
        if (self.consumer.assignment() and not self._topic_doubt) or now - self._topics_at < TOPICS_EVERY_S:
            return
        self._topics_at, self._topic_doubt = now, False
        missing = []
        for topic in (t for t in (self.topic, self.labels_topic) if t):
            try:
                found = self.consumer.list_topics(topic, timeout=5).topics.get(topic)
            except KafkaException:
                return  # no answer: not a verdict on the topic
            if found is None or (found.error is not None and found.error.name() == "UNKNOWN_TOPIC_OR_PART"):
                missing.append(topic)
        if not missing:
            self._missing_since = None
            return
        self._topic_doubt = True  # looked up again until it exists
        self._missing_since = self._missing_since or now
        if now - self._missing_since >= self.unreachable_after_s:
            raise ServiceUnavailable(f"Kafka topic {', '.join(missing)} does not exist at "
                                     f"{self.config['bootstrap.servers']} (looked up for {self.unreachable_after_s:g} s): "
                                     "check --topic/--labels-topic, or create it", code="kafka_unavailable")
        log.warning("Kafka topic %s does not exist (yet) at %s: the consumer stops if it still does not in %.0f s",
                    ", ".join(missing), self.config["bootstrap.servers"],
                    self.unreachable_after_s - (now - self._missing_since))

    def _read(self, count: int, block_ms: int) -> list[Entry]:
        self._check_client()
        if self._uncommitted:
            self._commit(dict(self._uncommitted))
        out = []
        for message in self.consumer.consume(num_messages=count, timeout=block_ms / 1000):
            error = message.error()
            if error is None:
                out.append(self._entry(message))
            elif error.fatal():
                raise ServiceUnavailable(f"Kafka consumer failed: {_masked(error.str())}", code="kafka_unavailable")
            else:
                if error.name() == "UNKNOWN_TOPIC_OR_PART":
                    self._topic_doubt = True
                log.warning("Kafka: %s", _masked(error.str()))
        self._check_topics()
        return out

    async def read(self, count: int, block_ms: int) -> list[Entry]:
        return await asyncio.to_thread(self._read, count, block_ms)

    async def ack(self, ids: list[str]) -> None:
        """Commit past every entry of the batch (called after the batch's transaction committed)."""
        newest: dict[tuple[str, int], int] = {}
        for entry_id in ids:
            topic, partition, offset = entry_id.rsplit(":", 2)
            key = (topic, int(partition))
            newest[key] = max(newest.get(key, -1), int(offset))
        if newest:
            for key, offset in self._uncommitted.items():  # a commit that failed for now: this one covers it
                newest[key] = max(newest.get(key, -1), offset)
            await asyncio.to_thread(self._commit, newest)

    def _commit(self, newest: dict[tuple[str, int], int]) -> None:
        """Commit past ``newest`` (each partition's last offset done). A commit refused after a rebalance is let
        go (:data:`MOVED`); one failed for now (:data:`TRANSIENT`: the coordinator or the brokers away) is kept
        and tried again before the next read, the consumer going on, until commits have failed for
        ``unreachable_after_s``; any other failure ends the consumer (``kafka_unavailable``)."""
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in newest.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            name = error.name() if hasattr(error, "name") else type(error).__name__
            message = _masked(error.str() if hasattr(error, "str") else str(exc))
            self._uncommitted = {}
            if moved(exc):
                self._commit_failing_since = None
                log.warning("Kafka refused a commit after a rebalance (%s): the partitions' new owner reads "
                            "from the last commit; the repeats are absorbed by event_id", name)
                return
            if name not in TRANSIENT:
                raise ServiceUnavailable(f"Kafka refused the consumer's commit: {message}",
                                         code="kafka_unavailable") from None
            now = time.monotonic()
            self._commit_failing_since = self._commit_failing_since or now
            if now - self._commit_failing_since >= self.unreachable_after_s:
                raise ServiceUnavailable(f"Kafka has not accepted a commit at {self.config['bootstrap.servers']} for "
                                         f"{self.unreachable_after_s:g} s: {message}",
                                         code="kafka_unavailable") from None
            self._uncommitted = newest
            log.warning("Kafka commit failed for now (%s): tried again before the next read, for up to %g s; the "
                        "batch is stored, and read again only if the consumer stops meanwhile", name,
                        self.unreachable_after_s)
            return
        self._uncommitted, self._commit_failing_since = {}, None

    def _watermarks(self, tp: Any, need_low: bool) -> tuple[int, int]:
        """A partition's (low, high) watermarks: the high one librdkafka caches from fetch responses, else (a
        partition not fetched yet, or the low side wanted: cached only with statistics on) asked of its
        leader, at most once per :data:`WATERMARKS_EVERY_S` per partition (the answer kept meanwhile)."""
        low, high = self.consumer.get_watermark_offsets(tp, cached=True)
        if high >= 0 and (low >= 0 or not need_low):
            return low, high
        key, now = (tp.topic, tp.partition), time.monotonic()
        at, asked = self._asked.get(key, (float("-inf"), (-1, -1)))
        if now - at >= WATERMARKS_EVERY_S:
            try:
                asked = self.consumer.get_watermark_offsets(tp, timeout=5, cached=False) or (-1, -1)
            except Exception as exc:  # noqa: BLE001 - a metric never stops consuming
                log.debug("Kafka watermarks of %s:%d unavailable: %s", tp.topic, tp.partition, exc)
            self._asked[key] = (now, asked)
        return (low if low >= 0 else asked[0]), (high if high >= 0 else asked[1])

    def _lag(self) -> dict[str, int]:
        assigned = self.consumer.assignment()
        if not assigned:
            return {}
        out = {}
        position = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(assigned)}
        latest = str(self.config.get("auto.offset.reset", "earliest")).lower() in ("latest", "largest", "end")
        for tp in self.consumer.committed(assigned, timeout=5):
            done = tp.offset if tp.offset >= 0 else position.get((tp.topic, tp.partition), -1)
            low, high = self._watermarks(tp, need_low=done < 0)
            if high < 0:
                continue  # its leader did not answer either: no number rather than a wrong one
            if done < 0:  # nothing committed, nothing fetched: the group starts where auto.offset.reset says
                done = high if latest else low
            if done >= 0:
                out[f"{tp.topic}:{tp.partition}"] = max(0, high - done)
        self._asked = {k: v for k, v in self._asked.items() if k in position}  # partitions no longer held
        return out

    async def lag(self) -> dict[str, int]:
        """Messages of each assigned partition ("topic:partition") the group has not committed past (high
        watermark minus the committed offset; else the position; else, before the first fetch, where the
        group starts: the low watermark, or the high one with auto.offset.reset=latest); {} when this
        consumer holds none. The group's lag is the sum over its consumers' partitions. Every assigned
        partition is said from its assignment: one left out until fetched hid a consumer stuck before it."""
        return await asyncio.to_thread(self._lag)

    async def assigned(self) -> int:
        """How many partitions this consumer holds (none during an outage past the session timeout)."""
        return len(await asyncio.to_thread(self.consumer.assignment))

    async def close(self) -> None:
        if self.consumer is not None:
            if self._uncommitted:  # once more, best effort: else the next member reads them again (absorbed)
                try:
                    await asyncio.to_thread(self._commit, dict(self._uncommitted))
                except ServiceUnavailable as exc:
                    log.warning("%s", exc.message)
            await asyncio.to_thread(self.consumer.close)
            self.consumer = None


class _Quiet(logging.Filter):
    """librdkafka's own records: its FAIL lines repeat what the error callback says (logged above), so they
    show with --debug only; the secrets of every configuration a consumer was started with masked."""

    secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if args[:1] == ("FAIL",) and not CLIENT_LOG.isEnabledFor(logging.DEBUG):
            return False
        record.msg, record.args = _masked(record.getMessage()), ()
        return True


def _masked(message: str) -> str:
    for secret in _Quiet.secrets:
        message = message.replace(secret, "***")
    return message


def moved(exc: Exception) -> bool:
    """Whether a failed commit means the group moved the partitions (see :data:`MOVED`)."""
    error = exc.args[0] if exc.args else None
    return hasattr(error, "name") and error.name() in MOVED


async def consume_kafka(settings: Settings, bootstrap: str, topic: str, *, labels_topic: str | None = None,
                        group: str = DEFAULT_GROUP, mapping: Mapping[str, str] | None = None,
                        max_events: int | None = None, batch: int = 200, consumer: str | None = None,
                        notify: Any = None) -> Any:
    """``sira ingest --kafka``: consume ``topic`` (and ``labels_topic``) in ``group`` until SIGINT/SIGTERM."""
    from sira.ingest.stream import serve_source

    source = KafkaSource(client_config(settings, bootstrap, group, consumer), topic, labels_topic,
                         unreachable_after_s=settings.kafka_unreachable_s)
    return await serve_source(settings, source, mapping=mapping, max_events=max_events, batch=batch, notify=notify,
                              describe=f"Kafka topic {topic}" + (f" and {labels_topic}" if labels_topic else "")
                                       + f" at {bootstrap} in group {group}")


CLIENT_LOG.addFilter(_Quiet())
limit(__name__, CLIENT_LOG.name)  # a failure retried for ever: once, then a count every minute
