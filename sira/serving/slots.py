"""Hot swap: the versions a model is served with (replaced as a whole), and the loads that failed."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sira.serving.scoring import ModelRuntime

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Slot:
    """What a model is served with right now (replaced as a whole on a registry change)."""

    model_name: str
    model_id: int
    entity_type: str
    production: ModelRuntime | None
    shadow: ModelRuntime | None


LOAD_RETRY_FIRST_S = 1.0  # a version that failed to load is tried again after 1 s, 2 s, 4 s, ... at most
LOAD_RETRY_MAX_S = 60.0


@dataclass
class LoadFailure:
    """A registered version this replica cannot load (artifact tampered, missing, unreadable): served around
    (the last good version, or 503 ``model_unavailable``) and tried again with backoff, never raised out of the
    replica, which Serve would restart in a loop while every request waits."""

    model: str
    role: str
    version: int
    artifact_sha256: str
    reason: str  # a stable code: artifact_checksum_mismatch, artifact_missing, artifact_unreadable, ...
    message: str  # may name the artifact's location: for logs and the audit log, not for callers
    since: float = field(default_factory=time.time)
    attempts: int = 1
    retry_at: float = 0.0

    def failed_again(self) -> None:
        self.attempts += 1
        self.retry_at = time.monotonic() + min(LOAD_RETRY_FIRST_S * 2 ** (self.attempts - 1), LOAD_RETRY_MAX_S)

    def public(self) -> dict[str, Any]:
        return {"version": self.version, "role": self.role, "reason": self.reason, "attempts": self.attempts,
                "since": datetime.fromtimestamp(self.since, timezone.utc).isoformat()}


def _load_error(exc: BaseException) -> tuple[str, str]:
    """A failed load's stable reason code and message."""
    from sira.core.errors import SiraError

    if isinstance(exc, SiraError):
        return exc.code, exc.message
    if isinstance(exc, OSError):
        return "artifact_unreadable", f"{type(exc).__name__}: {exc}"
    return "artifact_invalid", f"{type(exc).__name__}: {exc}"
