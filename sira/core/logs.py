"""SIRA's log lines: text or JSON (``SIRA_LOG_FORMAT``), each naming the HTTP request it was written for.

The request id is the caller's ``X-Request-ID`` when it sent a usable one (Ray Serve's proxy and HAProxy
send one on every request), else one made for the request (:mod:`sira.http.request_ids`); it is in the
answer's ``X-Request-ID`` header, in every log line written while the request is handled, and in the
details of the audit rows it writes, so a caller's report of a failed request leads to its log lines.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("sira_request_id", default=None)
# The request's path as its access log line names it (sira.http.request_ids.logged_path), set when it is answered
LOGGED_PATH: ContextVar[str | None] = ContextVar("sira_logged_path", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RequestIdFilter(logging.Filter):
    """Puts the request being handled (or None) on each record, as ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class AccessPathFilter(logging.Filter):
    """uvicorn's access log line with the path as :data:`LOGGED_PATH` gives it: a path no route takes and a
    query's undeclared parameters are the caller's text (an e-mail address can be one), not written to a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = LOGGED_PATH.get()
        args = record.args
        if path is not None and isinstance(args, tuple) and len(args) == 5:  # client, method, path, http, status
            record.args = (args[0], args[1], path, *args[3:])
        return True


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, and `` [request <id>]`` at the end of a line written for a request."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [request {request_id}]" if request_id else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, and ``request_id``
    and ``exception`` (its traceback) when there are."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        request_id = getattr(record, "request_id", None)
        if request_id:
            line["request_id"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure(level: int | str, fmt: str) -> None:
    """The process's root handler on stderr, in ``fmt`` ("text" or "json"), with request ids."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=level, handlers=[handler])


def uvicorn_config(base: dict[str, Any], fmt: str) -> dict[str, Any]:
    """uvicorn's logging config ``base`` with its handlers in ``fmt``, with request ids (its access log too)."""
    config = {**base, "formatters": {**base.get("formatters", {}),
                                      "sira": {"()": f"{__name__}.{type(formatter(fmt)).__name__}"}},
              "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}}}
    config["filters"]["access_path"] = {"()": f"{__name__}.AccessPathFilter"}
    config["handlers"] = {name: {**handler, "formatter": "sira",
                                 "filters": ["request_id", *(["access_path"] if name == "access" else [])]}
                          for name, handler in base.get("handlers", {}).items()}
    return config
