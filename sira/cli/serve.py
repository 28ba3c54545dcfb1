"""Online: ``sira serve`` (Ray Serve), ``sira serve check``, ``sira serve reload``, ``sira api`` (the HTTP API
alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sira.cli.common import ApiKeyOption, JsonOption, app, emit, err, governed, serve_until_stopped
from sira.core.config import get_settings
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
    service = ScoringService(settings, ServingConfig.from_dict({"models": models or ["fraud"]})) if scoring else None
    # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: a local client named its own
    # address for the audit log. Only the proxies the operator names are believed (none by default).
    uvicorn.run(create_app(settings, scoring=service), host=host, port=port, log_level="warning",
                proxy_headers=bool(settings.trusted_proxies), forwarded_allow_ips=settings.trusted_proxies)


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
    """Run online scoring on Ray Serve locally (the same application `serve deploy` runs); Ctrl-C stops it."""
    if ctx.invoked_subcommand is not None:
        return
    from sira.http.deployment import ServeSpec, run_local

    spec = ServeSpec.from_file(config) if config else ServeSpec.local()
    ensure_port_free(host or spec.host, port or spec.port)
    run_local(get_settings(), spec, host=host, port=port, progress=err.print)
    serve_until_stopped()


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
