"""The audit log: who did what to which thing, from where, with what outcome.

Rows are written by the caller's transaction, so an audited change and its
audit row commit together or not at all. The table refuses updates and deletes.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sira.core.logs import REQUEST_ID

if TYPE_CHECKING:
    from sira.core.db import Connection
    from sira.core.errors import SiraError

E = TypeVar("E", bound="SiraError")


@dataclass(frozen=True)
class Actor:
    """The identity a change is made as."""

    name: str
    kind: str = "system"  # api_key | jwt | policy | system | bootstrap
    source_address: str | None = None

    @classmethod
    def local(cls) -> "Actor":
        """The operating-system user running a local command (until API keys front the CLI)."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        return cls(f"local:{user}", "system")


async def record(
    conn: Connection, actor: Actor, action: str, *, target_type: str | None = None,
    target_id: str | None = None, outcome: str = "success", details: dict[str, Any] | None = None,
) -> None:
    request_id = REQUEST_ID.get()  # written for an HTTP request: its id, as in its log lines and answer
    await conn.execute(
        """INSERT INTO sira_audit_log (actor, actor_kind, action, target_type, target_id, source_address, outcome, details)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        actor.name, actor.kind, action, target_type, target_id, actor.source_address, outcome,
        {**(details or {}), "request_id": request_id} if request_id else details or {},
    )


@dataclass(frozen=True)
class Denial:
    """A refusal's audit entry, written after its transaction rolled back (see :func:`denied`)."""

    actor: Actor
    action: str
    target_type: str | None
    target_id: str | None
    details: dict[str, Any]

    async def write(self, conn: Connection) -> None:
        await record(conn, self.actor, self.action, target_type=self.target_type, target_id=self.target_id,
                     outcome="denied", details=self.details)


def denied(exc: E, actor: Actor, action: str, *, target_type: str | None = None, target_id: str | None = None,
           details: dict[str, Any] | None = None) -> E:
    """``exc`` carrying its audit entry, written once whatever path the refusal takes out: after the rollback
    by :func:`sira.core.db.transaction` when raised inside one, else by the CLI's ``main`` or the HTTP
    error handler (:meth:`SiraError.write_denial`): every refusal is audited, over HTTP and on the command
    line alike."""
    exc.denial = Denial(actor, action, target_type, target_id, details or {"reason": exc.message})
    return exc
