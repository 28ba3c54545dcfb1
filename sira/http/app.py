"""SIRA's HTTP API: one FastAPI application, built by :func:`create_app` from routers per resource
(health, events, registry, access, metrics, the ops dashboard at ``/ui`` and, with a scoring
service, scoring). The Serve ingress
(:mod:`sira.http.deployment`) mounts it in every replica; ``sira api`` runs it alone under uvicorn for
development. Errors always have the shape ``{"error": {"code", "message", "details"}}`` with a stable code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from sira import __version__
from sira.core import db
from sira.core.auth import JwtConfig
from sira.core.config import Settings, get_settings
from sira.features.engine import warm_current
from sira.http import access, errors, events, explanations, health, metrics, registry, reload, thresholds, ui
from sira.http import scoring as scoring_routes
from sira.http.deps import IdentityCache
from sira.http.middleware import BodySizeLimit
from sira.http.request_ids import RequestIds
from sira.ingest.bulk import redactor_for
from sira.monitoring.exporter import Exporter


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    app.state.pool = await db.create_pool(db.resolve_dsn(settings), settings)
    app.state.redactor = redactor_for(settings)
    app.state.pepper = settings.secret("auth_secret")
    app.state.jwt_config = JwtConfig.from_settings(settings)
    # POST /v1/events folds events into the feature engine's states: its kernels ready before the first batch,
    # which otherwise compiled or loaded them on the event loop (~25 s the first time on a machine, 1-2 s after)
    await asyncio.to_thread(warm_current)
    scoring = getattr(app.state, "scoring", None)
    try:
        if scoring is not None:
            await scoring.start()
        yield
    finally:
        if scoring is not None:
            await scoring.stop()
        await app.state.pool.close()


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
    app.state.exporter = Exporter()
    # API keys a serving replica has checked, kept as its serving config says (none for `sira api` alone)
    app.state.identities = IdentityCache(lambda: scoring.config) if scoring is not None else None
    app.add_middleware(BodySizeLimit, max_bytes=app.state.settings.max_body_bytes)
    app.add_middleware(RequestIds)  # outermost: the body limit's 413 carries the id too

    errors.install(app)
    if scoring is not None:  # first: a request is matched against the routes in order, and scoring is the hot path
        app.include_router(scoring_routes.router)
    app.include_router(health.router)
    app.include_router(events.router)
    app.include_router(registry.router)
    app.include_router(access.router)
    app.include_router(explanations.router)
    app.include_router(thresholds.router)
    app.include_router(metrics.router)
    app.include_router(reload.router)
    app.include_router(ui.router)  # the ops dashboard at /ui (sira/http/ui.py)
    return app
