"""What every ``sira`` command shares: the application and its groups, output (one JSON object on
stdout, or tables on stderr), the common options, and acting as an API key's owner."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sira.core.config import MAX_VERSION, get_settings
from sira.core.errors import InvalidInput

app = typer.Typer(
    name="sira",
    help="SIRA: risk models for payments: features, training, governance, serving, monitoring.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def group(name: str, help_text: str) -> typer.Typer:
    """A `sira <noun> <verb>` command group."""
    sub = typer.Typer(help=help_text, no_args_is_help=True)
    app.add_typer(sub, name=name)
    return sub


db_app = group("db", "Manage the database: migrations and the embedded server.")
features_app = group("features", "Feature sets, snapshots and point-in-time values.")
feedback_app = group("feedback", "Labels: chargebacks, reviews, outcomes.")
webhooks_app = group("webhooks", "Signed webhooks of registry events.")
keys_app = group("keys", "API keys and their roles (shown once at creation).")
models_app = group("models", "Models: create, list, show, change settings.")
versions_app = group("versions", "Model versions: show one, compare two, model cards.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
ApiKeyOption = Annotated[
    str | None, typer.Option("--api-key", envvar="SIRA_API_KEY", show_envvar=True, help="The API key to act as.")
]

# Not a terminal (CI logs, pipes): wide enough that paths are not folded.
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


# With --json, the process's stdout (fd 1) is pointed at stderr for the whole command, so nothing
# that Ray's threads, native libraries or subprocesses print can get mixed into the JSON; the
# result alone goes to the real stdout, kept here.
_JSON_STDOUT: Any = None


def emit(payload: dict[str, Any], as_json: bool, render: Callable[[], None]) -> None:
    """Print a command's result: one JSON object on stdout, or a human rendering on stderr. NaN and infinities
    are null, as the registry stores them: `NaN` is no JSON (`"roc_auc": NaN` of a test window without negatives
    broke every JSON reader)."""
    if as_json:
        try:
            text = json.dumps(payload, default=str, sort_keys=True, allow_nan=False)
        except ValueError:  # a NaN or an infinity in it
            from sira.core.artifacts import json_finite

            text = json.dumps(json_finite(payload), default=str, sort_keys=True, allow_nan=False)
        out = _JSON_STDOUT or sys.stdout
        out.write(text + "\n")
        out.flush()
    else:
        render()


def reserve_stdout_for_json() -> None:
    """Keep fd 1 for the JSON result only (see ``_JSON_STDOUT``)."""
    global _JSON_STDOUT
    try:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:
        return
    _JSON_STDOUT = os.fdopen(saved, "w", closefd=True)


def serve_until_stopped() -> None:
    """Block until Ctrl-C or SIGTERM, then shut Serve down: a service on the private local Ray lives as long as
    this process (``sira serve``, ``sira demo --keep-serving``)."""
    import signal
    import time

    from ray import serve

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    err.print("stopping SIRA serving")
    serve.shutdown()


def kv_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, "" if value is None else str(value))
    return table


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors (anywhere on the line).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars (they are drawn on a terminal "
                                        "only, on stderr).")] = False,
) -> None:
    """SIRA: risk models for payments."""
    from sira.core import progress

    progress.set_quiet(quiet)


# -- simulate ----------------------------------------------------------------


def writable_file(out: Path | None) -> None:
    """Check an ``--out`` file before the command acts (a missing folder failed as ``internal`` after the work,
    and after the audit entry of a report that was then never written)."""
    if out is None:
        return
    if out.is_dir():
        raise InvalidInput(f"--out: {out} is a folder; name a file", code="invalid_value", details={"field": "out"})
    if not out.parent.is_dir():
        raise InvalidInput(f"--out: folder {out.parent} does not exist", code="invalid_value", details={"field": "out"})


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    from sira.core.files import read_yaml

    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: expected a mapping of settings at the top level")
    return data


# -- training ------------------------------------------------------------------


async def identity_for(action: str, api_key: str | None) -> Any:
    """Who acts (an Identity), allowed to perform ``action``; None before any key exists (the local user)."""
    from sira.core import db
    from sira.core.auth import authorize

    async with db.open_pool(get_settings()) as pool:
        async with pool.acquire() as conn:
            if api_key is None and not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM sira_api_keys)"):
                return None  # a fresh installation: no keys yet, the local user acts
            identity = await acting(conn, api_key)
            authorize(identity, action)
            return identity


async def actor_for(action: str, api_key: str | None) -> Any:
    """Who acts: the key's owner, allowed to perform ``action``; before any key exists, the local user (None)."""
    identity = await identity_for(action, api_key)
    return identity and identity.actor()


