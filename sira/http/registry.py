"""The registry over HTTP: models, versions, promotion, approvals, rollback, history, and the latest drift and
performance reports, each behind its role. Changes announce themselves by webhooks after the response."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from sira.core.auth import Identity
from sira.core.config import MAX_VERSION
from sira.http.deps import PoolDep, StrictRoute, errors, in_transaction, require
from sira.http.deps import Version as VersionNumber
from sira.http.schemas import (
    ApprovalQueue,
    Comparison,
    Decided,
    DriftHistory,
    History,
    Insights,
    Model,
    ModelDetail,
    ModelOverviewList,
    MonitoringReport,
    PerformanceHistory,
    PromotionRequested,
    RolledBack,
    Staged,
    Traffic,
    Version,
)
from sira.registry import models as registry
from sira.registry import receivers, views

router = APIRouter(route_class=StrictRoute, prefix="/v1", tags=["registry"])


class ModelUpdate(BaseModel):
    """A model's settings that may change after it is created: every one `sira models create|update` sets
    (:data:`sira.registry.settings.MODEL_SETTINGS`); an unknown field is refused (422 unknown_field), never
    dropped."""

    model_config = ConfigDict(extra="forbid")

    display_name: str | None = None
    description: str | None = None
    owner: str | None = None
    label_name: str | None = Field(None, description="The label its training and monitoring read (default fraud)")
    label_maturity_days: Annotated[int, Field(ge=0, le=3650)] | None = None
    feature_set_version: Annotated[int, Field(ge=1)] | None = Field(
        None, description="The version of its feature set its next versions train on (`sira models update "
        "--feature-set NAME@VERSION`); versions already registered keep theirs")
    required_approvals: Annotated[int, Field(ge=0, le=20)] | None = None
    decision_targets: dict[str, float] | None = None
    promotion_policy: dict[str, Any] | None = None
    notify: Annotated[list[Annotated[str, Field(pattern=receivers.NAME.pattern)]], Field(max_length=10)] | None \
        = Field(None, description="Receivers told of its governance events (names from SIRA_NOTIFY_RECEIVERS_FILE)")


class ModelCreate(ModelUpdate):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
    model_type: Literal["fraud_detection", "churn", "anomaly"] = "fraud_detection"
    entity_type: str = "customer"


# Every governance body refuses a field it does not take (422 unknown_field), as ModelUpdate does: a misspelt
# "reasons" or "coment" was dropped, the request granted, and the audit log kept no reason.
class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=2000)] | None = None


def _said(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("missing_field", "a rollback needs one")
    return value


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, BeforeValidator(_said), Field(
        min_length=1, max_length=2000, description="Why production steps back (missing or blank: 422 missing_field)")]
    expected_version: Annotated[int, Field(
        ge=1, le=MAX_VERSION, description="The production version this rollback replaces, as the caller read it: "
        "refused with 409 production_moved when production changed since (two rollbacks never undo each other).")]


class Comment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: Annotated[str, Field(max_length=2000)] | None = None


_READ = ("as the approver read it: refused with 409 request_closed unless it is still the pending one (a new "
         "request for the same version is never decided unread). Optional: without it, whichever is pending.")


class PromotionDecision(Comment):
    request_id: Annotated[int, Field(ge=1, le=2**63 - 1, description=f"The promotion request decided, {_READ}")] \
        | None = None


class ThresholdDecision(Comment):
    set_id: Annotated[int, Field(ge=1, le=2**63 - 1, description=f"The threshold change (set) decided, {_READ}")] \
        | None = None


def announce(background: BackgroundTasks, request: Request) -> None:
    """Deliver webhooks after the response (failures are retried by `sira webhooks deliver`)."""
    from sira.registry import webhooks

    background.add_task(webhooks.deliver_due, request.app.state.pool, request.app.state.settings)


@router.get("/models", response_model=ModelOverviewList, responses=errors())
async def models_list(pool: PoolDep, who: Identity = require("models.read")) -> dict[str, Any]:
    """Every model: its versions, production's live AP against its training AP, drift, the last retraining."""
    return {"models": await in_transaction(pool, views.models_overview, who)}

@router.get("/approvals", response_model=ApprovalQueue, responses=errors())
async def approvals(pool: PoolDep, who: Identity = require("models.read")) -> dict[str, Any]:
    """The pending promotion requests and threshold changes, oldest first, with the evidence to decide and
    whether the caller may."""
    return await in_transaction(pool, views.approvals, who)

