"""SIRA's one settings object.

Every setting is read from the environment with the ``SIRA_`` prefix (or a
``.env`` file in the working directory) through :func:`get_settings`. Nothing
here touches the disk, the network or the database at import time.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sira.core.errors import ConfigError

log = logging.getLogger(__name__)

MAX_VERSION = 2**31 - 1  # sira_model_versions.version is a PostgreSQL integer

SECRET_NAMES = ("pii_key", "auth_secret", "webhook_secret")
# The shortest key SIRA accepts (UTF-8 bytes, surrounding whitespace not counted), given or in a file: an HMAC key
# of a few characters (or none: an empty SIRA_PII_KEY tokenised with HMAC(b"", ...)) can be guessed. SIRA's own
# generated secrets are 43 characters.
MIN_SECRET_BYTES = 16


class Settings(BaseSettings):
    """Configuration of one SIRA installation (CLI, API, Ray workers and replicas alike)."""

    model_config = SettingsConfigDict(
        env_prefix="SIRA_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    workspace: Path = Field(
        default=Path(".sira"),
        description="Folder for local state: embedded Postgres handle, artifacts, spools, generated secrets.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL DSN (14+). Unset: SIRA starts its own embedded Postgres (pgserver).",
    )
    embedded_pg_dir: Path | None = Field(
        default=None,
        description="Data folder of the embedded Postgres. Unset: <workspace>/postgres, or "
        "/var/lib/sira/<workspace-id>/pgdata when running as root (see docs/configuration.md).",
    )
    db_pool_min: Annotated[int, Field(ge=0, le=100)] = 1
    db_pool_max: Annotated[int, Field(ge=1, le=500)] = 10
    db_command_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    redis_url: str | None = Field(
        default=None, description="Redis URL for the online cache and event stream. Unset: no Redis."
    )
    redis_password_file: Path | None = Field(
        default=None, description="File holding the Redis password, for a URL written without it (a Ray job's "
        "runtime env carries the URL without its password: the cluster's nodes name this file).")
    stream_retention_s: Annotated[float, Field(ge=0, le=31_536_000)] = Field(
        default=0.0, description="Seconds an event stays on the Redis stream sira:events after every consumer "
        "group has acknowledged it (for replay); 0: deleted as soon as all have. Entries hold the producers' raw "
        "events, personal data included.",
    )
    artifact_uri: str | None = Field(
        default=None,
        description="Where model artifacts live: a folder or s3://bucket/prefix. Unset: <workspace>/artifacts.",
    )
    s3_kms_key_id: str | None = Field(
        default=None, description="KMS key id for SSE-KMS on s3:// artifact stores."
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint for s3:// artifact stores (MinIO, tests). Unset: AWS."
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster to join (also RAY_ADDRESS). Unset: a private local Ray.",
    )
    ray_num_cpus: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="CPUs for the private local Ray. Unset: all of the machine's."
    )
    # Kafka (sira ingest --kafka; docs/features.md): the client's security, secrets from files only
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How the Kafka client talks to the brokers.")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism (with SASL_PLAINTEXT or SASL_SSL).")
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password_file: Path | None = Field(default=None, description="File holding the SASL password.")
    kafka_ssl_ca_file: Path | None = Field(default=None, description="CA certificates (PEM) the brokers' are checked "
                                           "against (SSL, SASL_SSL); unset: the system's.")
    kafka_ssl_cert_file: Path | None = Field(default=None, description="Client certificate (PEM), for mutual TLS.")
    kafka_ssl_key_file: Path | None = Field(default=None, description="Client key (PEM), for mutual TLS.")
    kafka_ssl_key_password_file: Path | None = Field(default=None, description="File holding the client key's "
                                                     "password.")
    kafka_properties_file: Path | None = Field(default=None, description="A librdkafka properties file (key=value "
                                               "lines) applied after the settings above; its secrets stay in the file.")
    kafka_unreachable_s: Annotated[float, Field(gt=0)] = Field(
        default=120.0, description="sira ingest --kafka stops (kafka_unavailable) when no broker has answered "
        "for this long.")
    stream_metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None, description="Port of the stream consumer's Prometheus endpoint (sira_stream_*). Unset: 8091, "
        "or a free port when 8091 is taken; `sira ingest --stream` prints it.",
    )
    ray_metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None, description="Port of the private local Ray's Prometheus endpoint, where SIRA's metrics "
        "(ray_sira_*) are exported. Unset: 8090, or a free port when 8090 is taken; `sira serve` prints it.",
    )
    pii_key: SecretStr | None = Field(
        default=None,
        description="HMAC key that tokenises PII. Unset: generated once into <workspace>/secrets/.",
    )
    pii_key_file: Path | None = Field(default=None, description="File holding the PII HMAC key.")
    auth_secret: SecretStr | None = Field(
        default=None,
        description="Server-side pepper for API key hashes, and the key of prediction ids. Unset: generated once "
        "into <workspace>/secrets/.",
    )
    auth_secret_file: Path | None = Field(default=None, description="File holding the auth pepper.")
    events_max_batch: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=1_000, description="Most events one POST /v1/events call may carry."
    )
    max_string_length: Annotated[int, Field(ge=256, le=1_000_000)] = Field(
        default=4_096, description="Longest string (characters) in any field of an event or a scoring request, "
        "nested attributes and field names included; longer: refused with field_too_long.",
    )
    max_body_bytes: Annotated[int, Field(ge=65_536, le=1_073_741_824)] = Field(
        default=4_194_304, description="Largest HTTP request body (bytes); larger: 413 body_too_large before it "
        "is read.",
    )
    api_host: str = Field(default="127.0.0.1", description="Address `sira api` listens on.")
    api_port: Annotated[int, Field(ge=1, le=65_535)] = Field(default=8000, description="Port of `sira api`.")
    trusted_proxies: str = Field(
        default="", description="Comma-separated addresses or networks (10.0.0.5, 10.0.0.0/8) of the proxies whose "
        "X-Forwarded-For and X-Forwarded-Proto are believed: the client address the audit log keeps. Unset: none "
        "(a client's own header is never taken for its address).")
    jwt_issuer: str | None = Field(default=None, description="Accept JWT bearer tokens from this issuer (iss).")
    jwt_audience: str | None = Field(default=None, description="The audience (aud) JWTs must name.")
    jwt_public_key_file: Path | None = Field(default=None, description="PEM public key that signs the JWTs.")
    jwt_jwks_file: Path | None = Field(default=None, description="JWKS file with the keys that sign the JWTs.")
    jwt_roles_claim: str = Field(default="roles", description="The claim that lists a token's SIRA roles.")
    jwt_algorithms: str = Field(default="RS256,ES256", description="Accepted JWT signature algorithms.")
    jwt_leeway_s: Annotated[float, Field(ge=0, le=600)] = Field(
        default=30.0, description="Seconds of clock skew allowed between SIRA and the identity service when a JWT's "
        "exp, nbf and iat are checked.")
    jwt_max_lifetime_s: Annotated[float, Field(gt=0, le=31_536_000)] = Field(
        default=86_400.0, description="Longest a JWT may live (exp - iat, or exp - now without iat); longer: "
        "refused (401), as a leaked token would work for as long.")
    webhook_urls: str | None = Field(
        default=None, description="Comma-separated URLs told of promotion requests, decisions and production changes."
    )
    webhook_secret: SecretStr | None = Field(default=None, description="HMAC key that signs webhook bodies.")
    webhook_secret_file: Path | None = Field(default=None, description="File holding the webhook key.")
    notify_receivers_file: Path | None = Field(
        default=None, description="YAML naming the receivers a model's `notify` setting may list (Slack, PagerDuty "
        "change events, signed SIRA webhooks), with the files that hold their URLs and keys.")
    webhook_max_attempts: Annotated[int, Field(ge=1, le=100)] = 8
    webhook_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    pending_label_ttl_days: Annotated[float, Field(gt=0, le=3650)] = Field(
        default=30.0, description="Days a label for an event not (yet) stored waits for its event; after that it "
        "expires into sira_rejected_events (reason pending_label_expired).")
    log_level: str = Field(default="WARNING", description="Python log level for SIRA's loggers.")
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines of the CLI, jobs and `sira api`: text, or one JSON object a line "
        "(ts, level, logger, message, request_id, exception). Serve replicas log in Serve's format: set "
        "`logging_config: {encoding: JSON}` in the serve config for JSON there.")
    # Data retention (`sira retention plan|apply`, docs/security.md#retention): days each kind of row is kept.
    retention_events_days: Annotated[int, Field(ge=60, le=36_500)] = Field(
        default=400, description="Days events are kept (by event time), and with them their per-event feature "
        "rows; feature states and checkpoints reach the feature sets' longest lookback further back.")
    retention_labels_days: Annotated[int, Field(ge=60, le=36_500)] = Field(
        default=400, description="Days a label is kept, by when it became known, once neither its event nor its "
        "prediction is stored any more (a label of a stored event or prediction is kept with it).")
    retention_predictions_days: Annotated[int, Field(ge=30, le=36_500)] = Field(
        default=400, description="Days predictions are kept (by when they were scored): a monthly partition goes "
        "whole once its month ended that long ago.")
    retention_dead_letters_days: Annotated[int, Field(ge=7, le=36_500)] = Field(
        default=90, description="Days dead letters (sira_rejected_events) and a spool's refused records are kept.")
    retention_request_claims_days: Annotated[int, Field(ge=31, le=3_650)] = Field(
        default=31, description="Days serving's request claims are kept (never less than the longest "
        "idempotency window a serving config accepts, 30 days).")
    retention_audit_log_days: Annotated[int, Field(ge=365, le=36_500)] = Field(
        default=2_557, description="Days audit entries are kept (7 years); older ones leave only through "
        "`sira retention apply --archive-audit`, into a JSON Lines file in the workspace.")
    retention_retired_feature_sets_days: Annotated[int, Field(ge=0, le=36_500)] = Field(
        default=90, description="Days after its last model version was archived that a feature set no model "
        "uses keeps its feature rows, states and checkpoints (a rollback to that version needs them).")
    retention_monitoring_days: Annotated[int, Field(ge=0, le=3_650)] = Field(
        default=90, description="Days before a production or staging version's newest prediction, beyond its "
        "model's label maturity, whose events, labels and predictions are kept whatever the settings above.")

    @field_validator("workspace", "embedded_pg_dir", "pii_key_file", "auth_secret_file", "webhook_secret_file",
                     "notify_receivers_file",
                     "jwt_public_key_file", "jwt_jwks_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Ray workers run in other folders: every path a worker may receive is absolute.
        return None if value is None else value.expanduser().resolve()

    @field_validator("pii_key", "auth_secret", "webhook_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # set, even to "" or " ", a value is the key (it wins over the *_FILE setting): never a blank or short one
        problem = None if value is None else secret_problem(value.get_secret_value())
        if problem:
            raise ValueError(f"set, but {problem}; or unset it")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        scheme = value.get_secret_value().split("://", 1)[0]
        if scheme not in ("postgres", "postgresql"):
            raise ValueError("must be a postgresql:// DSN")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if value.split("://", 1)[0] not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _redis_password(self) -> "Settings":
        if self.redis_url and self.redis_password_file is not None:
            from urllib.parse import quote, urlsplit, urlunsplit

            parts = urlsplit(self.redis_url)
            if parts.password is None and parts.scheme != "unix":
                password = quote(read_secret_file(self.redis_password_file, "SIRA_REDIS_PASSWORD_FILE"), safe="")
                self.redis_url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{password}@"
                                                                  f"{parts.netloc.rpartition('@')[2]}"))
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        import ipaddress

        entries = [e.strip() for e in value.split(",") if e.strip()]
        for entry in entries:  # uvicorn would take a typo for a host name that never matches, silently
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return ",".join(entries)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @model_validator(mode="after")
    def _ray_address_fallback(self) -> "Settings":
        if self.ray_address is None and os.environ.get("RAY_ADDRESS"):
            self.ray_address = os.environ["RAY_ADDRESS"]
        return self

    @property
    def webhook_url_list(self) -> list[str]:
        urls = [u.strip() for u in (self.webhook_urls or "").split(",") if u.strip()]
        for n, url in enumerate(urls, 1):
            if not url.startswith(("http://", "https://")):  # the URL itself is a credential: never shown
                raise ConfigError(f"SIRA_WEBHOOK_URLS: entry {n} of {len(urls)} is not an http(s) URL")
        return urls

    # -- derived locations -------------------------------------------------

    @property
    def artifact_location(self) -> str:
        """The artifact store: ``artifact_uri`` or ``<workspace>/artifacts``."""
        if self.artifact_uri:
            if "://" in self.artifact_uri and not self.artifact_uri.startswith("file://"):
                return self.artifact_uri
            return str(Path(self.artifact_uri.removeprefix("file://")).expanduser().resolve())
        return str(self.workspace / "artifacts")

    @property
    def embedded_pg_data(self) -> Path:
        """Data folder of the embedded Postgres for this workspace."""
        if self.embedded_pg_dir is not None:
            return self.embedded_pg_dir
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # As root, pgserver runs Postgres as a service user and opens every
            # parent folder of the data directory to it. Keep the data under
            # /var/lib/sira, whose parents are world-readable already, rather
            # than loosening the permissions of the user's checkout.
            return Path("/var/lib/sira") / workspace_id(self.workspace) / "pgdata"
        return self.workspace / "postgres"

    def secret(self, name: str) -> str:
        """Value of a secret setting: the env value, else its file, else one generated into the workspace."""
        if name not in SECRET_NAMES:
            raise KeyError(name)
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        path: Path | None = getattr(self, f"{name}_file")
        if path is not None:
            text = read_secret_file(path, f"SIRA_{name.upper()}_FILE")
            problem = secret_problem(text)
            if problem:
                raise ConfigError(f"SIRA_{name.upper()}_FILE: the key in {path} is {problem}")
            return text
        path = self.workspace / "secrets" / name
        if name != "auth_secret" or self.database_url is None:
            return _generated_secret(path, self.workspace)
        # A process with a workspace of its own (a container's emptyDir, a new host) beside a database another
        # process already uses: keys made there were hashed with another pepper, and "invalid API key" reads as
        # a bad key. Said where it happens, once the secret is written. (A PII key generated so tokenises
        # differently: docs/configuration.md)
        return _generated_secret(path, self.workspace, lambda: log.warning(
            "SIRA_AUTH_SECRET and SIRA_AUTH_SECRET_FILE are unset: generating a new auth secret into %s, while "
            "SIRA_DATABASE_URL names a database other processes may use: API keys made by them will not match here "
            "(`invalid API key`); give every process the installation's SIRA_AUTH_SECRET_FILE "
            "(docs/configuration.md#secrets)", path))

    def check_secrets(self) -> None:
        """Read every secret the settings name (a value, a file), as a process that serves needs them: a
        :class:`ConfigError` now, before it starts, for a file that cannot be read or a key too short. One left
        unset is generated when first used."""
        for name in SECRET_NAMES:
            if getattr(self, name) is not None or getattr(self, f"{name}_file") is not None:
                self.secret(name)


def workspace_id(workspace: Path) -> str:
    """A short stable id for a workspace folder (used to name its embedded Postgres)."""
    import hashlib

    digest = hashlib.sha256(str(workspace).encode()).hexdigest()[:12]
    return f"{workspace.name.strip('.') or 'ws'}-{digest}"


def read_secret_file(path: Path, what: str) -> str:
    """A secret kept in a file (its surrounding whitespace dropped): a :class:`ConfigError` naming ``what``
    when it cannot be read or is empty; the value never appears in a message."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or type(exc).__name__}") from None
    if not text:
        raise ConfigError(f"{what} is empty")
    return text


