"""SIRA's HTTP API: one FastAPI application, built by :func:`create_app`.

Later stages add their routers here (registry, scoring); the serving stage
mounts the same application in the Ray Serve ingress. ``sira api`` runs it
alone under uvicorn for development. Errors always have the shape
``{"error": {"code", "message", "details"}}`` with a stable code.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, BackgroundTasks, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from sira import __version__
from sira.core import db, migrations
from sira.core.auth import Identity, JwtConfig
from sira.core.config import MAX_VERSION, Settings, get_settings
from sira.core.errors import PayloadTooLarge, ServiceUnavailable, SiraError
from sira.features.definitions import FeatureSet, get_feature_set
from sira.http.deps import ErrorResponse, PoolDep, Version, allowed_methods, error_response, errors, require
from sira.http.middleware import BodySizeLimit
from sira.ingest.bulk import ingest_records, redactor_for
from sira.ingest.events import FIELD_CODES, MISSING_CODES
from sira.ingest.pii import Redactor

log = logging.getLogger(__name__)



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
    app.state.pepper = settings.secret("auth_secret")
    app.state.jwt_config = JwtConfig.from_settings(settings)
    app.state.feature_set = get_feature_set()
    scoring = getattr(app.state, "scoring", None)
    try:
        if scoring is not None:
            await scoring.start()
        yield
    finally:
        if scoring is not None:
            await scoring.stop()
        await app.state.pool.close()


def events_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["events"])

    @router.post(
        "/events", response_model=EventsResponse, responses=errors(body=True),
        summary="Ingest a batch of events",
    )
    async def post_events(batch: EventsBatch, request: Request, pool: PoolDep,
                          identity: Identity = require("events.write")) -> EventsResponse:
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


class ModelUpdate(BaseModel):
    """A model's settings that may change after it is created."""

    description: str | None = None
    label_maturity_days: Annotated[int, Field(ge=0, le=3650)] | None = None
    required_approvals: Annotated[int, Field(ge=0, le=20)] | None = None
    decision_targets: dict[str, float] | None = None
    promotion_policy: dict[str, Any] | None = None


class ModelCreate(ModelUpdate):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
    model_type: Literal["fraud_detection", "churn", "anomaly"] = "fraud_detection"
    entity_type: str = "customer"
    label_name: str | None = None


class Reason(BaseModel):
    reason: Annotated[str, Field(max_length=2000)] | None = None


class RollbackRequest(Reason):
    expected_version: Annotated[int, Field(
        ge=1, le=MAX_VERSION, description="The production version this rollback replaces, as the caller read it: "
        "refused with 409 production_moved when production changed since (two rollbacks never undo each other).")]


class Comment(BaseModel):
    comment: Annotated[str, Field(max_length=2000)] | None = None


class KeyCreate(BaseModel):
    name: str
    roles: list[str] = Field(..., min_length=1)


