"""What every route shares: the error body, the acting identity and its roles (``require``), the
database pool, a page's cursor, the OpenAPI description of a route's errors and credentials, and the route
class (:class:`StrictRoute`: a query parameter no route declares is refused, credentials checked first)."""

from __future__ import annotations

import dataclasses
import functools
import secrets
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timezone
from email.message import Message
from typing import Annotated, Any, ClassVar

import asyncpg
from fastapi import Depends, Path, Query, Request, Response, Security
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import get_route_path

from sira.core import db
from sira.core.auth import Identity, authenticate, authorize, identity_from_jwt, is_jwt
from sira.core.config import MAX_VERSION
from sira.core.errors import InvalidInput, PermissionDenied, ServiceUnavailable, Unauthenticated
from sira.ingest.pii import Redactor
from sira.serving.resilience import LRU

Version = Annotated[int, Path(ge=1, le=MAX_VERSION)]
MAX_LISTED = 10  # unknown fields or parameters a refusal names (the count says how many there were)
# A page's cursor (/v1/audit, /v1/events/rejected): an entry's id, as the last page's next_before gave it. Any
# refusal of it is 422 invalid_cursor naming it (sira.http.errors), whatever pydantic found wrong.
CURSOR = "before"
Cursor = Annotated[int | None, Query(alias=CURSOR, ge=1, le=2**63 - 1, description=(
    "An entry's id: only older entries (the next page: the last answer's next_before)"))]
# The credentials every /v1 route asks for, declared to OpenAPI as one bearer scheme (its document's Authorize
# button); an API key or, with SIRA_JWT_ISSUER set, a JWT. Never refuses by itself: a missing or invalid
# credential is refused by current_identity (401 unauthenticated, `WWW-Authenticate: Bearer`).
bearer = HTTPBearer(scheme_name="bearer", auto_error=False, description=(
    "An API key (`sira keys create`) or, when SIRA_JWT_ISSUER is set, a JWT of the identity service"))


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorResponse(BaseModel):
    error: ErrorBody


async def get_pool(request: Request) -> asyncpg.Pool:
    # async: FastAPI runs a sync dependency in a worker thread (measured ~1 ms per request under Serve)
    return request.app.state.pool


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]


class IdentityCache:
    """API keys a serving replica has checked, for ``auth_cache_ttl_s`` of its serving config (read at each
    use: a reconfigure applies at once); while PostgreSQL is away, a key checked within
    ``auth_outage_grace_s`` still admits its caller. A key PostgreSQL says is revoked leaves it at once; one
    whose expiry (:attr:`Identity.expires_at`) has passed is never answered from it, not even in an outage
    (until 2026-12-07 an expired key kept working for up to the cache's time)."""

    def __init__(self, config: Callable[[], Any]):
        self.config = config
        self.lru = LRU(10_000, config().auth_cache_ttl_s)

    @property
    def enabled(self) -> bool:
        return self.config().auth_cache_ttl_s > 0

    def get(self, key: str, *, outage: bool = False) -> Identity | None:
        config = self.config()
        self.lru.ttl_s = config.auth_cache_ttl_s
        identity: Identity | None = self.lru.get(key, stale_for=config.auth_outage_grace_s if outage else 0.0)
        if identity is not None and identity.expires_at is not None and identity.expires_at <= datetime.now(timezone.utc):
            self.lru.pop(key)  # expired: PostgreSQL answers (401)
            return None
        return identity

    def put(self, key: str, identity: Identity) -> None:
        self.lru.ttl_s = self.config().auth_cache_ttl_s
        self.lru.put(key, identity)

    def forget(self, key: str) -> None:
        self.lru.pop(key)


async def get_identities(request: Request) -> IdentityCache | None:
    return request.app.state.identities


IdentitiesDep = Annotated[IdentityCache | None, Depends(get_identities)]