@router.post("/models", status_code=201, response_model=Model, responses=errors(409, body=True))
async def models_create(body: ModelCreate, pool: PoolDep, who: Identity = require("models.write")) -> dict[str, Any]:
    fields = body.model_dump(exclude={"name", "model_type", "entity_type"}, exclude_none=True)
    return await in_transaction(pool, registry.create_model, who, body.name, model_type=body.model_type,
                      entity_type=body.entity_type, **fields)

@router.get("/models/{name}", response_model=ModelDetail, responses=errors(404))
async def models_show(name: str, pool: PoolDep, who: Identity = require("models.read")) -> dict[str, Any]:
    return await in_transaction(pool, registry.show_model, who, name)

@router.patch("/models/{name}", response_model=Model, responses=errors(404, body=True))
async def models_update(name: str, body: ModelUpdate, pool: PoolDep,
                        who: Identity = require("models.settings")) -> dict[str, Any]:
    return await in_transaction(pool, registry.update_model, who, name, **body.model_dump(exclude_none=True))

@router.get("/models/{name}/versions/{version}", response_model=Version, responses=errors(404))
async def versions_show(name: str, version: VersionNumber, pool: PoolDep,
                        who: Identity = require("models.read")) -> dict[str, Any]:
    return await in_transaction(pool, registry.show_version, who, name, version)

@router.get("/models/{name}/versions/{version}/insights", response_model=Insights, responses=errors(404, 409))
async def versions_insights(name: str, version: VersionNumber, request: Request, pool: PoolDep,
                            who: Identity = require("models.read")) -> dict[str, Any]:
    """Global feature importance (mean |SHAP|) and lineage, from the verified artifact (409 when tampered)."""
    return await in_transaction(pool, views.insights, request.app.state.settings, who, name, version)

card_types = {"text/html": {"schema": {"type": "string"}}, "text/markdown": {"schema": {"type": "string"}}}

# Response (no media type of its own): the errors are documented as the JSON they are, not as HTML
@router.get("/models/{name}/versions/{version}/card", response_class=Response,
            responses={200: {"description": "The model card", "content": card_types},
                       **errors(404, 409)})  # 409: an artifact that fails its checksum
async def versions_card(name: str, version: VersionNumber, request: Request, pool: PoolDep,
                        format: Annotated[Literal["md", "html"], Query()] = "html",  # noqa: A002
                        who: Identity = require("models.read")) -> Any:
    from sira.registry.card import render_card

    text = await in_transaction(pool, render_card, request.app.state.settings, who, name, version, format)
    return HTMLResponse(text) if format == "html" else PlainTextResponse(text, media_type="text/markdown")

@router.get("/models/{name}/compare", response_model=Comparison, responses=errors(404))
async def versions_compare(name: str, pool: PoolDep, a: Annotated[int, Query(ge=1, le=MAX_VERSION)],
                           b: Annotated[int, Query(ge=1, le=MAX_VERSION)], who: Identity = require("models.read")) -> dict[str, Any]:
    """Two versions' metrics side by side; a version against itself is refused (422 invalid_value: its columns
    were one, its differences all zero)."""
    from sira.core.errors import InvalidInput

    if a == b:
        raise InvalidInput(f"compare two different versions (a and b are both {a})", code="invalid_value",
                           details={"field": "b"})
    return await in_transaction(pool, registry.compare_versions, who, name, a, b)

@router.post("/models/{name}/versions/{version}/promote", status_code=201, response_model=PromotionRequested,
             responses=errors(404, 409, body=True))
async def promote(name: str, version: VersionNumber, body: Reason, request: Request, pool: PoolDep,
                  background: BackgroundTasks, who: Identity = require("promotion.request")) -> dict[str, Any]:
    result = await in_transaction(pool, registry.request_promotion, request.app.state.settings, who, name, version,
                        body.reason)
    announce(background, request)
    return result

@router.post("/models/{name}/versions/{version}/stage", response_model=Staged, responses=errors(404, 409, body=True))
async def stage(name: str, version: VersionNumber, body: Reason, request: Request, pool: PoolDep,
                background: BackgroundTasks, who: Identity = require("promotion.request")) -> dict[str, Any]:
    """Put a version in staging: serving scores it in shadow beside production."""
    result = await in_transaction(pool, registry.stage_version, request.app.state.settings, who, name, version, body.reason)
    announce(background, request)
    return result

