"""Outputs written whole or not at all: a file is written under a partial name beside its destination
(:func:`partial_name`), then renamed durably (:func:`publish`); what killed writers left is swept
(:func:`sweep_partial`). Used by :func:`sira.core.files.write_atomically` (batch scoring's Parquet) and the
audit log's archive (:mod:`sira.monitoring.retention`)."""

from __future__ import annotations

import glob
import os
import socket
import time
import uuid
from pathlib import Path


def partial_name(out: Path) -> Path:
    """Where :func:`write_atomically` writes ``out`` until it is complete: ``.NAME.PID@HOST.RANDOM.tmp`` beside it."""
    return out.with_name(f".{out.name}.{os.getpid()}@{socket.gethostname()}.{uuid.uuid4().hex}.tmp")


def sweep_partial(out: Path, stale_s: float = 2 * 86_400) -> None:
    """Remove the partial outputs of ``out`` no writer will finish: this host's whose process is gone
    (SIGKILL: nothing cleaned up); another host's (a shared mount) or an older release's, unchanged for ``stale_s``."""
    host, now = socket.gethostname(), time.time()
    for path in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        pid, at, where = path.name[len(out.name) + 2:-len(".tmp")].rpartition(".")[0].partition("@")
        try:
            if at and where == host and pid.isdigit() and not _alive(int(pid)) or \
                    now - path.stat().st_mtime > stale_s:  # a writer adds a row group every few minutes
                path.unlink()
        except OSError:  # gone meanwhile, or not ours to remove
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError (another user's process): the sweep keeps its file
    except ProcessLookupError:
        return False
    return True


def sync_folder(folder: Path) -> None:
    """Make the names in ``folder`` durable (a file created or renamed in it survives a crash)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(partial: Path, path: Path) -> None:
    """``partial`` (written and flushed) renamed to ``path``, the rename itself made durable (its folder synced):
    a reader sees the old file or the whole new one, after a crash too."""
    os.replace(partial, path)
    sync_folder(path.parent)
