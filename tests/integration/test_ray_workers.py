"""SIRA's Ray workers import numba and the feature engine when they start, before any task: a Ray Data task
cancelled while its first numba import ran (a pipeline ended early) left numba half-imported in its worker,
which went back to the pool; every later task there failed on deserialising its arguments ("module 'numba' has
no attribute 'core'", the training-set and batch-scoring fixtures of the full suite)."""

from __future__ import annotations

import sys

import pytest


@pytest.mark.usefixtures("ray_session")
def test_a_worker_holds_the_feature_engine_before_its_first_task():
    import ray

    @ray.remote(num_cpus=0)
    def imported() -> dict[str, bool]:  # imports nothing of SIRA's itself
        return {name: name in sys.modules for name in ("numba", "sira.features.engine")}

    @ray.remote(num_cpus=0, max_calls=1)  # a fresh worker process: the first task it runs
    def fresh() -> dict[str, bool]:
        return {name: name in sys.modules for name in ("numba", "sira.features.engine")}

    assert ray.get(fresh.remote()) == {"numba": True, "sira.features.engine": True}
    assert ray.get(imported.remote()) == {"numba": True, "sira.features.engine": True}