async def current_identity(request: Request, pool: PoolDep, identities: IdentitiesDep,
                           credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
                           ) -> Identity:
    """The caller behind ``Authorization: Bearer <key>`` (401 when missing or invalid); the one
    :class:`StrictRoute` found before it read the request's body, when it did."""
    checked = request.scope.get(CHECKED_IDENTITY)
    if checked is not None:
        return checked
    key = credentials.credentials if credentials is not None else None
    cache = identities if identities is not None and identities.enabled and key else None
    identity = cache.get(key) if cache is not None else None
    if identity is None and key and is_jwt(key, request.app.state.jwt_config):
        identity = identity_from_jwt(key, request.app.state.jwt_config)  # verified here: no database needed
    elif identity is None:
        timeout = identities.config().db_timeout_s if identities is not None else None
        try:
            async with pool.acquire(timeout=timeout) as conn:
                identity = await authenticate(conn, key, pepper=request.app.state.pepper,
                                              jwt_config=request.app.state.jwt_config)
        except Unauthenticated:
            if cache is not None:
                cache.forget(key)  # revoked or expired: never again, not even from the cache in an outage
            raise
        except db.UNAVAILABLE as exc:
            # A serving replica keeps answering callers it knew shortly before while Postgres is away.
            identity = cache.get(key, outage=True) if cache is not None else None
            if identity is None:
                raise ServiceUnavailable(f"cannot check credentials: the database is unavailable "
                                         f"({type(exc).__name__})", code="database_unavailable") from None
        else:
            if cache is not None:
                cache.put(key, identity)
    # the peer's address, or the client a proxy named in SIRA_TRUSTED_PROXIES forwarded for (the server, `sira
    # api`'s uvicorn or a Serve replica's, believes X-Forwarded-For from those only: sira.cli.serve, SiraIngress)
    return dataclasses.replace(identity, source_address=request.client.host if request.client else None)


async def in_transaction(pool: asyncpg.Pool, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """``fn(conn, *args, **kwargs)`` in one transaction: a route's unit of work (a refusal raised inside it is
    audited after the rollback: :func:`sira.core.db.transaction`)."""
    async with db.transaction(pool) as conn:
        return await fn(conn, *args, **kwargs)


async def admit(request: Request, identity: Identity, action: str) -> Identity:
    """``identity`` when its roles allow ``action``; a refusal is audited (403)."""
    try:
        authorize(identity, action)
    except PermissionDenied as exc:
        await exc.write_denial(request.app.state.pool)
        raise
    return identity


class Require:
    """The dependency :func:`require` makes: it admits only identities allowed to perform ``action``."""

    def __init__(self, action: str):
        self.action = action

    async def __call__(self, request: Request, identity: Annotated[Identity, Depends(current_identity)]) -> Identity:
        return await admit(request, identity, self.action)


def require(action: str) -> Any:
    """A dependency that admits only identities allowed to perform ``action`` (403 otherwise)."""
    return Depends(Require(action))


# where StrictRoute keeps the identity it checked before the body was read, for the route's own dependency
CHECKED_IDENTITY = "sira.identity"


async def identified(request: Request) -> Identity:
    """:func:`current_identity` called directly (no dependency solving); the identity is kept in the request's
    scope (:data:`CHECKED_IDENTITY`): the route's :func:`current_identity` answers it without checking again."""
    identity = await current_identity(request, request.app.state.pool, request.app.state.identities,
                                      await bearer(request))
    request.scope[CHECKED_IDENTITY] = identity
    return identity


async def authorized(request: Request, action: str) -> Identity:
    """:func:`require`'s check called directly, for a :mod:`sira.http.direct` route (no dependency solving)."""
    return await admit(request, await identified(request), action)


def is_json(content_type: str) -> bool:
    """Whether a ``Content-Type`` names JSON (``application/json``, ``application/*+json``, with any parameters):
    FastAPI's rule for parsing a body, applied by the direct routes too (text/json was parsed on /v1/score only)."""
    if not content_type:
        return False
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def errors(*statuses: int, body: bool = False) -> dict[int | str, dict[str, Any]]:
    """The error answers a route declares: 401, 403, 422 and 503 (credentials, role, input, database)
    that every route behind a key can give, 400 and 413 (a body that cannot be parsed, one too large)
    with a ``body``, and ``statuses`` (404, 409) it can give besides."""
    common = {401, 403, 422, 503} | ({400, 413} if body else set())
    return {status: {"model": ErrorResponse} for status in sorted(common | set(statuses))}


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    # a refusal may quote the caller's input or name a person's prediction: no cache keeps it either
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message, "details": details or {}}},
                        headers={"cache-control": "no-store", **(headers or {})})


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at the request's path (Starlette's 405 names only the first route's)."""
    path = get_route_path(request.scope)
    allowed: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        if route.methods and route.path_regex is not None and route.path_regex.match(path):
            allowed |= route.methods
    return sorted(allowed)


def redactor_of(request: Request) -> Redactor:
    """The application's redactor (its tokens are those the dead letters hold), or, for an application built
    without one (a test's), one of a random key: a name is never answered as sent either way."""
    return getattr(request.app.state, "redactor", None) or _ephemeral_redactor()


@functools.cache
def _ephemeral_redactor() -> Redactor:
    return Redactor(secrets.token_bytes(32))


Handler = Callable[[Request], Awaitable[Response]]


