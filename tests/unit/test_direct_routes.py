"""A direct route (the scoring hot path: request bytes to answer bytes) answers every body as FastAPI's own
declared-body route does: the same status, error code and details, and the same parsed model."""
import httpx
import pytest
from fastapi import FastAPI, Request, Response

from sira.http import errors
from sira.http.direct import direct_route, json_answer, json_body
from sira.serving.schemas import ScoreRequest

EVENT = {"event_id": "e1", "customer_id": "c1", "amount": 12.5, "occurred_at": "2026-12-01T10:00:00+00:00"}


def _apps() -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.post("/declared")
    async def declared(body: ScoreRequest) -> Response:
        return json_answer(body.model_dump(mode="json"))

    async def direct(request: Request) -> Response:
        return json_answer(json_body(request, await request.body(), ScoreRequest).model_dump(mode="json"))

    async def documented(body: ScoreRequest) -> Response:
        return json_answer(body.model_dump(mode="json"))

    app.router.add_api_route("/direct", documented, methods=["POST"], route_class_override=direct_route(direct))
    return app


BODIES = [
    (b'{"model": "fraud", "event": %s}' % json_answer(EVENT).body, "application/json"),
    (b'{"model": "fraud", "request_id": "r1", "event": %s, "explain": true}' % json_answer(EVENT).body,
     "application/json; charset=utf-8"),
    (b'{"model": "fraud", "event": ', "application/json"),  # malformed: its character offset
    (b'{"model": "fraud" "event": {}}', "application/json"),
    (b"", "application/json"),
    (b'{"model": "fraud", "event": {}}', "application/x-www-form-urlencoded"),  # curl -d
    (b"[1, 2]", "application/json"),
    (b'{"model": "Fraud!", "event": %s}' % json_answer(EVENT).body, "application/json"),
    (b'{"model": "fraud", "event": %s, "extra": 1}' % json_answer(EVENT).body, "application/json"),
    (b'{"model": "fraud", "event": %s}' % json_answer({**EVENT, "amount": "12.5"}).body, "application/json"),
    (b'{"model": "fraud", "event": %s}' % json_answer({**EVENT, "amount": True}).body, "application/json"),
    (b'{"model": "fraud", "event": {"event_id": "e", "customer_id": "c", "amount": NaN}}', "application/json"),
    (b'{"model": "fraud", "event": {"event_id": "e", "customer_id": "c", "amount": 1, '
     b'"attributes": {"big": 18446744073709551616}}}', "application/json"),  # beyond 64 bits: refused, not rounded
    (b'{"model": "fraud"}', "application/json"),
    (b'{"model": "fraud", "event": %s, "features": {"x": 1}}' % json_answer(EVENT).body, "application/json"),
]


@pytest.mark.parametrize("raw, content_type", BODIES)
async def test_a_direct_route_answers_as_fastapis_declared_body_does(raw, content_type):
    app = _apps()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        headers = {"content-type": content_type}
        declared = await client.post("/declared", content=raw, headers=headers)
        direct = await client.post("/direct", content=raw, headers=headers)
    assert direct.status_code == declared.status_code, (declared.text, direct.text)
    if declared.status_code == 200:
        assert direct.json() == declared.json()
    else:  # the same code and details (the field, a malformed body's offset); pydantic may word a message apart
        assert {k: v for k, v in direct.json()["error"].items() if k != "message"} == \
            {k: v for k, v in declared.json()["error"].items() if k != "message"}


def test_a_direct_route_keeps_its_endpoints_openapi_description():
    schema = _apps().openapi()
    body = schema["paths"]["/direct"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == schema["paths"]["/declared"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "parameters" not in schema["paths"]["/direct"]["post"]
