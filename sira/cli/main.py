"""The ``sira`` command line.

Conventions (see CONVENTIONS.md): ``sira <noun> <verb>``; human output goes to
stderr; ``--json`` prints exactly one JSON object on stdout; errors are one
line, ``error: <code>: <message>``, exit 2 for bad input and 1 for a failure
of the system; a traceback only with ``--debug``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

import typer
from typer.exceptions import Exit as TyperExit
from typer.exceptions import TyperException

# Each command module adds its commands to `app` when imported: in the order `sira --help` lists them.
from sira.cli import database, data, train, governance, monitor, privacy, retention, serve, demo, jobs  # noqa: F401  # isort: skip
from sira.cli.common import SIGTERM_RECEIVED, Stopped, app, reserve_stdout_for_json, stop_on_sigterm
from sira.cli.jobs import release_job_key
from sira.core import logs
from sira.core.errors import EXIT_BAD_INPUT, EXIT_FAILURE, Interrupted, SiraError


def run_job(args: list[str]) -> int:
    """A Ray job's entry point (``jobs/*.py``): the CLI command, then the job's own key revoked, so it is
    worth nothing once the job has ended, whoever submitted it and however (``ray job stop`` included: see
    :func:`main`)."""
    try:
        return main(args, own_process=True)
    finally:
        release_job_key()


def log_settings() -> tuple[str, str]:
    """``SIRA_LOG_LEVEL`` (documented, and validated, but until 2026-12-07 applied to nothing: every command
    logged at WARNING) and ``SIRA_LOG_FORMAT``. Settings that cannot be read: WARNING and text here, and the
    command reports them."""
    from sira.core.config import get_settings

    try:
        settings = get_settings()
    except SiraError:
        return "WARNING", "text"
    return settings.log_level, settings.log_format


def take_debug(args: list[str]) -> tuple[bool, list[str]]:
    """SIRA's ``--debug`` taken out of ``args``; one after ``--`` is a job's own option, passed on to it."""
    own = args[:args.index("--")] if "--" in args else args
    return "--debug" in own, [a for a in own if a != "--debug"] + args[len(own):]


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """Run the CLI; returns the exit status (the console script exits with it).

    ``own_process``: the CLI owns the process (console script, ``python -m sira``, a job), so
    with ``--json`` it may reserve the process's stdout for the result.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    own_args = args[:args.index("--")] if "--" in args else args  # after `--`: a job's own options
    if own_process and "--json" in own_args:
        reserve_stdout_for_json()
    asked, args = take_debug(args)
    debug = asked or os.environ.get("SIRA_DEBUG") == "1"
    level, fmt = log_settings()
    logs.configure(logging.DEBUG if debug else logging.WARNING, fmt)  # text or JSON lines (SIRA_LOG_FORMAT)
    # SIRA's own loggers at SIRA_LOG_LEVEL (the others stay at WARNING); --debug shows everything at DEBUG
    logging.getLogger("sira").setLevel(logging.DEBUG if debug else level)
    # httpx logs each request's full URL at INFO, httpcore its connections at DEBUG: an incoming webhook's
    # URL is a credential (a token in its path). They stay at WARNING under --debug (until 2026-12-07
    # `sira --debug webhooks deliver` printed the secret URLs).
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    command = typer.main.get_command(app)
    # SIGTERM (`ray job stop`, Kubernetes, systemd, `kill`) unwinds the command (its Ray, embedded PostgreSQL and
    # a job's key released on the way out), then one line and exit 143; until 2026-12-07 it killed the process
    # where it stood (Python's default action). Commands that record their runs (train, retrain, score) and the
    # servers set handlers of their own while they run.
    if own_process and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    command.invoke = ctrl_c_raised(command.invoke)  # type: ignore[method-assign, assignment]
    try:
        result = command.main(args=args, prog_name="sira", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except CtrlC as exc:
        return interrupted(args, exc.args[0], debug)
    except TyperExit as exc:
        return exc.exit_code
    except TyperException as exc:
        # Typer's (vendored click's) usage errors: unknown option, bad value, no such command.
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.stderr.write(ctx.get_help() + "\n" if ctx is not None else "")
            return 0
        where = f"{ctx.command_path}: " if ctx is not None else ""
        code = "usage" if getattr(exc, "exit_code", 1) == EXIT_BAD_INPUT else "cli"
        sys.stderr.write(f"error: {code}: {where}{' '.join(exc.format_message().split())}\n")
        return EXIT_BAD_INPUT
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        return 130
    except SiraError as exc:
        if debug:
            traceback.print_exc()
        if isinstance(exc, Interrupted):  # `sira demo`'s search stopped before its Ray is shut down at exit
            train.searches_stopped()
        if exc.denial is not None:  # a refusal no transaction wrote: every refusal is audited
            audit_refusal(exc)
        sys.stderr.write(exc.one_line() + "\n")
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return interrupted(args, exc, debug)
    except (Stopped, asyncio.CancelledError) as exc:
        if isinstance(exc, asyncio.CancelledError) and not SIGTERM_RECEIVED:
            raise
        name = next((a for a in args if not a.startswith("-")), "the command")
        sys.stderr.write(f"error: interrupted: {name} stopped by SIGTERM\n")
        return 128 + signal.SIGTERM
    except Exception as exc:  # a bug or an unexpected failure of a dependency
        if debug:
            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__
        sys.stderr.write(f"error: internal: {type(exc).__name__}: {message} (run with --debug for a traceback)\n")
        return EXIT_FAILURE


class CtrlC(BaseException):
    """A KeyboardInterrupt out of a command, past Typer: it turns one into a silent exit status 130 (`sira train`,
    `sira tune` and `sira demo` stopped by Ctrl-C said nothing, even with --debug)."""


def ctrl_c_raised(invoke: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def invoke_passing_ctrl_c(ctx: Any) -> Any:
        try:
            return invoke(ctx)
        except KeyboardInterrupt as exc:
            raise CtrlC(exc) from exc

    return invoke_passing_ctrl_c


def interrupted(args: list[str], exc: KeyboardInterrupt, debug: bool) -> int:
    """Ctrl-C (SIGINT) in a command that set no handler of its own: one line, as SIGTERM's, and exit 130."""
    if debug:
        traceback.print_exception(exc)
    name = next((a for a in args if not a.startswith("-")), "the command")
    sys.stderr.write(f"error: interrupted: {name} stopped by Ctrl-C (SIGINT)\n")
    return 128 + signal.SIGINT


def audit_refusal(exc: SiraError) -> None:
    """Write a refusal's audit entry on a connection of its own (the database away: said, not raised)."""
    import asyncio

    from sira.core import db
    from sira.core.config import get_settings

    async def write() -> None:
        conn = await db.connect(db.resolve_dsn(get_settings()))
        try:
            await exc.write_denial(conn)
        finally:
            await conn.close()

    try:
        asyncio.run(write())
    except Exception as failure:  # noqa: BLE001 - the refusal is still the outcome
        sys.stderr.write(f"warning: the refusal could not be audited ({type(failure).__name__})\n")


def run() -> None:
    """Console-script entry point."""
    sys.exit(main(own_process=True))
