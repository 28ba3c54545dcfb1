"""The one place that decides how SIRA starts or joins Ray.

- ``SIRA_RAY_ADDRESS`` (or ``RAY_ADDRESS``) set: join that cluster (this is
  what ``ray job submit`` gives a job's driver).
- Otherwise: a private local Ray with ``address="local"``, never silently
  joining whatever ``ray start`` left running on the machine.

Workers and Serve replicas receive SIRA's settings as ``runtime_env``
environment variables: the resolved database DSN (so the embedded Postgres
is shared), absolute workspace and artifact paths, Redis URL, and the paths
of secret files, never secret values themselves.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sira.core.config import Settings

log = logging.getLogger(__name__)

# Run by every worker process of SIRA's Ray before its first task: numba and the feature engine imported in the
# worker's main thread with no task to cancel. A Ray Data task cancelled (a pipeline ended early: a batch run
# stopped, a failed run) while its first import of numba ran left numba half-imported in that worker, returned
# to the pool, and every later task there failed on deserialising its arguments ("module 'numba' has no
# attribute 'core'": the training set and batch scoring in the full suite). ~0.3 s per worker process.
WORKER_SETUP_HOOK = "sira.features.engine.prepare_worker"

# Folders that never travel with `--working-dir` uploads (cluster.yaml's rsync_exclude holds them too).
WORKING_DIR_EXCLUDES = [".venv/", ".sira/", "data/", "*.parquet", ".git/", "__pycache__/", ".pytest_cache/",
                        ".hypothesis/"]
# Tools' caches, left out too whether or not a .gitignore is read: a 145 MB .mypy_cache made Ray refuse the upload
# (413) after the job's key was minted.
CACHE_EXCLUDES = [".mypy_cache/", ".ruff_cache/", ".tox/", ".nox/", "node_modules/"]


LOCAL_SERVE_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                   "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}
# HAProxy's own listeners (Prometheus metrics, stats page) default to fixed ports: a second local Serve
# on the machine (`sira serve` beside `make demo`, or a test run) failed to start on them. Taking the defaults
# where free when Ray starts was not enough: Serve starts HAProxy later (a demo's ingest and tuning first), and
# another local Serve bound them meanwhile ("cannot bind socket ... [0.0.0.0:9101]", seen in the full suite).
HAPROXY_PORTS = {"RAY_SERVE_HAPROXY_METRICS_PORT": 9101, "RAY_SERVE_HAPROXY_STATS_PORT": 8404}
# HAProxy's backup server, Serve's fallback proxy (it answers while no replica is ready: a replica starting,
# scaled to zero), listens on a fixed port too (8500, gRPC 9500), and with SO_REUSEPORT: every local Serve on
# the machine bound it at once, the kernel spread the connections among them, and one SIRA answered another's
# callers (their bearer keys included). It has no reason to be a known port: each local Ray takes ones the
# kernel hands out, not a default that is free now and bound by another SIRA a moment later.
FALLBACK_PROXY_PORTS = ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")


# The local Ray's Prometheus endpoint (SIRA's per-replica series, ray_sira_*), where it is free: a fixed
# address a new user finds in the docs, not a random port found in Ray's session folder.
METRICS_PORT = 8090


def free_port(default: int) -> int:
    """``default`` where nothing listens on it, else a free port (``0``: a port the kernel hands out)."""
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", default))
        except OSError:
            probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]


def metrics_port(given: int | None) -> int:
    """The local Ray's metrics port: ``SIRA_RAY_METRICS_PORT`` (``given``), refused at once when taken (Ray waited
    ~40 s for its agent and failed, "The current node timed out during startup", exit 1, until 2026-12-07),
    else :data:`METRICS_PORT` where free, else one the kernel hands out."""
    import errno
    import socket

    from sira.core.errors import ConfigError

    if given is None:
        return free_port(METRICS_PORT)
    with socket.socket() as probe:  # as `sira serve` checks its port (sira.cli.serve.ensure_port_free)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", given))
        except OSError as exc:
            used = exc.errno == errno.EADDRINUSE
            raise ConfigError(f"SIRA_RAY_METRICS_PORT {given} " + ("is in use (another SIRA's Ray, or another program)"
                              if used else f"cannot be listened on ({exc.strerror})") + ": free it, name another "
                              "port, or unset it (8090, else a free port)", code="port_in_use" if used
                              else "port_unavailable", details={"host": "0.0.0.0", "port": given}) from None
    return given


def haproxy_ports() -> dict[str, str]:
    """The ports of a local Serve's HAProxy listeners and of its backup server (the fallback proxy): ports the
    kernel hands to this Ray, never the defaults another local Serve may bind first. What is set in the
    environment is left alone."""
    ports = {name: str(free_port(0)) for name in (*HAPROXY_PORTS, *FALLBACK_PROXY_PORTS)}
    return {name: port for name, port in ports.items() if name not in os.environ}


def worker_env(settings: Settings, dsn: str) -> dict[str, str]:
    """Environment variables that give a Ray worker the same SIRA installation as the driver."""
    env = {
        "SIRA_DATABASE_URL": dsn,
        "SIRA_WORKSPACE": str(settings.workspace),
        "SIRA_ARTIFACT_URI": settings.artifact_location,
        "SIRA_LOG_LEVEL": settings.log_level,
        # input bounds: the driver's checks and the workers' must agree
        "SIRA_MAX_STRING_LENGTH": str(settings.max_string_length),
        "SIRA_MAX_BODY_BYTES": str(settings.max_body_bytes),
    }
    if settings.redis_url:
        env["SIRA_REDIS_URL"] = settings.redis_url
    if settings.trusted_proxies:  # a Serve replica's HTTP server believes X-Forwarded-For from these only
        env["SIRA_TRUSTED_PROXIES"] = settings.trusted_proxies
    if settings.s3_kms_key_id:
        env["SIRA_S3_KMS_KEY_ID"] = settings.s3_kms_key_id
    if settings.s3_endpoint_url:  # an S3-compatible store (MinIO, ...): without it workers went to AWS
        env["SIRA_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    for name in ("pii_key_file", "auth_secret_file", "redis_password_file"):
        path = getattr(settings, name)
        if path is not None:
            env[f"SIRA_{name.upper()}"] = str(path)
    for name in FORWARDED:  # a stream job's source settings (Kafka's secrets are file paths)
        value, default = getattr(settings, name), type(settings).model_fields[name].default
        if value is not None and value != default:
            env[f"SIRA_{name.upper()}"] = str(value)
    return env


# Settings a submitted stream consumer needs as its submitter has them: without them a job submitted with
# SIRA_KAFKA_SECURITY_PROTOCOL=SASL_SSL set talked PLAINTEXT to the brokers, and a Redis consumer trimmed
# acknowledged entries at once whatever the retention.
FORWARDED = ("kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password_file",
             "kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file", "kafka_ssl_key_password_file",
             "kafka_properties_file", "stream_retention_s", "stream_metrics_port")


def init_ray(settings: Settings, dsn: str, *, num_cpus: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """Start or join Ray for SIRA; returns the runtime context's address info.

    Already initialised (a test session, a Ray job driver): reuse it as is.
    """
    import ray

    if not sys.stderr.isatty():
        # Off a terminal Ray Data turns progress bars into INFO log lines: keep stderr readable.
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return {"address": ray.get_runtime_context().gcs_address, "joined": True}
    address = settings.ray_address
    # Joining a cluster (SIRA_RAY_ADDRESS): the driver's runtime env is listed to anyone who can list jobs
    # (`ray list jobs --detail`, the dashboard), so it carries no password, as a submitted job's does
    runtime_env: dict[str, Any] = {"env_vars": shared_env(settings, dsn) if address else worker_env(settings, dsn),
                                   "worker_process_setup_hook": WORKER_SETUP_HOOK}
    # Ray 2.60 turns token auth on for a new local cluster (its token: ~/.ray/auth_token) and says
    # so at WARNING on every command; that is the secure default SIRA wants, not news.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    _log_driver_messages()
    if address:
        log.info("joining Ray at %s", address)
        # A `ray job submit` driver: Ray refuses an env var that the job's own runtime_env already sets
        # ("Specifying the same ... keys is not allowed"); the job's values reach the workers anyway.
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
        given = job.get("env_vars") or {}
        runtime_env = {"env_vars": {k: v for k, v in runtime_env["env_vars"].items() if k not in given},
                       **({} if "worker_process_setup_hook" in job else {"worker_process_setup_hook": WORKER_SETUP_HOOK})}
        with _sigterm_handler_kept():
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, logging_level=logging.WARNING,
                     **kwargs)
    else:
        cpus = num_cpus or settings.ray_num_cpus or os.cpu_count() or 1
        # Read by Serve's processes when they start, so set before the local cluster exists:
        # the HAProxy ingress (a no-op measured 2-3x faster than the default proxy, MEASURED.md),
        # Serve's throughput-optimised mode (user code on the replica's own loop, request-path logs
        # buffered, no stderr copy of them: a SIRA replica's CPU per request 2.67 -> 1.71 ms, #22,
        # docs/performance.md), and a short drain of ingress replicas on shutdown (Serve's default, 30 s, made every
        # `serve.shutdown()` of a local run wait 30 s). A cluster's own environment decides there.
        for name, value in LOCAL_SERVE_ENV.items():
            os.environ.setdefault(name, value)
        if "_metrics_export_port" not in kwargs:
            kwargs["_metrics_export_port"] = metrics_port(settings.ray_metrics_port)
        # The ports chosen here are this Ray's: its processes inherit them as Ray starts, and they leave this
        # process's environment after, so a SIRA started from it (a child `sira serve`) chooses its own rather
        # than taking them for the operator's. Serve's proxies (the fallback one) run uvicorn, which believes
        # X-Forwarded-For from 127.0.0.1 by default, where HAProxy passes a client's own header on: they
        # believe the proxies SIRA_TRUSTED_PROXIES names only (SiraIngress tells its replica's server the same).
        with _environ({**haproxy_ports(), "FORWARDED_ALLOW_IPS": settings.trusted_proxies}), _sigterm_handler_kept():
            ray.init(
                address="local",
                num_cpus=cpus,
                include_dashboard=False,
                runtime_env=runtime_env,
                log_to_driver=False,
                logging_level=logging.WARNING,
                **kwargs,
            )
    return {"address": ray.get_runtime_context().gcs_address, "joined": bool(address)}


@contextmanager
def _sigterm_handler_kept() -> Iterator[None]:
    """A SIGTERM handler the caller set (``sira serve``'s: stop Serve, say so, exit 0) kept while Ray starts,
    and put back once it has. ``ray.init`` replaces it with Ray's own (``sys.exit(15)``: a SIGTERM in the
    seconds after it ended ``sira serve`` with status 15, nothing said and Serve not shut down), and the driver's
    C++ core worker installs a crash handler for SIGTERM that prints a stack trace before passing it on (134
    under load); setting the handler again after ``ray.init`` removes that one. Without a handler of the
    caller's (Python's default), Ray's are left alone."""
    import signal
    import threading

    handler = signal.getsignal(signal.SIGTERM)
    if not callable(handler) or threading.current_thread() is not threading.main_thread():
        yield
        return
    from ray._private import utils as ray_utils

    replace = ray_utils.set_sigterm_handler  # looked up by ray.init at its call (Ray 2.60)
    ray_utils.set_sigterm_handler = lambda _handler: None
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = replace
        signal.signal(signal.SIGTERM, handler)


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment for the block, what was there before after it."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _log_driver_messages() -> None:
    """Route the errors the cluster pushes to this driver into the log.

    Ray's driver prints them ("(raylet) Task ServeController.graceful_shutdown failed ... killed by
    `ray.kill`" at every Serve shutdown) on **stdout**, in ANSI colours, whatever ``log_to_driver``
    says; stdout is for a command's result (``--json``). They go to the ``ray.driver`` logger at INFO
    (shown with ``sira --debug``; Ray's own logs keep them too): a failure that matters reaches SIRA as
    an exception and is reported as one line. Ray 2.60 has no option for this, so its module's printer
    is wrapped (``listen_error_messages`` looks it up at each message).
    """
    from ray._private import worker as ray_worker

    printer = ray_worker.print_to_stdstream
    if getattr(printer, "sira_wrapped", False):
        return
    driver_log = logging.getLogger("ray.driver")

    def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            for line in data.get("lines") or []:
                driver_log.info("%s", line)
            return
        printer(data, ignore_prefix)

    print_to_stdstream.sira_wrapped = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = print_to_stdstream


