"""Explanation reports over HTTP: ``GET /v1/predictions/{id}/explanation`` (sira.monitoring.explanation)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from sira.core.auth import Identity
from sira.http.deps import PoolDep, StrictRoute, admit, current_identity, errors, in_transaction

router = APIRouter(route_class=StrictRoute, prefix="/v1", tags=["predictions"])
report_types = {"application/json": {}, "text/markdown": {"schema": {"type": "string"}},
                "text/html": {"schema": {"type": "string"}}}


@router.get("/predictions/{prediction_id}/explanation", response_class=Response,
            responses={200: {"description": "The explanation report", "content": report_types}, **errors(404, 409)})
async def explanation(prediction_id: uuid.UUID, request: Request, pool: PoolDep,
                      who: Annotated[Identity, Depends(current_identity)],
                      format: Annotated[Literal["json", "md", "html"], Query()] = "json") -> Any:  # noqa: A002
    """One decision explained: factors ranked by their exact TreeSHAP contribution, the person's values
    against typical ranges, data used, human review (analyst: the whole report; a service key: the
    plain-language summary, for the product to show its customer). Audited."""
    from sira.core.artifacts import json_finite
    from sira.monitoring.explanation import explain_prediction, report_action, to_html, to_markdown

    await admit(request, who, report_action(who))
    report = await in_transaction(pool, explain_prediction, request.app.state.settings, who,
                                  str(prediction_id))
    if format == "md":
        return PlainTextResponse(to_markdown(report), media_type="text/markdown")
    if format == "html":
        return HTMLResponse(to_html(report))
    return JSONResponse(json_finite(report))
