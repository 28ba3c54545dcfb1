"""Online: ``sira serve`` (Ray Serve), ``sira serve check``, ``sira serve reload``, ``sira api`` (the HTTP API
alone)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from sira.cli.common import ApiKeyOption, JsonOption, Stopped, app, emit, err, governed, serve_until_stopped
from sira.core.config import Settings, get_settings
from sira.core.errors import ConfigError


def ensure_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on, before Ray starts or a model loads (else, a minute later,
    HAProxy's or uvicorn's own failure, in their words)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"{host}:{port} is in use (another sira serve or sira api?): stop it or pass "
                                  "--port", code="port_in_use", details={"host": host, "port": port}) from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}", code="port_unavailable",
                              details={"host": host, "port": port}) from None


def check_before_start(settings: Settings) -> None:
    """What a serving process reads as it starts, read here first: the secrets the settings name, the JWT keys, the
    webhook URLs, the notify receivers file and the database (reached once). A bad one is one line, `error: config:`
    (exit 2) or `error: unavailable:` (exit 1), before uvicorn or Ray starts; until 2026-12-07 `sira api` printed
    uvicorn's 70-line traceback (exit 3) and `sira serve` restarted replicas for a minute, then said "Deploying
    application sira failed"."""
    import asyncio

    from sira.core import db
    from sira.core.auth import JwtConfig
    from sira.registry import receivers

    settings.check_secrets()
    JwtConfig.from_settings(settings)
    settings.webhook_url_list  # noqa: B018 - checked as it is read
    receivers.load(settings)
    dsn = db.resolve_dsn(settings)

    async def reach() -> None:
        conn = await db.connect(dsn)
        await conn.close()

    asyncio.run(reach())


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a rollout, systemd, `kill`) stops `sira serve` as Ctrl-C does, from its first step: a
    KeyboardInterrupt wherever start-up is, `serve_until_stopped`'s own handler once it serves. Until 2026-12-07
    the handler came only then: a SIGTERM during the start (~40 s, longer under load) met Python's default (rc 143)
    or Ray's (rc 15, or 134 after a C++ stack trace), with Serve not shut down and nothing said. ``init_ray``
    keeps this handler over Ray's. The previous handler is back afterwards."""
    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_starting_serve() -> None:
    """Stop what a start cut short by Ctrl-C or SIGTERM had started: Serve, if Ray was up (Ray itself stops with
    this process). Said as a stop after serving is."""
    import ray
    from ray import serve

    signal.signal(signal.SIGTERM, lambda *_: None)  # stopping already: another SIGTERM changes nothing
    err.print("stopping SIRA serving")
    if ray.is_initialized():
        serve.shutdown()


@app.command("api")
def api_cmd(
    host: Annotated[str | None, typer.Option("--host", help="Listen address (default SIRA_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="Port (default SIRA_API_PORT).")] = None,
    models: Annotated[list[str] | None, typer.Option("--model", help="A model to score (repeat; default fraud).")] = None,
    scoring: Annotated[bool, typer.Option("--scoring/--no-scoring", help="Serve /v1/score too.")] = True,
) -> None:
    """Run the HTTP API alone under uvicorn. For development: scoring without Serve's batching and replicas."""
    import uvicorn

    from sira.http.app import create_app
    from sira.serving.config import ServingConfig
    from sira.serving.service import ScoringService

    settings = get_settings()
    host, port = host or settings.api_host, port or settings.api_port
    ensure_port_free(host, port)
    check_before_start(settings)
    service = ScoringService(settings, ServingConfig.from_dict({"models": models or ["fraud"]})) if scoring else None
    # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: a local client named its own
    # address for the audit log. Only the proxies the operator names are believed (none by default). Its log at
    # SIRA_LOG_LEVEL, as SIRA's (INFO: its start, and an access log line per request; it was always "warning").
    try:
        uvicorn.run(create_app(settings, scoring=service), host=host, port=port,
                    log_level=settings.log_level.lower(), log_config=uvicorn_log_config(settings.log_format),
                    proxy_headers=bool(settings.trusted_proxies), forwarded_allow_ips=settings.trusted_proxies)
    except Stopped:  # SIGTERM: uvicorn shut down gracefully, then raised it again to the handler it found (ours)
        pass


def uvicorn_log_config(fmt: str = "text") -> dict:
    """uvicorn's own logging config, its access log on stderr with every other log line (its default is stdout),
    in SIRA's format (``SIRA_LOG_FORMAT``: text or JSON lines), each line naming its request (X-Request-ID)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    from sira.core.logs import uvicorn_config

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return uvicorn_config(config, fmt)


serve_app = typer.Typer(help="Online scoring on Ray Serve. Run it locally, or check a config before "
                               "`serve deploy`.", invoke_without_command=True)
app.add_typer(serve_app, name="serve")


@serve_app.callback()
def serve_cmd(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", help="A serve_configs/*.yaml file (default: serve_configs/local.yaml).")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Listen address (default: the config's).")] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="Port (default: the config's).")] = None,
) -> None:
    """Run online scoring on Ray Serve locally (the same application `serve deploy` runs); Ctrl-C or SIGTERM stops
    it."""
    if ctx.invoked_subcommand is not None:
        return
    from sira.http.deployment import ServeSpec, run_local

    with sigterm_interrupts():
        try:
            spec = ServeSpec.from_file(config) if config else ServeSpec.local()
            ensure_port_free(host or spec.host, port or spec.port)
            settings = get_settings()
            check_before_start(settings)
            run_local(settings, spec, host=host, port=port, progress=err.print)
            serve_until_stopped()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM before serve_until_stopped took over
            stop_starting_serve()


@serve_app.command("check")
def serve_check_cmd(
    config: Annotated[Path, typer.Argument(help="The serve_configs/*.yaml file `serve deploy` will be given.")],
    as_json: JsonOption = False,
) -> None:
    """Validate a Serve config before `serve deploy`. The application, its deployment options, its args and
    user_config (a bad user_config would be refused by every replica, which keeps its last good one)."""
    from sira.http.deployment import ServeSpec

    spec = ServeSpec.from_file(config)  # raises invalid_config (exit 2) naming the field
    payload = {"config": str(config), "valid": True, "models": spec.args.get("models") or ["fraud"],
               "options": sorted(spec.options)}
    emit(payload, as_json, lambda: err.print(f"{config}: valid (models {', '.join(payload['models'])}; "
                                               f"deployment options {', '.join(payload['options']) or 'none'})"))


@serve_app.command("reload")
def serve_reload_cmd(
    reason: Annotated[str | None, typer.Option("--reason", help="Why (stored in the audit log).")] = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Tell every serving replica to re-read the registry now. Operator or admin; audited; as
    POST /v1/serving/reload does. Replicas also hear of registry changes as they commit, and poll."""
    from sira.serving.notifications import request_reload

    governed(lambda conn, who: request_reload(conn, who, reason), api_key)
    emit({"notified": True}, as_json, lambda: err.print("every serving replica was told to re-read the registry"))
