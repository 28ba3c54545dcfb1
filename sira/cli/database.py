"""``sira db``: migrations and the embedded PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from sira.cli.common import JsonOption, db_app, emit, err, kv_table
from sira.core.config import get_settings
from sira.core.errors import InvalidInput, SchemaOutOfDate

if TYPE_CHECKING:
    from sira.core.migrations import Drift


def _drift_payload(drift: list[Drift]) -> list[dict[str, Any]]:
    return [{"problem": d.problem, "kind": d.kind, "name": d.name, "on": d.on or None, "expected": d.expected,
             "found": d.found, "line": d.line()} for d in drift]


def _print_drift(drift: list[Drift]) -> None:
    for d in drift:  # one line each, however long (a definition)
        err.print(d.line(), markup=False, highlight=False, soft_wrap=True)


def _not_compared(exc: SchemaOutOfDate) -> str:
    """Why the tables were not compared, when the check itself was refused (no right to a scratch schema)."""
    if exc.code != "schema_check_refused":
        raise exc
    return exc.message


def _drifted(drift: list[Drift], version: int) -> SchemaOutOfDate:
    return SchemaOutOfDate(
        f"the tables differ from what migrations 001-{version:03d} build in {len(drift)} "
        f"place{'s' if len(drift) != 1 else ''} (one line each above, or `drift` in the JSON): changed outside "
        "the migrations, which do not undo it; see docs/troubleshooting.md#schema-out-of-date-or-drifted",
        code="schema_drift", details={"drift": [d.line() for d in drift]},
    )


@db_app.command("migrate")
def db_migrate(as_json: JsonOption = False) -> None:
    """Apply pending schema migrations from sql/.

    Then compare the tables with the schema the migrations build, as `sira db check` does: exit status 1 when
    they differ (a change made outside the migrations, which they do not undo)."""
    from sira.core import db, migrations

    settings = get_settings()

    async def run() -> tuple[str, list[migrations.Migration], int, list[migrations.Drift] | str]:
        dsn = db.resolve_dsn(settings, create=True)  # migrating makes a workspace
        conn = await db.connect(dsn)
        try:
            applied = await migrations.migrate(conn)
            states = await migrations.status(conn)
            # the ledger says every file was applied; the tables may still differ (changed by hand)
            try:
                drift: list[migrations.Drift] | str = await migrations.drift(conn)
            except SchemaOutOfDate as exc:
                drift = _not_compared(exc)
        finally:
            await conn.close()
        return dsn, applied, max((s.version for s in states), default=0), drift

    dsn, applied, version, drift = asyncio.run(run())
    payload = {
        "database": db.describe_dsn(dsn),
        "applied": [m.filename for m in applied],
        "schema_version": version,
        "drift": _drift_payload(drift) if isinstance(drift, list) else None,
    }
    if isinstance(drift, str):
        payload["drift_not_checked"] = drift

    def render() -> None:
        if applied:
            for m in applied:
                err.print(f"applied {m.filename}")
        else:
            err.print("schema is up to date")
        err.print(f"schema version {version:03d} on {payload['database']}")
        if isinstance(drift, str):
            err.print(f"the tables were not compared with the migrations: {drift}", markup=False, soft_wrap=True)
        else:
            _print_drift(drift)

    emit(payload, as_json, render)
    if isinstance(drift, list) and drift:
        raise _drifted(drift, version)


@db_app.command("check")
def db_check(as_json: JsonOption = False) -> None:
    """Compare the database with the schema the migrations build.

    First the ledger (pending or edited migrations), then the tables themselves: each missing, extra or changed
    table, column (and its type), index, constraint, trigger, function or type on a line of its own, and exit
    status 1 when there is one. The expected schema is built by applying sql/ to a scratch schema in a
    transaction that is rolled back. Monthly partitions made as rows arrive are no difference; each is held to
    what every partition of its table carries (the append-only triggers)."""
    from sira.core import db, migrations

    settings = get_settings()

    async def run() -> tuple[str, int, list[migrations.Drift]]:
        dsn = db.resolve_dsn(settings)
        conn = await db.connect(dsn)
        try:
            await migrations.check(conn)  # behind, ahead or edited: schema_out_of_date, with the fix
            states = await migrations.status(conn)
            return dsn, max((s.version for s in states), default=0), await migrations.drift(conn)
        finally:
            await conn.close()

    dsn, version, drift = asyncio.run(run())
    payload = {"database": db.describe_dsn(dsn), "schema_version": version, "drift": _drift_payload(drift)}

    def render() -> None:
        _print_drift(drift)
        if not drift:
            err.print(f"schema version {version:03d} on {payload['database']}: the ledger and the tables match what "
                      f"migrations 001-{version:03d} build")

    emit(payload, as_json, render)
    if drift:
        raise _drifted(drift, version)


@db_app.command("status")
def db_status(as_json: JsonOption = False) -> None:
    """Show the database in use, the embedded server and the migrations."""
    from sira.core import db, migrations

    settings = get_settings()
    embedded = db.embedded_server(settings).status() if settings.database_url is None else None

    async def run(dsn: str) -> tuple[list[migrations.MigrationState], list[migrations.Drift] | str | None]:
        conn = await db.connect(dsn)
        try:
            states = await migrations.status(conn)
            if any(s.applied_at is None for s in states):
                return states, None  # pending: the tables differ by those
            try:
                return states, await migrations.drift(conn)
            except SchemaOutOfDate as exc:
                return states, _not_compared(exc)
        finally:
            await conn.close()

    dsn: str | None
    if settings.database_url is not None:
        dsn = settings.database_url.get_secret_value()
    else:
        dsn = embedded.dsn if embedded else None
    states, drift = asyncio.run(run(dsn)) if dsn else ([], None)
    pending = [s for s in states if s.applied_at is None]
    payload: dict[str, Any] = {
        "database": db.describe_dsn(dsn) if dsn else None,
        "mode": "external" if settings.database_url is not None else "embedded",
        "reachable": dsn is not None,
        "migrations": [
            {"version": s.version, "name": s.name, "applied_at": s.applied_at.isoformat() if s.applied_at else None}
            | ({"applied_as": {"file": s.earlier.filename, "sha256": s.earlier.checksum, "commits": s.earlier.commits,
                               "mended_by": s.earlier.mended_by}} if s.earlier else {})
            for s in states
        ],
        "pending": [f"{s.version:03d}_{s.name}" for s in pending],
        "up_to_date": bool(states) and not pending,
        # the tables against the schema the migrations build (None: not compared)
        "drift": _drift_payload(drift) if isinstance(drift, list) else None,
    }
    if isinstance(drift, str):
        payload["drift_not_checked"] = drift
    if embedded is not None:
        payload["embedded"] = {
            "data_dir": str(embedded.data_dir),
            "initialized": embedded.initialized,
            "running": embedded.running,
            "pid": embedded.pid,
        }

    def render() -> None:
        rows: dict[str, Any] = {"mode": payload["mode"], "database": payload["database"] or "(not running)"}
        if embedded is not None:
            rows.update({"data dir": embedded.data_dir, "running": embedded.running, "pid": embedded.pid})
        differ = len(drift) if isinstance(drift, list) else 0
        rows["schema"] = (
            ("up to date" if not differ else f"up to date by the ledger, but the tables differ in {differ} "
             f"place{'s' if differ != 1 else ''} (`sira db check` lists them)") if payload["up_to_date"]
            else ("pending: " + ", ".join(payload["pending"]) + " (run `sira db migrate`)") if states
            else "none: no database in this workspace yet (`sira db migrate` or `sira demo` creates it)"
            if embedded is not None and not embedded.initialized
            else "unknown (database not running)"
        )
        if isinstance(drift, str):
            rows["tables"] = f"not compared: {drift}"
        err.print(kv_table("SIRA database", rows))

    emit(payload, as_json, render)


@db_app.command("start")
def db_start(as_json: JsonOption = False) -> None:
    """Start the workspace's embedded PostgreSQL.

    It keeps running until `sira db stop`."""
    from sira.core import db

    settings = get_settings()
    if settings.database_url is not None:
        raise InvalidInput("SIRA_DATABASE_URL is set: SIRA uses that server and has no embedded one to start")
    server = db.embedded_server(settings)
    was_running = server.status().running
    dsn = server.start()
    payload = {"database": db.describe_dsn(dsn), "data_dir": str(server.data_dir), "already_running": was_running}
    emit(payload, as_json, lambda: err.print(
        f"embedded PostgreSQL {'already running' if was_running else 'started'}: {payload['database']}"
        f" (data in {server.data_dir})"
    ))


@db_app.command("stop")
def db_stop(as_json: JsonOption = False) -> None:
    """Stop the workspace's embedded PostgreSQL."""
    from sira.core import db

    settings = get_settings()
    if settings.database_url is not None:
        raise InvalidInput("SIRA_DATABASE_URL is set: SIRA does not own that server and will not stop it")
    server = db.embedded_server(settings)
    stopped = server.stop()
    payload = {"stopped": stopped, "data_dir": str(server.data_dir)}
    emit(payload, as_json, lambda: err.print(
        "embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running"
    ))
