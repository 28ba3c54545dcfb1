"""The HTTP contract beyond roles: rollback names what it replaces, 405 lists every allowed method, and the
OpenAPI document declares the error answers each route can give."""

import asyncio

import pytest

from sira.core import db
from sira.http.app import create_app
from tests.integration.test_governance import DANA, make_version, promote_by_policy, status_of


async def test_a_rollback_names_the_production_version_it_replaces(client_and_keys, clean_db, settings):
    client, keys = client_and_keys
    for version in (1, 2, 3):  # required_approvals = 0: each becomes production on request
        await make_version(clean_db, settings, version, required=0)
        await promote_by_policy(clean_db, settings, version)
    r = await client.post("/v1/models/fraud/rollback", json={"reason": "bad day"}, headers=keys["operator"])
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_field"
    assert r.json()["error"]["details"] == {"field": "expected_version"}
    r = await client.post("/v1/models/fraud/rollback", json={"reason": "bad day", "expected_version": 2},
                          headers=keys["operator"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "production_moved", r.text
    assert await status_of(clean_db, 3) == "production"
    # two operators on the same page: one steps back, the other is told production moved
    answers = await asyncio.gather(*(
        client.post("/v1/models/fraud/rollback", json={"reason": "bad day", "expected_version": 3},
                    headers=keys["operator"]) for _ in range(2)))
    assert sorted(a.status_code for a in answers) == [200, 409]
    assert next(a for a in answers if a.status_code == 200).json()["production"] == 2
    assert next(a for a in answers if a.status_code == 409).json()["error"]["code"] == "production_moved"
    assert await status_of(clean_db, 2) == "production" and await status_of(clean_db, 3) == "archived"


async def test_posting_to_a_card_is_405_not_an_unknown_decision(client_and_keys):
    client, keys = client_and_keys
    r = await client.post("/v1/models/fraud/versions/1/card", json={}, headers=keys["admin"])
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == "GET"
    assert r.json()["error"]["code"] == "method_not_allowed"
    for decision in ("approve", "reject"):  # the decisions still route
        r = await client.post(f"/v1/models/fraud/versions/1/{decision}", json={}, headers=keys["admin"])
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model", r.text


@pytest.mark.parametrize("method, path, allowed", [
    ("DELETE", "/v1/keys", "GET, POST"),
    ("PUT", "/v1/models/fraud", "GET, PATCH"),
    ("DELETE", "/v1/models", "GET, POST"),
    ("GET", "/v1/models/fraud/rollback", "POST"),
    ("PATCH", "/v1/keys/someone", "DELETE"),
])
async def test_a_405_lists_every_method_the_path_allows(client_and_keys, method, path, allowed):
    client, _ = client_and_keys
    r = await client.request(method, path)  # routing answers before credentials are asked for
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allowed
    error = r.json()["error"]
    assert error["code"] == "method_not_allowed" and error["details"] == {"allowed": allowed.split(", ")}


async def test_a_body_that_cannot_be_parsed_is_400_in_the_error_shape(client_and_keys):
    client, keys = client_and_keys
    r = await client.post("/v1/models", content=b"\xff\xfeq", headers={**keys["admin"],
                                                                       "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "malformed_body"
    r = await client.get("/v1/no/such/path", headers=keys["admin"])
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_openapi_declares_the_errors_each_route_can_answer(settings, tmp_path):
    from sira.serving.config import ServingConfig
    from sira.serving.service import ScoringService

    service = ScoringService(settings, ServingConfig(models=["fraud"], spool_dir=tmp_path))
    spec = create_app(settings, scoring=service).openapi()  # not started: the document needs no database
    # (method, path): the statuses beyond 401, 403, 422 and 503 that every authenticated route can answer
    # (400 and 413: a body that cannot be parsed, one too large)
    expected = {
        ("get", "/v1/models"): set(),
        ("get", "/v1/approvals"): set(),
        ("get", "/v1/me"): set(),
        ("get", "/v1/models/{name}/versions/{version}/insights"): {404, 409},
        ("get", "/v1/models/{name}/drift/history"): {404},
        ("get", "/v1/models/{name}/performance/history"): {404},
        ("get", "/v1/models/{name}/traffic"): {404},
        ("get", "/v1/models/{name}/thresholds"): {404, 409},  # no production version and none named
        ("get", "/v1/models/{name}/versions/{version}/thresholds"): {404},
        ("post", "/v1/models/{name}/versions/{version}/thresholds"): {400, 404, 409, 413},
        ("post", "/v1/models/{name}/versions/{version}/thresholds/approve"): {400, 404, 409, 413},
        ("post", "/v1/models/{name}/versions/{version}/thresholds/reject"): {400, 404, 409, 413},
        ("get", "/v1/predictions/{prediction_id}/explanation"): {404, 409},
        ("post", "/v1/models"): {400, 409, 413},
        ("get", "/v1/models/{name}"): {404},
        ("patch", "/v1/models/{name}"): {400, 404, 413},
        ("get", "/v1/models/{name}/versions/{version}"): {404},
        ("get", "/v1/models/{name}/versions/{version}/card"): {404, 409},
        ("get", "/v1/models/{name}/compare"): {404},
        ("post", "/v1/models/{name}/versions/{version}/promote"): {400, 404, 409, 413},
        ("post", "/v1/models/{name}/versions/{version}/stage"): {400, 404, 409, 413},
        ("post", "/v1/models/{name}/versions/{version}/approve"): {400, 404, 409, 413},
        ("post", "/v1/models/{name}/versions/{version}/reject"): {400, 404, 409, 413},
        ("post", "/v1/models/{name}/rollback"): {400, 404, 409, 413},
        ("get", "/v1/models/{name}/history"): {404},
        ("get", "/v1/models/{name}/drift"): {404},
        ("get", "/v1/models/{name}/performance"): {404},
        ("get", "/v1/audit"): set(),
        ("post", "/v1/keys"): {400, 409, 413},
        ("get", "/v1/keys"): set(),
        ("delete", "/v1/keys/{name}"): {404, 409},
        ("post", "/v1/events"): {400, 413},
        ("get", "/v1/events/rejected"): set(),
        ("post", "/v1/score"): {400, 404, 409, 413},
        ("post", "/v1/score/batch"): {400, 404, 409, 413},
        ("get", "/v1/predictions/{prediction_id}"): {404},
        ("post", "/v1/feedback"): {400, 404, 413},
        ("post", "/v1/serving/reload"): {400, 413},
    }
    operations = {(m, p): op for p, item in spec["paths"].items() if p.startswith("/v1/") for m, op in item.items()}
    assert set(operations) == set(expected)
    for key, extra in expected.items():
        responses = operations[key]["responses"]
        errors = {int(s) for s in responses if int(s) >= 400}
        assert errors == {401, 403, 422, 503} | extra, key
        for status in errors:
            schema = responses[str(status)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (key, status)


async def test_a_body_without_its_json_content_type_or_malformed_says_what_is_wrong(client_and_keys):
    client, keys = client_and_keys
    body = b'{"events": [{"event_id": "e1"}]}'
    # as `curl -d` sends it: application/x-www-form-urlencoded
    r = await client.post("/v1/events", content=body,
                          headers={**keys["admin"], "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
    assert "Content-Type: application/json" in r.json()["error"]["message"]
    assert "application/x-www-form-urlencoded" in r.json()["error"]["message"]
    r = await client.post("/v1/events", content=b'{"events": [{"event_id": "e1",}]}',
                          headers={**keys["admin"], "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_body", r.text
    assert r.json()["error"]["details"]["field"] == "" and isinstance(r.json()["error"]["details"]["position"], int)


async def test_a_model_is_refused_an_entity_its_features_lack_or_a_label_name_no_label_carries(client_and_keys,
                                                                                                clean_db):
    client, keys = client_and_keys
    r = await client.post("/v1/models", json={"name": "odd", "entity_type": "zzz"}, headers=keys["admin"])
    assert r.status_code == 422 and r.json()["error"]["details"] == {"field": "entity_type"}, r.text
    assert "customer" in r.json()["error"]["message"]
    r = await client.post("/v1/models", json={"name": "odd", "label_name": "Bad Name"}, headers=keys["admin"])
    assert r.status_code == 422 and r.json()["error"]["details"] == {"field": "label_name"}, r.text
    r = await client.post("/v1/models", json={"name": "odd", "entity_type": "terminal", "label_name": "chargeback"},
                          headers=keys["admin"])
    assert r.status_code == 201, r.text
    from sira.core.auth import Identity
    from sira.core.errors import InvalidInput
    from sira.registry.models import update_model

    async with db.transaction(clean_db) as conn:  # `sira models update` (no HTTP field)
        with pytest.raises(InvalidInput, match="label name"):
            await update_model(conn, Identity("root", frozenset({"admin"})), "odd", label_name="Bad Name")


async def test_model_settings_over_http_are_the_clis_and_an_unknown_field_is_refused_by_name(client_and_keys,
                                                                                              clean_db):
    """PATCH {"owner": "x"} answered 422 listing settings HTTP could not set; POST with a typo
    (required_aprovals) created the model with the field silently dropped."""
    from sira.http.registry import ModelCreate, ModelUpdate
    from sira.registry.settings import MODEL_SETTINGS

    assert set(MODEL_SETTINGS) <= set(ModelUpdate.model_fields) and set(MODEL_SETTINGS) <= set(ModelCreate.model_fields)
    client, keys = client_and_keys
    r = await client.post("/v1/models", json={"name": "zz5", "required_aprovals": 5, "colour": "red", "owner": "risk"},
                          headers=keys["admin"])
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "unknown_field" and error["details"]["unknown"] == ["required_aprovals", "colour"]
    assert "required_aprovals, colour" in error["message"] and "required_approvals" in error["details"]["accepted"]
    assert "this request accepts: " in error["message"] and "owner" in error["message"]
    assert await clean_db.fetchval("SELECT count(*) FROM sira_models WHERE name = 'zz5'") == 0
    r = await client.post("/v1/models", json={"name": "zz5", "required_approvals": 5, "owner": "risk",
                                              "display_name": "Churn 5"}, headers=keys["admin"])
    assert r.status_code == 201 and (r.json()["owner"], r.json()["required_approvals"]) == ("risk", 5), r.text
    r = await client.patch("/v1/models/zz5", json={"owner": "x", "display_name": "Z", "feature_set_version": 1},
                           headers=keys["admin"])
    assert r.status_code == 200 and (r.json()["owner"], r.json()["display_name"]) == ("x", "Z"), r.text
    r = await client.patch("/v1/models/zz5", json={"ownr": "y"}, headers=keys["admin"])
    assert r.status_code == 422 and r.json()["error"]["details"]["field"] == "ownr", r.text


async def test_the_history_over_http_is_sira_history_json(client_and_keys, clean_db, settings):
    from sira.http.schemas import History
    from sira.registry.history import history

    client, keys = client_and_keys
    for version in (1, 2):
        await make_version(clean_db, settings, version, required=0)
        await promote_by_policy(clean_db, settings, version)
    r = await client.get("/v1/models/fraud/history", headers=keys["operator"])
    assert r.status_code == 200 and (r.json()["production"], r.json()["rollback_to"]) == (2, 1)
    async with clean_db.acquire() as conn:
        assert History.model_validate(await history(conn, DANA, "fraud")).model_dump(by_alias=True) == r.json()
    assert [h["requested_by"] for h in r.json()["history"]] == ["dana", "dana"]


async def test_every_error_answer_is_marked_no_store(client_and_keys):
    """A refusal can quote the caller's input or name a person's prediction: no cache keeps it (only 2xx answers
    were marked no-store: a 404 for a prediction id, a 422 quoting a body, a 401 went out cacheable)."""
    client, keys = client_and_keys
    answers = [
        await client.get("/v1/models"),  # 401
        await client.get("/v1/predictions/00000000-0000-0000-0000-000000000000", headers=keys["admin"]),  # 404
        await client.post("/v1/keys", json={"name": "x", "roles": ["nobody"]}, headers=keys["admin"]),  # 422
        await client.get("/v1/no-such-route"),  # routing's 404
        await client.delete("/v1/keys"),  # 405
    ]
    for answer in answers:
        assert answer.status_code >= 400 and answer.headers["cache-control"] == "no-store", (answer.status_code, answer.text)