def registry_router() -> APIRouter:
    """Models, versions, promotion, approvals, rollback, history, audit and keys, each behind its role."""
    from sira.core.auth import create_key, list_keys, revoke_key
    from sira.registry import models as registry

    router = APIRouter(prefix="/v1", tags=["registry"])

    async def unit(pool: asyncpg.Pool, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async with db.transaction(pool) as conn:
            return await fn(conn, *args, **kwargs)

    def announce(background: BackgroundTasks, request: Request) -> None:
        """Deliver webhooks after the response (failures are retried by `sira webhooks deliver`)."""
        from sira.registry import webhooks

        background.add_task(webhooks.deliver_due, request.app.state.pool, request.app.state.settings)

    @router.get("/models", responses=errors())
    async def models_list(pool: PoolDep, who: Identity = require("models.read")) -> dict[str, Any]:
        return {"models": await unit(pool, registry.list_models, who)}

    @router.post("/models", status_code=201, responses=errors(409, body=True))
    async def models_create(body: ModelCreate, pool: PoolDep, who: Identity = require("models.write")) -> dict[str, Any]:
        fields = body.model_dump(exclude={"name", "model_type", "entity_type"}, exclude_none=True)
        return await unit(pool, registry.create_model, who, body.name, model_type=body.model_type,
                          entity_type=body.entity_type, **fields)

    @router.get("/models/{name}", responses=errors(404))
    async def models_show(name: str, pool: PoolDep, who: Identity = require("models.read")) -> dict[str, Any]:
        return await unit(pool, registry.show_model, who, name)

    @router.patch("/models/{name}", responses=errors(404, body=True))
    async def models_update(name: str, body: ModelUpdate, pool: PoolDep,
                            who: Identity = require("models.settings")) -> dict[str, Any]:
        return await unit(pool, registry.update_model, who, name, **body.model_dump(exclude_none=True))

    @router.get("/models/{name}/versions/{version}", responses=errors(404))
    async def versions_show(name: str, version: Version, pool: PoolDep,
                            who: Identity = require("models.read")) -> dict[str, Any]:
        return await unit(pool, registry.show_version, who, name, version)

    card_types = {"text/html": {"schema": {"type": "string"}}, "text/markdown": {"schema": {"type": "string"}}}

    # Response (no media type of its own): the errors are documented as the JSON they are, not as HTML
    @router.get("/models/{name}/versions/{version}/card", response_class=Response,
                responses={200: {"description": "The model card", "content": card_types},
                           **errors(404, 409)})  # 409: an artifact that fails its checksum
    async def versions_card(name: str, version: Version, request: Request, pool: PoolDep,
                            format: Annotated[Literal["md", "html"], Query()] = "html",  # noqa: A002
                            who: Identity = require("models.read")) -> Any:
        from sira.registry.card import render_card

        text = await unit(pool, render_card, request.app.state.settings, who, name, version, format)
        return HTMLResponse(text) if format == "html" else PlainTextResponse(text, media_type="text/markdown")

    @router.get("/models/{name}/compare", responses=errors(404))
    async def versions_compare(name: str, pool: PoolDep, a: Annotated[int, Query(ge=1, le=MAX_VERSION)],
                               b: Annotated[int, Query(ge=1, le=MAX_VERSION)], who: Identity = require("models.read")) -> dict[str, Any]:
        return await unit(pool, registry.compare_versions, who, name, a, b)

    @router.post("/models/{name}/versions/{version}/promote", status_code=201,
                 responses=errors(404, 409, body=True))
    async def promote(name: str, version: Version, body: Reason, request: Request, pool: PoolDep,
                      background: BackgroundTasks, who: Identity = require("promotion.request")) -> dict[str, Any]:
        result = await unit(pool, registry.request_promotion, request.app.state.settings, who, name, version,
                            body.reason)
        announce(background, request)
        return result

    @router.post("/models/{name}/versions/{version}/stage", responses=errors(404, 409, body=True))
    async def stage(name: str, version: Version, body: Reason, request: Request, pool: PoolDep,
                    background: BackgroundTasks, who: Identity = require("promotion.request")) -> dict[str, Any]:
        """Put a version in staging: serving scores it in shadow beside production."""
        result = await unit(pool, registry.stage_version, request.app.state.settings, who, name, version, body.reason)
        announce(background, request)
        return result

    def decision_route(decision: Literal["approve", "reject"]) -> Any:
        async def decide(name: str, version: Version, body: Comment, request: Request, pool: PoolDep,
                         background: BackgroundTasks, who: Identity = require("promotion.decide")) -> dict[str, Any]:
            result = await unit(pool, registry.decide, who, name, version, decision, body.comment)
            announce(background, request)
            return result

        return decide

    # one literal path per decision: a `{decision}` parameter also caught POST …/card (422, not 405)
    for decision in ("approve", "reject"):
        router.add_api_route(f"/models/{{name}}/versions/{{version}}/{decision}", decision_route(decision),
                             methods=["POST"], name=f"versions_{decision}",
                             responses=errors(404, 409, body=True),
                             summary=f"{decision.capitalize()} the version's pending promotion request")

    @router.post("/models/{name}/rollback", responses=errors(404, 409, body=True))
    async def rollback(name: str, body: RollbackRequest, request: Request, pool: PoolDep, background: BackgroundTasks,
                       who: Identity = require("rollback")) -> dict[str, Any]:
        result = await unit(pool, registry.rollback, who, name, body.reason or "", body.expected_version)
        announce(background, request)
        return result

    @router.get("/models/{name}/history", responses=errors(404))
    async def history(name: str, pool: PoolDep, who: Identity = require("models.read")) -> dict[str, Any]:
        return {"model": name, "history": await unit(pool, registry.production_history, name)}

    @router.get("/models/{name}/drift", responses=errors(404))
    async def drift(name: str, pool: PoolDep, who: Identity = require("models.read"),
                    version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None) -> dict[str, Any]:
        from sira.monitoring.drift import latest_drift

        return await unit(pool, latest_drift, name, version)

    @router.get("/models/{name}/performance", responses=errors(404))
    async def performance(name: str, pool: PoolDep, who: Identity = require("models.read")) -> dict[str, Any]:
        from sira.monitoring.performance import latest_performance

        return await unit(pool, latest_performance, name)

    @router.get("/audit", responses=errors())
    async def audit_log(pool: PoolDep, who: Identity = require("audit.read"), target: str | None = None,
                        actor: str | None = None, action: str | None = None,
                        limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> dict[str, Any]:
        return {"entries": await unit(pool, registry.read_audit, who, target=target, actor=actor, action=action,
                                      limit=limit)}

    @router.post("/keys", status_code=201, responses=errors(409, body=True))
    async def keys_create(body: KeyCreate, request: Request, pool: PoolDep,
                          who: Identity = require("keys.manage")) -> dict[str, Any]:
        key, info = await unit(pool, create_key, name=body.name, roles=body.roles, pepper=request.app.state.pepper,
                               creator=who)
        return {"name": info["name"], "roles": info["roles"], "key": key}

    @router.get("/keys", responses=errors())
    async def keys_list(pool: PoolDep, who: Identity = require("keys.manage")) -> dict[str, Any]:
        return {"keys": await unit(pool, list_keys, who)}

    @router.delete("/keys/{name}", responses=errors(404, 409))
    async def keys_revoke(name: str, pool: PoolDep, who: Identity = require("keys.manage")) -> dict[str, Any]:
        await unit(pool, revoke_key, who, name)
        return {"revoked": name}

    return router


def create_app(settings: Settings | None = None, scoring: Any = None) -> FastAPI:
    """The SIRA application (no work happens until it starts).

    ``scoring``: a :class:`sira.serving.service.ScoringService` to serve ``/v1/score`` and
    its companions with (the Serve ingress passes its replica's; ``sira api`` one of its own).
    """
    app = FastAPI(
        title="SIRA",
        version=__version__,
        description="Risk models for payments: events, features, models, scores.",
        lifespan=_lifespan,
    )
    app.state.settings = settings or get_settings()
    app.state.scoring = scoring
    app.add_middleware(BodySizeLimit, max_bytes=app.state.settings.max_body_bytes)

    @app.exception_handler(SiraError)
    async def _sira_error(_request: Request, exc: SiraError) -> JSONResponse:
        return error_response(exc.http_status, exc.code, exc.message, exc.details)

    @app.exception_handler(StarletteHTTPException)
    async def _routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # routing's own answers (no such path, a method the path does not take) in SIRA's shape
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            return error_response(405, "method_not_allowed", f"{request.method} is not allowed here; use {', '.join(allowed)}",
                          {"allowed": allowed}, headers={"Allow": ", ".join(allowed)})
        code = {400: "malformed_body", 404: "not_found"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(asyncpg.DataError)
    async def _data_error(_request: Request, exc: asyncpg.DataError) -> JSONResponse:
        # A value PostgreSQL refuses that no request model caught (a NUL character in free text,
        # an integer beyond its column): the caller's input, not a server fault. Postgres's
        # message names the type or encoding at fault, never the value.
        log.info("request refused by PostgreSQL: %s", type(exc).__name__)
        return error_response(422, "invalid_value", f"a value cannot be stored: {type(exc).__name__}", {})

    async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        # Postgres down, restarting, recovering or out of connections, whichever route met it: the caller
        # may retry. The class names the cause; the text may name the server: not shown.
        if not db.is_unavailable(exc):
            raise exc  # not the database's absence: a server fault (500)
        log.info("request met an unavailable database: %s", type(exc).__name__)
        return error_response(503, "database_unavailable", f"the database is unavailable ({type(exc).__name__})", {})

    for unavailable in db.UNAVAILABLE:
        app.add_exception_handler(unavailable, _database_unavailable)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":  # its loc ends in a character offset, not a field
            position = first["loc"][-1] if first["loc"] else None
            reason = (first.get("ctx") or {}).get("error") or first["msg"]
            return error_response(400, "malformed_body", f"the body is not valid JSON (at character {position}): {reason}",
                          {"field": "", "position": position})
        content_type = request.headers.get("content-type", "")
        if tuple(first["loc"]) == ("body",) and "json" not in content_type.lower():
            # curl -d sends application/x-www-form-urlencoded: the JSON was never read as JSON
            return error_response(422, "invalid_request", "the body must be JSON sent with Content-Type: application/json "
                          f"(got {content_type or 'no Content-Type'})", {"field": "", "content_type": content_type})
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        # a missing field named inside the event (amount): the field names it; the other codes name the
        # field sent and say in the message where inside it the problem is
        inside = (first.get("ctx") or {}).get("path") if first.get("type") in MISSING_CODES else None
        code = {"extra_forbidden": "unknown_field", "missing": "missing_field", "non_finite": "invalid_number",
                **{c: c for c in FIELD_CODES}}.get(first.get("type"), "invalid_request")
        message = first["msg"].removeprefix("Value error, ")
        return error_response(422, code, f"{where or 'body'}: {message}", {"field": ".".join(p for p in (where, inside) if p)})

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        return Health(status="ok", version=__version__)

    @app.get("/readyz", response_model=Health, responses={503: {"model": ErrorResponse}}, tags=["health"])
    async def readyz(request: Request, pool: PoolDep) -> Health:
        async with pool.acquire(timeout=2) as conn:  # unreachable: 503 database_unavailable (the handler above)
            await migrations.check(conn)  # out of date: 503 schema_out_of_date
        checks = {"database": "ok", "schema": "ok"}
        scoring = request.app.state.scoring
        if scoring is not None:  # a served model whose production version cannot be loaded: not ready (but alive)
            unavailable = scoring.unavailable_models()
            if unavailable:
                raise ServiceUnavailable(f"model(s) cannot be loaded: {', '.join(sorted(unavailable))}",
                                         code="model_unavailable", details={"models": unavailable})
            checks["models"] = "ok"
            if scoring.rejected_config:  # still serving, with the last good config: say what was refused
                checks["config"] = (f"user_config refused at {scoring.rejected_config['at']}: "
                                    f"{scoring.rejected_config['error']} (serving with the last good one)")
        return Health(status="ready", version=__version__, checks=checks)

    app.include_router(events_router())
    app.include_router(registry_router())
    if scoring is not None:
        from sira.http.scoring import scoring_router

        app.include_router(scoring_router())
    return app
