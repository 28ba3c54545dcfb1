"""Every error in SIRA's shape, ``{"error": {"code", "message", "details"}}`` with a stable code: SIRA's own,
routing's (404, 405), PostgreSQL's refusals (422) and absence (503), request validation (400, 422), and
any other exception (500 ``internal``: logged with its traceback, its text never answered).

A request's field names are the sender's data (an e-mail address can be one): a validation error names at most
:data:`MAX_LISTED` of them, redacted as a dead letter's are."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sira.core import db
from sira.core.errors import SiraError
from sira.http.deps import CURSOR, MAX_LISTED, allowed_methods, error_response, is_json, redactor_of
from sira.ingest.events import FIELD_CODES, MISSING_CODES
from sira.ingest.pii import Redactor

log = logging.getLogger(__name__)
# Codes of the request models' own validators in sira.http: their pydantic error's type is the code
REQUEST_CODES = ("missing_field",)  # a blank rollback reason, as a missing one


def counted(handler: Callable[[Request, Any], Awaitable[JSONResponse]]) -> Callable[[Request, Any], Awaitable[JSONResponse]]:
    """``handler``, its error answers counted in a serving replica's metrics (``ray_sira_errors_total``, by the
    route's path, the error code and the status): only error answers pay for it."""
    async def answer(request: Request, exc: Any) -> JSONResponse:
        response = await handler(request, exc)
        scoring = getattr(request.app.state, "scoring", None)
        if scoring is not None and scoring.metrics is not None:
            route = getattr(request.scope.get("route"), "path", "unmatched")
            code = orjson.loads(response.body)["error"]["code"]
            scoring.replica.count("errors", route=route, code=code, status=str(response.status_code))
        return response

    return answer


def install(app: FastAPI) -> None:
    """The application's exception handlers (each answer counted: :func:`counted`)."""
    @app.exception_handler(SiraError)
    @counted
    async def _sira_error(request: Request, exc: SiraError) -> JSONResponse:
        if exc.denial is not None:  # a refusal no transaction wrote: every refusal is audited
            try:
                await exc.write_denial(request.app.state.pool)
            except Exception as failure:  # noqa: BLE001 - the refusal is still the answer
                log.warning("a refusal could not be audited: %s", type(failure).__name__)
        # a 401 names the scheme to authenticate with (RFC 9110, 11.6.1), as the OpenAPI document does
        headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
        return error_response(exc.http_status, exc.code, exc.message, exc.details, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    @counted
    async def _routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # routing's own answers (no such path, a method the path does not take) in SIRA's shape
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            return error_response(405, "method_not_allowed", f"{request.method} is not allowed here; use {', '.join(allowed)}",
                          {"allowed": allowed}, headers={"Allow": ", ".join(allowed)})
        code = {400: "malformed_body", 404: "not_found"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(asyncpg.DataError)
    @counted
    async def _data_error(_request: Request, exc: asyncpg.DataError) -> JSONResponse:
        # A value PostgreSQL refuses that no request model caught (a NUL character in free text,
        # an integer beyond its column): the caller's input, not a server fault. Postgres's
        # message names the type or encoding at fault, never the value.
        log.info("request refused by PostgreSQL: %s", type(exc).__name__)
        return error_response(422, "invalid_value", f"a value cannot be stored: {type(exc).__name__}", {})

    async def _database_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        # Postgres down, restarting, recovering or out of connections, whichever route met it: the caller
        # may retry. The class names the cause; the text may name the server: not shown.
        if not db.is_unavailable(exc):
            raise exc  # not the database's absence: a server fault (500)
        log.info("request met an unavailable database: %s", type(exc).__name__)
        return error_response(503, "database_unavailable", f"the database is unavailable ({type(exc).__name__})", {})

    @app.exception_handler(Exception)
    @counted
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A fault nothing above handles (a bug, a model that raises): without this, Starlette's plain-text
        # 500, never counted, so the error-ratio alert missed it. Its text may name paths or data: logged
        # with its traceback, never answered. (Starlette re-raises it after this answer is sent.)
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal", "internal error; the server's log has the details", {})

    for unavailable in db.UNAVAILABLE:
        app.add_exception_handler(unavailable, counted(_database_unavailable))

    @app.exception_handler(RequestValidationError)
    @counted
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":  # its loc ends in a character offset, not a field
            position = first["loc"][-1] if first["loc"] else None
            reason = (first.get("ctx") or {}).get("error") or first["msg"]
            return error_response(400, "malformed_body", f"the body is not valid JSON (at character {position}): {reason}",
                          {"field": "", "position": position})
        content_type = request.headers.get("content-type", "")
        if tuple(first["loc"]) == ("body",) and not is_json(content_type):
            # curl -d sends application/x-www-form-urlencoded (others text/json): the JSON was never read as JSON
            return error_response(422, "invalid_request", "the body must be JSON sent with Content-Type: application/json "
                          f"(got {content_type or 'no Content-Type'})", {"field": "", "content_type": content_type})
        if tuple(first["loc"]) == ("query", CURSOR):  # not a number, or no id there can be: named as sent
            return error_response(422, "invalid_cursor", f"{CURSOR}: must be an entry's id (a positive integer), "
                                  "as the last page's next_before gave it", {"field": CURSOR})
        redactor = redactor_of(request)
        where = _name(redactor, first["loc"])
        # a missing field named inside the event (amount): the field names it; the other codes name the
        # field sent and say in the message where inside it the problem is
        inside = (first.get("ctx") or {}).get("path") if first.get("type") in MISSING_CODES else None
        if first.get("type") == "extra_forbidden":  # the unknown fields named (a few), and what the body takes
            found = [e["loc"] for e in exc.errors() if e.get("type") == "extra_forbidden"]
            unknown = [_name(redactor, loc) for loc in found[:MAX_LISTED]]
            more = f" and {len(found) - len(unknown)} more" if len(found) > len(unknown) else ""
            accepted = _body_fields(request) if all(len(loc) <= 2 for loc in found) else []
            return error_response(422, "unknown_field", f"unknown field(s) {', '.join(unknown)}{more}"
                                  + (f"; this request accepts: {', '.join(accepted)}" if accepted else ""),
                                  {"field": where, "unknown": unknown, "unknown_count": len(found),
                                   **({"accepted": accepted} if accepted else {})})
        code = {"extra_forbidden": "unknown_field", "missing": "missing_field", "non_finite": "invalid_number",
                "too_many_fields": "too_many_fields", **{c: c for c in (*FIELD_CODES, *REQUEST_CODES)}}.get(first.get("type"), "invalid_request")
        # the message may name a place inside a free-form field (its field names): redacted as they are
        message = redactor.scrub_text(first["msg"].removeprefix("Value error, "))
        inside = redactor.scrub_text(inside) if inside else None
        return error_response(422, code, f"{where or 'body'}: {message}", {"field": ".".join(p for p in (where, inside) if p)})


def _name(redactor: Redactor, loc: Any) -> str:
    """A validation error's place as a dotted name, each part redacted as a stored field name is."""
    return ".".join(redactor.scrub_value(str(p)) for p in loc if p != "body")

def _body_fields(request: Request) -> list[str]:
    """The fields the route's JSON body takes (its model's, by the names a client sends), or [] when unknown."""
    from pydantic import BaseModel

    field = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(field, "field_info", None), "annotation", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [info.alias or name for name, info in model.model_fields.items()]