async def audited(actor: Any, action: str, target_id: str, details: dict[str, Any]) -> None:
    """An audit entry for work a command did outside a registry transaction (a state refresh, a rebuild): who
    (None: the local user, before any key exists), what and its outcome."""
    from sira.core import audit, db

    conn = await db.connect(db.resolve_dsn(get_settings()))
    try:
        await audit.record(conn, actor or audit.Actor.local(), action, target_type="feature_set", target_id=target_id,
                           details=details)
    finally:
        await conn.close()


def iso_datetime(text: str) -> datetime:
    """The CLI's one type of date and time (every date option takes it): ISO 8601, a date (``2026-09-01``:
    midnight) or a time to the minute or finer (``2026-09-01T12:30``, ``...:00Z``, ``...+02:00``), as an aware
    datetime in UTC (without an offset: UTC). As the HTTP API's ``from``/``to`` and ``--expires`` take them."""
    try:
        when = datetime.fromisoformat(text.strip())
        return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # OverflowError: an offset that moves it out of the calendar
        raise typer.BadParameter(f"{text[:60]!r} is not an ISO 8601 date or time ({DATE_FORMS})") from None


DATE_FORMS = "2026-09-01, 2026-09-01T12:30, 2026-09-01T12:30:00Z or with an offset such as +02:00; without one, UTC"


def DateOption(flag: str, help_text: str) -> Any:  # noqa: N802 - reads as a type in signatures
    return Annotated[datetime | None, typer.Option(flag, parser=iso_datetime, metavar="WHEN",
                                                   help=f"{help_text} ISO 8601: {DATE_FORMS}.")]


# -- governance --------------------------------------------------------------------


def governed(action: Callable[..., Any], api_key: str | None, *args: Any, notify: bool = False) -> Any:
    """Run one registry operation as the key's owner, in one transaction (then deliver its webhooks)."""
    from sira.core import db
    from sira.registry import webhooks

    settings = get_settings()

    async def run() -> Any:
        async with db.open_pool(settings) as pool:
            async with pool.acquire() as conn:
                identity = await acting(conn, api_key)
            async with db.transaction(pool) as conn:  # a refusal inside it is audited after the rollback
                result = await action(conn, identity, *args)
            if notify:  # after the commit; failures are retried by `sira webhooks deliver`
                await webhooks.deliver_due(pool, settings)
            return result

    return asyncio.run(run())


ModelOption = Annotated[str, typer.Option("--model", help="Model name.")]
VersionOption = Annotated[int, typer.Option("--version", min=1, max=MAX_VERSION, help="Version number.")]
CommentOption = Annotated[str | None, typer.Option("--comment", help="Why (stored with the decision).")]
ReasonOption = Annotated[str | None, typer.Option("--reason", help="Why this version.")]


# -- keys ------------------------------------------------------------------------


async def acting(conn: Any, key: str | None, *, required: bool = True) -> Any:
    """The identity of the CLI's caller (None when no key is given and none is required)."""
    from sira.core.auth import authenticate

    if key is None and not required:
        return None
    return await authenticate(conn, key, pepper=get_settings().secret("auth_secret"))


def fmt(value: Any, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


class Stopped(BaseException):
    """SIGTERM in a command that set no handler of its own (:func:`sira.cli.main.main`): a BaseException, so no
    ``except Exception`` on the way takes it for a failure to carry on from, and every ``finally`` and
    ``async with`` on the way runs."""


SIGTERM_RECEIVED: list[bool] = []  # set once the handler below ran: a cancellation that ends the command is it


# Where an exception raised by the handler breaks what it interrupts: an event loop's and its transports' code
# (a transport turns any exception in its callbacks and writes into a fatal error and closes its connection)
_IO_CODE = ("asyncio", "asyncpg", "selectors", "ssl", "socket", "redis", "uvloop")


def stop_on_sigterm(_signum: int, frame: Any) -> None:
    """Raise :class:`Stopped` where the main thread is (SIRA's code, Ray Tune's loop, a LightGBM round); but
    where it is in an event loop's or a transport's code (its selector, a protocol's callback, a socket write
    inside a task: an exception there broke a database connection, and the command ended "internal: connection
    was closed in the middle of operation", exit 1), cancel the loop's tasks instead: each unwinds at its next
    await."""
    SIGTERM_RECEIVED.append(True)
    loop = asyncio._get_running_loop()
    where = frame.f_globals.get("__name__", "") if frame is not None else ""
    if loop is not None and (asyncio.current_task(loop) is None or where.split(".")[0] in _IO_CODE):
        for task in asyncio.all_tasks(loop):
            task.cancel("stopped by SIGTERM")
        return
    raise Stopped()
