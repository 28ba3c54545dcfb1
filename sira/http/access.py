"""Access over HTTP: the audit log and API keys (admin)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from sira.core.auth import PERMISSIONS, ROLES, Identity, create_key, list_keys, may, parse_expiry, revoke_key
from sira.http.deps import Cursor, PoolDep, StrictRoute, current_identity, errors, in_transaction, require
from sira.http.schemas import AuditLog, KeyCreated, KeyList, KeyRevoked, Me
from sira.registry import models as registry

router = APIRouter(route_class=StrictRoute, prefix="/v1", tags=["access"])


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field (an expiry) is refused, never ignored

    # what sira_api_keys' CHECK takes (sql/005): a name it refuses was 422 invalid_input naming no field
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$", max_length=100)
    roles: list[Literal[ROLES]] = Field(..., min_length=1)  # type: ignore[valid-type] - the tuple's names
    expires: str | None = Field(None, max_length=100, validation_alias=AliasChoices("expires", "expires_at"),
                                description="When the key stops working, ISO 8601 as `sira keys create --expires` "
                                "takes it (2030-01-31, 2030-01-31T18:00:00Z, ...+02:00; no offset: UTC); not in "
                                "the past. Also accepted as `expires_at`, the name GET /v1/keys answers with.")


@router.get("/me", response_model=Me, responses=errors())
async def me(who: Annotated[Identity, Depends(current_identity)]) -> dict[str, Any]:
    """Who the credentials are, and what their roles allow (any valid key or token): what a client shows."""
    return {"name": who.name, "kind": who.kind, "roles": sorted(who.roles),
            "may": {action: may(who, action) for action in sorted(PERMISSIONS)}}

@router.get("/audit", response_model=AuditLog, responses=errors())
async def audit_log(pool: PoolDep, who: Identity = require("audit.read"), target: str | None = None,
                    actor: str | None = None, action: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
                    before: Cursor = None) -> dict[str, Any]:
    """The audit log, newest first, a page of ``limit`` entries; ``next_before`` is the cursor of the older
    ones, null when none is left (the page is not cut)."""
    rows = await in_transaction(pool, registry.read_audit, who, target=target, actor=actor, action=action,
                                limit=limit + 1, before=before)  # one more than asked: whether the page is cut
    return {"entries": rows[:limit], "next_before": rows[limit - 1]["id"] if len(rows) > limit else None}

@router.post("/keys", status_code=201, response_model=KeyCreated, responses=errors(409, body=True))
async def keys_create(body: KeyCreate, request: Request, pool: PoolDep,
                      who: Identity = require("keys.manage")) -> dict[str, Any]:
    expires_at = parse_expiry(body.expires, label="expires") if body.expires is not None else None
    key, info = await in_transaction(pool, create_key, name=body.name, roles=body.roles, pepper=request.app.state.pepper,
                                     creator=who, expires_at=expires_at)
    return {"name": info["name"], "roles": info["roles"], "key": key}

@router.get("/keys", response_model=KeyList, responses=errors())
async def keys_list(pool: PoolDep, who: Identity = require("keys.manage")) -> dict[str, Any]:
    return {"keys": await in_transaction(pool, list_keys, who)}

@router.delete("/keys/{name}", response_model=KeyRevoked, responses=errors(404, 409))
async def keys_revoke(name: str, pool: PoolDep, who: Identity = require("keys.manage")) -> dict[str, Any]:
    await in_transaction(pool, revoke_key, who, name)
    return {"revoked": name}
