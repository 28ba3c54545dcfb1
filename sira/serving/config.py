"""The serving options a Serve deployment's ``user_config`` carries (reconfigurable without a restart)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sira.core.errors import InvalidInput


class ServingConfig(BaseModel):
    """What a serving deployment serves and how (``user_config`` / ``args`` in serve_configs/*.yaml)."""

    model_config = ConfigDict(extra="forbid")

    models: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]] = Field(
        default_factory=lambda: ["fraud"], min_length=1, description="Model names this deployment serves.")
    max_batch_size: Annotated[int, Field(ge=1, le=1024)] = 16
    batch_wait_timeout_s: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_batch_rows: Annotated[int, Field(ge=1, le=10_000)] = 256
    reasons: Literal["risky", "all"] = Field(
        "risky", description="risky: reasons inline for review/block; for approve they are computed when the stored "
                 "prediction is read. all: always inline.")
    shadow: bool = True
    cache_ttl_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    cache_max_entries: Annotated[int, Field(ge=0, le=10_000_000)] = 100_000
    redis_ttl_s: Annotated[int, Field(ge=1, le=86_400)] = 600
    idempotency_ttl_s: Annotated[int, Field(ge=60, le=30 * 86_400)] = 86_400
    auth_cache_ttl_s: Annotated[float, Field(ge=0, le=3600)] = 10.0
    # Postgres down: callers seen this long before still get answers (a revoked key never does).
    auth_outage_grace_s: Annotated[float, Field(ge=0, le=86_400)] = 900.0
    spool_dir: Path | None = None
    spool_fsync: bool = False
    flush_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.2
    poll_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    breaker_open_s: Annotated[float, Field(gt=0, le=300)] = 2.0
    db_timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    store_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        30.0, description="A spool segment's store that takes longer is abandoned (retried); a recorder that has "
                          "failed this long is replaced by a fresh one (its own process and connections).")
    metrics: bool = Field(True, description="Export Ray metrics (latency, batch sizes, cache, decisions, ...).")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ServingConfig":
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidInput(f"serving config {where}: {first['msg']}", code="invalid_config") from None
