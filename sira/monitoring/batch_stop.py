"""How a batch scoring run (:mod:`sira.monitoring.batch`) is stopped: by a signal (Ctrl-C, ``kill``, ``ray job
stop``), with its writer in a thread of its own and its Ray Data pipeline failed from its scheduling loop, so the
run removes its partial output, records itself and ends its pipeline before the process exits.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any


class Stopped(Exception):
    """Raised in the writer's thread once the run is stopping: its file is removed as it unwinds."""


# The runs of this process that may be stopped, by key: Ray Data's context (which carries the callback class)
# travels to its actors, an Event cannot, so the class names its run's key only.
_STOPS: weakref.WeakValueDictionary[str, threading.Event] = weakref.WeakValueDictionary()


class _StopWhenAsked:
    """A Ray Data execution callback (the methods of its ExecutionCallback, which ``custom_execution_callback_classes``
    takes as is) that fails the execution once its run's stop is set: the scheduling loop runs every few
    milliseconds, and the consumer waiting for a block then gets the error and shuts the execution down."""

    key = ""

    def before_execution_starts(self, executor: Any) -> None:
        pass

    def on_execution_step(self, executor: Any) -> None:
        stop = _STOPS.get(self.key)
        if stop is not None and stop.is_set():
            raise Stopped()

    def after_execution_succeeds(self, executor: Any) -> None:
        pass

    def after_execution_fails(self, executor: Any, error: Exception) -> None:
        pass


def stop_callback(stop: threading.Event) -> type:
    key = uuid.uuid4().hex
    _STOPS[key] = stop  # as long as the run holds it
    return type("StopWhenAsked", (_StopWhenAsked,), {"key": key})


class StopSignals:
    """SIGINT and SIGTERM cancel the run's task (the default SIGTERM ended the process at once: its temporary
    file stayed, and nothing was audited), and tell the writer's thread to stop. Python runs signal handlers in
    the main thread only: elsewhere (a test's worker thread) the process's own handlers stay."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stop = threading.Event()
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        self._saved: dict[int, Any] = {}

    def arm(self) -> None:
        """Take both signals (again after ``ray.init``, which sets a SIGTERM handler of its own: sys.exit)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(sig)
            if current != self._caught:  # what to restore: the handler set before, or since (Ray's)
                self._saved[sig] = current
            signal.signal(sig, self._caught)

    def _caught(self, signum: int, _frame: Any) -> None:
        if self.signum is None and self._task is not None:
            self.signum = signum
            self.stop.set()
            self._loop.call_soon_threadsafe(self._task.cancel)

    def disarm(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._saved.clear()


async def in_thread(fn: Callable[[], Any], run: dict[str, Any]) -> Any:
    """``fn()`` in a daemon thread of its own (``run["writer"]``), awaited. Not ``asyncio.to_thread``: a run
    stopped by a signal must not wait for a batch that takes minutes to score (``asyncio.run`` waits for the
    default executor's threads, and the process for them at exit)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if not done.done():
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(value)

    def target() -> None:
        try:
            value, error = fn(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            value, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:  # the loop has closed: nobody awaits this any more
            pass

    run["writer"] = threading.Thread(target=target, name="sira-batch-writer", daemon=True)
    run["writer"].start()
    return await done


async def writer_stopped(writer: threading.Thread | None, wait_s: float = 10.0) -> None:
    """Give a stopping writer ``wait_s`` to unwind: on Ray Data, its pipeline is shut down then, before the
    process's exit shuts Ray down under it (its threads logged tracebacks, and started a new Ray)."""
    deadline = time.monotonic() + wait_s
    while writer is not None and writer.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
