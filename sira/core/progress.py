"""Progress bars of long CLI steps: on stderr, only on a terminal, off with ``sira --quiet``.

stdout is for results (``--json``); a bar never goes there. Off a terminal (a pipe, a log file, CI)
nothing is drawn: a log is no place for a bar redrawn ten times a second.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def enabled(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return not _state["quiet"] and bool(getattr(stream, "isatty", lambda: False)())


@contextlib.contextmanager
def bar(description: str, total: float | None, *, unit: str = "rows", show: bool = True,
        stream: TextIO | None = None) -> Iterator[Callable[[float], None]]:
    """A bar for one step; yields ``advance(n)``. ``total`` None: a count without an end; ``show`` False
    (the caller's own quiet mode, e.g. ``--json``): no bar."""
    stream = stream or sys.stderr
    if not show or not enabled(stream):
        yield _nothing
        return
    with _progress(stream, unit, remaining=bool(total)) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _progress(stream: TextIO, unit: str, *, remaining: bool) -> Any:
    """A transient rich bar on ``stream``: description, bar, done/total, unit, elapsed (and remaining)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                          TimeElapsedColumn(), *([TimeRemainingColumn()] if remaining else [])]
    return Progress(*columns, console=Console(file=stream), transient=True)


def _nothing(_n: float) -> None:
    return None


class RowProgress:
    """A bar of rows drawn from the first report on (errors before it stay one line): ``(done, total)``."""

    def __init__(self, description: str, stream: TextIO | None = None) -> None:
        self.description, self.stream = description, stream or sys.stderr
        self.progress: Any = None
        self.task: Any = None

    def __call__(self, done: int, total: int | None) -> None:
        if self.progress is None:
            if not enabled(self.stream):
                return
            self.progress = _progress(self.stream, "rows", remaining=False)
            self.task = self.progress.add_task(self.description, total=total)
            self.progress.start()
        self.progress.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
