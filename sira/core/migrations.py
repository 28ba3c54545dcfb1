"""Forward-only schema migrations from ``sql/NNN_name.sql``.

Each file is applied once, in order, in its own transaction, and recorded in
``sira_schema_migrations`` with its checksum. Every command that touches the
database calls :func:`check` first and refuses to run on a schema that is
behind (or ahead of) the code. ``sql/manifest.toml`` lists every file's
checksum and the earlier contents of files edited after they were committed,
which a ledger may hold (:func:`predecessors`). :func:`drift` compares the
tables themselves with the schema the migrations build.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from sira.core.errors import ConfigError, SchemaOutOfDate

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

# sira.core.db.Connection (db imports this module, so it is spelled out here): a connection of its own or a pool's.
_Connection: TypeAlias = "asyncpg.Connection | PoolConnectionProxy"

LEDGER = "sira_schema_migrations"
_FILE_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same for every SIRA process.
_LOCK_KEY = 0x5152_4D49  # "SIRA migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def filename(self) -> str:
        return f"{self.version:03d}_{self.name}.sql"

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Predecessor:
    """An earlier content of a committed migration, which databases migrated then carry in their ledger."""

    filename: str  # as the ledger names it (NNN_name.sql)
    checksum: str
    commits: str
    now: str  # today's file it stands for (another number when it was renumbered)
    mended_by: str | None  # the migration that brings such a database to today's schema

    @property
    def name(self) -> str:
        return self.filename[4:-4]

    @property
    def version(self) -> int:
        return int(self.filename[:3])

    @property
    def now_version(self) -> int:
        return int(self.now[:3])


@dataclass(frozen=True)
class MigrationState:
    version: int
    name: str
    applied_at: datetime | None
    earlier: Predecessor | None = None  # applied with an earlier content of the file


def sql_dir() -> Path:
    """The ``sql/`` folder shipped beside the ``sira`` package."""
    path = Path(__file__).resolve().parents[2] / "sql"
    if not path.is_dir():
        raise ConfigError(f"migration folder {path} is missing; install SIRA from its source tree")
    return path


def discover(folder: Path | None = None) -> list[Migration]:
    """The migrations in a folder, in order; misnamed or duplicate files are an error."""
    folder = folder or sql_dir()
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ConfigError(f"{path.name}: migration files are named NNN_lowercase_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ConfigError(f"two migrations share version {version:03d}: {found[version].filename}, {path.name}")
        found[version] = Migration(version, match.group(2), path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


MANIFEST = "manifest.toml"


def manifest(folder: Path | None = None) -> dict[str, Any]:
    """``sql/manifest.toml``: ``files`` (name: sha256 as committed) and ``predecessors``; empty without one."""
    path = (folder or sql_dir()) / MANIFEST
    if not path.is_file():
        return {"files": {}, "predecessors": []}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return {"files": dict(data.get("files", {})), "predecessors": list(data.get("predecessors", []))}


def predecessors(folder: Path | None = None) -> list[Predecessor]:
    """The earlier contents of edited migrations that a ledger may hold (``sql/manifest.toml``)."""
    found = []
    for entry in manifest(folder)["predecessors"]:
        try:
            found.append(Predecessor(entry["file"], entry["sha256"], entry.get("commits", ""),
                                     entry.get("now", entry["file"]), entry.get("mended_by")))
        except KeyError as exc:
            raise ConfigError(f"{MANIFEST}: a predecessor without {exc.args[0]}: {entry}") from exc
    return found


async def _ledger(conn: _Connection) -> dict[int, asyncpg.Record]:
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", LEDGER)
    if not exists:
        return {}
    rows = await conn.fetch(f"SELECT version, name, checksum, applied_at FROM {LEDGER} ORDER BY version")
    return {row["version"]: row for row in rows}


def _earlier(row: asyncpg.Record, earlier: list[Predecessor]) -> Predecessor | None:
    """The predecessor a ledger row applied (under its old number, or its new one once renumbered)."""
    for p in earlier:
        if p.checksum == row["checksum"] and p.name == row["name"] and row["version"] in (p.version, p.now_version):
            return p
    return None


def _effective(applied: dict[int, asyncpg.Record], earlier: list[Predecessor]) -> dict[int, asyncpg.Record]:
    """The ledger by today's numbering: a renumbered predecessor's row counts for the file it became."""
    effective: dict[int, asyncpg.Record] = {}
    for version, row in applied.items():
        p = _earlier(row, earlier)
        effective[p.now_version if p else version] = row
    return effective


def _compare(known: list[Migration], applied: dict[int, asyncpg.Record],
             earlier: list[Predecessor] | None = None) -> list[Migration]:
    """Pending migrations; raises when the database and the code disagree on the past."""
    earlier = predecessors() if earlier is None else earlier
    by_version = {m.version: m for m in known}
    applied = _effective(applied, earlier)
    unknown = sorted(set(applied) - set(by_version))
    if unknown:
        names = ", ".join(f"{applied[v]['version']:03d}_{applied[v]['name']}" for v in unknown)
        raise SchemaOutOfDate(
            f"the database has migrations this SIRA does not know ({names}): upgrade SIRA",
            details={"unknown": unknown},
        )
    for version, row in applied.items():
        if row["checksum"] != by_version[version].checksum and _earlier(row, earlier) is None:
            raise SchemaOutOfDate(
                f"migration {by_version[version].filename} changed after it was applied; "
                "migrations are forward-only: add a new file instead",
                details={"version": version},
            )
    return [m for m in known if m.version not in applied]


async def _renumber(conn: _Connection, earlier: list[Predecessor]) -> None:
    """Move a renumbered predecessor's ledger row to its file's number today (its number is another file's)."""
    for row in (await _ledger(conn)).values():
        p = _earlier(row, earlier)
        if p is not None and p.now_version != row["version"]:
            await conn.execute(f"UPDATE {LEDGER} SET version = $1 WHERE version = $2", p.now_version, row["version"])


async def migrate(conn: _Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply every pending migration, each in its own transaction; returns those applied."""
    migrations = discover() if migrations is None else migrations
    # One migrator at a time, across processes and machines.
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {LEDGER} (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )"""
        )
        earlier = predecessors()
        await _renumber(conn, earlier)
        pending = _compare(migrations, await _ledger(conn), earlier)
        for migration in pending:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    f"INSERT INTO {LEDGER} (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version, migration.name, migration.checksum,
                )
        return pending
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def status(conn: _Connection, migrations: list[Migration] | None = None) -> list[MigrationState]:
    """Every known migration with when it was applied (None: pending)."""
    migrations = discover() if migrations is None else migrations
    earlier = predecessors()
    ledger = await _ledger(conn)
    _compare(migrations, ledger, earlier)
    applied = _effective(ledger, earlier)
    return [
        MigrationState(m.version, m.name, applied[m.version]["applied_at"], _earlier(applied[m.version], earlier))
        if m.version in applied else MigrationState(m.version, m.name, None)
        for m in migrations
    ]


async def check(conn: _Connection, migrations: list[Migration] | None = None) -> None:
    """Refuse to go on when the schema is not exactly what this code expects."""
    migrations = discover() if migrations is None else migrations
    pending = _compare(migrations, await _ledger(conn))
    if pending:
        first, last = pending[0].filename, pending[-1].filename
        which = first if len(pending) == 1 else f"{first} to {last}" if len(pending) == len(migrations) else (
            f"{first} ... {last}")
        raise SchemaOutOfDate(
            f"the database schema is out of date: run `sira db migrate` ({len(pending)} pending: {which}; "
            "`sira db status` lists them)",
            details={"pending": [m.version for m in pending]},
        )

