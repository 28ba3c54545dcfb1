"""PostgreSQL notifications a replica follows: ``LISTEN`` on a connection of its own, reconnected with backoff
after an outage (when it may have missed some: ``on_reconnect``), and its loss reported to the database
breaker (the first sign of an outage even when every request is served from caches); and an operator's
reload (:func:`request_reload`): a notification on the registry's channel, which every replica follows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from sira.core import audit, db
from sira.core.auth import Identity, authorize
from sira.registry.settings import redacted
from sira.serving.replica import Replica

log = logging.getLogger(__name__)

# the registry's changes (sql/008's and sql/016's triggers) and an operator's reload: every replica re-reads it
REGISTRY_CHANNEL = "sira_registry"


async def request_reload(conn: Any, identity: Identity, reason: str | None = None) -> None:
    """Tell every serving replica to re-read the registry now (``serving.reload``: operator, admin), audited.
    Delivered when ``conn``'s transaction commits, to each replica's listener (a replica away from PostgreSQL
    meanwhile re-reads it when it reconnects, and every replica polls as well). ``reason`` is stored as all
    governance text is (:func:`~sira.registry.settings.redacted`): the audit log keeps it for good, and an
    erasure does not reach it."""
    authorize(identity, "serving.reload")
    reason = redacted((reason or "").strip()[:2000])  # as long as POST /v1/serving/reload takes
    await conn.execute("SELECT pg_notify($1, $2)", REGISTRY_CHANNEL, json.dumps({"reload": True, "by": identity.name}))
    await audit.record(conn, identity.actor(), "serving.reload", target_type="serving",
                       details={"reason": reason} if reason else {})


class Listener:
    def __init__(self, replica: Replica, channels: dict[str, Callable[..., Any]],
                 on_reconnect: Callable[[], Awaitable[None]], on_listening: Callable[[], None] = lambda: None):
        """``on_listening``: called each time the notifications are followed again (the first time too):
        from then on every write is heard of; ``on_reconnect``: after a connection that was lost."""
        self.replica, self.channels, self.on_reconnect = replica, channels, on_reconnect
        self.on_listening = on_listening
        self.conn: asyncpg.Connection | None = None
        self.listening = asyncio.Event()  # set once notifications are followed (the first time)

    async def listen_forever(self) -> None:
        r = self.replica
        delay = 0.5
        while True:
            conn = None
            try:
                conn = await db.connect(db.resolve_dsn(r.settings))
                self.conn = conn
                for channel, callback in self.channels.items():
                    await conn.add_listener(channel, callback)
                conn.add_termination_listener(self._lost)
                self.on_listening()
                self.listening.set()
                r.pg.succeeded()
                if delay > 0.5:  # we were disconnected: notifications may have been missed
                    await self.on_reconnect()
                delay = 0.5
                while not conn.is_closed():
                    await asyncio.sleep(0.5)
                raise ConnectionError("listener connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening whatever happens
                log.debug("listener: %s", exc)
                delay = min(delay * 2, 5.0)
                await asyncio.sleep(delay)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.remove_termination_listener(self._lost)  # closed by us: no outage
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=1)

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close(timeout=2)

    def _lost(self, _conn: Any) -> None:
        """The notification connection ended: Postgres is going away (stopped, crashed, restarting) or the
        link to it is."""
        self.replica.pg.failed(ConnectionError("the notification connection to PostgreSQL was lost"))