def add_decision_routes(target: APIRouter, tail: str, decide: Any, response_model: Any, what: str) -> None:
    """``POST /models/{name}/versions/{version}/{tail}approve|reject``: an approver's decision on a pending
    ``what``, by ``decide(conn, identity, name, version, decision, comment, <id>)``, announced by webhook; the
    body names the request read by the id ``decide`` takes (``set_id``: a threshold change, else
    ``request_id``). One literal path per decision: a ``{decision}`` parameter also caught POST …/card (422,
    not 405)."""
    import inspect

    body_model, key = ((ThresholdDecision, "set_id") if "set_id" in inspect.signature(decide).parameters
                       else (PromotionDecision, "request_id"))

    def route(decision: Literal["approve", "reject"]) -> Any:
        async def decided(name: str, version: VersionNumber, body: Comment, request: Request, pool: PoolDep,
                          background: BackgroundTasks, who: Identity = require("promotion.decide")) -> dict[str, Any]:
            result = await in_transaction(pool, decide, who, name, version, decision, body.comment,
                                          getattr(body, key))
            announce(background, request)
            return result

        decided.__annotations__["body"] = body_model  # the body this decision takes (annotations are strings here)
        return decided

    for decision in ("approve", "reject"):
        target.add_api_route(f"/models/{{name}}/versions/{{version}}/{tail}{decision}", route(decision),
                             methods=["POST"], name=f"{tail.strip('/') or 'versions'}_{decision}",
                             response_model=response_model, responses=errors(404, 409, body=True),
                             summary=f"{decision.capitalize()} the version's pending {what}")


add_decision_routes(router, "", registry.decide, Decided, "promotion request")

@router.post("/models/{name}/rollback", response_model=RolledBack, responses=errors(404, 409, body=True))
async def rollback(name: str, body: RollbackRequest, request: Request, pool: PoolDep, background: BackgroundTasks,
                   who: Identity = require("rollback")) -> dict[str, Any]:
    result = await in_transaction(pool, registry.rollback, who, name, body.reason, body.expected_version)
    announce(background, request)
    return result

@router.get("/models/{name}/history", response_model=History, responses=errors(404))
async def history(name: str, pool: PoolDep, who: Identity = require("models.read")) -> dict[str, Any]:
    """Every change of the production pointer, the production version now and the version a rollback would
    restore (``sira history --json`` answers the same)."""
    from sira.registry.history import history as read

    return await in_transaction(pool, read, who, name)

@router.get("/models/{name}/drift", response_model=MonitoringReport, responses=errors(404))
async def drift(name: str, pool: PoolDep, who: Identity = require("models.read"),
                version: Annotated[int | None, Query(ge=1, le=MAX_VERSION)] = None) -> dict[str, Any]:
    from sira.monitoring.drift import latest_drift

    return await in_transaction(pool, latest_drift, name, version)

@router.get("/models/{name}/performance", response_model=MonitoringReport, responses=errors(404))
async def performance(name: str, pool: PoolDep, who: Identity = require("models.read")) -> dict[str, Any]:
    from sira.monitoring.performance import latest_performance

    return await in_transaction(pool, latest_performance, name)

@router.get("/models/{name}/drift/history", response_model=DriftHistory, responses=errors(404))
async def drift_history(name: str, pool: PoolDep, who: Identity = require("models.read"),
                        days: Annotated[int, Query(ge=1, le=366)] = 90) -> dict[str, Any]:
    """Every drift run of the last ``days``: its verdict and PSI by feature (the dashboard's heat map)."""
    from sira.monitoring import history as monitoring

    return await in_transaction(pool, monitoring.drift_history, who, name, days)

@router.get("/models/{name}/performance/history", response_model=PerformanceHistory, responses=errors(404))
async def performance_history(name: str, pool: PoolDep, who: Identity = require("models.read"),
                              days: Annotated[int, Query(ge=1, le=366)] = 90) -> dict[str, Any]:
    """Every live-performance window of the last ``days``, production and shadow."""
    from sira.monitoring import history as monitoring

    return await in_transaction(pool, monitoring.performance_history, who, name, days)

@router.get("/models/{name}/traffic", response_model=Traffic, responses=errors(404))
async def traffic(name: str, pool: PoolDep, who: Identity = require("models.read"),
                  minutes: Annotated[int, Query(ge=1, le=1440)] = 60) -> dict[str, Any]:
    """Production's answers per minute over the last ``minutes``: decisions, degraded, latency percentiles."""
    from sira.monitoring import history as monitoring

    return await in_transaction(pool, monitoring.traffic, who, name, minutes)
