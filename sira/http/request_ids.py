"""Each HTTP request's id (:mod:`sira.core.logs`): the caller's ``X-Request-ID`` when it is usable (1 to 128
characters of letters, digits and ``.-_:``; Ray Serve's proxy and HAProxy set one on every request), else one
made here; in the answer's ``X-Request-ID`` header, in the request's log lines and audit rows. In a Ray Serve
replica Serve's own middleware (in its proxy, or in the replica's direct ingress) answers the header, with
the same id: SIRA adds it only where nothing else does (``sira api``), or a client would see it twice. A value that is not usable is replaced, never logged: it is the caller's text."""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sira.core.logs import LOGGED_PATH, REQUEST_ID
from sira.http.deps import declared_query

USABLE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
HEADER = b"x-request-id"


class RequestIds:
    """Pure ASGI middleware (the hot path pays for no task or stream copy)."""

    def __init__(self, app: Any):
        from sira.core.ray_runtime import in_ray_job

        self.app = app
        self.answer_header = not in_ray_job()  # a Serve replica: Serve answers it

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == HEADER), None)
        request_id = given.decode() if given is not None and USABLE.fullmatch(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start" and self.answer_header:
                headers = message.setdefault("headers", [])
                if not any(k.lower() == HEADER for k, _ in headers):
                    message["headers"] = [*headers, (HEADER, request_id.encode())]
                LOGGED_PATH.set(logged_path(scope))  # uvicorn logs the request as it sends this (not Serve's proxy)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


def logged_path(scope: Any) -> str:
    """The request's path as a log may keep it: a route's path (its parameters are model names, versions and
    ids) with the query parameters the route declares; a parameter it does not declare is counted, not named,
    and a path no route takes is its length. Both are the caller's text: an e-mail address can be either."""
    path = scope.get("root_path", "") + scope["path"]
    route = scope.get("route")
    if route is None:
        return f"(a path no route takes, {len(path)} characters)"
    query = scope.get("query_string") or b""
    if not query:
        return path
    dependant = getattr(route, "dependant", None)
    declared = set(declared_query(dependant)) if dependant is not None else set()
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k in declared]
    unknown = len(pairs) - len(kept)
    return path + "?" + urlencode(kept) + (f"{'&' if kept else ''}(+{unknown} undeclared)" if unknown else "")
