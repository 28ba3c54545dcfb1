"""The scoring routes: ``/v1/score``, ``/v1/score/batch``, ``/v1/predictions/{id}``, ``/v1/feedback``."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from sira.core.auth import Identity
from sira.core.errors import InvalidInput, NotFound, PayloadTooLarge
from sira.http.deps import StrictRoute, authorized, errors, require
from sira.http.direct import direct_route, json_answer, json_body
from sira.serving.idempotency import answer_from_row, public
from sira.serving.schemas import (
    BatchScoreAnswer,
    BatchScoreRequest,
    FeedbackAnswer,
    FeedbackRequest,
    ScoreAnswer,
    ScoreRequest,
    StoredPrediction,
)
from sira.serving.service import ScoringService
from sira.serving.states import fold_order


@contextlib.asynccontextmanager
async def _connection(service: ScoringService) -> Any:
    """A connection of the service's pool for a route (Postgres away: 503 ``database_unavailable``, by the
    application's exception handler)."""
    async with service.pool.acquire(timeout=5) as conn:
        yield conn


router = APIRouter(route_class=StrictRoute, prefix="/v1", tags=["scoring"])


async def get_scoring(request: Request) -> ScoringService:
    return request.app.state.scoring


ScoringDep = Annotated[ScoringService, Depends(get_scoring)]


def timed(service: ScoringService, route: str, model: str, started: float) -> None:
    if service.metrics:
        service.metrics.latency.observe((time.perf_counter() - started) * 1000, tags={"route": route, "model": model})


# The two scoring routes are answered from request bytes to answer bytes (sira.http.direct): FastAPI documents
# each from its endpoint's signature (`score`, `score_batch`) and hands its requests to the direct handler
# (`_score`, `_score_batch`), which checks the same role and validates the same body model. 404: a model not
# served here; 409: one without a production version.
async def _score(request: Request) -> Response:
    started = time.perf_counter()
    await authorized(request, "score")
    return await _scored(request.app.state.scoring, json_body(request, await request.body(), ScoreRequest), started)


async def score(body: ScoreRequest, service: ScoringDep, who: Identity = require("score")) -> Any:
    return await _scored(service, body, time.perf_counter())


async def _scored(service: ScoringService, body: ScoreRequest, started: float) -> Response:
    answer = await service.score(service.prepare(body.model, body, started))
    timed(service, "score", body.model, started)
    return json_answer(answer)


router.add_api_route("/score", score, methods=["POST"], response_model=ScoreAnswer, summary="Score one event",
                     responses=errors(404, 409, body=True), route_class_override=direct_route(_score))


async def _score_batch(request: Request) -> Response:
    started = time.perf_counter()
    await authorized(request, "score")
    body = json_body(request, await request.body(), BatchScoreRequest)
    return await _batch_scored(request.app.state.scoring, body, started)


async def score_batch(body: BatchScoreRequest, service: ScoringDep, who: Identity = require("score")) -> Any:
    return await _batch_scored(service, body, time.perf_counter())


async def _batch_scored(service: ScoringService, body: BatchScoreRequest, started: float) -> Response:
    if len(body.requests) > service.config.max_batch_rows:
        raise PayloadTooLarge(f"a batch holds at most {service.config.max_batch_rows} requests, "
                              f"got {len(body.requests)}", details={"max": service.config.max_batch_rows})
    items = [service.prepare(body.model, r, started, prefix=f"requests.{i}.") for i, r in enumerate(body.requests)]
    await service.idempotency.refuse_conflicts(items)
    # scored in the order the events fold in (time, then the id's hash: how the offline build orders a tie),
    # so two payments of one entity in the same second see each other as a training set has them
    order = sorted(range(len(items)), key=lambda n: fold_order(items[n].event))
    answers: list[Any] = [None] * len(items)
    for n, answer in zip(order, await asyncio.gather(*(service.score(items[n]) for n in order))):
        answers[n] = answer
    timed(service, "score_batch", body.model, started)
    return json_answer({"model": body.model, "results": answers})


router.add_api_route("/score/batch", score_batch, methods=["POST"], response_model=BatchScoreAnswer,
                     summary="Score many events in one call", responses=errors(404, 409, body=True),
                     route_class_override=direct_route(_score_batch))


@router.get("/predictions/{prediction_id}", response_model=StoredPrediction, responses=errors(404),
            summary="A stored prediction and its explanation")
