"""Answers, built by pure functions from a scored batch: what a client receives, and what a shadow
(staging) version's score is stored as."""

from __future__ import annotations

from typing import Any

from sira.serving.idempotency import DIGEST, prediction_id_for
from sira.serving.schemas import Item


def answer(item: Item, runtime: Any, score: float, decision: str, reasons: list[dict[str, Any]] | None,
           flags: dict[str, Any], degraded: set[str], latency_ms: float, scored_at: str, epoch: int) -> dict[str, Any]:
    """The answer to one request (``reasons`` None: deferred, computed when the prediction is read)."""
    return {
        "prediction_id": prediction_id_for(runtime.model_name, item.request_id, item.client_request_id, epoch),
        "request_id": item.request_id, "model": runtime.model_name, "version": runtime.version,
        "score": float(score), "decision": decision, "reasons": reasons or [], "reasons_deferred": reasons is None,
        "flags": flags, "degraded": bool(degraded), "degraded_reasons": sorted(degraded),
        "latency_ms": round(latency_ms, 3), "scored_at": scored_at,
        "event_id": item.event["event_id"] if item.event else None, "replayed": False,
        **({DIGEST: item.digest} if item.digest else {}),
    }


def shadow_answer(item: Item, runtime: Any, request_id: str, score: float, decision: str, production_decision: str,
                  scored_at: str, epoch: int) -> dict[str, Any]:
    """A staging version's score of the same request: stored beside production's, never returned."""
    return {
        "prediction_id": prediction_id_for(runtime.model_name, f"{request_id}:shadow:v{runtime.version}",
                                           item.client_request_id, epoch),
        "scored_at": scored_at, "request_id": request_id, "event_id": item.event["event_id"] if item.event else None,
        "score": float(score), "decision": decision, "reasons": [], "reasons_deferred": True,
        "flags": {"production_decision": production_decision}, "degraded": False, "degraded_reasons": [],
        "latency_ms": 0.0,
    }