def quiet_ray_data() -> Any:
    """This process's Ray Data context, with Ray Data's own progress output off: its bars (or, off a
    terminal, a status block logged every 10 s), the plan printed at each start, and the warning that
    its bars are disabled. SIRA's commands show their own progress (:mod:`sira.core.progress`)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray.data._internal.progress", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return ctx


@contextmanager
def ray_data_errors_unlogged() -> Iterator[None]:
    """Ray Data logs a failed task's whole traceback (~150 lines) on the console before raising it;
    the caller reports the error itself (the CLI in one line). ``--debug`` (root logger at DEBUG)
    keeps Ray's console log; Ray Data's log file keeps it always."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    console = [h for h in logging.getLogger("ray.data").handlers
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    drop = _BelowError()
    for handler in console:
        handler.addFilter(drop)
    try:
        yield
    finally:
        for handler in console:
            handler.removeFilter(drop)


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def wait_for_cpus(need: float, wait_s: float, purpose: str) -> None:
    """Return once ``need`` CPUs can be scheduled; else fail after ``wait_s`` with a clear reason. Ray Tune (like
    Ray Data) would wait forever, silently, while Serve replicas or other jobs hold every CPU. The wait is a
    task asking for those CPUs: pending demand, which an autoscaler answers by adding a node."""
    import ray

    from sira.core.errors import ServiceUnavailable

    free = float(ray.available_resources().get("CPU", 0))
    if free + 1e-9 >= need:
        return
    log.warning("%.2f CPUs free; %s needs %.2f: waiting up to %.0f s for CPUs", free, purpose, need, wait_s)
    probe = ray.remote(num_cpus=need, max_retries=0)(_started).remote()
    ready, _ = ray.wait([probe], timeout=wait_s)
    if not ready:
        ray.cancel(probe, force=True)
        raise ServiceUnavailable(
            f"no CPU free for {purpose} after {wait_s:.0f} s (the cluster has "
            f"{ray.cluster_resources().get('CPU', 0):g} CPUs; Serve replicas or other jobs hold them): "
            "free some, add a node or try later")


