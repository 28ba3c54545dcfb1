"""``sira db``: migrations and the embedded PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from sira.cli.common import JsonOption, db_app, emit, err, kv_table
from sira.core.config import get_settings
from sira.core.errors import InvalidInput


@db_app.command("migrate")
def db_migrate(as_json: JsonOption = False) -> None:
    """Apply pending schema migrations from sql/."""
    from sira.core import db, migrations

    settings = get_settings()

    async def run() -> tuple[str, list[migrations.Migration], int]:
        dsn = db.resolve_dsn(settings, create=True)  # migrating makes a workspace
        conn = await db.connect(dsn)
        try:
            applied = await migrations.migrate(conn)
            states = await migrations.status(conn)
        finally:
            await conn.close()
        return dsn, applied, max((s.version for s in states), default=0)

    dsn, applied, version = asyncio.run(run())
    payload = {
        "database": db.describe_dsn(dsn),
        "applied": [m.filename for m in applied],
        "schema_version": version,
    }

    def render() -> None:
        if applied:
            for m in applied:
                err.print(f"applied {m.filename}")
        else:
            err.print("schema is up to date")
        err.print(f"schema version {version:03d} on {payload['database']}")

    emit(payload, as_json, render)


@db_app.command("status")
def db_status(as_json: JsonOption = False) -> None:
    """Show the database in use, the embedded server and the migrations."""
    from sira.core import db, migrations

    settings = get_settings()
    embedded = db.embedded_server(settings).status() if settings.database_url is None else None

    async def run(dsn: str) -> list[migrations.MigrationState]:
        conn = await db.connect(dsn)
        try:
            return await migrations.status(conn)
        finally:
            await conn.close()

    dsn: str | None
    if settings.database_url is not None:
        dsn = settings.database_url.get_secret_value()
    else:
        dsn = embedded.dsn if embedded else None
    states = asyncio.run(run(dsn)) if dsn else []
    pending = [s for s in states if s.applied_at is None]
    payload: dict[str, Any] = {
        "database": db.describe_dsn(dsn) if dsn else None,
        "mode": "external" if settings.database_url is not None else "embedded",
        "reachable": dsn is not None,
        "migrations": [
            {"version": s.version, "name": s.name, "applied_at": s.applied_at.isoformat() if s.applied_at else None}
            for s in states
        ],
        "pending": [f"{s.version:03d}_{s.name}" for s in pending],
        "up_to_date": bool(states) and not pending,
    }
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
        rows["schema"] = (
            "up to date" if payload["up_to_date"]
            else ("pending: " + ", ".join(payload["pending"]) + " (run `sira db migrate`)") if states
            else "none: no database in this workspace yet (`sira db migrate` or `sira demo` creates it)"
            if embedded is not None and not embedded.initialized
            else "unknown (database not running)"
        )
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
