"""Streaming ingestion behind a small event-source interface; Redis Streams implements it.

Delivery is at least once: a batch is acknowledged only after its database
transaction commits, and a restarted consumer first re-reads its own pending
entries, then claims entries that a dead consumer left pending. Events are
idempotent by ``event_id`` and labels by (event, label, source), so a
redelivered entry is never counted twice.

Entry format (``XADD sira:events * kind event data '<json>'``): ``kind`` is
``event`` (default) or ``label``; ``data`` is one JSON object.

Producers put raw events on the stream, personal data (card numbers, emails)
included: SIRA redacts them only when it stores them. So entries do not stay:
after each acknowledgement the consumer deletes (``XTRIM MINID``) what every
consumer group of the stream has acknowledged, keeping ``stream_retention_s``
seconds of it for replay when set.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson

from sira.core import db
from sira.core.config import Settings
from sira.core.errors import ConfigError, ServiceUnavailable
from sira.core.files import decode_json_line
from sira.core.ray_runtime import free_port
from sira.features.definitions import FeatureSet
from sira.features.engine import warm_current
from sira.ingest.bulk import ingest_normalized, normalize_all, redactor_for
from sira.ingest.dead_letters import dead_letters
from sira.ingest.events import IngestSummary, Rejection, apply_mapping, bounded_json, stored_id
from sira.ingest.labels import record_labels
from sira.ingest.log_limits import limit
from sira.ingest.pii import Redactor
from sira.ingest.stream_metrics import StreamMetrics

STREAM_METRICS_PORT = 8091  # the consumer's Prometheus endpoint, unless taken (SIRA_STREAM_METRICS_PORT)

STREAM = "sira:events"
# The --map's consumers of the stream applied (JSON, one member each): an erasure finds a person's entries still
# held in the stream under the source's own column names.
MAPPINGS = f"{STREAM}:mappings"
GROUP = "sira-ingest"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    id: str
    kind: str
    data: dict[str, Any] | None  # None: the entry could not be decoded
    error: str | None = None
    raw: bytes | None = None  # an undecodable entry's bytes (its dead letter keeps their keyed digest)


class EventSource(Protocol):
    """Where streamed events come from (Redis Streams here; Kafka would implement the same)."""

    async def read(self, count: int, block_ms: int) -> list[Entry]: ...

    async def ack(self, ids: list[str]) -> None: ...


class RedisStreamSource:
    """A consumer in a Redis Streams consumer group; ``mapping``: the --map it applies, recorded beside the stream
    (``MAPPINGS`` for ``sira:events``)."""

    def __init__(self, url: str, *, stream: str = STREAM, group: str = GROUP, consumer: str | None = None,
                 claim_idle_ms: int = 30_000, retention_s: float = 0.0, mapping: Mapping[str, str] | None = None):
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(url)
        self.stream, self.group = stream, group
        self.mapping = dict(sorted(mapping.items())) if mapping else None
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = claim_idle_ms
        self.retention_s = retention_s
        self._own_pending_done = False
        self._claim_cursor = "0-0"

    async def start(self) -> None:
        import redis

        try:
            await self._create_group()
        except (redis.ConnectionError, OSError) as exc:
            raise ServiceUnavailable(f"cannot reach Redis for the event stream: {exc}") from None
        await self._record_mapping()
        await self.trim()  # what was acknowledged before this consumer (or an older SIRA) ran

    async def _create_group(self) -> bool:
        """The stream and its group (XGROUP CREATE ... MKSTREAM, from the stream's first entry); False when the
        group was there already."""
        import redis

        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    async def _record_mapping(self) -> None:
        """This consumer's --map in ``<stream>:mappings`` (an erasure finds a person's entries under the source's
        column names there); recorded again whenever the stream is recreated, since a FLUSHDB removes the set with
        it and an erasure afterwards looked for SIRA's names only."""
        if self.mapping:
            await self.redis.sadd(f"{self.stream}:mappings", orjson.dumps(self.mapping))

    async def read(self, count: int, block_ms: int) -> list[Entry]:
        """The next entries; none when the stream or its group had gone (a FLUSHDB, a DEL of the key, a Redis
        restarted without persistence): they are created again and consuming goes on."""
        import redis

        try:
            return await self._read(count, block_ms)
        except redis.ResponseError as exc:
            # NOGROUP: no such key or group; UNBLOCKED: the key or the group went while XREADGROUP blocked
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            await self._recreate(exc)
            return []

    async def _recreate(self, exc: Exception) -> None:
        created = await self._create_group()
        await self._record_mapping()
        self._own_pending_done, self._claim_cursor = False, "0-0"  # a new group: nothing of its past is pending
        if created:
            log.warning("%s or its group %s no longer existed (%s): recreated them, consuming goes on; entries it "
                        "held that SIRA had not read yet are lost (never acknowledged by SIRA: only their producer "
                        "can send them again)", self.stream, self.group, exc)
        else:
            log.info("%s and its group %s were recreated by another consumer (%s)", self.stream, self.group, exc)

    async def _read(self, count: int, block_ms: int) -> list[Entry]:
        # 1. entries this consumer read before a crash and never acknowledged
        if not self._own_pending_done:
            got = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
            items = [item for _stream, batch in got or [] for item in batch]
            gone = [i for i, fields in items if not fields]  # deleted from the stream while pending
            if gone:
                await self._forget(gone)
            if len(items) > len(gone):
                return [_entry(i, f) for i, f in items if f]
            if not gone:
                self._own_pending_done = True
        # 2. entries a dead consumer left pending for too long
        cursor, claimed, *cleared = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, start_id=self._claim_cursor, count=count
        )
        self._claim_cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        if cleared and cleared[0]:  # Redis 7: deleted entries it cleared from the pending list itself
            self._lost([text(i) for i in cleared[0]])
        if any(not c or c[1] is None for c in claimed):
            # Redis before 7 claims an entry deleted from the stream without its id (Redis 7 clears it from the
            # pending list): it is this consumer's now and was never acknowledged, so it stayed pending forever
            # and held every later trim back. Read back through this consumer's own pending entries.
            self._own_pending_done = False
        claimed = [c for c in claimed if c and c[1] is not None]
        if claimed:
            return [_entry(i, f) for i, f in claimed]
        # 3. new entries
        got = await self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
        return _decode(got)

    async def _forget(self, raw_ids: list[Any]) -> None:
        """Acknowledge entries deleted from the stream before they were consumed (a producer's MAXLEN, an
        XDEL): nothing is left to store; said in the log, since their events are lost."""
        ids = [text(i) for i in raw_ids]
        await self.redis.xack(self.stream, self.group, *ids)
        self._lost(ids)

    def _lost(self, ids: list[str]) -> None:
        log.warning("%d entries of %s were deleted from the stream before %s consumed them (lost): %s",
                    len(ids), self.stream, self.group, ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""))

    async def ack(self, ids: list[str]) -> None:
        if ids:
            await self.redis.xack(self.stream, self.group, *ids)
            await self.trim()

    async def trim(self) -> int:
        """Delete the entries every consumer group of the stream has acknowledged (older than the
        retention, when one is set); returns how many. A group keeps from its oldest pending entry,
        or past the last entry delivered to it when none is pending; a group that has read nothing
        keeps everything."""
        import redis

        floor: tuple[int, int] | None = None
        try:
            for group in await self.redis.xinfo_groups(self.stream):
                ms, seq = _stream_id(group["last-delivered-id"])
                keep = (ms, seq + 1)
                if int(group["pending"]):
                    oldest = (await self.redis.xpending(self.stream, group["name"]))["min"]
                    keep = _stream_id(oldest) if oldest is not None else keep  # None: acked since XINFO
                floor = keep if floor is None else min(floor, keep)
            if floor is None:
                return 0
            if self.retention_s:
                seconds, micros = await self.redis.time()  # the clock that stamped the entry ids
                floor = min(floor, (int(seconds * 1000 + micros // 1000 - self.retention_s * 1000), 0))
            return int(await self.redis.xtrim(self.stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))
        except redis.ResponseError as exc:  # e.g. Redis before 6.2 (no MINID): consuming goes on
            log.warning("cannot trim %s: %s", self.stream, exc)
            return 0

    async def lag(self) -> int | None:
        """Entries this group has not finished: not yet delivered (Redis 7's ``lag``), plus delivered and not
        acknowledged; None when Redis cannot say (before 7.0, or after deletions it cannot count across)."""
        for group in await self.redis.xinfo_groups(self.stream):
            name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
            if name == self.group:
                undelivered = group.get("lag")
                return None if undelivered is None else int(undelivered) + int(group["pending"])
        return None

    async def close(self) -> None:
        await self.redis.aclose()


def _stream_id(raw: Any) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition("-")
    return int(ms), int(seq or 0)


def _decode(got: Any) -> list[Entry]:
    out: list[Entry] = []
    for _stream, items in got or []:
        out += [_entry(i, f) for i, f in items]
    return out


def _entry(raw_id: Any, fields: Mapping[bytes, bytes]) -> Entry:
    fields = {text(k): v for k, v in (fields or {}).items()}
    return decoded(text(raw_id), fields.get("kind"), fields.get("data"))


def text(raw: Any) -> str:
    """Bytes a source holds as text (undecodable bytes replaced, never raised)."""
    return raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)


def decoded(entry_id: str, kind: Any, data: Any) -> Entry:
    """An entry from its kind and data as a source holds them: the data one JSON object, decoded as a JSON Lines
    file's line is (invalid UTF-8, unpaired surrogates or nesting past the stack make it undecodable, never
    an error of the consumer)."""
    kind = "event" if kind is None else text(kind)
    if data is None:
        return Entry(entry_id, kind, None, "undecodable entry: no data")
    raw = data if isinstance(data, bytes) else str(data).encode("utf-8", "surrogatepass")
    value = decode_json_line(raw)
    if isinstance(value, str):
        return Entry(entry_id, kind, None, f"undecodable entry: {value}", raw)
    return Entry(entry_id, kind, value)


@dataclass
class Batch:
    """Entries read and validated, not stored yet (:func:`prepare`: no database)."""

    entries: list[Entry]
    source: str  # scrubbed
    events: list[dict[str, Any] | Rejection]  # what normalize made of each event entry
    labels: list[dict[str, Any]]
    dead: list[Rejection]  # entries that are no event or label: undecodable, or of an unknown kind
    label_positions: list[str] = field(default_factory=list)  # the label entries' ids, in ``labels``' order
    event_positions: list[str] = field(default_factory=list)  # the event entries' ids, in ``events``' order


def prepare(entries: list[Entry], redactor: Redactor, source: str, mapping: Mapping[str, str] | None = None) -> Batch:
    """The entries normalized, each rejection with its stream position (read again, it is not stored twice)."""
    event_entries = [e for e in entries if e.kind == "event" and e.data is not None]
    source, events = normalize_all([e.data for e in event_entries], redactor, source, mapping)
    events = [replace(r, position=e.id) if isinstance(r, Rejection) else r for e, r in zip(event_entries, events)]
    labels = [e for e in entries if e.kind == "label" and e.data is not None]
    return Batch(entries, source, events, [e.data for e in labels],
                 [_dead_letter(e, redactor, mapping) for e in entries
                  if e.data is None or e.kind not in ("event", "label")], [e.id for e in labels],
                 [e.id for e in event_entries])


def _dead_letter(entry: Entry, redactor: Redactor, mapping: Mapping[str, str] | None = None, *,
                 code: str = "unknown_kind", reason: str = "unknown entry kind (expected event or label)",
                 field: str | None = "kind") -> Rejection:
    """An entry set aside (by default: of an unknown kind): its stream id, and its kind and data redacted as a
    rejected event's are (a field the consumer maps as the field it is mapped to, under its own name), with the
    customer it is about as events name it (it can be sent again from there, and an erasure finds it); an
    undecodable entry has no data to keep, only a keyed digest of its bytes (a new entry at an old position is
    told from a repeat)."""
    if entry.data is None:
        digest = {} if entry.raw is None else {"data_digest": redactor.token("data", entry.raw.hex())}
        return Rejection(None, "undecodable", entry.error or "undecodable entry", None,
                         {"stream_id": entry.id, **digest}, position=entry.id)
    kept = bounded_json({"kind": entry.kind, "data": entry.data})
    return Rejection(None, code, reason, field,
                     {"stream_id": entry.id, "kind": redactor.scrub(kept["kind"]),
                      "data": redactor.payload(kept["data"], mapping)},
                     stored_id(apply_mapping(entry.data, mapping or {}).get("customer_id"), redactor), entry.id)


async def store(pool: Any, batch: Batch, *, redactor: Redactor, mapping: Mapping[str, str] | None = None,
                feature_sets: Sequence[FeatureSet] | None = None) -> IngestSummary:
    """One batch's events, labels and dead letters in one transaction, the events folded into the feature sets
    in service (``feature_sets`` when given); the summary counts the labels' outcomes too."""
    async with db.transaction(pool) as conn:
        summary = await ingest_normalized(conn, batch.source, batch.events, feature_sets, batch.event_positions)
        if batch.labels:
            labels = await record_labels(conn, batch.labels, redactor=redactor, source=batch.source, mapping=mapping,
                                         positions=batch.label_positions)
            # new or changed labels only: one delivered again (a second group, a redelivery) is a duplicate, as an
            # event is, and so is one a newer word of the same batch superseded (it counted as a new label)
            summary.labels += labels.read - labels.rejected - labels.repeated - labels.unchanged - labels.duplicates
            summary.duplicates += labels.repeated + labels.unchanged + labels.duplicates
            summary.rejected += labels.rejected
            summary.reasons.update(labels.reasons)
        summary.duplicates += await dead_letters(conn, batch.dead, batch.source, summary)
    summary.read = len(batch.entries)
    return summary


# What a batch can fail on for good: PostgreSQL refusing its data, or a value Python cannot handle (an
# encoding, a date, a nesting). Anything else (PostgreSQL or Redis away) propagates: the batch is read again.
REFUSED = (*db.REFUSED, ValueError, TypeError, OverflowError, RecursionError)


async def store_or_set_aside(pool: Any, entries: list[Entry], name: str, *, redactor: Redactor,
                             mapping: Mapping[str, str] | None = None,
                             feature_sets: Sequence[FeatureSet] | None = None) -> IngestSummary:
    """:func:`prepare` and :func:`store` the entries; a batch refused for good is stored one entry at a time,
    and an entry refused again goes to ``sira_rejected_events`` as ``unprocessable`` (see :func:`_dead_letter`):
    one bad entry neither stops the consumer nor holds back the entries after it, nor is it dropped."""
    try:
        return await store(pool, prepare(entries, redactor, name, mapping), redactor=redactor, mapping=mapping,
                           feature_sets=feature_sets)
    except REFUSED as exc:
        log.error("a batch of %d entries was refused (%s): storing them one at a time", len(entries),
                  type(exc).__name__)
    total = IngestSummary()
    for entry in entries:
        try:
            one = await store(pool, prepare([entry], redactor, name, mapping), redactor=redactor, mapping=mapping,
                              feature_sets=feature_sets)
        except REFUSED as exc:
            log.error("entry %s refused (%s): dead-lettered as unprocessable", entry.id, type(exc).__name__)
            reason = f"refused when stored ({type(exc).__name__})"
            try:
                dead = _dead_letter(entry, redactor, mapping, code="unprocessable", field=None, reason=reason)
                one = await store(pool, Batch([entry], redactor.scrub_text(name), [], [], [dead]), redactor=redactor)
            except REFUSED as again:  # the record cannot even be kept: its stream id is, so it is not lost
                log.error("entry %s could not be kept as sent (%s): dead-lettered by its id", entry.id,
                          type(again).__name__)
                dead = Rejection(None, "unprocessable", reason, None, {"stream_id": entry.id}, position=entry.id)
                one = await store(pool, Batch([entry], redactor.scrub_text(name), [], [], [dead]), redactor=redactor)
        total.add(one)
    return total


async def process_entries(
    pool: Any, entries: list[Entry], *, settings: Settings, mapping: Mapping[str, str] | None = None,
    feature_sets: Sequence[FeatureSet] | None = None, source: str = "stream",
) -> IngestSummary:
    """Store one batch of entries (events, labels, dead letters) in one transaction, the events folded into
    the feature sets in service (``feature_sets`` when given)."""
    redactor = redactor_for(settings)
    return await store_or_set_aside(pool, entries, source, redactor=redactor, mapping=mapping,
                                    feature_sets=feature_sets)


async def consume(
    source: EventSource, pool: Any, *, settings: Settings, mapping: Mapping[str, str] | None = None,
    feature_sets: Sequence[FeatureSet] | None = None, batch: int = 200, block_ms: int = 1_000,
    max_events: int | None = None, stop: asyncio.Event | None = None,
    on_batch: Callable[[list[Entry], IngestSummary], None] | None = None, metrics: StreamMetrics | None = None,
) -> IngestSummary:
    """Read, store, then acknowledge, until stopped or ``max_events`` entries were handled. (Reading and
    validating the next batch while one is in its transaction was measured: no faster, 8,841-9,658 against
    9,974-10,251 events/s at Kafka's capacity; docs/performance.md.)"""
    total = IngestSummary()
    stop = stop or asyncio.Event()
    redactor = redactor_for(settings)
    # the feature engine's kernels ready before the first batch (its p95 paid for them: ~25 s compiled the first
    # time on a machine, 1-2 s loaded from numba's cache)
    await asyncio.to_thread(warm_current)
    started = time.perf_counter()
    name = getattr(source, "source_name", "stream")
    while not stop.is_set() and (max_events is None or total.read < max_events):
        want = batch if max_events is None else min(batch, max_events - total.read)
        entries = await source.read(want, block_ms)
        if metrics is not None:
            await metrics.sample_lag(source)
        if not entries:
            continue
        at = time.perf_counter()
        summary = await _until_stored(
            lambda: store_or_set_aside(pool, entries, name, redactor=redactor, mapping=mapping,
                                       feature_sets=feature_sets), stop)
        await source.ack([e.id for e in entries])  # only after the commit
        if metrics is not None:
            metrics.batch(summary, time.perf_counter() - at)
        total.add(summary)
        if on_batch is not None:
            on_batch(entries, summary)
    total.seconds = time.perf_counter() - started
    return total


async def _until_stored(store: Callable[[], Any], stop: asyncio.Event, *, first_s: float = 0.5,
                        most_s: float = 30.0) -> IngestSummary:
    """``store()``, again after a growing pause while PostgreSQL is unavailable (a failover, a restart): the
    consumer ended at the first such error, and a consumer run as a Ray job is not restarted. Stopped
    meanwhile: the error is raised (the batch, neither stored nor acknowledged, is read again)."""
    pause = first_s
    while True:
        try:
            return await store()
        except Exception as exc:
            if not db.is_unavailable(exc) or stop.is_set():
                raise
            log.warning("PostgreSQL is unavailable (%s): storing the batch again in %.1f s", type(exc).__name__,
                        pause)
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except TimeoutError:
                pause = min(pause * 2, most_s)
                continue
            raise


async def consume_forever(
    settings: Settings, *, mapping: Mapping[str, str] | None = None, max_events: int | None = None,
    batch: int = 200, consumer: str | None = None, notify: Callable[[str], None] | None = None,
) -> IngestSummary:
    """``sira ingest --stream``: consume ``sira:events`` until SIGINT/SIGTERM (or ``max_events``)."""
    if not settings.redis_url:
        raise ConfigError("--stream needs SIRA_REDIS_URL (the Redis that holds the sira:events stream)")
    source = RedisStreamSource(settings.redis_url, consumer=consumer, retention_s=settings.stream_retention_s,
                               mapping=mapping)
    return await serve_source(settings, source, mapping=mapping, max_events=max_events, batch=batch, notify=notify,
                              describe=f"{STREAM} as {source.consumer} in group {GROUP}")


async def serve_source(settings: Settings, source: Any, *, describe: str, mapping: Mapping[str, str] | None = None,
                       max_events: int | None = None, batch: int = 200,
                       notify: Callable[[str], None] | None = None) -> IngestSummary:
    """Start the source and consume it until SIGINT/SIGTERM (or ``max_events``), its metrics on their own port
    (bound first: a port taken is a one-line ``config`` error, before any consumer joins its group); close it
    at the end, however it ends."""
    # asyncpg's pool, while PostgreSQL is away, logged a traceback per attempt to restore its floor: one line
    limit("asyncpg.pool")
    metrics = StreamMetrics(source.stream, source.group)
    port = settings.stream_metrics_port or free_port(STREAM_METRICS_PORT)
    try:
        metrics.serve(port)
    except OSError as exc:
        raise ConfigError(f"SIRA_STREAM_METRICS_PORT: cannot serve the consumer's metrics on port {port}: "
                          f"{exc.strerror or exc} (set SIRA_STREAM_METRICS_PORT to a free port, or unset it)") from None
    try:
        return await _serve(settings, source, metrics, port, describe=describe, mapping=mapping,
                            max_events=max_events, batch=batch, notify=notify)
    finally:
        metrics.shutdown()


async def _serve(settings: Settings, source: Any, metrics: StreamMetrics, port: int, *, describe: str,
                 mapping: Mapping[str, str] | None, max_events: int | None, batch: int,
                 notify: Callable[[str], None] | None) -> IngestSummary:
    try:
        await source.start()
    except BaseException:
        await source.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if notify:
        notify(f"consuming {describe} (Ctrl-C to stop); "
               f"metrics: http://{socket.gethostname()}:{port}/metrics (sira_stream_*)")

    def report(entries: list[Entry], s: IngestSummary) -> None:
        if notify:
            notify(f"{len(entries)} entries: {s.accepted} accepted, " + (f"{s.labels} labels, " if s.labels else "")
                   + f"{s.duplicates} duplicates, {s.rejected} rejected")

    try:
        async with db.open_pool(settings) as pool:
            return await consume(source, pool, settings=settings, mapping=mapping, batch=batch,
                                 max_events=max_events, stop=stop, on_batch=report, metrics=metrics)
    finally:
        await source.close()
