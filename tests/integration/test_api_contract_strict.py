"""The HTTP contract is strict and says what it checks: a body field or a query parameter a request does not
take is refused by name (422 ``unknown_field``), never dropped; credentials are checked before anything else
the request says is judged; the OpenAPI document declares what the server requires (required fields, enums,
formats, the bearer scheme) and 401s say which scheme to use."""

import re
import uuid

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from sira.core import db
from sira.core.auth import ROLES, authenticate, create_key
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


# -- what the OpenAPI document declares ---------------------------------------------------------------------


async def test_a_rollback_needs_a_reason_as_its_schema_says_and_the_refusal_names_it(client_and_keys):
    client, keys, app = client_and_keys
    schema = app.openapi()["components"]["schemas"]["RollbackRequest"]
    assert "reason" in schema["required"] and schema["properties"]["reason"]["minLength"] == 1
    path = "/v1/models/fraud/rollback"
    error = _error(await client.post(path, json={"expected_version": 1}, headers=keys["admin"]), 422, "missing_field")
    assert error["details"] == {"field": "reason"}
    for blank in ("", "   "):  # was reason_required with details {}, the schema calling the reason optional; a
        # blank reason is a missing one, as everywhere (docs/errors.md)
        error = _error(await client.post(path, json={"reason": blank, "expected_version": 1}, headers=keys["admin"]),
                       422, "missing_field")
        assert error["details"] == {"field": "reason"} and error["message"].startswith("reason: ")


async def test_the_schema_declares_key_roles_and_names_a_uuid_and_the_labels_feedback_takes(client_and_keys,
                                                                                           clean_db):
    client, keys, app = client_and_keys
    spec = app.openapi()
    key_create = spec["components"]["schemas"]["KeyCreate"]["properties"]
    assert key_create["roles"]["items"]["enum"] == list(ROLES)
    assert key_create["name"]["pattern"] and key_create["name"]["maxLength"] == 100
    error = _error(await client.post("/v1/keys", json={"name": "k1", "roles": ["wizard"]}, headers=keys["admin"]),
                   422, "invalid_request")
    assert error["details"] == {"field": "roles.0"}  # was invalid_input, details {}
    error = _error(await client.post("/v1/keys", json={"name": "a b/c?", "roles": ["viewer"]}, headers=keys["admin"]),
                   422, "invalid_request")
    assert error["details"] == {"field": "name"}
    assert await clean_db.fetchval("SELECT count(*) FROM sira_api_keys WHERE name IN ('k1', 'a b/c?')") == 0

    # both routes of a prediction declare its id a UUID, and refuse another alike
    for path in ("/v1/predictions/{prediction_id}", "/v1/predictions/{prediction_id}/explanation"):
        (parameter,) = [p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == "prediction_id"]
        assert parameter["schema"]["format"] == "uuid", path
    answers = [await client.get(p, headers=keys["admin"]) for p in ("/v1/predictions/x", "/v1/predictions/x/explanation")]
    assert [a.status_code for a in answers] == [422, 422]
    assert answers[0].json()["error"]["details"] == answers[1].json()["error"]["details"]

    label = spec["components"]["schemas"]["FeedbackRequest"]["properties"]["label"]
    kinds = {choice["type"]: choice for choice in label["anyOf"]}
    assert set(kinds) == {"boolean", "integer", "string"} and kinds["integer"]["enum"] == [0, 1]
    assert {"fraud", "legit", "true", "false"} <= set(kinds["string"]["enum"])
    for sent in (1, "legit"):  # what the schema now says is accepted, as the docs always did
        r = await client.post("/v1/feedback", json={"event_id": f"ev-{sent}", "label": sent}, headers=keys["service"])
        assert r.status_code == 200 and r.json()["label"] is (sent == 1), r.text


# -- unknown query parameters -------------------------------------------------------------------------------


def _concrete(path: str) -> str:
    return (path.replace("{name}", "fraud").replace("{version}", "1")
            .replace("{prediction_id}", str(uuid.uuid4())))


