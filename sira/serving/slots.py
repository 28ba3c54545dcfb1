"""Hot swap: the versions a model is served with (replaced as a whole), and the loads that failed."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from sira.core import audit, db
from sira.core.errors import NoProductionVersion, ServiceUnavailable, SiraError, UnknownModel
from sira.features.definitions import EntityFeatures
from sira.serving.records import version_row
from sira.serving.replica import Replica
from sira.serving.resilience import _replica_name
from sira.serving.scoring import ModelRuntime

log = logging.getLogger(__name__)


def _load_for_traffic(settings: Any, row: dict[str, Any]) -> ModelRuntime:
    """A version loaded to take requests: with a feature engine v2 set, its compiled fold warmed too (from
    numba's cache on disk; compiled there the first time), before the first request needs it."""
    runtime = ModelRuntime.load(settings, row)
    if runtime.feature_set is not None and runtime.feature_set.engine == "tiles":
        from sira.features.engine import warm

        warm(runtime.feature_set)
    return runtime


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


def with_thresholds(runtime: ModelRuntime, row: dict[str, Any]) -> ModelRuntime:
    """The loaded version deciding with its newly active threshold set (no reload: the artifact is the same)."""
    swapped = replace(runtime, thresholds={k: float(v) for k, v in row["thresholds"].items()},
                      threshold_set=row["threshold_set"])
    for cached in ("single_row", "category_codes"):  # the warmed predictor and codes: the same booster's
        if cached in runtime.__dict__:
            swapped.__dict__[cached] = runtime.__dict__[cached]
    return swapped


def _served(slot: Slot | None) -> tuple[tuple[int | None, int | None], tuple[int | None, int | None]]:
    """(production's and the shadow's version, their threshold sets) of a slot: what a change is told by."""
    production, shadow = (slot.production, slot.shadow) if slot else (None, None)
    return ((production.version if production else None, shadow.version if shadow else None),
            (production.threshold_set if production else None, shadow.threshold_set if shadow else None))


def _load_error(exc: BaseException) -> tuple[str, str]:
    """A failed load's stable reason code and message."""
    if isinstance(exc, SiraError):
        return exc.code, exc.message
    if isinstance(exc, OSError):
        return "artifact_unreadable", f"{type(exc).__name__}: {exc}"
    return "artifact_invalid", f"{type(exc).__name__}: {exc}"


class ModelSlots:
    """The versions each served model runs, following the registry: loads what changed, verifies it, and
    swaps a model's :class:`Slot` in one assignment, so a batch is scored by exactly one version. A version
    that cannot be loaded is served around and retried (:class:`LoadFailure`)."""

    def __init__(self, replica: Replica):
        self.replica = replica
        self.slots: dict[str, Slot] = {}
        self.runtimes: dict[tuple[str, int], ModelRuntime] = {}  # for deferred reasons of recent versions
        self.load_failures: dict[tuple[str, str], LoadFailure] = {}  # (model, role) -> what cannot be loaded
        self.swaps: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()

    async def refresh(self, reason: str) -> list[dict[str, Any]]:
        """Load what the registry says each served model runs now; swap what changed."""
        r = self.replica
        async with self._lock:
            async with r.pool.acquire(timeout=5) as conn:
                rows = await conn.fetch(
                    """SELECT m.id AS model_id, m.name AS model_name, m.entity_type, v.version, v.status,
                              v.artifact_uri, v.artifact_sha256, v.thresholds, v.threshold_set
                         FROM sira_models m
                         LEFT JOIN sira_model_versions v ON v.model_id = m.id AND v.status IN ('production', 'staging')
                        WHERE m.name = ANY($1::text[])""",
                    r.config.models,
                )
            changes = []
            gone = {n for n, _ in self.load_failures} | set(self.slots)
            for name in [n for n in gone if n not in r.config.models]:  # no longer served here
                self._forget(name)
            for name in r.config.models:
                mine = [row for row in rows if row["model_name"] == name]
                if not mine:  # not (or no longer) in the registry
                    self._forget(name)
                    continue
                change = await self._refresh_one(name, mine, reason)
                if change is not None:
                    changes.append(change)
            while len(self.runtimes) > 8:  # keep recent versions for deferred reasons, not all of history
                self.runtimes.pop(next(iter(self.runtimes)))
            if self.load_failures and not r.running("load-retry"):
                r.spawn(self._retry_loads(), "load-retry")
            return changes

    def _forget(self, name: str) -> None:
        """A model no longer served here: its slot, its load failures (else ``/readyz`` kept naming it and the
        retry loop kept trying) and its gauges (else ``sira_model_load_failing`` stayed 1 and kept paging)."""
        had = self.slots.pop(name, None) is not None
        forgotten = [key for key in self.load_failures if key[0] == name]
        for key in forgotten:
            del self.load_failures[key]
        metrics = self.replica.metrics
        if metrics and (had or forgotten):  # a model never served here gets no series
            for role in ("production", "shadow"):
                metrics.version.set(0, tags={"model": name, "role": role})
                metrics.load_failing.set(0, tags={"model": name, "role": role})

    async def _refresh_one(self, name: str, rows: list[Any], reason: str) -> dict[str, Any] | None:
        current = self.slots.get(name)
        wanted = {row["status"]: row for row in rows if row["status"]}
        loaded: dict[str, ModelRuntime | None] = {}
        for role, status in (("production", "production"), ("shadow", "staging")):
            row = wanted.get(status)
            have = getattr(current, role) if current else None
            if row is None:
                loaded[role] = None
            elif have is not None and (have.version, have.artifact_sha256) == (row["version"], row["artifact_sha256"]):
                loaded[role] = have if have.threshold_set == row["threshold_set"] else with_thresholds(have, row)
            else:
                loaded[role] = await self._load(name, role, dict(row), have)
            failure = self.load_failures.get((name, role))
            if failure is not None and (row is None or (failure.version, failure.artifact_sha256)
                                        != (row["version"], row["artifact_sha256"])):
                del self.load_failures[(name, role)]  # the registry moved on: nothing to retry
        slot = Slot(name, rows[0]["model_id"], rows[0]["entity_type"], loaded["production"], loaded["shadow"])
        (before, sets_before), (after, sets) = _served(current), _served(slot)
        self.slots[name] = slot  # one assignment: a batch sees the old slot or the new one
        metrics = self.replica.metrics
        if metrics:
            metrics.version.set(after[0] or 0, tags={"model": name, "role": "production"})
            metrics.version.set(after[1] or 0, tags={"model": name, "role": "shadow"})
            for role in ("production", "shadow"):
                metrics.load_failing.set(int((name, role) in self.load_failures), tags={"model": name, "role": role})
        if (before, sets_before) == (after, sets):
            return None
        change = {"model": name, "production": after[0], "shadow": after[1], "from": before[0], "reason": reason,
                  "threshold_sets": list(sets), "at": time.time()}
        self.swaps.append(change)
        log.info("serving %s: production v%s, shadow %s, threshold sets %s (%s)", name, after[0],
                 f"v{after[1]}" if after[1] else "none", list(sets), reason)  # news, not a warning
        return change

    async def _load(self, name: str, role: str, row: dict[str, Any], have: ModelRuntime | None) -> ModelRuntime | None:
        """Load a registered version; when it cannot be loaded, what the role is served with meanwhile:
        production keeps the version it had (a shadow, none: it may be the production version by now)."""
        key = (name, role)
        failure = self.load_failures.get(key)
        same = failure is not None and (failure.version, failure.artifact_sha256) == (row["version"],
                                                                                      row["artifact_sha256"])
        keep = have if role == "production" else None
        if same and time.monotonic() < failure.retry_at:
            return keep  # backing off
        try:
            runtime = await asyncio.to_thread(_load_for_traffic, self.replica.settings, row)
        except Exception as exc:  # noqa: BLE001 - a version that cannot load must not take the replica down
            reason, message = _load_error(exc)
            self.replica.count("load_failures", model=name, role=role, reason=reason)
            if same:
                failure.failed_again()
                log.warning("%s v%s (%s) still cannot be loaded (attempt %d): %s", name, row["version"], role,
                            failure.attempts, message)
                return keep
            failure = LoadFailure(name, role, int(row["version"]), row["artifact_sha256"], reason, message,
                                  retry_at=time.monotonic() + LOAD_RETRY_FIRST_S)
            self.load_failures[key] = failure
            log.error("%s v%s (%s) cannot be loaded: %s; %s", name, row["version"], role, message,
                      f"still serving v{keep.version}" if keep else "answering 503 model_unavailable")
            await self._audit_load("model.load_failed", failure, "failed", serving=keep.version if keep else None)
            return keep
        self.runtimes[(name, runtime.version)] = runtime
        if same:
            del self.load_failures[key]
            log.warning("%s v%s (%s) loaded after %d failed attempts", name, runtime.version, role, failure.attempts)
            await self._audit_load("model.load_recovered", failure, "success")
        return runtime

    async def _audit_load(self, action: str, failure: LoadFailure, outcome: str, **details: Any) -> None:
        """One audit row per failure streak (and its end), not per retry; never fails the refresh."""
        try:
            async with self.replica.pool.acquire(timeout=2) as conn:
                await audit.record(
                    conn, audit.Actor(f"serving:{_replica_name()}", "system"), action, target_type="model_version",
                    target_id=f"{failure.model}:v{failure.version}", outcome=outcome,
                    details={**failure.public(), "message": failure.message, **details})
        except Exception as exc:  # noqa: BLE001 - the log line above says it already
            log.warning("audit row %s not written: %s", action, type(exc).__name__)

    async def _retry_loads(self) -> None:
        """Try the versions that failed to load again when their backoff is over, until none is left."""
        while self.load_failures:
            due = min(f.retry_at for f in self.load_failures.values())
            await asyncio.sleep(max(due - time.monotonic(), LOAD_RETRY_FIRST_S))
            await self.refresh_quietly("retry")

    async def refresh_quietly(self, reason: str) -> None:
        try:
            await self.refresh(reason)
        except Exception:  # noqa: BLE001 - the poller retries
            log.exception("model refresh failed (%s)", reason)

    def unavailable(self) -> dict[str, dict[str, Any]]:
        """Served models without a production version to answer with because it cannot be loaded (readiness)."""
        out = {}
        for (name, role), failure in list(self.load_failures.items()):
            slot = self.slots.get(name)
            if role == "production" and (slot is None or slot.production is None):
                out[name] = failure.public()
        return out

    def slot(self, model: str) -> Slot:
        """What ``model`` is served with; 404 ``unknown_model``, 409 ``no_production_version`` or 503
        ``model_unavailable`` (its production version cannot be loaded) when there is nothing to score with."""
        served = self.replica.config.models
        slot = self.slots.get(model) if model in served else None  # left `models`, not refreshed yet
        if slot is None:
            if model not in served:
                raise UnknownModel(model, f"model {model!r} is not served here (served: {', '.join(served)})")
            raise UnknownModel(model)
        if slot.production is None:
            failure = self.load_failures.get((model, "production"))
            if failure is not None:
                raise ServiceUnavailable(
                    f"model {model!r} is unavailable: its production version v{failure.version} cannot be loaded "
                    f"({failure.reason}); this replica retries by itself", code="model_unavailable",
                    details={"model": model, **failure.public()})
            raise NoProductionVersion(model)
        return slot

    def entity_spec(self, entity_type: str) -> EntityFeatures | None:
        """The served feature sets' definition of an entity type (None: no served model uses it)."""
        for slot in self.slots.values():
            fs = slot.production.feature_set if slot.production else None
            if fs is not None and any(e.entity == entity_type for e in fs.entities):
                return fs.entity(entity_type)
        return None

    def explain(self, model: str, version: int, features: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Reason codes of a stored prediction whose reasons were deferred: exact, from its stored features."""
        runtime = self.runtimes.get((model, version)) or self._load_version(model, version)
        if runtime is None:
            return None
        X = runtime.matrix([features])
        return runtime.reasons(X[0], runtime.contributions(X)[0])

    def _load_version(self, model: str, version: int) -> ModelRuntime | None:
        """A version no longer served (spool replayed after a swap or a restart), loaded for its reasons."""
        try:
            row = asyncio.run(version_row(db.resolve_dsn(self.replica.settings), model, version))
            if row is None:
                return None
            runtime = ModelRuntime.load(self.replica.settings, dict(row))
            self.runtimes[(model, version)] = runtime
            return runtime
        except Exception:  # noqa: BLE001 - the prediction is stored without reasons rather than lost
            log.exception("cannot load %s v%s for deferred reasons", model, version)
            return None
