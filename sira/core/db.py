"""PostgreSQL: the embedded server, the connection pool, transactions.

Postgres is SIRA's system of record. With ``SIRA_DATABASE_URL`` set SIRA uses
that server; without it, it runs its own private PostgreSQL from the
``pgserver`` wheel. The embedded server belongs to the workspace: the first
command that needs it starts it, it keeps running across commands, and only
``sira db stop`` stops it. Only the commands that create a workspace (``sira db
migrate``, ``sira db start``, ``sira demo``) create its database: any other, run
where no workspace is (outside the checkout), would have started a second, empty
server and advised migrating it. Its DSN (a Unix socket) is what Ray workers and
Serve replicas receive, so every process of one installation talks to the
same database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias
from urllib.parse import urlsplit

import asyncpg
import orjson

from sira.core.config import Settings
from sira.core.errors import ConfigError, Conflict, DatabaseUnavailable, ServiceUnavailable, SiraError

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "sira"


# -- the embedded server ---------------------------------------------------


@dataclass(frozen=True)
class EmbeddedStatus:
    """What ``sira db status`` reports about the embedded server."""

    data_dir: Path
    initialized: bool
    running: bool
    pid: int | None
    dsn: str | None


class EmbeddedPostgres:
    """The private PostgreSQL of one workspace, run from the ``pgserver`` wheel."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir

    @property
    def initialized(self) -> bool:
        """Whether the data folder holds a database cluster (initdb ran)."""
        return (self.data_dir / "PG_VERSION").exists()

    def status(self) -> EmbeddedStatus:
        """Whether the server is initialised and running, without starting it."""
        PostmasterInfo = _pgserver().utils.PostmasterInfo

        initialized = self.initialized
        info = PostmasterInfo.read_from_pgdata(self.data_dir) if initialized else None
        running = bool(info is not None and info.is_running() and info.status == "ready")
        return EmbeddedStatus(
            data_dir=self.data_dir,
            initialized=initialized,
            running=running,
            pid=info.pid if running and info is not None else None,
            dsn=info.get_uri(database=EMBEDDED_DATABASE) if running and info is not None else None,
        )

    def start(self) -> str:
        """Start the server if it is not running and return the DSN of SIRA's database in it."""
        pgserver = _pgserver()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            # cleanup_mode=None: the server outlives this process; `sira db stop` ends it.
            server = pgserver.get_server(self.data_dir, cleanup_mode=None)
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            log_file = self.data_dir / "log"
            raise ServiceUnavailable(
                f"the embedded PostgreSQL in {self.data_dir} did not start ({exc}); see {log_file}"
            ) from None
        self._ensure_database(server.get_uri("postgres"))
        return server.get_uri(EMBEDDED_DATABASE)

    def stop(self, *, mode: Literal["fast", "immediate"] = "fast") -> bool:
        """Stop the server; False when it was not running. ``immediate``: no shutdown checkpoint, as in a
        crash (the next start recovers from the WAL; fault tests use it)."""
        if not self.status().running:
            return False
        pg_ctl = _pgserver()._commands.pg_ctl
        user = "pgserver" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.data_dir, user=user, timeout=60)
        # pgserver remembers the servers it started in this process: forget this one, or a later
        # start() in the same process would hand back the stopped server.
        from pgserver.postgres_server import PostgresServer

        forgotten = PostgresServer._instances.pop(self.data_dir.expanduser().resolve(), None)
        if forgotten is not None:
            import atexit

            atexit.unregister(forgotten._cleanup)
        return True

    def _ensure_database(self, admin_dsn: str) -> None:
        psql = str(_pgserver()._commands.POSTGRES_BIN_PATH / "psql")
        exists = subprocess.run(
            [psql, admin_dsn, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DATABASE}'"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()
        if exists != "1":
            subprocess.run(
                [psql, admin_dsn, "-c", f"CREATE DATABASE {EMBEDDED_DATABASE}"],
                capture_output=True, text=True, check=True, timeout=60,
            )


def _pgserver() -> Any:
    """The pgserver package, imported quietly (platformdirs warns about XDG_RUNTIME_DIR as root)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        import pgserver._commands
        import pgserver.utils

    return pgserver


def embedded_server(settings: Settings) -> EmbeddedPostgres:
    """The embedded server that belongs to these settings' workspace."""
    return EmbeddedPostgres(settings.embedded_pg_data)


def resolve_dsn(settings: Settings, *, create: bool = False) -> str:
    """The DSN to use: ``SIRA_DATABASE_URL``, else the embedded server's (started on demand). ``create``: the
    command makes a workspace (``sira db migrate``, ``sira demo``), so it may initialise a database that does
    not exist yet; any other command is refused there, with where it looked."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    from sira.core.ray_runtime import in_ray_job

    if in_ray_job():
        raise ConfigError(
            "no database for this Ray job: SIRA_DATABASE_URL is unset, and a job never starts an embedded "
            "PostgreSQL of its own (it would be empty); submit with `sira jobs submit`, which passes the "
            "current database, or set SIRA_DATABASE_URL in the runtime env's env_vars",
            code="database_not_configured")
    server = embedded_server(settings)
    if not create and not server.initialized:
        raise ConfigError(
            f"no SIRA workspace at {settings.workspace} (no embedded database in {server.data_dir}): cd into your "
            "SIRA checkout, or set SIRA_WORKSPACE to its .sira folder or SIRA_DATABASE_URL to your PostgreSQL; "
            "`sira db migrate` would start a new, empty one here",
            code="no_workspace", details={"workspace": str(settings.workspace), "data_dir": str(server.data_dir)})
    return server.start()


def describe_dsn(dsn: str) -> str:
    """A DSN with its password removed, safe for logs and messages."""
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    if not host and "host=" in parts.query:
        host = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("host", "")
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"postgresql://{user}{host}{port}{parts.path}"


# -- "the database is unavailable" ------------------------------------------

# PostgreSQL cannot serve now, though it may in a moment: down or unreachable, shutting down, restarting or
# recovering after a crash, out of connection slots, too slow. Whoever meets one waits, retries, degrades
# or answers 503 ``database_unavailable``: never a 500. Catch it (``except UNAVAILABLE``) around database
# calls only; where an error's origin is not known (an application's exception handler), ask
# :func:`is_unavailable`.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, the Unix socket gone (FileNotFoundError), TimeoutError (an acquire, a command)
    asyncpg.PostgresConnectionError,  # 08...: the connection failed, was refused or lost mid-statement
    asyncpg.InterfaceError,  # "connection is closed", "pool is closing"
    asyncpg.exceptions.OperatorInterventionError,  # 57...: admin or crash shutdown, "the database system is
    # starting up" / "in recovery mode" (CannotConnectNowError), a statement cancelled or timed out
    asyncpg.exceptions.InsufficientResourcesError,  # 53...: too many connections, out of memory, disk full
    # 55...: a state that passes: the database "is not currently accepting connections" (ALLOW_CONNECTIONS
    # false, during maintenance or a restore), a lock not available now, an object in use
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
    # the client's protocol state broken, as when a server going away reaches an idle connection before
    # its socket closes ("cannot switch to state 11; another operation (2) is in progress"): another
    # connection may work
    asyncpg.exceptions.InternalClientError,
)
# What PostgreSQL refuses for good (bad data, a violated constraint): retrying the same statement cannot help.
REFUSED: tuple[type[BaseException], ...] = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
# InterfaceErrors that are the query's or the client's fault, not the server's absence: an argument that
# cannot be encoded (DataError) or a bad connection option (ClientConfigurationError), both ValueErrors.
_CLIENT_FAULTS = (ValueError, asyncpg.exceptions.UnsupportedClientFeatureError,
                  asyncpg.exceptions.UnsupportedServerFeatureError)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means PostgreSQL cannot serve now (:data:`UNAVAILABLE`). An ``OSError`` counts when
    the database client raised it: a file a route could not read is not a database outage. So does SIRA's
    own :class:`DatabaseUnavailable` (a connection or a pool that could not be made)."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if not isinstance(exc, UNAVAILABLE) or isinstance(exc, _CLIENT_FAULTS):
        return False
    if not isinstance(exc, OSError):
        return True
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").partition(".")[0] == "asyncpg":
            return True
        tb = tb.tb_next
    return False


# -- connections -----------------------------------------------------------

# What statements run on: a connection of its own (:func:`connect`) or one a pool lends (``pool.acquire()``,
# :func:`transaction`), whose proxy has the same methods. For annotations only (a string at run time).
Connection: TypeAlias = "asyncpg.Connection | PoolConnectionProxy"


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns round-trip as Python objects everywhere. jsonb uses the binary
    # format (a version byte, then the text) so it also works in COPY.
    await conn.set_type_codec("json", encoder=_json_dumps, decoder=orjson.loads, schema="pg_catalog")
    await conn.set_type_codec(
        "jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog", format="binary"
    )


def _json_dumps(value: Any) -> str:
    return _orjson_dumps(value).decode("utf-8")


def _orjson_dumps(value: Any) -> bytes:
    # orjson: several times faster than json on the feature-row hot path; NaN becomes null.
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def _jsonb_encode(value: Any) -> bytes:
    return b"\x01" + _orjson_dumps(value)


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection with SIRA's codecs; connection failures become :class:`ServiceUnavailable`."""
    try:
        conn = await asyncpg.connect(dsn, timeout=30)
    except UNAVAILABLE + (asyncpg.PostgresError,) as exc:  # away, or refusing us (a password, no such database)
        raise DatabaseUnavailable(f"cannot reach PostgreSQL at {describe_dsn(dsn)}: {exc}") from None
    await _init_connection(conn)
    return conn


async def create_pool(dsn: str, settings: Settings | None = None, *, min_size: int | None = None,
                      max_size: int | None = None, command_timeout: float | None = None, timeout: float = 30,
                      server_settings: dict[str, str] | None = None,
                      connection_class: type[asyncpg.Connection] = asyncpg.Connection) -> asyncpg.Pool:
    """The one pool builder: SIRA's codecs on every connection, sizes and timeouts from ``settings`` unless
    given, and a database that cannot be reached as :class:`ServiceUnavailable`."""
    if settings is not None:
        max_size = max_size if max_size is not None else settings.db_pool_max
        min_size = min_size if min_size is not None else min(settings.db_pool_min, max_size)
        command_timeout = command_timeout if command_timeout is not None else settings.db_command_timeout_s
    max_size = max_size if max_size is not None else 10
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min(min_size if min_size is not None else 1, max_size), max_size=max_size,
            command_timeout=command_timeout, init=_init_connection, timeout=timeout,
            server_settings=server_settings, connection_class=connection_class,
        )
    except UNAVAILABLE + (asyncpg.PostgresError,) as exc:  # away, or refusing us (a password, no such database)
        raise DatabaseUnavailable(f"cannot reach PostgreSQL at {describe_dsn(dsn)}: {exc}") from None
    assert pool is not None
    return pool