async def test_an_unknown_query_parameter_is_refused_by_name_on_every_route(client_and_keys):
    """GET /v1/audit?actr=adm answered the whole log; ?days=7 on drift, ?fmt=md on a card were ignored."""
    client, keys, app = client_and_keys
    spec = app.openapi()["paths"]
    gets = [r for r in _routes(app) if "GET" in r.methods]
    checked = [r for r in gets if not r.path.startswith("/ui")]
    assert {r.path for r in gets} - {r.path for r in checked} == {"/ui", "/ui/{path:path}"}  # static files only
    assert len(checked) >= 20
    for route in checked:
        path = _concrete(route.path)
        r = await client.get(path, params={"zz_typo": "1"}, headers=keys["admin"])
        error = _error(r, 422, "unknown_field")
        assert error["details"]["unknown"] == ["zz_typo"] and error["details"]["field"] == "zz_typo", path
        declared = [p["name"] for p in spec[route.path]["get"].get("parameters", []) if p["in"] == "query"]
        assert error["details"]["accepted"] == declared, path  # what the document lists, in its order
        refusal = spec[route.path]["get"]["responses"]["422"]["content"]["application/json"]["schema"]
        assert refusal == {"$ref": "#/components/schemas/ErrorResponse"}, path  # and the refusal it declares
    # the review's three, and a declared parameter beside an unknown one
    for path, unknown in (("/v1/audit?actr=adm", "actr"), ("/v1/models/fraud/drift?days=7", "days"),
                          ("/v1/models/fraud/versions/1/card?fmt=md", "fmt"),
                          ("/v1/audit?limit=5&actr=adm&actr=x", "actr")):
        error = _error(await client.get(path, headers=keys["admin"]), 422, "unknown_field")
        assert error["details"]["unknown"] == [unknown] and unknown in error["message"], path
    error = _error(await client.get("/v1/audit?actr=adm", headers=keys["admin"]), 422, "unknown_field")
    assert set(error["details"]["accepted"]) == {"target", "actor", "action", "limit", "before"}
    # the declared ones still work, aliases included
    assert (await client.get("/v1/audit?actor=root&limit=5", headers=keys["admin"])).status_code == 200
    r = await client.get("/v1/models/fraud/thresholds?from=2026-09-01&to=2026-09-20", headers=keys["admin"])
    assert r.json()["error"]["code"] != "unknown_field", r.text
    # other methods too: nothing is done
    r = await client.post("/v1/keys?dry_run=1", json={"name": "k2", "roles": ["viewer"]}, headers=keys["admin"])
    assert _error(r, 422, "unknown_field")["details"]["unknown"] == ["dry_run"]
    r = await client.get("/v1/keys", headers=keys["admin"])
    assert "k2" not in [k["name"] for k in r.json()["keys"]]
    r = await client.post("/v1/score?explain=1", json={"model": "fraud", "event": EVENT}, headers=keys["service"])
    assert _error(r, 422, "unknown_field")["details"]["unknown"] == ["explain"]


async def test_credentials_are_checked_before_a_query_or_a_body_is_judged(client_and_keys):
    """A body that was not JSON was 400 before a missing key was 401; every other validation comes after."""
    client, keys, _ = client_and_keys
    assert _error(await client.get("/v1/audit?actr=adm"), 401, "unauthenticated")
    assert _error(await client.get("/v1/audit?actr=adm", headers=keys["viewer"]), 403, "forbidden")
    assert _error(await client.get("/healthz?x=1"), 422, "unknown_field")  # open routes: judged at once
    for body in (b'{"name": "k3",}', b"\xff\xfeq"):
        for who, status, code in ((None, 401, "unauthenticated"), ("viewer", 403, "forbidden"),
                                  ("admin", 400, "malformed_body")):
            headers = {"Content-Type": "application/json", **(keys[who] if who else {})}
            _error(await client.post("/v1/keys", content=body, headers=headers), status, code)
        _error(await client.post("/v1/score", content=body, headers={"Content-Type": "application/json"}), 401,
               "unauthenticated")


