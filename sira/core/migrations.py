"""Forward-only schema migrations from ``sql/NNN_name.sql``.

Each file is applied once, in order, in its own transaction, and recorded in
``sira_schema_migrations`` with its checksum. Every command that touches the
database calls :func:`check` first and refuses to run on a schema that is
behind (or ahead of) the code.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

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
class MigrationState:
    version: int
    name: str
    applied_at: datetime | None


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


async def _ledger(conn: _Connection) -> dict[int, asyncpg.Record]:
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", LEDGER)
    if not exists:
        return {}
    rows = await conn.fetch(f"SELECT version, name, checksum, applied_at FROM {LEDGER} ORDER BY version")
    return {row["version"]: row for row in rows}


def _compare(known: list[Migration], applied: dict[int, asyncpg.Record]) -> list[Migration]:
    """Pending migrations; raises when the database and the code disagree on the past."""
    by_version = {m.version: m for m in known}
    unknown = sorted(set(applied) - set(by_version))
    if unknown:
        names = ", ".join(f"{applied[v]['version']:03d}_{applied[v]['name']}" for v in unknown)
        raise SchemaOutOfDate(
            f"the database has migrations this SIRA does not know ({names}): upgrade SIRA",
            details={"unknown": unknown},
        )
    for version, row in applied.items():
        if row["checksum"] != by_version[version].checksum:
            raise SchemaOutOfDate(
                f"migration {by_version[version].filename} changed after it was applied; "
                "migrations are forward-only: add a new file instead",
                details={"version": version},
            )
    return [m for m in known if m.version not in applied]


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
        pending = _compare(migrations, await _ledger(conn))
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
    applied = await _ledger(conn)
    _compare(migrations, applied)
    return [
        MigrationState(m.version, m.name, applied[m.version]["applied_at"] if m.version in applied else None)
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
