"""What the parts of one replica's scoring service share: settings, the live serving config, the
database pool and Redis client, their circuit breakers, metrics, and the background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from sira.core import db
from sira.core.config import Settings
from sira.serving.config import ServingConfig
from sira.serving.metrics import ServingMetrics
from sira.serving.resilience import Breaker

log = logging.getLogger(__name__)

# The hot-path lookups touch a partitioned table: planning a custom plan for every call cost
# ~0.4 ms more than running the generic one (measured: 0.49 vs 0.18 ms per lookup). A start-up
# parameter, not a SET: the pool's reset (``RESET ALL``) would undo a SET at the first release.
SERVING_SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}


class LookupConnection(asyncpg.Connection):  # type: ignore[misc]
    """A connection of the scoring hot path's pool, returned to it without a reset round trip.

    asyncpg resets a released connection with ``SELECT pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`` (~0.3 ms, inside the request: measured 0.59 vs 0.29 ms per
    acquire + ``SELECT 1`` + release). This pool runs lookups and the feedback route's one
    transaction: no session state, cursor, advisory lock or LISTEN to undo (the registry
    listener has a connection of its own). An open transaction is still rolled back and
    listener callbacks dropped: asyncpg does that whatever this returns.
    """

    def get_reset_query(self) -> str:
        return ""


@dataclass
class Replica:
    """Set up by :meth:`open` (pool, Redis, metrics), when the service starts; ``config`` replaced on reconfigure."""

    settings: Settings
    config: ServingConfig
    pg: Breaker
    redis_breaker: Breaker
    pool: asyncpg.Pool | None = None
    redis: Any = None
    metrics: ServingMetrics | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)
    # Redis keys name the database (a digest of its address): two installations sharing a Redis, or test
    # databases, never read each other's states or answers
    namespace: str = ""

    @classmethod
    def of(cls, settings: Settings, config: ServingConfig) -> "Replica":
        return cls(settings, config, Breaker("PostgreSQL", config.breaker_open_s),
                   Breaker("Redis", config.breaker_open_s),
                   namespace=hashlib.sha256(db.resolve_dsn(settings).encode()).hexdigest()[:12])

    async def open(self) -> None:
        """The database pool (its own sessions' settings and lookup connection), the Redis client when one is
        configured, and metrics when running under Ray with metrics on."""
        self.pool = await db.create_pool(
            db.resolve_dsn(self.settings), min_size=1, max_size=self.settings.db_pool_max,
            command_timeout=max(self.config.db_timeout_s * 5, 5), timeout=10,
            server_settings=SERVING_SERVER_SETTINGS, connection_class=LookupConnection,
        )
        if self.settings.redis_url:
            import redis.asyncio as aioredis

            self.redis = aioredis.Redis.from_url(self.settings.redis_url, socket_timeout=0.25,
                                                 socket_connect_timeout=0.25)
        try:
            import ray

            if ray.is_initialized() and self.config.metrics:
                self.metrics = ServingMetrics()
        except Exception:  # noqa: BLE001 - metrics must never stop serving
            log.exception("metrics unavailable")

    async def cancel_tasks(self) -> None:
        """Cancel the background tasks and wait for them to end. A task still running a moment after its
        cancellation is cancelled again: Python 3.11's ``asyncio.wait_for`` drops a cancellation that arrives
        as its inner call completes (the flusher's write through the writer thread), and the flusher then
        slept on while ``stop`` waited for it forever."""
        tasks = set(self.tasks)
        pending = {t for t in tasks if not t.done()}
        while pending:
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=0.5)
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" warning for a task that failed

    async def close(self) -> None:
        """Publish the last metrics, close Redis and the pool (each step whatever the others did)."""
        if self.metrics:
            with contextlib.suppress(Exception):
                self.metrics.publish()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), timeout=5)

    def spawn(self, coro: Any, name: str) -> asyncio.Task:
        """A background task of the replica's (cancelled by ``stop``); ``sira-<name>``."""
        task = asyncio.get_running_loop().create_task(coro, name=f"sira-{name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def running(self, name: str) -> bool:
        return any(t.get_name() == f"sira-{name}" for t in self.tasks)

    def count(self, counter: str, n: int = 1, **tags: str) -> None:
        """Add to one of :class:`ServingMetrics`' counters, when metrics are on."""
        if self.metrics is not None:
            self.metrics.count(getattr(self.metrics, counter), n, **tags)

    async def in_redis(self, queue: Any) -> bool:
        """One Redis pipeline: ``await queue(pipe)`` fills it, then it is sent; the breaker is told how it
        went, and so is the caller (nothing raised: Redis is a cache)."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            await queue(pipe)
            await pipe.execute()
            self.redis_breaker.succeeded()
            return True
        except Exception as exc:  # noqa: BLE001
            self.redis_breaker.failed(exc)
            return False

    @property
    def redis_available(self) -> bool:
        return self.redis is not None and self.redis_breaker.available
