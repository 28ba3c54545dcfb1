"""Idempotency: the prediction id a client's request id names within a window, the request's digest,
and an earlier answer replayed (or refused as a conflict)."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import orjson

from sira.core.errors import Conflict
from sira.serving.schemas import Item

_PREDICTION_IDS = uuid.UUID("5b0f5d2e-6c1e-4b8e-9a57-2f0c3d4e5a61")


def prediction_id_for(model: str, request_id: str, client_chosen: bool, epoch: int = 0) -> str:
    """A client's request id names the same prediction id within an idempotency window (``epoch``: which
    one, :func:`idempotency_epoch`): two replicas racing on a retry (before either answer is stored) give
    the same answer, and the audit trail keeps one row. A request id reused after the window names
    another prediction (stored, not dropped as a duplicate of the old one)."""
    if not client_chosen:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_PREDICTION_IDS, f"{model}\x00{request_id}\x00{epoch}"))


def idempotency_epoch(ttl_s: float) -> int:
    """The idempotency window a request falls in (wall clock: the same on every replica)."""
    return int(time.time() // ttl_s)


DIGEST = "request_sha256"  # kept with an answer (and in its stored flags), never sent


def request_digest(model: str, payload: Any) -> str:
    """What a request asked, as a digest: of the redacted event (or the features), never of raw input."""
    return hashlib.sha256(orjson.dumps([model, payload], option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:32]


def public(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != DIGEST} if DIGEST in answer else answer


def replay(earlier: dict[str, Any], item: Item) -> dict[str, Any]:
    """The earlier answer to the item's request id, unless the id was used for something else (409)."""
    if item.digest and earlier.get(DIGEST) and earlier[DIGEST] != item.digest:
        raise Conflict(f"request_id {item.request_id!r} was used for a different "
                       f"{'event' if item.event is not None else 'feature vector'} within the idempotency window; "
                       "send a new request_id for a new request", code="idempotency_conflict",
                       details={"field": "request_id"})
    return {**public(earlier), "replayed": True}
