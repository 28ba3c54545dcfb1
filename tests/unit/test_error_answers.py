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
from sira.ingest.pii import Redactor
from sira.serving.schemas import ScoreRequest


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


def _scoring_app() -> FastAPI:
    """The real request model and handlers behind a route that scores nothing."""
    app = FastAPI()
    app.state.redactor = Redactor(b"k")
    errors.install(app)

    @app.post("/v1/score")
    async def score(body: ScoreRequest) -> None:
        return None

    return app


EVENT = {"event_id": "e1", "customer_id": "c1", "amount": 12.5, "occurred_at": "2026-12-01T10:00:00+00:00"}
EMAIL_NAME = "key_zelda.quux7@example.org"


def test_an_event_with_200000_unknown_fields_gets_one_small_answer_without_the_names() -> None:
    """/v1/score with 200,000 extra fields (2.3 MB) answered in 2-3 s with a 5.98 MB 422 naming every field twice,
    e-mail addresses in field names included."""
    client = TestClient(_scoring_app())
    event = {**EVENT, EMAIL_NAME: 1, **{f"key_{i}": i for i in range(200_000)}}
    response = client.post("/v1/score", json={"model": "fraud", "event": event})
    assert response.status_code == 422, response.text[:500]
    error = response.json()["error"]
    assert (error["code"], error["details"]["field"]) == ("too_many_fields", "event")
    assert len(response.content) < 2_000 and "quux7" not in response.text
    # beside the event, at the request's top level: refused before pydantic makes an error of each
    beside = {EMAIL_NAME: 1, **{f"key_{i}": i for i in range(200_000)}}
    response = client.post("/v1/score", json={"model": "fraud", **beside, "event": EVENT})
    assert response.status_code == 422 and response.json()["error"]["code"] == "too_many_fields", response.text[:500]
    assert len(response.content) < 2_000 and "quux7" not in response.text


def test_unknown_fields_are_listed_bounded_and_redacted() -> None:
    from sira.http.errors import MAX_LISTED

    client = TestClient(_scoring_app())
    unknown = [EMAIL_NAME, *(f"colour_{i}" for i in range(40))]
    response = client.post("/v1/score", json={"model": "fraud", "event": {**EVENT, **dict.fromkeys(unknown, 1)}})
    assert response.status_code == 422, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == "unknown_field" and error["details"]["unknown_count"] == len(unknown)
    listed = error["details"]["unknown"]
    assert len(listed) == MAX_LISTED and listed[0].startswith("event.tok_email_") and listed[1:] == [
        f"event.colour_{i}" for i in range(MAX_LISTED - 1)]
    assert "quux7" not in response.text and error["details"]["field"] == listed[0]
    assert f"and {len(unknown) - MAX_LISTED} more" in error["message"] and "colour_39" not in response.text
    # a few are all named, as before
    response = client.post("/v1/score", json={"model": "fraud", "event": EVENT, "colour": 1, "size": 2})
    error = response.json()["error"]
    assert error["details"]["unknown"] == ["colour", "size"] and "unknown field(s) colour, size" in error["message"]
