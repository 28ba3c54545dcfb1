"""``POST /v1/events``: a batch of events, each validated on its own (one bad event never fails the others;
rejected ones go to the dead-letter table); ``GET /v1/events/rejected``: that table, newest first."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from sira.core import db
from sira.core.auth import Identity
from sira.core.errors import PayloadTooLarge
from sira.http.deps import Cursor, PoolDep, StrictRoute, errors, require
from sira.ingest.bulk import ingest_normalized, normalize_all
from sira.ingest.dead_letters import list_dead_letters, poster_of
from sira.ingest.events import Rejection

router = APIRouter(route_class=StrictRoute, prefix="/v1", tags=["events"])
# The position a rejected event's dead letter keeps (the API has no offsets): with its source and payload, the key
# that makes a retried batch's dead letters repeats, stored once (sira.ingest.dead_letters)
POSITION = "POST /v1/events"


class EventsBatch(BaseModel):
    """A batch of events. Each is validated on its own: one bad event never fails the others. A field of the
    batch it does not take is refused (422 unknown_field): a misspelt ``sourc`` stored the batch as ``api``'s."""

    model_config = ConfigDict(extra="forbid")

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
    # ingest_records' steps, in a transaction that names the poster: its dead letters keep it (posted_by's
    # default, sql/035), so a service key reads those it posted, never another service's
    source, results = normalize_all(batch.events, request.app.state.redactor, f"api:{batch.source}")
    results = [replace(r, position=POSITION) if isinstance(r, Rejection) else r for r in results]
    async with db.transaction(pool) as conn:
        await conn.execute("SELECT set_config('sira.posted_by', $1, true)", identity.name)
        summary = await ingest_normalized(conn, source, results, None, [POSITION] * len(results))
    # counted from the results: a retry's rejected event is rejected again, its dead letter (a repeat) stored once
    statuses = Counter(r["status"] for r in summary.results)
    return EventsResponse(accepted=statuses["accepted"], duplicates=statuses["duplicate"],
                          rejected=statuses["rejected"],
                          results=[EventResult(**r) for r in summary.results])


class RejectedEvent(BaseModel):
    id: int
    rejected_at: str
    source: str
    position: str | None = Field(description="Where in its source: a stream entry id, Kafka's topic:partition:offset, "
                                             "a file's name:row, `POST /v1/events`")
    event_id: str | None
    reason_code: str
    field: str | None
    reason: str
    payload: dict[str, Any] = Field(description="The record as sent, redacted as stored (a mapped source's own "
                                                "column names)")


class RejectedPage(BaseModel):
    entries: list[RejectedEvent]
    next_before: int | None = Field(description="Pass as `before` for older ones; null: no more")


@router.get("/events/rejected", response_model=RejectedPage, responses=errors(),
            summary="The records ingestion set aside (dead letters), newest first")
async def get_rejected(pool: PoolDep, identity: Identity = require("rejected.read"),
                       source: Annotated[str | None, Query(max_length=300, description="Source starts with (its rejected labels, "
                                                                          "feedback:<source>, too)")] = None,
                       reason: Annotated[str | None, Query(max_length=100, description="A reason code")] = None,
                       before: Cursor = None,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Any:
    """A service key reads the dead letters of the events it posted, never another caller's nor a stream's or a
    file's (:func:`~sira.ingest.dead_letters.poster_of`); admin reads all."""
    async with pool.acquire() as conn:
        return await list_dead_letters(conn, source=source, reason=reason, before=before, limit=limit,
                                       poster=poster_of(identity))
