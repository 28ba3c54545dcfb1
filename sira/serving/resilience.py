"""What keeps a replica answering when a dependency fails: circuit breakers, the in-replica LRU,
and the background loop that runs work off the request path."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any

from ray import serve

log = logging.getLogger(__name__)





class Breaker:
    """A circuit breaker: after a failure, skip the dependency for a while instead of waiting on it.

    ``failing``: from a failure until the next success, however long the breaker has been open (open,
    it is not tried; tried again, it may still fail)."""

    def __init__(self, name: str, open_s: float):
        self.name, self.open_s = name, open_s
        self.open_until = 0.0
        self.failing = False

    @property
    def available(self) -> bool:
        return time.monotonic() >= self.open_until

    def failed(self, exc: BaseException) -> None:
        if self.available:
            log.warning("%s unavailable (%s: %s); degraded for %.1fs", self.name, type(exc).__name__, exc,
                        self.open_s)
        self.open_until = time.monotonic() + self.open_s
        self.failing = True

    def succeeded(self) -> None:
        self.open_until = 0.0
        self.failing = False


class LRU:
    """A bounded mapping with a time to live, in insertion/access order."""

    def __init__(self, max_entries: int, ttl_s: float):
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any, *, allow_expired: bool = False, stale_for: float = 0.0) -> Any:
        """The value, unless expired (``allow_expired``: whatever its age; ``stale_for``: expired
        for at most that many seconds)."""
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires + stale_for < time.monotonic() and not allow_expired:
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        if self.max_entries <= 0:
            return
        self._data[key] = (time.monotonic() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def pop(self, key: Any) -> None:
        self._data.pop(key, None)

    def clear(self, predicate: Any = None) -> None:
        if predicate is None:
            self._data.clear()
        else:
            for key in [k for k in self._data if predicate(k)]:
                del self._data[key]

    def __len__(self) -> int:
        return len(self._data)


def _in_replica() -> bool:
    try:
        serve.get_replica_context()
    except Exception:  # noqa: BLE001 - RayServeException: not in a Serve replica
        return False
    return True


def _replica_name() -> str:
    """This replica (or process) as the audit log names it."""
    import socket

    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - not in a Serve replica
        return f"{socket.gethostname()}:{os.getpid()}"


class BackgroundLoop:
    """An event loop in a thread of its own: where a :class:`Recorder` works outside a Serve replica
    (``sira api``, tests), off the loop that answers requests."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    async def run(self, coro: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
