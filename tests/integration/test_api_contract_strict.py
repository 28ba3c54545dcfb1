"""The HTTP contract is strict and says what it checks: a body field or a query parameter a request does not
take is refused by name (422 ``unknown_field``), never dropped; credentials are checked before anything else
the request says is judged; the OpenAPI document declares what the server requires (required fields, enums,
formats, the bearer scheme) and 401s say which scheme to use."""


import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from sira.core import db
from sira.core.auth import authenticate, create_key
from sira.http.app import create_app
from tests.integration.test_governance import make_version

ADMIN_ONLY_ROUTES = {"/v1/audit", "/v1/keys"}
EVENT = {"event_id": "ev-typo", "occurred_at": "2026-09-28T09:00:00Z", "customer_id": "cus-1", "amount": 1.0}


def _app(settings, spool_dir):
    """The application with a scoring service (its routes included, as a serving replica has them)."""
    from sira.serving.config import ServingConfig
    from sira.serving.service import ScoringService

    service = ScoringService(settings, ServingConfig(models=["fraud"], spool_dir=spool_dir, flush_interval_s=0.05,
                                                     poll_interval_s=1.0))
    return create_app(settings, scoring=service)


@pytest.fixture
async def client_and_keys(clean_db, settings, tmp_path):
    pepper = settings.secret("auth_secret")
    keys = {}
    async with db.transaction(clean_db) as conn:
        admin, _ = await create_key(conn, name="root", roles=["admin"], pepper=pepper, creator=None)
        root = await authenticate(conn, admin, pepper=pepper)
        keys["admin"] = admin
        for role in ("viewer", "service"):
            keys[role], _ = await create_key(conn, name=f"as-{role}", roles=[role], pepper=pepper, creator=root)
    app = _app(settings, tmp_path)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            yield client, {role: {"Authorization": f"Bearer {key}"} for role, key in keys.items()}, app


def _routes(app) -> list:
    """Every API route of the application, at its full path (routers are included by reference)."""
    return [r for r in iter_route_contexts(app.router.routes) if isinstance(r.original_route, APIRoute)]


def _error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, r.text
    return error


# -- unknown body fields ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, path, body, unknown", [
    # a typo of the reason: 201, and the audit log said reason None
    ("POST", "/v1/models/fraud/versions/1/promote", {"reasons": "beats v1 on AP", "required_approvals": 0},
     ["reasons", "required_approvals"]),
    ("POST", "/v1/models/fraud/versions/1/stage", {"reasn": "shadow it first"}, ["reasn"]),
    # counted as an approval, the comment lost
    ("POST", "/v1/models/fraud/versions/1/approve", {"coment": "looks good", "approve": False}, ["coment", "approve"]),
    ("POST", "/v1/models/fraud/versions/1/reject", {"coment": "no"}, ["coment"]),
    ("POST", "/v1/models/fraud/versions/1/thresholds/approve", {"coment": "ok"}, ["coment"]),
    ("POST", "/v1/models/fraud/rollback", {"reason": "bad day", "expected_version": 1, "force": True}, ["force"]),
    # stored under source "api"
    ("POST", "/v1/events", {"events": [EVENT], "sourc": "billing"}, ["sourc"]),
])
async def test_a_misspelt_field_of_a_governance_or_events_body_is_refused_by_name(client_and_keys, clean_db,
                                                                                  settings, method, path, body,
                                                                                  unknown):
    client, keys, _ = client_and_keys
    await make_version(clean_db, settings, 1, required=1)
    error = _error(await client.request(method, path, json=body, headers=keys["admin"]), 422, "unknown_field")
    assert error["details"]["unknown"] == unknown and error["details"]["field"] == unknown[0]
    assert await clean_db.fetchval("SELECT count(*) FROM sira_promotion_requests") == 0
    assert await clean_db.fetchval("SELECT count(*) FROM sira_events") == 0


def test_every_request_body_refuses_fields_it_does_not_declare(settings, tmp_path):
    """Not one request model of the application drops a field it does not know."""
    bodies = {}
    for route in _routes(_app(settings, tmp_path)):
        if route.body_field is not None:
            annotation = route.body_field.field_info.annotation
            models = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)
                      and issubclass(a, BaseModel)]
            assert models, route.path
            bodies.update({f"{sorted(route.methods)} {route.path}": m for m in models})
    assert len(bodies) >= 15
    lenient = {route: model.__name__ for route, model in bodies.items() if model.model_config.get("extra") != "forbid"}
    assert not lenient
