"""ASGI middleware of SIRA's application: the request body bound."""

from __future__ import annotations

from typing import Any

from sira.http.deps import error_response


class _BodyTooLarge(Exception):
    """Raised into the application when a streamed body passes the limit: it stops reading."""


class BodySizeLimit:
    """Pure ASGI middleware: a request body over ``max_bytes`` gets 413 ``body_too_large`` before it is
    parsed, from its Content-Length or, without one, by counting the bytes as they arrive. (Pure ASGI:
    Starlette's BaseHTTPMiddleware costs every request a task and a copy of the stream.)

    Before answering it reads and discards the rest of a body up to ``DRAIN_FACTOR`` times the limit (a
    lingering close, as nginx does): a server that answers and closes while the client is still sending
    makes the client see a reset connection instead of the 413. A body larger than that is not read;
    the answer says ``connection: close``."""

    DRAIN_FACTOR = 4

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, received=0, more=True)
            return
        received, more, refused, started = 0, True, False, False

        async def bounded_receive() -> Any:
            nonlocal received, more, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more = bool(message.get("more_body", False))
                if received > self.max_bytes:
                    refused = True
                    raise _BodyTooLarge
            return message

        async def send_unless_refused(message: Any) -> None:
            nonlocal started
            if refused and not started:  # whatever the application answers to a body cut short: 413
                return
            started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, send_unless_refused)
        except _BodyTooLarge:
            if started:  # an answer already under way: the server ends the connection
                raise
        if refused and not started:
            await self._refuse(scope, receive, send, received=received, more=more)

    async def _refuse(self, scope: Any, receive: Any, send: Any, *, received: int, more: bool) -> None:
        budget = self.DRAIN_FACTOR * self.max_bytes
        while more and received <= budget:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            received += len(message.get("body", b""))
            more = bool(message.get("more_body", False))
        response = error_response(413, "body_too_large", f"the request body is larger than {self.max_bytes} bytes",
                          {"max_bytes": self.max_bytes})
        if more:
            response.headers["connection"] = "close"  # the rest of the body is never read
        await response(scope, receive, send)
