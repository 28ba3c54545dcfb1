"""The replica's Ray metrics (exported by Ray's Prometheus endpoint, aggregated across replicas)."""

from __future__ import annotations

from typing import Any


class ServingMetrics:
    """Ray metrics (exported by Ray's Prometheus endpoint, aggregated across replicas)."""

    def __init__(self) -> None:
        from ray.util import metrics

        ms = [0.5, 1, 2, 3, 5, 8, 13, 20, 30, 50, 100, 250, 1000]
        self.latency = metrics.Histogram("sira_request_latency_ms", "Server-side latency of SIRA routes (ms).",
                                         boundaries=ms, tag_keys=("route", "model"))
        self.batch_size = metrics.Histogram("sira_batch_size", "Requests per scoring batch.",
                                            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256])
        self.cache = metrics.Counter("sira_feature_cache_lookups", "Entity history lookups by layer and outcome.",
                                     tag_keys=("layer", "outcome"))
        self.decisions = metrics.Counter("sira_decisions", "Decisions by model and outcome.",
                                         tag_keys=("model", "decision"))
        self.degraded = metrics.Counter("sira_degraded_requests", "Requests answered in a degraded mode.",
                                        tag_keys=("reason",))
        self.shadow = metrics.Counter("sira_shadow_scores", "Shadow scores, and whether the decision differed.",
                                      tag_keys=("model", "agreement"))
        self.version = metrics.Gauge("sira_model_version_served", "Version served, by model and role.",
                                     tag_keys=("model", "role"))
        self.spooled = metrics.Gauge("sira_spool_pending_records", "Answered records not yet in Postgres.")
        self.refused = metrics.Counter("sira_spool_refused_records",
                                       "Spooled records PostgreSQL refused, set aside in the spool's refused/ folder.")
        self.load_failures = metrics.Counter("sira_model_load_failures",
                                             "Failed loads of a registered version (each attempt), by reason.",
                                             tag_keys=("model", "role", "reason"))
        self.load_failing = metrics.Gauge("sira_model_load_failing",
                                          "1 while the version the registry names for a role cannot be loaded.",
                                          tag_keys=("model", "role"))
        self.config_rejected = metrics.Counter("sira_config_rejected",
                                               "user_config updates refused (the replica kept its last good one).")
        self.late = metrics.Counter("sira_late_events",
                                    "Scored events older than their entity's newest state, answered from the log.",
                                    tag_keys=("entity",))
        self.errors = metrics.Counter("sira_errors", "Error answers of SIRA's routes, by route, code and status.",
                                      tag_keys=("route", "code", "status"))
        self.pending_labels = metrics.Counter("sira_feedback_pending_labels",
                                              "Labels recorded for an event not stored (yet).")
        self._counts: dict[tuple[Any, tuple[tuple[str, str], ...]], int] = {}

    def count(self, counter: Any, n: int = 1, **tags: str) -> None:
        """Add to a counter here; :meth:`publish` hands the sums to Ray. A Ray counter's ``inc`` is a
        call into Ray's C++ core (~2% of a replica's CPU at concurrency 32 for the counts of each
        request); a sum here is a dict update."""
        if n <= 0:  # nothing to count (Ray counters refuse 0)
            return
        key = (counter, tuple(tags.items()))
        self._counts[key] = self._counts.get(key, 0) + n

    def publish(self) -> None:
        """The counts added since the last call, into Ray's counters (the flusher calls this every
        ``flush_interval_s``; Prometheus scrapes far less often)."""
        counts, self._counts = self._counts, {}
        for (counter, tags), n in counts.items():
            counter.inc(n, tags=dict(tags))
