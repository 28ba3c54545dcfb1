"""``POST /v1/serving/reload`` (``serving.reload``: operator, admin): every serving replica re-reads the registry
now, told by a notification on the registry's channel (:func:`sira.serving.notifications.request_reload`); the
replica that answers re-reads it before answering and says what it serves then. Audited (``serving.reload``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sira.core.auth import Identity
from sira.http.deps import PoolDep, StrictRoute, errors, in_transaction, require
from sira.http.schemas import ServingReloaded
from sira.serving.notifications import request_reload

router = APIRouter(route_class=StrictRoute, prefix="/v1", tags=["serving"])


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=2000)] | None = None


@router.post("/serving/reload", response_model=ServingReloaded, responses=errors(body=True))
async def serving_reload(request: Request, pool: PoolDep, body: ReloadRequest | None = None,
                         who: Identity = require("serving.reload")) -> dict[str, Any]:
    """Every replica re-reads the registry now (each also polls it, and hears of its changes as they commit):
    after a replica was left on an old version, or to make sure before a test. ``serving``: what this replica
    serves after re-reading it (null when this process does not score)."""
    await in_transaction(pool, request_reload, who, body.reason if body else None)
    scoring = request.app.state.scoring
    return {"notified": True, "serving": await scoring.reload() if scoring is not None else None}
