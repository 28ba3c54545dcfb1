"""``sira retention``: how long SIRA keeps each kind of row, and the removal of what is older (admin)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from sira.cli.common import ApiKeyOption, JsonOption, acting, app, emit, err
from sira.core.config import get_settings

retention_app = typer.Typer(help="Remove rows kept longer than retention allows (admin).\n\n`sira retention` "
                                 "alone is `sira retention plan`: what is kept how long, and what would go.")
app.add_typer(retention_app, name="retention")

SpoolOption = Annotated[list[Path] | None, typer.Option(
    "--spool-dir", help="A serving spool folder on this machine whose refused records age out (default: the "
    "workspace's).")]


def _run(what: str, api_key: str | None, spool_dir: list[Path] | None, **options: Any) -> dict[str, Any]:
    """The plan or the apply as the key's owner (each step of an apply commits alone)."""
    from sira.core import db
    from sira.monitoring import retention

    settings = get_settings()
    secret = settings.secret("auth_secret")  # a pending erasure names its subject by a hash keyed with it
    folders = spool_dir or [settings.workspace / "spool"]

    async def run() -> dict[str, Any]:
        async with db.open_pool(settings) as pool:
            async with pool.acquire() as conn:
                identity = await acting(conn, api_key)
            return await getattr(retention, what)(pool, identity, settings, secret=secret, spool_dirs=folders,
                                                  **options)

    return asyncio.run(run())


def _table(result: dict[str, Any], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("step", "cut-off", "removed", "oldest kept", "notes"):
        table.add_column(column)
    for s in result["steps"]:
        removed = ", ".join(f"{t} {n:,}" for t, n in s["removed"].items() if n) or "nothing"
        notes = [s.get("skipped") or s.get("note") or ""]
        if s.get("partitions_dropped"):
            notes.append(f"partitions: {', '.join(s['partitions_dropped'])}")
        if s.get("held"):
            notes.append("kept for pending erasures: " + ", ".join(f"{k} {v}" for k, v in s["held"].items()))
        if s.get("feature_sets"):
            notes.append(f"retired: {', '.join(s['feature_sets'])}")
        if s.get("archive"):
            notes.append(f"archived to {s['archive']['file']}")
        oldest = s.get("oldest_kept")
        table.add_row(s["step"], f"{s['cutoff']:%Y-%m-%d}", removed, f"{oldest:%Y-%m-%d}" if oldest else "",
                      "; ".join(n for n in notes if n))
    return table


def _render(result: dict[str, Any], title: str) -> None:
    err.print(_table(result, title))
    for floor in result["kept_for_monitoring"]:
        # a model's training floor is no version's (it printed "fraud v0 (training)")
        what = (f"{floor['model']} (training window)" if floor["status"] == "training" or floor["version"] is None
                else f"monitoring {floor['model']} v{floor['version']} ({floor['status']})")
        err.print(f"kept for {what}: rows from {floor['keeps_from']:%Y-%m-%d} on")


@retention_app.callback(invoke_without_command=True)
def retention_cb(ctx: typer.Context, api_key: ApiKeyOption = None, as_json: JsonOption = False) -> None:
    """Remove rows kept longer than retention allows (admin).

    `sira retention` alone is `sira retention plan`: what is kept how long, and what would go."""
    if ctx.invoked_subcommand is None:
        plan_cmd(api_key=api_key, as_json=as_json)


@retention_app.command("plan")
def plan_cmd(api_key: ApiKeyOption = None, as_json: JsonOption = False, spool_dir: SpoolOption = None) -> None:
    """Show what apply would remove now; changes nothing.

    Per step and table: the cut-off, the counts and the oldest row kept. The cut-offs come from the SIRA_RETENTION_* settings (docs/security.md#retention), moved
    back for what a production or staging version's monitoring and a pending erasure need."""
    result = _run("plan", api_key, spool_dir)
    emit(result, as_json, lambda: _render(result, "Retention plan (nothing removed: `sira retention apply` does)"))


@retention_app.command("apply")
def apply_cmd(
    only: Annotated[list[str] | None, typer.Option("--only", help="Only this step (repeatable): events, predictions, "
                                                   "labels, features, feature_state, retired_feature_sets, "
                                                   "dead_letters, request_claims, spool, audit_log.")] = None,
    archive_audit: Annotated[bool, typer.Option("--archive-audit", help="Also archive the audit log's entries past "
                                                "its cut-off: written to <workspace>/archive/audit-log/ first, then "
                                                "removed (never otherwise).")] = False,
    spool_dir: SpoolOption = None,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove what is past its cut-off, step by step.

    Each step commits alone with its audit entry (who, the cut-off, the counts): a run that stops keeps what it
    finished, and running it again finishes the rest."""
    result = _run("apply", api_key, spool_dir, only=only, archive_audit=archive_audit)
    emit(result, as_json, lambda: _render(result, f"Retention applied (run {result['run_id']})"))
