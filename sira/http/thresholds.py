"""Decision thresholds over HTTP: what other thresholds would have done (``GET /v1/models/{name}/thresholds``),
a version's threshold sets, and a governed change of them: requested with a reason, approved or rejected as
a promotion is (sira.registry.thresholds), then swapped into serving without a reload."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from sira.core.auth import Identity
from sira.core.config import MAX_VERSION
from sira.core.errors import check_window_options
from sira.http.deps import PoolDep, StrictRoute, errors, in_transaction, require
from sira.http.deps import Version as VersionNumber
from sira.http.registry import add_decision_routes, announce
from sira.http.schemas import ThresholdChanged, ThresholdDecided, ThresholdSets, ThresholdWhatIf
from sira.ingest.events import UtcDatetime
from sira.monitoring import thresholds
from sira.registry import thresholds as registry_thresholds

router = APIRouter(route_class=StrictRoute, prefix="/v1", tags=["thresholds"])


class ThresholdChange(BaseModel):
    model_config = {"extra": "forbid"}

    review: Annotated[float, Field(ge=0, le=1, description="Scores at or above it go to a person")]
    block: Annotated[float, Field(ge=0, le=1, description="Scores at or above it are blocked (>= review)")]
    reason: Annotated[str, Field(min_length=1, max_length=2000)]
    days: Annotated[int | None, Field(ge=1, le=3650, description="Days of matured labels for the evidence, "
                                     "counted back from `to` (default 28; not with `from`)")] = None
    time_from: Annotated[UtcDatetime | None, Field(alias="from")] = None
    time_to: Annotated[UtcDatetime | None, Field(alias="to")] = None


@router.get("/models/{name}/thresholds", response_model=ThresholdWhatIf,
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}, **errors(404, 409)})
async def thresholds_what_if(name: str, pool: PoolDep, who: Identity = require("models.read"),
                             version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None,
                             days: Annotated[int | None, Query(ge=1, le=3650)] = None,
                             time_from: Annotated[UtcDatetime | None, Query(alias="from")] = None,
                             time_to: Annotated[UtcDatetime | None, Query(alias="to")] = None,
                             format: Literal["json", "html"] = "json") -> Any:  # noqa: A002 - the query's name
    """What other thresholds would have done on a labelled window (read-only); ``format=html``: a page with
    the chart of precision, recall and share flagged by threshold."""
    check_window_options(time_from, time_to, days, days_after_from=False)  # a window set once
    result = await in_transaction(pool, thresholds.what_if, who, name, version=version,
                                  days=thresholds.DEFAULT_DAYS if days is None else days,
                                  time_from=time_from, time_to=time_to)
    return HTMLResponse(thresholds.to_html(result)) if format == "html" else result


@router.get("/models/{name}/versions/{version}/thresholds", response_model=ThresholdSets, responses=errors(404))
async def threshold_sets(name: str, version: VersionNumber, pool: PoolDep,
                         who: Identity = require("models.read")) -> dict[str, Any]:
    """The version's threshold sets, newest first: the active one, pending, superseded and rejected, with
    who asked, why, on what evidence and who decided."""
    return await in_transaction(pool, registry_thresholds.history, who, name, version)


@router.post("/models/{name}/versions/{version}/thresholds", status_code=201, response_model=ThresholdChanged,
             responses=errors(404, 409, body=True))
async def request_thresholds(name: str, version: VersionNumber, body: ThresholdChange, request: Request,
                             pool: PoolDep, background: BackgroundTasks,
                             who: Identity = require("promotion.request")) -> dict[str, Any]:
    """Ask for new review/block thresholds: pending until the model's required approvals (active at once
    when it requires none), with the what-if at these values as the approvers' evidence."""
    check_window_options(body.time_from, body.time_to, body.days, days_after_from=False)
    result = await in_transaction(pool, thresholds.apply, who, name, version, review=body.review, block=body.block,
                                  reason=body.reason, days=thresholds.DEFAULT_DAYS if body.days is None else body.days,
                                  time_from=body.time_from, time_to=body.time_to)
    announce(background, request)
    return result


add_decision_routes(router, "thresholds/", registry_thresholds.decide_change, ThresholdDecided,
                    "threshold change")
