"""Each HTTP request's id (X-Request-ID): the caller's when usable, else one made for it; in the answer, in the
request's log lines (text or JSON, SIRA_LOG_FORMAT) and in the audit rows it writes. Before 2026-12-07 a
caller's report of a failed request led nowhere: `sira api` answered no id, its log lines and the audit log
named none, and its logs were text only."""

from __future__ import annotations

import json
import re

import httpx

from sira.core import db
from sira.core.auth import authenticate, create_key
from tests.integration.test_api_roles import _sira_api


async def test_the_answer_carries_the_callers_usable_id_or_one_made_for_it(client_and_keys):
    client, keys = client_and_keys
    given = await client.get("/v1/me", headers={**keys["operator"], "X-Request-ID": "trace-42.a:b_c"})
    assert given.status_code == 200 and given.headers["x-request-id"] == "trace-42.a:b_c"
    made = await client.get("/v1/me", headers=keys["operator"])
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"]), made.headers
    for unusable in ("a b", "x" * 129, "<script>", ""):  # the caller's text: replaced, never echoed or logged
        r = await client.get("/v1/me", headers={**keys["operator"], "X-Request-ID": unusable})
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), (unusable, r.headers)
    refused = await client.get("/v1/me", headers={"X-Request-ID": "anon-1"})  # an error's answer has it too
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "anon-1"
    assert refused.headers.get_list("x-request-id") == ["anon-1"]


async def test_an_audit_row_names_the_request_that_wrote_it(client_and_keys, clean_db):
    client, keys = client_and_keys
    r = await client.post("/v1/keys", json={"name": "svc-1", "roles": ["service"]},
                          headers={**keys["admin"], "X-Request-ID": "create-svc-1"})
    assert r.status_code in (200, 201), r.text
    denied = await client.post("/v1/keys", json={"name": "svc-2", "roles": ["service"]},
                               headers={**keys["operator"], "X-Request-ID": "denied-svc-2"})
    assert denied.status_code == 403, denied.text
    rows = await clean_db.fetch("SELECT action, outcome, details->>'request_id' AS rid FROM sira_audit_log "
                                "WHERE details ? 'request_id' ORDER BY id")
    assert [(r["action"], r["outcome"], r["rid"]) for r in rows] == [
        ("key.create", "success", "create-svc-1"), ("keys.manage", "denied", "denied-svc-2")]


async def test_sira_api_logs_json_lines_naming_the_request(clean_db, settings):
    from tests.conftest import ephemeral_port

    pepper = settings.secret("auth_secret")
    async with db.transaction(clean_db) as conn:
        root_key, _ = await create_key(conn, name="root", roles=["admin"], pepper=pepper, creator=None)
        await authenticate(conn, root_key, pepper=pepper)
    port = ephemeral_port()
    server = _sira_api(settings, port, SIRA_LOG_FORMAT="json", SIRA_LOG_LEVEL="INFO")
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/v1/me", headers={"Authorization": f"Bearer {root_key}",
                                                                 "X-Request-ID": "json-log-1"}, timeout=30)
        assert r.status_code == 200 and r.headers["x-request-id"] == "json-log-1"
    finally:
        server.terminate()
        said = server.communicate(timeout=30)[1]
    lines = [json.loads(line) for line in said.splitlines() if line.strip()]  # every line is one JSON object
    access = [line for line in lines if line["logger"] == "uvicorn.access" and "/v1/me" in line["message"]]
    assert access and access[0]["request_id"] == "json-log-1" and access[0]["level"] == "INFO", lines
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    assert root_key not in said


async def test_sira_apis_access_log_keeps_no_callers_text_from_the_path(clean_db, settings):
    """uvicorn's access log wrote every request's raw path and query: `GET /v1/someone@example.com` or
    `?email=...` put a person's address in the log. Now a path no route takes is logged as its length, and a
    query's undeclared parameters are counted; a route's own path and declared parameters are kept."""
    from tests.conftest import ephemeral_port

    pepper = settings.secret("auth_secret")
    async with db.transaction(clean_db) as conn:
        root_key, _ = await create_key(conn, name="root", roles=["admin"], pepper=pepper, creator=None)
        await authenticate(conn, root_key, pepper=pepper)
    port = ephemeral_port()
    server = _sira_api(settings, port, SIRA_LOG_LEVEL="INFO")
    auth = {"Authorization": f"Bearer {root_key}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=auth) as http:
            assert http.get("/v1/customers/jane.doe@example.com").status_code == 404
            assert http.get("/v1/audit", params={"limit": 5, "email": "jane.doe@example.com"}).status_code == 422
            assert http.get("/v1/audit", params={"limit": 5}).status_code == 200
    finally:
        server.terminate()
        said = server.communicate(timeout=30)[1]
    assert "jane.doe" not in said and "example.com" not in said, said
    assert '"GET (a path no route takes, 34 characters) HTTP/1.1" 404' in said, said
    assert '"GET /v1/audit?limit=5&(+1 undeclared) HTTP/1.1" 422' in said, said
    assert '"GET /v1/audit?limit=5 HTTP/1.1" 200' in said, said