def _started() -> bool:
    return True


def task_cause(exc: BaseException) -> BaseException:
    """The SIRA error a Ray task raised, else the task's own exception (Ray wraps it), else ``exc``."""
    from sira.core.errors import sira_cause

    found = sira_cause(exc)
    if found is not None:
        return found
    inner = getattr(exc, "cause", None)
    return inner if isinstance(inner, BaseException) else exc


def metrics_url() -> str | None:
    """This node's Prometheus endpoint (Ray's metrics agent), where SIRA's metrics are exported with Ray's
    prefix (``ray_sira_*``); None before Ray is started here."""
    import ray

    if not ray.is_initialized():
        return None
    node = ray._private.worker.global_worker.node  # the node this driver runs on
    assert node is not None  # set once Ray is initialised
    return f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"


def submission_id() -> str | None:
    """The Ray job's submission id when running as one (``ray job submit`` puts it in the driver's job
    config); None in a process of its own."""
    config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return (config.get("metadata") or {}).get("job_submission_id") or None


def job_id() -> str:
    """The Ray job's submission id when running as one, else a fresh local id."""
    return submission_id() or f"local-{uuid.uuid4().hex[:12]}"


# -- inside Ray ---------------------------------------------------------------------------


def replica_logging(level: str) -> None:
    """SIRA's loggers in a Serve replica at ``level`` (``SIRA_LOG_LEVEL``), written where Serve writes the
    replica's own log (its file under the session's ``logs/serve/``, with the request id; stderr too where Serve
    writes there). A worker's root logger has no handler: until 2026-12-07 an INFO or DEBUG line of SIRA's in a
    replica went nowhere whatever SIRA_LOG_LEVEL said, and a warning reached the log as unformatted stderr."""
    sira_log = logging.getLogger("sira")
    sira_log.setLevel(level)
    for handler in logging.getLogger("ray.serve").handlers:
        if handler not in sira_log.handlers:
            sira_log.addHandler(handler)
    sira_log.propagate = not sira_log.handlers  # Serve's handlers, or (outside a replica) the root's


