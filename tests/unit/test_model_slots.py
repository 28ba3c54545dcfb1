"""Hot swap's bookkeeping (sira/serving/slots.py), in-process with a fake registry: a model that leaves
serving takes its load failure, readiness entry and load-failing gauge with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from sira.serving import slots as S

ROWS = [{"model_id": 1, "model_name": "fraud", "entity_type": "customer", "version": 5, "status": "production",
         "artifact_uri": "x", "artifact_sha256": "abc", "thresholds": {}, "threshold_set": 1}]


class _Conn:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    async def fetch(self, _sql: str, models: list[str]) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["model_name"] in models]


class _Pool:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: float | None = None) -> AsyncIterator[_Conn]:
        if timeout == 2:  # the audit row: not what this test is about
            raise RuntimeError("no audit here")
        yield _Conn(self.rows)


class _Gauge:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str], float] = {}

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.values[(tags["model"], tags["role"])] = value


def _replica(rows: list[dict[str, Any]]) -> SimpleNamespace:
    metrics = SimpleNamespace(version=_Gauge(), load_failing=_Gauge())
    return SimpleNamespace(pool=_Pool(rows), config=SimpleNamespace(models=["fraud"]), metrics=metrics, settings=None,
                           count=lambda *a, **k: None, running=lambda _n: True, spawn=lambda *a: None)


def _cannot_load(_settings: Any, _row: dict[str, Any]) -> Any:
    raise ValueError("artifact digest mismatch")


@pytest.mark.parametrize("how", ["left_models", "left_registry"])
def test_a_model_no_longer_served_leaves_no_load_failure_behind(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    monkeypatch.setattr(S, "_load_for_traffic", _cannot_load)
    rows = [dict(r) for r in ROWS]
    replica = _replica(rows)
    slots = S.ModelSlots(replica)  # type: ignore[arg-type]

    async def run() -> None:
        await slots.refresh("start")
        assert list(slots.unavailable()) == ["fraud"]
        assert replica.metrics.load_failing.values[("fraud", "production")] == 1
        if how == "left_models":
            replica.config.models = ["churn"]  # the operator stops serving it (user_config)
        else:
            rows.clear()  # it is gone from the registry
        await slots.refresh("reconfigure")

    asyncio.run(run())
    assert slots.load_failures == {}
    assert slots.unavailable() == {}
    assert replica.metrics.load_failing.values[("fraud", "production")] == 0
    assert replica.metrics.version.values[("fraud", "production")] == 0
