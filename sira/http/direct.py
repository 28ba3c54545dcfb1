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
from typing import Any, TypeVar

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from sira.http.deps import Handler, StrictRoute, is_json

M = TypeVar("M", bound=BaseModel)


def direct_route(handler: Handler) -> type[StrictRoute]:
    """A route class whose requests ``handler`` answers (pass it as ``route_class_override``); its query is
    checked as every route's is (:class:`~sira.http.deps.StrictRoute`)."""

    class DirectRoute(StrictRoute):
        credentials_before_body = True  # ``handler`` checks them, then reads the body

        def answering_handler(self) -> Handler:
            return handler

    return DirectRoute


def json_body(request: Request, raw: bytes, model: type[M]) -> M:
    """``raw`` as ``model`` (pydantic's own JSON parser: integers of any size reach the validators, which
    refuse what storage cannot hold), with the errors FastAPI raises for a declared body of that model."""
    content_type = request.headers.get("content-type", "")
    if not raw or not is_json(content_type):
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        found = exc.errors(include_url=False)
        if found and found[0]["type"] == "json_invalid":
            try:  # FastAPI's message and character offset: the standard library's, on this error path only
                decoded = json.loads(raw)
            except (ValueError, RecursionError) as decode:  # nesting past the stack: json_invalid too
                pos, msg = getattr(decode, "pos", 0), getattr(decode, "msg", str(decode))
                raise RequestValidationError([{"type": "json_invalid", "loc": ("body", pos), "msg": "JSON decode error",
                                               "input": {}, "ctx": {"error": msg}}]) from None
            # JSON the standard library reads and pydantic's parser does not: an unpaired surrogate ("\ud800",
            # which has no UTF-8 form). Validated as FastAPI validates a body it decoded itself, so the field
            # that holds it is refused under its code (invalid_value), as on every other route
            return validated(model, decoded)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in found]) from None


def validated(model: type[M], decoded: Any) -> M:
    """A decoded body as ``model``; a value pydantic accepts that holds an unpaired surrogate anyway (a field
    no validator checks) is refused as invalid_value, naming where: nothing downstream can encode it."""
    try:
        body = model.model_validate(decoded)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                      for e in exc.errors(include_url=False)]) from None
    problem = _surrogate(decoded)
    if problem is not None:
        raise RequestValidationError([{"type": "invalid_value", "loc": ("body", *problem), "input": None,
                                       "msg": "must not contain unpaired surrogates (\\ud800-\\udfff)"}])
    return body


def _surrogate(value: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Where in a decoded JSON value a string (or a field name) holds an unpaired surrogate; None: nowhere."""
    if isinstance(value, str):
        return None if value.isascii() or not _unencodable(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            if _unencodable(key):
                return path
            found = _surrogate(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _surrogate(item, (*path, str(i)))
            if found is not None:
                return found
    return None


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def json_answer(body: Any) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