async def get_prediction(prediction_id: uuid.UUID, service: ScoringDep,
                         who: Identity = require("predictions.read")) -> Any:
    async with _connection(service) as conn:
        row = await conn.fetchrow(
            """SELECT prediction_id, request_id, model_name, version, role, event_id, features, score, decision,
                      reasons, flags, degraded, latency_ms, scored_at
                 FROM sira_predictions WHERE prediction_id = $1""", prediction_id)
        if row is None:
            raise NotFound(f"no stored prediction {prediction_id} (predictions are stored within a second)",
                           code="unknown_prediction",
                           details={"field": "prediction_id", "prediction_id": str(prediction_id)})
        shadows = await conn.fetch(
            """SELECT version, score, decision FROM sira_predictions
                WHERE model_name = $1 AND request_id = $2 AND role = 'shadow' AND scored_at BETWEEN $3::timestamptz - interval '1 hour'
                  AND $3::timestamptz + interval '1 hour'""",
            row["model_name"], row["request_id"], row["scored_at"])
    answer = public(answer_from_row(row))
    if answer["reasons_deferred"]:
        reasons = await asyncio.to_thread(service.explain, row["model_name"], row["version"], row["features"])
        if reasons is not None:
            answer.update(reasons=reasons, reasons_deferred=False)
    return json_answer({**answer, "role": row["role"], "features": row["features"],
                           "shadow": [dict(s) for s in shadows]})

@router.post("/feedback", response_model=FeedbackAnswer, responses=errors(404, body=True), summary="Record a label for a prediction or an event")
async def feedback(body: FeedbackRequest, service: ScoringDep,
                   who: Identity = require("feedback.write")) -> Any:
    from sira.ingest.labels import label_source, prediction_key, record_labels

    source = label_source(who, body.source, "source" in body.model_fields_set)
    event_id = body.event_id and service.redactor.scrub_value(body.event_id)
    if body.prediction_id is not None:
        lookup = "SELECT event_id FROM sira_predictions WHERE prediction_id = $1"
        async with _connection(service) as conn:
            stored = await conn.fetchrow(lookup, body.prediction_id)
        # answered moments ago and still in this replica's spool (group commit): store it now, holding
        # no connection of the scoring pool meanwhile
        if stored is None and service.spool.pending and await service.flush_quietly():
            async with _connection(service) as conn:
                stored = await conn.fetchrow(lookup, body.prediction_id)
        if stored is None:
            raise NotFound(f"no stored prediction {body.prediction_id}", code="unknown_prediction",
                           details={"field": "prediction_id", "prediction_id": str(body.prediction_id)})
        if stored["event_id"] is None and event_id is not None:
            raise InvalidInput("the prediction was scored from ready features, with no event: name it alone",
                               code="invalid_field", details={"field": "event_id"})
        if event_id is not None and event_id != stored["event_id"]:
            raise InvalidInput("event_id does not match the prediction's event", code="invalid_field",
                               details={"field": "event_id"})
        # a prediction scored without an event (a model trained on a table): its label is keyed by the
        # prediction, and live performance joins it by prediction_id
        event_id = stored["event_id"] or service.redactor.scrub_value(prediction_key(body.prediction_id))
    async with _connection(service) as conn:
        if body.known_at is None:  # a resent label keeps the time it first became known
            same = await conn.fetchval(
                "SELECT label = $4 FROM sira_feedback WHERE event_id = $1 AND label_name = $2 AND source = $3",
                event_id, body.label_name, service.redactor.scrub_text(source), body.label)  # stored redacted
            if same:
                return json_answer({"event_id": event_id, "label_name": body.label_name, "label": body.label,
                              "status": "unchanged"})
        async with conn.transaction():
            # a refused label's dead letter names who posted it (sql/035): that service reads it, no other
            await conn.execute("SELECT set_config('sira.posted_by', $1, true)", who.name)
            summary = await record_labels(
                conn, [{"event_id": event_id, "label": body.label, "label_name": body.label_name,
                        "known_at": body.known_at or datetime.now(timezone.utc), "source": source,
                        "prediction_id": str(body.prediction_id) if body.prediction_id else None}],
                redactor=service.redactor, source=source, created_by=who.name,
                pending_ttl_days=service.settings.pending_label_ttl_days)
    refusal = summary.refusal()  # one label, so one reason: its own code (as a file load counts it), the generic
    if refusal is not None:      # one for field errors, naming the field and saying why
        raise refusal
    if summary.pending_event and service.metrics:
        service.metrics.count(service.metrics.pending_labels)
    # pending_event: kept, and used once its event arrives (it expires if it never does)
    status = ("pending_event" if summary.pending_event else "recorded" if summary.inserted
              else "updated" if summary.updated else "superseded" if summary.earlier else "unchanged")
    return json_answer({"event_id": event_id, "label_name": body.label_name, "label": body.label,
                           "status": status})
