"""Routes on the scoring hot path, handled from request bytes to answer bytes.

FastAPI documents a route from its endpoint's signature (the body model, the role it requires, the
answer model) and, for each request, solves its dependencies, decodes the body with the standard
library's ``json``, validates the Python objects and serialises the answer: ~0.4 ms of a serving
replica's CPU per request, measured with py-spy (#22), where the whole request costs ~3 ms. A
:func:`direct_route` keeps the endpoint for the OpenAPI document and answers with a handler of its own:
the same role check called directly (:func:`sira.http.deps.authorized`), the body parsed and validated in
one pass by the same pydantic model (``model_validate_json``), errors raised as FastAPI's own
:class:`~fastapi.exceptions.RequestValidationError` (so they reach the application's handler and keep
their codes), and the answer written by ``orjson``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

Handler = Callable[[Request], Awaitable[Response]]
M = TypeVar("M", bound=BaseModel)


def direct_route(handler: Handler) -> type[APIRoute]:
    """An :class:`APIRoute` class whose requests ``handler`` answers (pass it as ``route_class_override``)."""

    class DirectRoute(APIRoute):
        def get_route_handler(self) -> Handler:
            return handler

    return DirectRoute


def json_body(request: Request, raw: bytes, model: type[M]) -> M:
    """``raw`` as ``model`` (pydantic's own JSON parser: integers of any size reach the validators, which
    refuse what storage cannot hold), with the errors FastAPI raises for a declared body of that model."""
    content_type = request.headers.get("content-type", "")
    if not raw or "json" not in content_type.lower():
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        found = exc.errors(include_url=False)
        if found and found[0]["type"] == "json_invalid":
            try:  # FastAPI's message and character offset: the standard library's, on this error path only
                json.loads(raw)
            except (ValueError, RecursionError) as decode:  # nesting past the stack: json_invalid too
                pos, msg = getattr(decode, "pos", 0), getattr(decode, "msg", str(decode))
                raise RequestValidationError([{"type": "json_invalid", "loc": ("body", pos), "msg": "JSON decode error",
                                               "input": {}, "ctx": {"error": msg}}]) from None
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in found]) from None


def json_answer(body: Any) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
