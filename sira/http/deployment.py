"""The Ray Serve deployment: SIRA's FastAPI application as a Serve ingress, the application a
``serve_configs/*.yaml`` names (``import_path: sira.http.deployment:build_app``), and ``sira serve``'s local run."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve

from sira.core import db
from sira.core.config import Settings
from sira.core.errors import InvalidInput, NotFound
from sira.serving.config import ServingConfig
from sira.serving.service import ScoringService


# Replicas, resources, batching and every other option: in serve_configs/*.yaml only (ServeSpec applies them
# to `sira serve`; `serve deploy` reads them itself), never here, so there is one place to change them.
@serve.deployment(name="sira")
@serve.ingress()
class SiraIngress:
    """The Serve ingress: SIRA's FastAPI application with this replica's scoring service."""

    def __init__(self, config: dict[str, Any] | None = None):
        import sys

        from sira.core.config import get_settings
        from sira.core.ray_runtime import replica_logging

        # A replica runs Serve's loop and the user-code loop in two threads of one process: let a
        # thread waiting for the GIL get it within 1 ms rather than Python's default 5 ms.
        sys.setswitchinterval(0.001)
        self.settings = get_settings()
        replica_logging(self.settings.log_level)  # SIRA_LOG_LEVEL, into the replica's log
        # Serve starts this replica's own HTTP server (HAProxy's target) after this constructor, under uvicorn's
        # defaults, which believe X-Forwarded-For from 127.0.0.1: HAProxy, on the same node, passes a client's
        # header on, so any client chose the source address of the audit log. Only the proxies
        # SIRA_TRUSTED_PROXIES names are believed (none by default).
        os.environ["FORWARDED_ALLOW_IPS"] = self.settings.trusted_proxies
        self.service = ScoringService(self.settings, ServingConfig.from_dict(config))

    def __serve_build_asgi_app__(self) -> Any:
        from sira.http.app import create_app

        return create_app(self.settings, scoring=self.service)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self.service.reconfigure(user_config)

    async def check_health(self) -> None:
        if self.service.started and not self.service.replica.running("flusher"):
            raise RuntimeError("the spool flusher stopped")


def build_app(args: dict[str, Any] | None = None) -> Any:
    """``import_path: sira.http.deployment:build_app`` — the Serve application; ``args`` is a ServingConfig."""
    ServingConfig.from_dict(args)  # fail at deploy time, not in every replica
    return SiraIngress.bind(args or {})


DEPLOYMENT_OPTIONS = ("num_replicas", "autoscaling_config", "max_ongoing_requests", "max_queued_requests",
                      "ray_actor_options", "user_config", "graceful_shutdown_timeout_s", "graceful_shutdown_wait_loop_s",
                      "health_check_period_s", "health_check_timeout_s", "logging_config")


def check_options(path: Path, options: dict[str, Any]) -> None:
    """The deployment options' values, checked with Ray Serve's own schema (``DeploymentSchema``, which holds
    ``autoscaling_config`` as a mapping, and ``AutoscalingConfig`` for that mapping), without starting Ray: a
    file Serve would refuse (max_replicas under min_replicas, a negative target, num_cpus "lots") is
    invalid_config here, naming the option, not a failure of ``sira serve`` once Ray is up."""
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema

    checks: list[tuple[str, Any, dict[str, Any]]] = [("", DeploymentSchema, {"name": "sira", **options})]
    if isinstance(options.get("autoscaling_config"), dict):
        checks.append(("autoscaling_config", AutoscalingConfig, options["autoscaling_config"]))
    for where, schema, given in checks:
        try:
            schema.model_validate(given)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            parts, node = [where] if where else [], given
            for key in error["loc"]:  # the keys the file has (not pydantic's union branch tags)
                if not isinstance(node, dict) or key not in node:
                    break
                parts.append(str(key))
                node = node[key]
            name = ".".join(parts) or "the deployment"
            raise InvalidInput(f"{path}: deployment option {name}: {error['msg'].removeprefix('Value error, ')}",
                               code="invalid_config", details={"field": name}) from None


@dataclass(frozen=True)
class ServeSpec:
    """What a serve_configs/*.yaml file asks for, checked."""

    host: str
    port: int
    args: dict[str, Any]
    options: dict[str, Any]
    route_prefix: str = "/"

    @classmethod
    def from_file(cls, path: Path) -> "ServeSpec":
        """A Serve config file, checked as Ray Serve and SIRA read it (unknown options and settings refused)."""
        from sira.core.files import read_yaml

        try:
            data = read_yaml(path, code="invalid_config") or {}
        except NotFound:
            raise InvalidInput(f"no Serve config at {path}", code="invalid_config") from None

        def shaped(value: Any, kind: type, where: str) -> Any:  # a level of the file, of the type Serve reads
            if not isinstance(value, kind):
                raise InvalidInput(f"{path}: {where} must be a {'mapping' if kind is dict else 'list'}",
                                   code="invalid_config")
            return value

        shaped(data, dict, "the file")
        apps = shaped(data.get("applications") or [], list, "applications")
        sira_apps = [a for a in apps if isinstance(a, dict) and a.get("import_path") == "sira.http.deployment:build_app"]
        if len(sira_apps) != 1:
            raise InvalidInput(f"{path}: expected one application with import_path sira.http.deployment:build_app",
                               code="invalid_config")
        app = sira_apps[0]
        deployments = shaped(app.get("deployments") or [{}], list, "deployments")
        options = {k: v for k, v in shaped(deployments[0], dict, "a deployment").items() if k != "name"}
        unknown = sorted(set(options) - set(DEPLOYMENT_OPTIONS))
        if unknown:
            raise InvalidInput(f"{path}: unknown deployment option(s) {', '.join(unknown)}", code="invalid_config")
        check_options(path, options)
        ServingConfig.from_dict(app.get("args"))
        ServingConfig.from_dict(options.get("user_config"))
        http = shaped(data.get("http_options") or {}, dict, "http_options")
        port = http.get("port", 8000)
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise InvalidInput(f"{path}: http_options.port must be a port number (got {port!r})", code="invalid_config")
        return cls(http.get("host", "127.0.0.1"), port, dict(shaped(app.get("args") or {}, dict, "args")), options,
                   app.get("route_prefix", "/"))

    @classmethod
    def local(cls) -> "ServeSpec":
        """serve_configs/local.yaml, as installed with the package (``sira/http/local.yaml`` is that file):
        ``sira serve`` finds it whatever the current folder, in a checkout or from a wheel."""
        from importlib.resources import as_file, files

        with as_file(files("sira.http").joinpath("local.yaml")) as path:
            return cls.from_file(path)

    def application(self, **overrides: Any) -> Any:
        """The bound Serve application with this spec's deployment options (``overrides`` win)."""
        ServingConfig.from_dict(self.args)
        options = {**self.options, **overrides}
        if "num_replicas" in options and "autoscaling_config" in options:
            options.pop("autoscaling_config" if options["num_replicas"] != "auto" else "num_replicas")
        return SiraIngress.options(**options).bind(self.args)


def run_local(settings: Settings, spec: ServeSpec, *, host: str | None = None, port: int | None = None,
              progress: Any = print) -> str:
    """Start SIRA's Serve application on the local Ray (HAProxy ingress: see ``init_ray``) and return its URL."""
    from sira.core.ray_runtime import init_ray, metrics_url

    init_ray(settings, db.resolve_dsn(settings))
    host, port = host or spec.host, port or spec.port
    # serve.run after serve.start logs "Connecting to existing Serve app ... New http_options will not be
    # applied" (they were: serve.start applied them), and INFO lines SIRA says better below.
    serve_log = logging.getLogger("ray.serve")
    level = serve_log.level
    serve_log.setLevel(logging.WARNING)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(spec.application(), name="sira", route_prefix=spec.route_prefix, blocking=False)
    finally:
        serve_log.setLevel(level)
    url = f"http://{host}:{port}"
    progress(f"SIRA is serving at {url} (OpenAPI: {url}/docs)")
    metrics = metrics_url()
    if metrics:  # Ray's metrics agent exports the replicas' series, summed and prefixed with ray_
        progress(f"metrics: {metrics} (the replicas' series, ray_sira_*) and {url}/metrics (models, drift, "
                 "live performance, jobs: sira_*; open, no key, as /healthz); docs/observability.md")
    return url
