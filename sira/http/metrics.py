"""``GET /metrics``: the series read from PostgreSQL, the same from every replica (:mod:`sira.monitoring.exporter`),
in Prometheus's text format. Open without a key, as ``/healthz`` is (CONVENTIONS): the series carry model names,
versions, feature names, roles, source kinds, counts and times, no personal data; a key sent is ignored (a
Prometheus configured with one keeps working). A scrape is cheap whoever sends it: the exporter reads the
database at most once per ``cache_s`` (5 s), concurrent scrapes sharing that read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from sira.http.deps import StrictRoute, errors
from sira.monitoring.exporter import CONTENT_TYPE, Exporter

router = APIRouter(route_class=StrictRoute, tags=["health"])


# declared by its media type (a Content-Type's parameters are no part of one: validators found text/plain
# undeclared); the parameters are the format's version, said in the description
@router.get("/metrics", response_class=Response, summary="SIRA's series from the database, for Prometheus (open "
            "without a key)", responses={422: errors()[422], 503: errors()[503], 200: {
                "description": f"Prometheus's text format (Content-Type: {CONTENT_TYPE})",
                "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(request: Request, names: Annotated[list[str] | None, Query(
        alias="name[]", description="Prometheus's `name[]` (a scrape job's `params`, as a federation job "
        "sends): accepted and ignored, every series is answered")] = None) -> Response:
    # declared, so that a scrape job with params is not refused 422 unknown_field (until 2026-12-07 it was:
    # its target down); any other unknown parameter still is (StrictRoute)
    exporter: Exporter = request.app.state.exporter
    return Response(await exporter.answer(request.app.state.pool), media_type=CONTENT_TYPE)
