"""Error answers in SIRA's shape, counted in ``ray_sira_errors_total`` (sira/http/errors.py), in-process."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sira.core.errors import ServiceUnavailable
from sira.http import errors


class _Replica:
    def __init__(self) -> None:
        self.counted: list[tuple[str, dict[str, Any]]] = []

    def count(self, name: str, **tags: Any) -> None:
        self.counted.append((name, tags))


def _app(replica: _Replica) -> FastAPI:
    app = FastAPI()
    app.state.scoring = SimpleNamespace(metrics=object(), replica=replica)
    errors.install(app)

    @app.post("/v1/score")
    async def score() -> None:
        raise RuntimeError("lightgbm exploded at /secret/path")

    @app.post("/v1/score/batch")
    async def batch() -> None:
        raise ServiceUnavailable("spool full", code="spool_unavailable")

    return app


def test_an_unexpected_exception_is_a_counted_500_in_siras_shape_without_its_text(caplog: pytest.LogCaptureFixture) -> None:
    replica = _Replica()
    client = TestClient(_app(replica), raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="sira.http.errors"):
        response = client.post("/v1/score")
    assert response.status_code == 500
    body = response.json()
    assert body["error"]["code"] == "internal"
    assert "lightgbm" not in response.text and "secret" not in response.text
    assert replica.counted == [("errors", {"route": "/v1/score", "code": "internal", "status": "500"})]
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "lightgbm exploded" in str(logged[0].exc_info[1])


def test_a_handled_error_is_still_counted_with_its_own_code() -> None:
    replica = _Replica()
    client = TestClient(_app(replica), raise_server_exceptions=False)
    response = client.post("/v1/score/batch")
    assert response.status_code == 503 and response.json()["error"]["code"] == "spool_unavailable"
    assert replica.counted == [("errors", {"route": "/v1/score/batch", "code": "spool_unavailable", "status": "503"})]