def secret_problem(value: str) -> str | None:
    """What is wrong with a secret's value, if anything: blank, or under :data:`MIN_SECRET_BYTES` (whitespace
    around it not counted). Never the value itself."""
    length = len(value.strip().encode())
    if length >= MIN_SECRET_BYTES:
        return None
    return (f"{'empty' if not length else f'{length} bytes long'}: a key needs at least {MIN_SECRET_BYTES} bytes "
            "(`python -c 'import secrets; print(secrets.token_urlsafe(32))'` makes one)")


def _generated_secret(path: Path, workspace: Path, created: Callable[[], None] | None = None) -> str:
    """Read a workspace secret, creating it (mode 0600) the first time it is needed (then ``created()``). A workspace
    that cannot hold it (a file on its path, a read-only or virtual file system) is a :class:`ConfigError` naming
    SIRA_WORKSPACE; until 2026-12-07 it was ``internal: NotADirectoryError``, exit 1, after the warning that a
    secret was being generated."""
    try:
        if path.exists():
            return path.read_text(encoding="utf-8").strip()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race: use its secret
            return path.read_text(encoding="utf-8").strip()
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"SIRA_WORKSPACE {workspace} cannot be written ({reason})",
                          details={"path": str(exc.filename or path)}) from None
    if created is not None:
        created()
    return token


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    try:
        return Settings()
    except Exception as exc:  # pydantic ValidationError: make it one clear line
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "settings"
            raise ConfigError(f"SIRA_{field.upper()}: {first['msg'].removeprefix('Value error, ')}") from None
        raise


def reset_settings() -> None:
    """Forget the cached settings (tests and long-lived processes that changed the environment)."""
    get_settings.cache_clear()
