"""SIRA's HTTP API: one FastAPI application, built by :func:`create_app`.

Later stages add their routers here (registry, scoring); the serving stage
mounts the same application in the Ray Serve ingress. ``sira api`` runs it
alone under uvicorn for development. Errors always have the shape
``{"error": {"code", "message", "details"}}`` with a stable code.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from sira import __version__, db, migrations
from sira.config import Settings, get_settings
from sira.errors import PayloadTooLarge, ServiceUnavailable, SiraError
from sira.features import FeatureSet, get_feature_set
from sira.ingest import ingest_records, redactor_for
from sira.pii import Redactor


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorResponse(BaseModel):
    error: ErrorBody


class EventsBatch(BaseModel):
    """A batch of events. Each is validated on its own: one bad event never fails the others."""

    events: list[dict[str, Any]] = Field(
        ..., min_length=1, description="Events in the shape of EventIn (fields beyond it are kept as attributes)."
    )
    source: Annotated[str, Field(min_length=1, max_length=100)] = "api"


class EventResult(BaseModel):
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    code: str | None = None
    reason: str | None = None


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int
    rejected: int
    results: list[EventResult]


class Health(BaseModel):
    status: str
    version: str
    checks: dict[str, str] = {}


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    app.state.pool = await db.create_pool(db.resolve_dsn(settings), settings)
    app.state.redactor = redactor_for(settings)
    app.state.feature_set = get_feature_set()
    try:
        yield
    finally:
        await app.state.pool.close()


def get_pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]


def _error(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message, "details": details or {}}})


def events_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["events"])

    @router.post(
        "/events", response_model=EventsResponse,
        responses={413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
        summary="Ingest a batch of events",
    )
    async def post_events(batch: EventsBatch, request: Request, pool: PoolDep) -> EventsResponse:
        settings: Settings = request.app.state.settings
        if len(batch.events) > settings.events_max_batch:
            raise PayloadTooLarge(
                f"a batch holds at most {settings.events_max_batch} events, got {len(batch.events)}",
                details={"max": settings.events_max_batch},
            )
        redactor: Redactor = request.app.state.redactor
        fs: FeatureSet = request.app.state.feature_set
        summary = await ingest_records(pool, batch.events, redactor=redactor, fs=fs, source=f"api:{batch.source}")
        return EventsResponse(
            accepted=summary.accepted, duplicates=summary.duplicates, rejected=summary.rejected,
            results=[EventResult(**r) for r in summary.results],
        )

    return router


def create_app(settings: Settings | None = None) -> FastAPI:
    """The SIRA application (no work happens until it starts)."""
    app = FastAPI(
        title="SIRA",
        version=__version__,
        description="Risk models for payments: events, features, models, scores.",
        lifespan=_lifespan,
    )
    app.state.settings = settings or get_settings()

    @app.exception_handler(SiraError)
    async def _sira_error(_request: Request, exc: SiraError) -> JSONResponse:
        return _error(exc.http_status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p != "body")
        return _error(422, "invalid_request", f"{field or 'body'}: {first['msg']}", {"field": field})

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        return Health(status="ok", version=__version__)

    @app.get("/readyz", response_model=Health, responses={503: {"model": ErrorResponse}}, tags=["health"])
    async def readyz(pool: PoolDep) -> Health:
        try:
            async with pool.acquire(timeout=2) as conn:
                await migrations.check(conn)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise ServiceUnavailable(f"database not ready: {type(exc).__name__}") from None
        return Health(status="ready", version=__version__, checks={"database": "ok", "schema": "ok"})

    app.include_router(events_router())
    return app