def in_ray_job() -> bool:
    """True in a Ray job's driver or in any Ray worker process: places that must never start an embedded
    PostgreSQL of their own (it would be empty, and outlive the job)."""
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return True
    worker = sys.modules.get("ray._private.worker")
    return worker is not None and getattr(worker.global_worker, "mode", None) == worker.WORKER_MODE


# -- submitting jobs ----------------------------------------------------------------------


@dataclass(frozen=True)
class JobKind:
    """A Ray job SIRA ships: its entrypoint (relative to the working dir), what its key must allow, and the
    CPUs its driver reserves (``entrypoint_num_cpus``; 0: none, Ray's default)."""

    script: str
    actions: tuple[str, ...]
    driver_cpus: float = 0.0


JOBS: dict[str, JobKind] = {
    # the driver fits the final model and computes SHAP in its own process (cluster.yaml): a CPU of its own,
    # which also places it on a worker when the head offers none
    "train": JobKind("jobs/train.py", ("models.write",), driver_cpus=1.0),
    "retrain": JobKind("jobs/retrain.py", ("models.write", "promotion.request"), driver_cpus=1.0),
    "batch_score": JobKind("jobs/batch_score.py", ("batch.score",)),
    "drift": JobKind("jobs/drift.py", ("monitoring.run",)),
    "performance": JobKind("jobs/performance.py", ("monitoring.run",)),
    "materialize": JobKind("jobs/materialize.py", ("features.materialize",)),
    "stream": JobKind("jobs/stream.py", ("events.write",)),  # sira ingest --stream | --kafka, until stopped
}
DEFAULT_JOB_ADDRESS = "http://127.0.0.1:8265"
IGNORE_GITIGNORE = "RAY_RUNTIME_ENV_IGNORE_GITIGNORE"  # ray._private.ray_constants


