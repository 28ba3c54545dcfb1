"""Answers, built from a scored batch by functions with no I/O: what a client receives, the records the
spool keeps, and what a shadow (staging) version's score is stored as."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sira.serving.idempotency import DIGEST, PredictionIds
from sira.serving.records import prediction_record
from sira.serving.schemas import Item

ShadowJob = tuple[Item, dict[str, Any], str, str]  # the request, its vector, production's decision, request id


def answer(item: Item, runtime: Any, score: float, decision: str, reasons: list[dict[str, Any]] | None,
           flags: dict[str, Any], degraded: set[str], latency_ms: float, scored_at: str, ids: PredictionIds
           ) -> dict[str, Any]:
    """The answer to one request (``reasons`` None: deferred, computed when the prediction is read)."""
    return {
        "prediction_id": ids.of(runtime.model_name, item.request_id, item.client_request_id),
        "request_id": item.request_id, "model": runtime.model_name, "version": runtime.version,
        "score": float(score), "decision": decision, "reasons": reasons or [], "reasons_deferred": reasons is None,
        "flags": flags, "degraded": bool(degraded), "degraded_reasons": sorted(degraded),
        "latency_ms": round(latency_ms, 3), "scored_at": scored_at,
        "event_id": item.event["event_id"] if item.event else None, "replayed": False,
        **({DIGEST: item.digest} if item.digest else {}),
    }


def shadow_answer(item: Item, runtime: Any, request_id: str, score: float, decision: str, production_decision: str,
                  scored_at: str, ids: PredictionIds) -> dict[str, Any]:
    """A staging version's score of the same request: stored beside production's, never returned."""
    return {
        # NUL separates: a request id cannot hold one, so no client request id names a shadow prediction
        "prediction_id": ids.of(runtime.model_name, f"{request_id}\x00shadow\x00v{runtime.version}",
                                item.client_request_id),
        "scored_at": scored_at, "request_id": request_id, "event_id": item.event["event_id"] if item.event else None,
        "score": float(score), "decision": decision, "reasons": [], "reasons_deferred": True,
        "flags": {"production_decision": production_decision}, "degraded": False, "degraded_reasons": [],
        "latency_ms": 0.0,
    }


@dataclass
class Scored:
    """A scored batch: the answers by request index, their spool records, the shadow scores to compute after
    answering, and the decisions by (model, decision) for the metrics."""

    answers: dict[int, dict[str, Any]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    shadow_jobs: list[ShadowJob] = field(default_factory=list)
    decisions: Counter = field(default_factory=Counter)


def score_items(items: list[Item], todo: list[int], vectors: dict[int, dict[str, Any]],
                flags: dict[int, dict[str, Any]], degraded: set[str], *, reasons: str, shadow: bool, scored_at: str,
                ids: PredictionIds) -> Scored:
    """One ``predict`` per model version for the requests ``todo``; reasons inline for review and block (all
    with ``reasons="all"``, and on request); each request's latency runs from its arrival to its answer."""
    by_runtime: dict[int, list[int]] = {}
    for n in todo:
        by_runtime.setdefault(id(items[n].runtime), []).append(n)
    out = Scored()
    for members in by_runtime.values():
        runtime = items[members[0]].runtime
        X = runtime.matrix([vectors[n] for n in members])
        scores = runtime.predict(X)
        decisions = runtime.decide(scores)
        inline = [j for j, n in enumerate(members) if items[n].explain or reasons == "all" or decisions[j] != "approve"]
        explained: dict[int, list[dict[str, Any]]] = {}
        if inline:
            contrib = runtime.contributions(X[inline])
            for k, j in enumerate(inline):
                explained[j] = runtime.reasons(X[j], contrib[k])
        for j, n in enumerate(members):
            item = items[n]
            latency = (time.perf_counter() - item.started) * 1000
            out.answers[n] = answer(item, runtime, scores[j], decisions[j], explained.get(j), flags[n], degraded,
                                    latency, scored_at, ids)
            out.records.append(prediction_record(out.answers[n], runtime, vectors[n], "production"))
            out.decisions[(runtime.model_name, decisions[j])] += 1
            if item.shadow is not None and shadow:
                out.shadow_jobs.append((item, vectors[n], decisions[j], item.request_id))
    return out


def score_shadows(jobs: list[ShadowJob], *, scored_at: str, ids: PredictionIds) -> tuple[list[dict[str, Any]], Counter]:
    """The staging versions' scores of the same inputs, as spool records, and their agreement with production
    by (model, same|differs)."""
    by_runtime: dict[int, list[ShadowJob]] = {}
    for job in jobs:
        by_runtime.setdefault(id(job[0].shadow), []).append(job)
    records: list[dict[str, Any]] = []
    agreement: Counter = Counter()
    for group in by_runtime.values():
        runtime = group[0][0].shadow
        X = runtime.matrix([g[1] for g in group])
        scores = runtime.predict(X)
        decisions = runtime.decide(scores)
        for (item, vector, production, request_id), score, decision in zip(group, scores.tolist(), decisions):
            stored = shadow_answer(item, runtime, request_id, score, decision, production, scored_at, ids)
            records.append(prediction_record(stored, runtime, vector, "shadow"))
            agreement[(runtime.model_name, "same" if decision == production else "differs")] += 1
    return records, agreement
