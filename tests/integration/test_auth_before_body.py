"""Credentials are checked before a request's body is read: an anonymous caller's body (megabytes of JSON) was
read and parsed on the event loop before its 401, stalling every other caller (2026-12-07 review)."""

import re

from fastapi.routing import iter_route_contexts

from sira.http.deps import StrictRoute


def _body_routes(app):
    """Every API route FastAPI reads a body for (a direct route reads its own, after its check): (method, path)."""
    found = []
    for context in iter_route_contexts(app.router.routes):
        route = context.route
        if isinstance(route, StrictRoute) and route.dependant.body_params and not route.credentials_before_body:
            path = re.sub(r"\{version[^}]*\}", "1", context.path)
            found += [(method, re.sub(r"\{[^}]+\}", "m", path)) for method in sorted(context.methods)]
    return found


class Body:
    """A request body that notes whether the server read any of it."""

    def __init__(self, chunk: bytes, chunks: int):
        self.chunk, self.chunks, self.read = chunk, chunks, False

    async def __aiter__(self):
        self.read = True
        for _ in range(self.chunks):
            yield self.chunk


async def test_an_anonymous_or_unauthorised_body_is_never_read(client_and_keys):
    client, keys = client_and_keys
    app = client._transport.app
    routes = _body_routes(app)
    assert ("POST", "/v1/events") in routes and ("POST", "/v1/keys") in routes
    assert any(path.endswith("/approve") for _, path in routes)
    for method, path in routes:
        for headers, status in (({}, 401), ({"Authorization": "Bearer sira_000000000000_" + "x" * 40}, 401)):
            # valid JSON (FastAPI parsed it all before the 401) and JSON that is none (a 400 or 422 had it been read)
            for chunk in (b'{"events": [' + b'{"a": 1},' * 1000, b"not json at all " * 100):
                body = Body(chunk, 10)
                answer = await client.request(method, path, content=body,
                                              headers={**headers, "Content-Type": "application/json"})
                assert answer.status_code == status, (method, path, answer.text)
                assert answer.json()["error"]["code"] == "unauthenticated"
                assert not body.read, f"{method} {path}: the body was read before the credentials were checked"
    # a key without the role: 403 before the body too
    body = Body(b"[" * 1000, 10)
    answer = await client.post("/v1/events", content=body,
                               headers={**keys["operator"], "Content-Type": "application/json"})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "forbidden" and not body.read


async def test_a_body_is_still_read_and_judged_after_the_credentials(client_and_keys):
    client, keys = client_and_keys
    answer = await client.post("/v1/keys", content=b"not json", headers={**keys["admin"],
                                                                         "Content-Type": "application/json"})
    assert answer.status_code in (400, 422) and answer.json()["error"]["code"] != "unauthenticated"
    answer = await client.post("/v1/keys", json={"name": "svc", "roles": ["service"]}, headers=keys["admin"])
    assert answer.status_code == 201 and answer.json()["key"].startswith("sira_")
    assert answer.headers["cache-control"] == "no-store"  # it carries a key: no cache keeps it
    # the identity checked before the body is the route's: the key it made is recorded as root's
    row = await client._transport.app.state.pool.fetchrow("SELECT created_by FROM sira_api_keys WHERE name = 'svc'")
    assert row["created_by"] == "root"


async def test_a_scoring_replicas_body_routes_read_no_anonymous_body(fraud_model, tmp_path):
    """The serving application's routes (/v1/feedback; /v1/score reads its own body after its check), and every
    answer marked no-store (a score, a person's prediction)."""
    from tests.conftest import scoring_client

    async with scoring_client(fraud_model, tmp_path / "spool") as (client, _):
        routes = _body_routes(client._transport.app)
        assert ("POST", "/v1/feedback") in routes
        for method, path in [*routes, ("POST", "/v1/score")]:
            body = Body(b'{"label": true, "pad": "' + b"x" * 1000, 10)
            answer = await client.request(method, path, content=body, headers={"Content-Type": "application/json"})
            assert answer.status_code == 401 and not body.read, (method, path, answer.text)
        from tests.integration.test_scoring_service import event

        answer = await client.post("/v1/score", json={"model": "fraud", "event": event(fraud_model, 1), "record": False},
                                   headers={"Authorization": f"Bearer {fraud_model.keys['service']}"})
        assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store", answer.text