def job_kind(name: str) -> JobKind:
    kind = JOBS.get(name.replace("-", "_"))
    if kind is None:
        from sira.core.errors import InvalidInput

        raise InvalidInput(f"unknown job {name!r}; jobs: {', '.join(JOBS)}", details={"field": "job"})
    return kind


def without_password(dsn: str) -> str:
    """The URL (a PostgreSQL DSN, a Redis URL) with its password removed, in the user part or as a
    ``password=`` query parameter (kept: user, host, port, database and the rest of the query, e.g. a socket
    ``host=``). A runtime env is readable by anyone who can list jobs: the cluster's nodes supply the
    password themselves (``~/.pgpass`` or ``PGPASSWORD``; ``SIRA_REDIS_PASSWORD_FILE``)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(dsn)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in pairs if k.lower() not in ("password", "sslpassword")]
    if parts.password is None and len(query) == len(pairs):
        return dsn
    netloc = parts.netloc
    if parts.password is not None:
        netloc = parts.netloc.rpartition("@")[2]
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


def shared_env(settings: Settings, dsn: str) -> dict[str, str]:
    """:func:`worker_env` for a runtime env others can read (a submitted job's, a driver joining a
    cluster's): SIRA's settings (secrets as file paths), the DSN and the Redis URL without their passwords."""
    env = worker_env(settings, without_password(dsn))
    if "SIRA_REDIS_URL" in env:  # its password too: SIRA_REDIS_PASSWORD_FILE on the nodes
        env["SIRA_REDIS_URL"] = without_password(env["SIRA_REDIS_URL"])
    return env


def job_env_vars(settings: Settings, dsn: str, job_key: str | None) -> dict[str, str]:
    """What a submitted job's runtime env carries: :func:`shared_env` and the job's own short-lived key."""
    env = shared_env(settings, dsn)
    if job_key:
        env["SIRA_API_KEY"] = job_key
    return env


def ray_auth_headers() -> dict[str, str]:
    """The Ray cluster's token as the job client sends it (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
    else ``~/.ray/auth_token``, as Ray's own tools read it); none when no token is to be found."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        try:
            token = path.read_text().strip()
        except OSError:
            token = ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def job_client(address: str) -> Any:
    """Ray's `JobSubmissionClient` for ``address`` with the cluster's token (one line when unreachable)."""
    from ray.job_submission import JobSubmissionClient

    from sira.core.errors import ServiceUnavailable

    try:
        return JobSubmissionClient(address, headers=ray_auth_headers())
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError or its own
        message = " ".join(str(exc).split())[:300]
        raise ServiceUnavailable(f"cannot reach Ray's job server at {address}: {message}",
                                 code="ray_unavailable") from None


def submit_job(client: Any, *, agent_wait_s: float = 90.0, read_gitignore: bool = True, **job: Any) -> str:
    """``client.submit_job(**job)``, waiting out a head that has just started (its job agent not up yet:
    Ray answers 500 "No available agent") instead of failing; Ray's packaging chatter kept off stderr.
    ``read_gitignore`` False: Ray leaves the working dir's ``.gitignore`` unread while it packages it (its
    patterns are in ``excludes`` already: :func:`sira.cli.jobs.working_dir_excludes`)."""
    import time

    quiet = logging.getLogger("ray")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "Uploading package ...", "Ignoring upload ..." on every submission
    saved = os.environ.get(IGNORE_GITIGNORE)
    if not read_gitignore:
        os.environ[IGNORE_GITIGNORE] = "1"  # read by Ray's client as it packages the working dir
    deadline = time.monotonic() + agent_wait_s
    try:
        while True:
            try:
                return client.submit_job(**job)
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
    finally:
        quiet.setLevel(level)
        if saved is None:
            os.environ.pop(IGNORE_GITIGNORE, None)
        else:
            os.environ[IGNORE_GITIGNORE] = saved
