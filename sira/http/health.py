"""``/healthz`` (alive) and ``/readyz`` (database reachable, schema current, served models loadable), to GET or
HEAD (load balancers check with HEAD: it was 405)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from sira import __version__
from sira.core import migrations
from sira.core.errors import ServiceUnavailable
from sira.http.deps import ErrorResponse, PoolDep, StrictRoute

router = APIRouter(route_class=StrictRoute, tags=["health"])
# open routes take no query either: an unknown parameter is 422 unknown_field here too (StrictRoute)
QUERY_REFUSED = {422: {"model": ErrorResponse}}


class Health(BaseModel):
    status: str
    version: str
    checks: dict[str, str] = {}


# HEAD too (load balancers check with it): the same status, no body; no operation of its own in OpenAPI
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", response_model=Health, responses=QUERY_REFUSED)
async def healthz() -> Health:
    return Health(status="ok", version=__version__)

@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", response_model=Health, responses={**QUERY_REFUSED, 503: {"model": ErrorResponse}})
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