class StrictRoute(APIRoute):
    """The route class of every API route (each router's ``route_class``): a query parameter the route does not
    declare is refused, and the credentials are checked before anything the request says is judged.

    A misspelt query parameter was ignored: ``GET /v1/audit?actr=adm`` answered the whole log, ``?fmt=md`` on
    a card the HTML one, each answer looking like the one asked for. The request's query is compared with the
    parameters the endpoint and its dependencies declare (what OpenAPI lists); the others are refused, 422
    ``unknown_field`` as an unknown body field is: ``details.unknown`` names them, ``details.accepted`` lists
    what the route takes.

    Order: missing or wrong credentials are 401, the wrong role 403, before the query or the body is judged.
    FastAPI validates both after the dependencies (the credentials) but reads and parses the body before them,
    on the event loop: an anonymous caller's body of megabytes took seconds to parse before its 401, stalling
    every other request (until 2026-12-07). A route that takes a body runs its own credentials check
    (:func:`credentials_check`) before FastAPI's handler reads a byte of it; the identity it found is the
    route's (:data:`CHECKED_IDENTITY`). An unknown query parameter is refused after the same check.

    The web UI's static files (``/ui``, :mod:`sira.http.ui`) are files, not API operations: their router keeps
    FastAPI's plain route, and a page or an asset is served whatever query a link carries."""

    # The handler checks the credentials before it reads the body (sira.http.direct): nothing to check again.
    credentials_before_body: ClassVar[bool] = False

    def get_route_handler(self) -> Handler:
        handler = self.answering_handler()
        accepted = declared_query(self.dependant)
        known = frozenset(accepted)
        credentials = credentials_check(self.dependant)
        # FastAPI's handler reads the body before the dependencies run: check the credentials first
        check_before_body = bool(self.dependant.body_params) and not self.credentials_before_body
        check_after_body = not self.credentials_before_body and not check_before_body

        async def strict(request: Request) -> Response:
            if request.scope.get("query_string"):  # most requests have none: nothing to look at
                unknown = list(dict.fromkeys(k for k in request.query_params.keys() if k not in known))
                if unknown:
                    await credentials(request)
                    raise unknown_parameters(request, unknown, accepted)
            if check_before_body:
                await credentials(request)  # 401/403 with the body unread
            try:
                response = await handler(request)
            except (RequestValidationError, HTTPException) as exc:
                if check_after_body and unreadable_body(exc):
                    await credentials(request)  # 401/403 when they fail; else the body's own refusal
                raise
            # an API answer may carry a key (POST /v1/keys), a score or a person's data: no cache keeps it
            if "cache-control" not in response.headers:
                response.headers["cache-control"] = "no-store"
            return response

        return strict

    def answering_handler(self) -> Handler:
        """What answers a request once its query is known to be declared (FastAPI's own handler)."""
        return super().get_route_handler()


def unknown_parameters(request: Request, unknown: list[str], accepted: list[str]) -> InvalidInput:
    """The refusal of ``unknown`` query parameters, named as a body's unknown fields are (redacted, a few)."""
    redactor = redactor_of(request)
    named = [redactor.scrub_value(name) for name in unknown[:MAX_LISTED]]
    more = f" and {len(unknown) - len(named)} more" if len(unknown) > len(named) else ""
    takes = f"this request accepts: {', '.join(accepted)}" if accepted else "this request takes no query parameters"
    return InvalidInput(f"unknown query parameter(s) {', '.join(named)}{more}; {takes}", code="unknown_field",
                        details={"field": named[0], "unknown": named, "unknown_count": len(unknown),
                                 "accepted": accepted})


def unreadable_body(exc: Exception) -> bool:
    """FastAPI's refusals of a body it could not parse (JSON that is not, bytes that are not UTF-8): raised
    before the dependencies ran."""
    if isinstance(exc, RequestValidationError):
        found = exc.errors()
        return bool(found) and found[0].get("type") == "json_invalid"
    return isinstance(exc, HTTPException) and exc.status_code == 400


def declared_query(dependant: Dependant) -> list[str]:
    """The query parameters a route declares (its endpoint's and its dependencies'), by the names sent."""
    found = [*dependant.query_params, *(p for sub in _dependants(dependant) for p in sub.query_params)]
    return list(dict.fromkeys(p.alias for p in found))


def credentials_check(dependant: Dependant) -> Callable[[Request], Awaitable[Any]]:
    """The route's credentials check, called on its own: its :class:`Require` (the role), or
    :func:`current_identity` (credentials only), or nothing (an open route: /healthz, /metrics)."""
    calls = [sub.call for sub in _dependants(dependant)]
    action = next((call.action for call in calls if isinstance(call, Require)), None)
    if action is not None:
        return lambda request: authorized(request, action)
    if current_identity in calls:
        return identified
    return _open


async def _open(_request: Request) -> None:
    return None


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from _dependants(sub)