# -- cursors ------------------------------------------------------------------------------------------------


async def test_a_bad_cursor_is_refused_alike_on_both_paged_routes(client_and_keys):
    """/v1/audit?before=abc was invalid_cursor naming `before`, /v1/events/rejected?before=abc invalid_request
    naming `query.before`."""
    client, keys, app = client_and_keys
    spec = app.openapi()["paths"]
    for path in ("/v1/audit", "/v1/events/rejected"):
        (before,) = [p for p in spec[path]["get"]["parameters"] if p["name"] == "before"]
        (integer,) = [s for s in before["schema"]["anyOf"] if s["type"] == "integer"]
        assert integer["minimum"] == 1, path
        for bad in ("abc", "0", "-3", "1.5", "99999999999999999999", ""):
            error = _error(await client.get(path, params={"before": bad}, headers=keys["admin"]), 422,
                           "invalid_cursor")
            assert error["details"] == {"field": "before"}, (path, bad)
            assert error["message"].startswith("before: "), error
        assert (await client.get(path, params={"before": "12"}, headers=keys["admin"])).status_code == 200


# -- authentication in the document and in answers ---------------------------------------------------------


async def test_openapi_declares_the_bearer_scheme_and_a_401_names_it(client_and_keys):
    client, keys, app = client_and_keys
    spec = app.openapi()
    schemes = spec["components"]["securitySchemes"]
    assert [s for s in schemes.values() if s["type"] == "http" and s["scheme"] == "bearer"] == list(schemes.values())
    (scheme,) = schemes
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            secured = operation.get("security") == [{scheme: []}]
            assert secured == path.startswith("/v1/"), (method, path)
            # the credential is the scheme's, not a header parameter of each operation
            assert not [p for p in operation.get("parameters", []) if p["name"].lower() == "authorization"]
    for headers in ({}, {"Authorization": "Bearer sira_nope_nope"}, {"Authorization": "Basic eDp5"}):
        r = await client.get("/v1/models", headers=headers)
        _error(r, 401, "unauthenticated")
        assert r.headers["www-authenticate"] == "Bearer"
    r = await client.post("/v1/score", json={"model": "fraud", "event": EVENT})  # the hot path's own handler
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "www-authenticate" not in _error(await client.get("/v1/keys", headers=keys["viewer"]), 403,
                                            "forbidden")
    assert (await client.get("/v1/models", headers=keys["viewer"])).status_code == 200


# -- content types ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, body", [
    ("/v1/score", {"model": "fraud", "event": EVENT}),
    ("/v1/keys", {"name": "k4", "roles": ["viewer"]}),
    ("/v1/feedback", {"event_id": "ev-1", "label": True}),
])
async def test_a_json_body_needs_a_json_media_type_on_every_route(client_and_keys, path, body):
    """text/json was parsed by /v1/score and answered "body: Input should be a valid dictionary" elsewhere."""
    import json

    client, keys, _ = client_and_keys
    who = keys["admin"]
    for media_type in ("text/json", "text/plain", "application/x-www-form-urlencoded"):
        r = await client.post(path, content=json.dumps(body), headers={**who, "Content-Type": media_type})
        error = _error(r, 422, "invalid_request")
        assert "must be JSON sent with Content-Type: application/json" in error["message"], (media_type, r.text)
        assert error["details"] == {"field": "", "content_type": media_type}


# -- health and metrics -------------------------------------------------------------------------------------


async def test_health_checks_answer_head_and_metrics_declare_their_media_type(client_and_keys):
    client, _, app = client_and_keys
    for path in ("/healthz", "/readyz"):  # load balancers check with HEAD (was 405)
        r = await client.head(path)
        assert r.status_code == 200, (path, r.text)
    assert (await client.get("/healthz")).json()["status"] == "ok"
    content = app.openapi()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/plain"]  # a media type, not a Content-Type header's value with its parameters
    r = await client.get("/metrics")
    assert r.status_code == 200 and re.match(r"text/plain;", r.headers["content-type"])
