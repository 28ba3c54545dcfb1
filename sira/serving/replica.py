"""What the parts of one replica's scoring service share: settings, the live serving config, the
database pool and Redis client, their circuit breakers, metrics, and the background tasks."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from sira.core import db
from sira.core.config import Settings
from sira.serving.config import ServingConfig
from sira.serving.metrics import ServingMetrics
from sira.serving.resilience import Breaker


@dataclass
class Replica:
    """Set up by :meth:`ScoringService.start` (pool, Redis, metrics); ``config`` replaced on reconfigure."""

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
