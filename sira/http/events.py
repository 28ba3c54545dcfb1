"""``POST /v1/events``: a batch of events, each validated on its own (one bad event never fails the others;
rejected ones go to the dead-letter table)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from sira.core.auth import Identity
from sira.core.errors import PayloadTooLarge
from sira.http.deps import PoolDep, errors, require
from sira.ingest.bulk import ingest_records

router = APIRouter(prefix="/v1", tags=["events"])


class EventsBatch(BaseModel):
    """A batch of events. Each is validated on its own: one bad event never fails the others."""

    events: list[dict[str, Any]] = Field(
        ..., min_length=1, description="Events in the shape of EventIn (fields beyond it are kept as attributes)."
    )
    source: Annotated[str, Field(min_length=1, max_length=100)] = "api"


class EventResult(BaseModel):
    index: int = Field(description="The event's position in the batch (results come in the batch's order)")
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    code: str | None = None
    reason: str | None = None


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int
    rejected: int
    results: list[EventResult]


@router.post("/events", response_model=EventsResponse, responses=errors(body=True), summary="Ingest a batch of events")
async def post_events(batch: EventsBatch, request: Request, pool: PoolDep,
                      identity: Identity = require("events.write")) -> EventsResponse:
    settings = request.app.state.settings
    if len(batch.events) > settings.events_max_batch:
        raise PayloadTooLarge(f"a batch holds at most {settings.events_max_batch} events, got {len(batch.events)}",
                              details={"max": settings.events_max_batch})
    summary = await ingest_records(pool, batch.events, redactor=request.app.state.redactor,
                                   source=f"api:{batch.source}")
    return EventsResponse(accepted=summary.accepted, duplicates=summary.duplicates, rejected=summary.rejected,
                          results=[EventResult(**r) for r in summary.results])