def rows_affected(status: str) -> int:
    """The row count of a command's status (``"INSERT 0 12"``, ``"DELETE 3"``, ``"UPDATE 5"``)."""
    return int(status.split()[-1])


def quote_ident(name: str) -> str:
    """An SQL identifier (a column, a table), quoted: for the names SIRA's definitions hold, never input."""
    return '"' + name.replace('"', '""') + '"'


@contextlib.asynccontextmanager
async def open_pool(settings: Settings, *, check_schema: bool = True) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the configured database, refusing an out-of-date schema unless told not to check."""
    from sira.core import migrations

    pool = await create_pool(resolve_dsn(settings), settings)
    try:
        if check_schema:
            async with pool.acquire() as conn:
                await migrations.check(conn)
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[Connection]:
    """One unit of work: a connection whose statements commit together or not at all. PostgreSQL aborting
    it for a concurrent one (a deadlock, a serialization failure: nothing of it was kept) is a
    :class:`Conflict` ``concurrent_change`` the caller may retry, not a server fault."""
    try:
        async with pool.acquire() as conn:
            async with conn.transaction():
                yield conn
    except SiraError as exc:
        await exc.write_denial(pool)  # a refusal's audit entry, now that its transaction rolled back
        raise
    except asyncpg.TransactionRollbackError as exc:
        raise Conflict(f"a concurrent change aborted this one ({type(exc).__name__}); nothing was changed: "
                       "try again", code="concurrent_change") from None


async def analyze(dsn: str, *tables: str) -> None:
    """``ANALYZE`` tables a bulk load just filled. PostgreSQL has no statistics for new rows until
    autovacuum's next pass (none had run after a test's load): the first training build on a fresh load
    planned its label lookups by the wrong index and took 72.7 s instead of 16.4 s (24,205 rows)."""
    conn = await connect(dsn)
    try:
        for table in tables:
            await conn.execute(f"ANALYZE {quote_ident(table)}")
    finally:
        await conn.close()
