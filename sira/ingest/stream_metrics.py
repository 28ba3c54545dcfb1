"""The stream consumer's own Prometheus endpoint (``prometheus_client``): it is a long-lived process of its
own, outside Ray Serve, so its series are served by it (docs/observability.md).

- ``sira_stream_entries_total{outcome}``: entries handled: events ``accepted``, ``labels`` stored (new or
  changed), ``duplicates`` (events and labels already stored), ``rejected`` (events and labels; dead letters);
- ``sira_stream_dead_letters_total{reason}``: entries set aside in ``sira_rejected_events``, by reason;
- ``sira_stream_batch_seconds``: one batch's store-and-commit time;
- ``sira_stream_lag_entries{stream, group, partition}``: entries the consumer group has not finished (not
  yet delivered, and delivered but not acknowledged): on Redis the whole group's (``partition=""``, every
  consumer says the same), on Kafka each partition's, said by the consumer that holds it; the group's lag
  is ``sum by (stream, group) (max by (stream, group, partition) (...))``;
- ``sira_stream_assigned_partitions{stream, group}``: on Kafka, the partitions this consumer holds (0 while
  the group has none for it: a broker outage past the session timeout, a topic gone, more consumers than
  partitions), sampled with the lag, which keeps its last value while the brokers cannot say it;
- ``sira_stream_last_commit_timestamp_seconds{stream, group}``: when the consumer last committed a batch of
  that stream and group (0 until its first), so that the stall alert compares each consumer's commits
  with the lag it holds (by stream, group and scrape target), never with another consumer's commits.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)


class StreamMetrics:
    def __init__(self, stream: str, group: str) -> None:
        self.registry = CollectorRegistry()
        self.stream, self.group = stream, group
        self.entries = Counter("sira_stream_entries", "Stream entries handled, by outcome.", ["outcome"],
                               registry=self.registry)
        self.dead_letters = Counter("sira_stream_dead_letters", "Stream entries set aside as dead letters, by reason.",
                                    ["reason"], registry=self.registry)
        self.batch_seconds = Histogram("sira_stream_batch_seconds", "Time to store and commit one batch.",
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                       registry=self.registry)
        self.lag = Gauge("sira_stream_lag_entries", "Entries the consumer group has not finished: not yet delivered, "
                         "or delivered and not acknowledged.", ["stream", "group", "partition"],
                         registry=self.registry)
        self.assigned = Gauge("sira_stream_assigned_partitions", "Partitions this consumer holds (Kafka).",
                              ["stream", "group"], registry=self.registry)
        self.last_commit = Gauge("sira_stream_last_commit_timestamp_seconds", "When the consumer last committed "
                                 "a batch (0 until its first).", ["stream", "group"], registry=self.registry)
        self.last_commit.labels(stream, group)  # exported from the start (0), as the stall alert needs
        self._lag_at = 0.0
        self._server: Any = None  # (server, thread) while serving

    def batch(self, summary: Any, seconds: float) -> None:
        """One committed batch (an :class:`~sira.ingest.bulk.IngestSummary`)."""
        for outcome in ("accepted", "labels", "duplicates", "rejected"):  # label entries counted too (in none)
            self.entries.labels(outcome).inc(getattr(summary, outcome))
        for reason, n in summary.reasons.items():
            self.dead_letters.labels(reason).inc(n)
        self.batch_seconds.observe(seconds)
        self.last_commit.labels(self.stream, self.group).set(time.time())

    async def sample_lag(self, source: Any, every_s: float = 1.0) -> None:
        """The group's lag, from the source (at most once per ``every_s``)."""
        now = time.monotonic()
        if now - self._lag_at < every_s:
            return
        self._lag_at = now
        if hasattr(source, "assigned"):
            try:
                self.assigned.labels(self.stream, self.group).set(await source.assigned())
            except Exception as exc:  # noqa: BLE001 - a metric never stops consuming
                log.debug("stream assignment unavailable: %s", exc)
        try:
            lag = await source.lag()
        except Exception as exc:  # noqa: BLE001 - a metric never stops consuming
            log.debug("stream lag unavailable: %s", exc)
            return
        if lag is None:  # the source cannot say: the last value stands
            return
        parts = lag if isinstance(lag, dict) else {"": lag}
        self.lag.clear()  # partitions this consumer no longer holds: its successor says them (else max kept them)
        for partition, n in parts.items():
            self.lag.labels(self.stream, self.group, partition).set(n)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve the series on ``port`` (an ``OSError`` when it is taken)."""
        self._server = start_http_server(port, addr=host, registry=self.registry)

    def shutdown(self) -> None:
        """Stop serving (the port free again)."""
        if self._server is not None:
            self._server[0].shutdown()
            self._server[0].server_close()
            self._server = None
