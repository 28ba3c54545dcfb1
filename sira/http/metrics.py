"""``GET /metrics``: the series read from PostgreSQL, the same from every replica (:mod:`sira.monitoring.exporter`),
in Prometheus's text format. Reading them is reading models (``models.read``: a ``viewer`` key is enough), and
Prometheus scrapes with such a key (``authorization: {credentials_file: ...}`` in its scrape config)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from sira.core.auth import Identity
from sira.http.deps import errors, require
from sira.monitoring.exporter import CONTENT_TYPE, Exporter

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, responses={**errors(), 200: {"content": {CONTENT_TYPE: {}}}},
            summary="SIRA's series from the database, for Prometheus")
async def metrics(request: Request, who: Identity = require("models.read")) -> Response:
    exporter: Exporter = request.app.state.exporter
    return Response(await exporter.answer(request.app.state.pool), media_type=CONTENT_TYPE)
