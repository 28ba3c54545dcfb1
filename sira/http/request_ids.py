"""Each HTTP request's id (:mod:`sira.core.logs`): the caller's ``X-Request-ID`` when it is usable (1 to 128
characters of letters, digits and ``.-_:``; Ray Serve's proxy and HAProxy set one on every request), else one
made here; in the answer's ``X-Request-ID`` header, in the request's log lines and audit rows. In a Ray Serve
replica Serve's own middleware (in its proxy, or in the replica's direct ingress) answers the header, with
the same id: SIRA adds it only where nothing else does (``sira api``), or a client would see it twice. A value that is not usable is replaced, never logged: it is the caller's text."""

from __future__ import annotations

import re
import uuid
from typing import Any

from sira.core.logs import REQUEST_ID

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
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
