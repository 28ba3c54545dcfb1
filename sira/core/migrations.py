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
import secrets
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


# -- drift: the tables themselves against the schema the migrations build ------------------------------------

# Objects are SIRA's when named sira_* (all of them are) or attached to a table that is; the ledger is the
# migrator's, not a migration's. A partition with a range (a month: sira_ensure_month_partitions makes them as
# rows arrive) is no object of its own: it is held to what every such partition of its table carries.
_SIRA = "LIKE 'sira\\_%'"
_RELATIONS = f"""
SELECT c.relname, c.relkind::text, c.relpersistence::text,
       c.relispartition AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT' AS ranged,
       pg_get_partkeydef(c.oid) AS partkey, pg_get_expr(c.relpartbound, c.oid) AS bound,
       (SELECT p.relname FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE i.inhrelid = c.oid) AS parent,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END AS viewdef,
       (SELECT format_type(s.seqtypid, NULL) || ' increment ' || s.seqincrement FROM pg_sequence s
         WHERE s.seqrelid = c.oid) AS sequence
  FROM pg_class c
 WHERE c.relnamespace = $1::regnamespace AND c.relname {_SIRA} AND c.relname <> $2
   AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')"""
_COLUMNS = f"""
SELECT c.relname AS on, a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid) AS default, a.attidentity::text, a.attgenerated::text
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = $1::regnamespace AND c.relname {_SIRA} AND c.relname <> $2
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c') AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY c.relname, a.attnum"""
# On partitions: only what is their own (an index, constraint or row trigger of the parent has a clone on each).
_INDEXES = f"""
SELECT i.relname AS name, t.relname AS on, pg_get_indexdef(x.indexrelid) AS def, x.indisvalid AS valid
  FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
 WHERE t.relnamespace = $1::regnamespace AND t.relname {_SIRA} AND t.relname <> $2
   AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = x.indexrelid)
   AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid AND k.conrelid = t.oid
                                                   AND k.contype IN ('p', 'u', 'x'))"""
_CONSTRAINTS = f"""
SELECT k.conname AS name, t.relname AS on, pg_get_constraintdef(k.oid) AS def
  FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid
 WHERE t.relnamespace = $1::regnamespace AND t.relname {_SIRA} AND t.relname <> $2
   AND k.contype <> 'n' AND k.conparentid = 0 AND k.conislocal"""
_TRIGGERS = f"""
SELECT g.tgname AS name, t.relname AS on, pg_get_triggerdef(g.oid) AS def, g.tgenabled::text AS enabled
  FROM pg_trigger g JOIN pg_class t ON t.oid = g.tgrelid
 WHERE t.relnamespace = $1::regnamespace AND t.relname {_SIRA} AND t.relname <> $2
   AND NOT g.tgisinternal AND g.tgparentid = 0"""
_FUNCTIONS = f"""
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS name, p.prokind::text,
       pg_get_function_result(p.oid) AS result, l.lanname, p.provolatile::text, p.prosecdef, p.proconfig, p.prosrc
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = $1::regnamespace AND p.proname {_SIRA}
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                               AND d.deptype = 'e')"""
_TYPES = f"""
SELECT t.typname AS name, t.typtype::text, format_type(t.typbasetype, t.typtypmod) AS base,
       (SELECT string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid)
           AS labels
  FROM pg_type t
 WHERE t.typnamespace = $1::regnamespace AND t.typname {_SIRA} AND t.typtype IN ('e', 'd', 'r', 'm')"""
_TRIGGER_STATE = {"O": "", "D": " (disabled)", "R": " (enabled on replicas only)", "A": " (enabled always)"}
_KIND = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "S": "sequence",
         "f": "foreign table", "c": "composite type"}
_PARTITION = "<partition>"

_Key: TypeAlias = tuple[str, str, str]  # kind, name, the table it is on ("" for none)


@dataclass
class _Schema:
    objects: dict[_Key, str]
    columns: dict[str, list[str]]  # table: column names in order
    runtime: dict[str, tuple[str, dict[_Key, str]]]  # ranged partition: parent, its own objects (named generically)


