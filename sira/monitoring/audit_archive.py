"""The audit log's archive files (``sira retention apply --archive-audit``, :mod:`sira.monitoring.retention`):
entries written to ``<workspace>/archive/audit-log/*.jsonl.partial`` and made durable before they are deleted,
renamed once their deletion committed; what a stopped run left, settled by the next."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from sira.core.outputs import publish, sync_folder

ARCHIVED = "retention.audit_archived"  # the audit entry of an archive: file, sha256, rows, id range


def archive_folder(settings: Any) -> Path:
    return settings.workspace / "archive" / "audit-log"


async def write_archive(pool: Any, partial: Path, where: str, args: Sequence[Any]) -> tuple[int, str]:
    """The entries, one JSON object a line in id order, into ``partial`` (mode 0600, fsynced): (rows, sha256)."""
    digest, written = hashlib.sha256(), 0
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            async for row in conn.cursor(f"SELECT * FROM sira_audit_log WHERE {where} ORDER BY id", *args,
                                         prefetch=1000):
                line = orjson.dumps(dict(row), default=str) + b"\n"
                digest.update(line)
                out.write(line)
                written += 1
        out.flush()
        os.fsync(out.fileno())
    sync_folder(partial.parent)  # the file's name durable too, before the entries are deleted
    return written, digest.hexdigest()


async def settle(conn: Any, folder: Path) -> list[str]:
    """Finish what a stopped archive left: a ``.partial`` whose deletion committed (its archive is in the audit
    log) takes its name; one whose deletion did not is removed (its entries are still in the table)."""
    settled = []
    for partial in sorted(folder.glob("*.jsonl.partial")):
        path = partial.with_name(partial.name.removesuffix(".partial"))
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM sira_audit_log WHERE action = $1 AND details->>'file' = $2)",
                               ARCHIVED, str(path)):
            publish(partial, path)
            settled.append(str(path))
        else:
            partial.unlink(missing_ok=True)
    return settled
