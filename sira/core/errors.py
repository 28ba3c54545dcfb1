"""One error hierarchy for SIRA.

Domain code raises :class:`SiraError` subclasses. Each carries a stable
``code``, an HTTP status for the API and an exit status for the CLI, so the
HTTP layer and the CLI turn any of them into the documented shape without
knowing the domain:

- HTTP: ``{"error": {"code": ..., "message": ..., "details": {...}}}``
- CLI: ``error: <code>: <message>`` on stderr, exit 2 for bad input, 1 for a system failure.
"""

from __future__ import annotations

import signal
from datetime import datetime
from typing import Any, ClassVar

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


class SiraError(Exception):
    """Base of every error SIRA reports to a user."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = EXIT_FAILURE

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance override of the class default
        self.details = details or {}
        # an audit entry to write once the refused unit of work has rolled back (a sira.core.audit.Denial:
        # written inside it, it was rolled back with it). Whoever writes it clears it: sira.core.db.transaction,
        # else the CLI's main or the HTTP error handler (see sira.core.audit.denied)
        self.denial: Any = None

    async def write_denial(self, where: Any) -> None:
        """Write the pending audit entry, if any, on ``where`` (a pool: on a connection it lends; else a
        connection) and clear it."""
        denial, self.denial = self.denial, None
        if denial is None:
            return
        if hasattr(where, "acquire"):
            async with where.acquire() as conn:
                await denial.write(conn)
        else:
            await denial.write(where)

    def to_dict(self) -> dict[str, Any]:
        """The HTTP error body."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def one_line(self) -> str:
        """The CLI error line."""
        message = " ".join(self.message.split())
        return f"error: {self.code}: {message}"


class InvalidInput(SiraError):
    """The caller sent something that cannot work (bad value, missing column, unknown option)."""

    code = "invalid_input"
    http_status = 422
    exit_code = EXIT_BAD_INPUT


def invalid_format(given: str, formats: tuple[str, ...]) -> InvalidInput:
    """A ``format`` (``--format``) a report is not written in: 422 ``invalid_request`` naming the field, as the
    HTTP API answers ``format=pdf`` on every route that takes one."""
    return InvalidInput(f"format must be {', '.join(formats[:-1])} or {formats[-1]} (got {given[:40]!r})",
                        code="invalid_request", details={"field": "format"})


def inverted_window(lo: datetime, hi: datetime) -> InvalidInput:
    """A window whose start is not before its end: 422 ``invalid_window`` naming ``to`` (the CLI's ``--to``).
    (``empty_window`` is a window that is well formed but holds nothing usable.)"""
    return InvalidInput(f"the window {lo:%Y-%m-%d %H:%M} .. {hi:%Y-%m-%d %H:%M} is empty: from must be before to",
                        code="invalid_window", details={"field": "to", "from": lo.isoformat(), "to": hi.isoformat()})


def check_window_options(time_from: datetime | None, time_to: datetime | None, days: float | None, *,
                         days_after_from: bool = True) -> None:
    """A window is set once: ``days`` given with both ``from`` and ``to`` (or, where ``days`` only counts back
    from ``to`` or the newest data, ``days_after_from=False``, with ``from`` at all) is 422
    ``invalid_window`` naming ``days``, not silently ignored. ``days`` None: not given."""
    if days is None or time_from is None or (time_to is None and days_after_from):
        return
    takes = "from and to, or days with from or with to" if days_after_from else "from (and to), or days with to"
    raise InvalidInput(f"days cannot be given with from{' and to' if time_to is not None else ''}: they set the "
                       f"same window twice; give {takes}, or days alone", code="invalid_window",
                       details={"field": "days", "given": ["from", *(["to"] if time_to is not None else []), "days"]})


class PayloadTooLarge(InvalidInput):
    """A batch or body beyond the configured limit."""

    code = "batch_too_large"
    http_status = 413


class NotFound(SiraError):
    """A named thing (file, model, version, prediction) does not exist."""

    code = "not_found"
    http_status = 404
    exit_code = EXIT_BAD_INPUT


class UnknownModel(NotFound):
    """A model name the registry does not hold (a serving replica: a model it does not serve): one code, 404
    ``unknown_model`` naming the ``model``, wherever the name came from (a path, a body, an option)."""

    code = "unknown_model"

    def __init__(self, model: str, message: str | None = None):
        super().__init__(message or f"unknown model {model!r}", details={"field": "model", "model": model})


class Conflict(SiraError):
    """The request is valid but clashes with the current state (a concurrent change, a duplicate)."""

    code = "conflict"
    http_status = 409
    exit_code = EXIT_BAD_INPUT


class NoProductionVersion(Conflict):
    """The model has no production version and none was named: 409 ``no_production_version`` wherever it is
    asked (scoring, a what-if, a batch or drift job), naming the ``model``; ``hint``: what the caller may do."""

    code = "no_production_version"

    def __init__(self, model: str, hint: str | None = None):
        super().__init__(f"model {model!r} has no production version" + (f": {hint}" if hint else ""),
                         details={"model": model})


class Unauthenticated(SiraError):
    """Missing or invalid credentials."""

    code = "unauthenticated"
    http_status = 401
    exit_code = EXIT_BAD_INPUT


class PermissionDenied(SiraError):
    """Valid credentials without the role the operation needs."""

    code = "forbidden"
    http_status = 403
    exit_code = EXIT_BAD_INPUT


class ConfigError(SiraError):
    """A setting is invalid or cannot be read."""

    code = "config"
    http_status = 500
    exit_code = EXIT_BAD_INPUT


class SchemaOutOfDate(SiraError):
    """The database schema is older (or newer) than this code expects."""

    code = "schema_out_of_date"
    http_status = 503
    exit_code = EXIT_FAILURE


class ServiceUnavailable(SiraError):
    """A dependency (Postgres, Redis, Ray) cannot be reached."""

    code = "unavailable"
    http_status = 503
    exit_code = EXIT_FAILURE


class Interrupted(SiraError):
    """Work stopped by a signal (Ctrl-C, ``kill``, ``ray job stop``, Kubernetes): what it had done is recorded,
    nothing half-written is left. The exit status is the shell's for a process the signal ended (130, 143)."""

    code = "interrupted"
    http_status = 503
    exit_code = 128 + signal.SIGTERM  # 143; 130 for Ctrl-C (SIGINT)

    def __init__(self, message: str, *, signum: int = signal.SIGTERM, details: dict[str, Any] | None = None):
        super().__init__(message, details={"signal": signal.Signals(signum).name, **(details or {})})
        self.exit_code = 128 + signum  # type: ignore[misc]


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL cannot be reached to connect (``db.connect``, ``db.create_pool``): what the user reads is a
    :class:`ServiceUnavailable`; what serving's breaker asks (``db.is_unavailable``) is an outage."""


def sira_cause(exc: BaseException) -> SiraError | None:
    """The SIRA error (bad input found inside a Ray task or actor) within an exception Ray raised, if any:
    Ray wraps it in RayTaskError, Ray Data in its user-code and system exceptions, and an actor whose
    ``__init__`` raised it in ActorDiedError, which keeps the creation task's RayTaskError only as its
    argument."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        inner = getattr(current, "cause", None)  # a RayTaskError (itself an instance of its cause's class)
        if isinstance(current, SiraError) and not isinstance(inner, BaseException):
            return current
        wrapped = [a for a in current.args if isinstance(a, BaseException)]  # ActorDiedError(creation task error)
        stack += [current.__context__, current.__cause__, *wrapped, inner]  # popped last first: the cause first
    return None