@dataclass(frozen=True)
class Drift:
    """One difference between the database and the schema the migrations build."""

    problem: str  # missing, extra, differs
    kind: str  # table, column, index, constraint, trigger, function, type, ...
    name: str
    on: str  # the table it belongs to ("" for none)
    expected: str | None
    found: str | None

    def line(self) -> str:
        what = f"{self.on}.{self.name}" if self.kind == "column" else self.name + (f" on {self.on}" if self.on else "")
        detail = (self.expected if self.problem == "missing" else self.found if self.problem == "extra"
                  else f"expected {self.expected}; found {self.found}")
        return f"{self.problem} {self.kind} {what}: {detail}"


async def _read_schema(conn: _Connection, schema: str) -> _Schema:
    """SIRA's objects in one schema, each as a one-line definition without the schema's name (with
    ``search_path`` on that schema only, so both sides of a comparison name things alike)."""
    await conn.execute("SELECT set_config('search_path', quote_ident($1), true)", schema)
    quoted = await conn.fetchval("SELECT quote_ident($1)", schema)
    qualified = re.compile(r"( ON (?:ONLY )?)" + re.escape(quoted) + r"\.")
    args = (schema, LEDGER)
    objects: dict[_Key, str] = {}
    runtime: dict[str, tuple[str, dict[_Key, str]]] = {}
    for r in await conn.fetch(_RELATIONS, *args):
        if r["ranged"]:
            runtime[r["relname"]] = (r["parent"], {})
            continue
        kind = "type" if r["relkind"] == "c" else "sequence" if r["relkind"] == "S" else "table"
        text = ("unlogged " if r["relpersistence"] == "u" else "") + _KIND[r["relkind"]]
        if r["partkey"]:
            text += f" by {r['partkey']}"
        if r["bound"]:
            text = f"partition of {r['parent']} {r['bound']}"
        if r["viewdef"] is not None:
            text += " " + hashlib.sha256(r["viewdef"].encode()).hexdigest()[:16]
        if r["sequence"]:
            text += f" {r['sequence']}"
        objects[(kind, r["relname"], "")] = text
    columns: dict[str, list[str]] = {}
    for r in await conn.fetch(_COLUMNS, *args):
        columns.setdefault(r["on"], []).append(r["name"])
        text = r["type"] + (" not null" if r["attnotnull"] else "")
        if r["attidentity"]:
            text += " generated " + ("always" if r["attidentity"] == "a" else "by default") + " as identity"
        elif r["attgenerated"]:
            text += f" generated always as ({r['default']}) stored"
        elif r["default"] is not None:
            text += f" default {r['default']}"
        objects[("column", r["name"], r["on"])] = text
    rows: list[tuple[str, str, str, str]] = []
    for r in await conn.fetch(_INDEXES, *args):
        rows.append(("index", r["name"], r["on"], r["def"] + ("" if r["valid"] else " (invalid)")))
    for r in await conn.fetch(_CONSTRAINTS, *args):
        rows.append(("constraint", r["name"], r["on"], r["def"]))
    for r in await conn.fetch(_TRIGGERS, *args):
        rows.append(("trigger", r["name"], r["on"], r["def"] + _TRIGGER_STATE.get(r["enabled"], "")))
    for kind, name, on, text in rows:
        text = qualified.sub(r"\1", text)
        if on in runtime:  # named alike on every partition, whatever its month
            generic = re.compile(rf"\b{re.escape(on)}\b")
            runtime[on][1][(kind, generic.sub(_PARTITION, name), _PARTITION)] = generic.sub(_PARTITION, text)
        else:
            objects[(kind, name, on)] = text
    for r in await conn.fetch(_FUNCTIONS, schema):
        text = (f"{'procedure' if r['prokind'] == 'p' else 'returns ' + (r['result'] or '')} language {r['lanname']}"
                f" {dict(i='immutable', s='stable', v='volatile')[r['provolatile']]}"
                + (" security definer" if r["prosecdef"] else "")
                + (f" set {', '.join(r['proconfig'])}" if r["proconfig"] else "")
                + f" body {hashlib.sha256(r['prosrc'].encode()).hexdigest()[:16]}")
        objects[("function", r["name"], "")] = text
    for r in await conn.fetch(_TYPES, schema):
        text = dict(e="enum", d="domain", r="range", m="multirange")[r["typtype"]]
        text += f" ({r['labels']})" if r["labels"] is not None else f" over {r['base']}" if r["typtype"] == "d" else ""
        objects[("type", r["name"], "")] = text
    return _Schema(objects, columns, runtime)


