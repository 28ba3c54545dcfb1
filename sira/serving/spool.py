"""A local write-ahead spool: what a serving replica answered, kept until Postgres has it.

Before a replica answers, the batch's records (predictions, events to record)
are appended to the replica's current segment file in one ``write`` (a group
commit; ``fsync`` too when configured). A flusher rotates the segment and
writes closed segments to Postgres, then deletes them. Each segment is held
with an exclusive ``flock`` by the process that owns it, so a segment left by
a replica that died (its lock released by the kernel) is found and replayed
by any replica on the node; replays are idempotent (inserts skip rows that
exist). A torn last line (a crash in the middle of a write) is skipped.

Records hold only redacted data: events are spooled after PII redaction.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)
SUFFIX = ".spool"


@dataclass
class Segment:
    """One spool file, locked by this process."""

    path: Path
    fd: int
    records: int = 0

    def read(self) -> list[dict[str, Any]]:
        out = []
        with open(self.path, "rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    log.warning("spool %s: skipping a torn last line (%d bytes)", self.path.name, len(line))
                    break
                try:
                    out.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    log.warning("spool %s: skipping unreadable line %d", self.path.name, number)
        return out

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)


def _lines(records: Iterable[dict[str, Any]]) -> bytes:
    """Records as JSON lines, the spool's format."""
    return b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for r in records)


def _count_lines(fd: int) -> int:
    """Records in a segment read through ``fd`` (a torn last line not counted)."""
    count, offset = 0, 0
    while chunk := os.pread(fd, 1 << 20, offset):
        count += chunk.count(b"\n")
        offset += len(chunk)
    return count


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # flushed and removed by another process meanwhile
        return 0.0


class Spool:
    """Append-only segments in ``directory``; see the module docstring."""

    def __init__(self, directory: Path, *, fsync: bool = False):
        self.directory = directory
        self.fsync = fsync
        self.owner = uuid.uuid4().hex[:12]
        self._seq = 0
        self._current: Segment | None = None
        self._closed: list[Segment] = []

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._current = self._new_segment()

    def _new_segment(self) -> Segment:
        """A new segment, locked before it bears the spool's suffix: another replica's scan for segments
        of dead processes never sees it unlocked (it would adopt it, and this lock would fail)."""
        self._seq += 1
        path = self.directory / f"{self.owner}-{self._seq:08d}{SUFFIX}"
        making = path.with_name(path.name + ".new")
        fd = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(making, path)
        return Segment(path, fd)

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Write records durably enough to survive this process (and the machine, with ``fsync``)."""
        if self._current is None:
            raise RuntimeError("the spool is not open")
        data = _lines(records)
        if not data:
            return 0
        view = memoryview(data)
        size = os.fstat(self._current.fd).st_size
        try:
            while view:
                written = os.write(self._current.fd, view)
                view = view[written:]
            if self.fsync:
                os.fdatasync(self._current.fd)
        except OSError:
            # A partial write (a full disk) must not glue the next batch's first line to these bytes.
            try:
                os.ftruncate(self._current.fd, size)
            except OSError:
                fresh = self._new_segment()
                self._closed.append(self._current)  # its torn last line is skipped when read
                self._current = fresh
            raise
        count = data.count(b"\n")
        self._current.records += count
        return count

    @property
    def pending(self) -> int:
        """Records written and not yet flushed (this process's segments)."""
        return sum(s.records for s in self._closed) + (self._current.records if self._current else 0)

    def rotate(self) -> bool:
        """Close the current segment (if it holds records) for flushing; new records go to a new one. Not while
        closed segments still wait to be stored (a database outage): each attempt closed one more, each kept
        open (it holds its lock), until the process ran out of file descriptors and even the rotation failed,
        after the outage too. Returns whether it rotated."""
        if self._current is not None and self._current.records and not self._closed:
            fresh = self._new_segment()  # first: if it fails, nothing has moved
            self._closed.append(self._current)
            self._current = fresh
            return True
        return False

    def claim(self) -> list[Segment]:
        """Closed segments to flush, oldest first: this process's, then any left by dead processes."""
        mine = {s.path for s in self._closed} | ({self._current.path} if self._current else set())
        for path in sorted(self.directory.glob(f"*{SUFFIX}"), key=_mtime):
            if path in mine:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a live process owns it
                continue
            if not path.exists():  # flushed and removed by another process meanwhile
                os.close(fd)
                continue
            # adopted: ours until flushed, its records pending here (the spool gauge, its alerts)
            self._closed.append(Segment(path, fd, records=_count_lines(fd)))
        return list(self._closed)

    def done(self, segment: Segment) -> None:
        """A claimed segment is in Postgres: delete it."""
        if segment in self._closed:
            self._closed.remove(segment)
        segment.remove()

    def set_aside(self, segment: Segment, refused: list[dict[str, Any]]) -> Path:
        """Keep records Postgres refused for good (beside the spool, ``refused/``, for an operator to
        look at and replay) and delete their segment, whose other records are stored: one bad record
        must not hold back every answer spooled after it."""
        folder = self.directory / "refused"
        folder.mkdir(exist_ok=True, mode=0o700)
        path = folder / f"{segment.path.stem}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, _lines(refused))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.done(segment)
        return path

    def close(self) -> None:
        for segment in [*self._closed, *([self._current] if self._current else [])]:
            try:
                os.close(segment.fd)
            except OSError:
                pass
        if self._current is not None and self._current.records == 0:
            try:
                self._current.path.unlink()
            except FileNotFoundError:
                pass
        self._current = None
        self._closed = []