async def _expected_schema(conn: _Connection, migrations: list[Migration]) -> _Schema:
    """The schema the migrations build, read from a scratch schema they are applied to in a transaction that is
    rolled back: nothing is left behind, and the server that reads it is the one that holds the database."""
    scratch = f"sira_expected_{secrets.token_hex(6)}"
    transaction = conn.transaction()
    await transaction.start()
    try:
        try:
            await conn.execute(f"CREATE SCHEMA {scratch}")
        except asyncpg.InsufficientPrivilegeError as exc:
            raise SchemaOutOfDate(
                f"cannot compare the schema: the database role may not create a scratch schema ({exc}); the check "
                "builds the schema the migrations make in one, in a transaction it rolls back "
                "(GRANT CREATE ON DATABASE to SIRA's role)", code="schema_check_refused",
            ) from exc
        for migration in migrations:
            await conn.execute("SELECT set_config('search_path', $1, true)", scratch)
            await conn.execute(migration.sql)
        return await _read_schema(conn, scratch)
    finally:
        await transaction.rollback()


def _differences(expected: dict[_Key, str], found: dict[_Key, str], on: str | None = None) -> list[Drift]:
    out = []
    for key in sorted(expected.keys() | found.keys()):
        want, have = expected.get(key), found.get(key)
        if want != have:
            kind, name, table = key
            if on is not None:  # a runtime partition's: its own name again
                name, table = name.replace(_PARTITION, on), on
                want, have = (t.replace(_PARTITION, on) if t else t for t in (want, have))
            out.append(Drift("missing" if have is None else "extra" if want is None else "differs",
                             kind, name, table, want, have))
    return out


def _compare_schemas(expected: _Schema, found: _Schema) -> list[Drift]:
    drift = _differences(expected.objects, found.objects)
    # a table missing (or extra) is one line, not one per column, index and trigger too
    whole = {d.name for d in drift if d.kind in ("table", "type", "sequence") and d.problem != "differs"}
    drift = [d for d in drift if d.on not in whole]
    for table, names in expected.columns.items():
        have = found.columns.get(table)
        if have and have != names and sorted(have) == sorted(names):
            drift.append(Drift("differs", "column order", table, "", ", ".join(names), ", ".join(have)))
    # every partition of a month carries what one made by the migrations does (else its default partition)
    templates: dict[str, dict[_Key, str]] = {}
    for _, (parent, own) in sorted(expected.runtime.items()):
        templates.setdefault(parent, own)
    for partition, (parent, own) in sorted(found.runtime.items()):
        template = templates.get(parent)
        if template is None:
            default = next((name for (kind, name, _), text in expected.objects.items()
                            if kind == "table" and text == f"partition of {parent} DEFAULT"), None)
            template = {(k, n.replace(default, _PARTITION), _PARTITION): t.replace(default, _PARTITION)
                        for (k, n, o), t in expected.objects.items() if default and o == default}
        drift += _differences(template, own, on=partition)
    return drift


async def drift(conn: _Connection, migrations: list[Migration] | None = None) -> list[Drift]:
    """How the database's tables, columns, indexes, constraints, triggers, functions and types differ from the
    schema the migrations build (every difference, one each; empty: none). Check the ledger first
    (:func:`check`): a database with pending migrations differs by those."""
    migrations = discover() if migrations is None else migrations
    expected = await _expected_schema(conn, migrations)
    # rolled back, as the scratch schema is: the search_path it sets goes with it (inside a caller's transaction,
    # a savepoint)
    nested = conn.is_in_transaction()
    transaction = conn.transaction() if nested else conn.transaction(isolation="repeatable_read", readonly=True)
    await transaction.start()
    try:
        found = await _read_schema(conn, await conn.fetchval("SELECT current_schema()"))
    finally:
        await transaction.rollback()
    return _compare_schemas(expected, found)
