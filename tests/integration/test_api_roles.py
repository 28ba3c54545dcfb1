"""Every endpoint × every role over HTTP: 401 without credentials, 403 for the wrong role, through otherwise."""

import httpx
import pytest

from sira.core import db
from sira.core.auth import PERMISSIONS, ROLES, create_key, may
from sira.http.app import create_app

# (method, path, json body, the action the endpoint declares)
ENDPOINTS = [
    ("POST", "/v1/events", {"events": [{"event_id": "r1", "occurred_at": "2026-09-01T00:00:00Z", "customer_id": "c",
                                        "amount": 1}]}, "events.write"),
    ("GET", "/v1/events/rejected", None, "rejected.read"),
    ("GET", "/v1/models", None, "models.read"),
    ("GET", "/v1/approvals", None, "models.read"),
    ("POST", "/v1/models", {"name": "m-{role}"}, "models.write"),
    ("GET", "/v1/models/fraud", None, "models.read"),
    ("PATCH", "/v1/models/fraud", {"description": "x"}, "models.settings"),
    ("GET", "/v1/models/fraud/versions/1", None, "models.read"),
    ("GET", "/v1/models/fraud/versions/1/insights", None, "models.read"),
    ("GET", "/v1/models/fraud/compare?a=1&b=1", None, "models.read"),
    ("GET", "/v1/models/fraud/versions/1/card", None, "models.read"),
    ("POST", "/v1/models/fraud/versions/1/promote", {}, "promotion.request"),
    ("POST", "/v1/models/fraud/versions/1/approve", {}, "promotion.decide"),
    ("POST", "/v1/models/fraud/versions/1/reject", {}, "promotion.decide"),
    ("POST", "/v1/models/fraud/rollback", {"reason": "r", "expected_version": 1}, "rollback"),
    ("GET", "/v1/models/fraud/history", None, "models.read"),
    ("GET", "/v1/models/fraud/drift", None, "models.read"),
    ("GET", "/v1/models/fraud/performance", None, "models.read"),
    ("GET", "/v1/models/fraud/drift/history", None, "models.read"),
    ("GET", "/v1/models/fraud/performance/history", None, "models.read"),
    ("GET", "/v1/models/fraud/traffic", None, "models.read"),
    ("GET", "/v1/models/fraud/thresholds", None, "models.read"),
    ("GET", "/v1/models/fraud/versions/1/thresholds", None, "models.read"),
    ("POST", "/v1/models/fraud/versions/1/thresholds", {"review": 0.1, "block": 0.5, "reason": "r"},
     "promotion.request"),
    ("POST", "/v1/models/fraud/versions/1/thresholds/approve", {}, "promotion.decide"),
    ("POST", "/v1/models/fraud/versions/1/thresholds/reject", {}, "promotion.decide"),
    ("GET", "/v1/audit", None, "audit.read"),
    ("GET", "/v1/keys", None, "keys.manage"),
    ("POST", "/v1/keys", {"name": "k-{role}", "roles": ["viewer"]}, "keys.manage"),
    ("DELETE", "/v1/keys/nobody", None, "keys.manage"),
    ("POST", "/v1/serving/reload", {"reason": "r"}, "serving.reload"),
]


@pytest.fixture
async def app_and_keys(clean_db, settings):
    pepper = settings.secret("auth_secret")
    keys = {}
    async with db.transaction(clean_db) as conn:
        root_key, _ = await create_key(conn, name="root", roles=["admin"], pepper=pepper, creator=None)
        from sira.core.auth import authenticate

        root = await authenticate(conn, root_key, pepper=pepper)
        for role in ROLES:
            keys[role], _ = await create_key(conn, name=f"as-{role}", roles=[role], pepper=pepper, creator=root)
        await conn.execute(
            "INSERT INTO sira_models (name, model_type, created_by) VALUES ('fraud', 'fraud_detection', 'root')"
        )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            yield client, keys


def test_the_matrix_covers_every_action_that_has_an_endpoint():
    covered = {action for *_, action in ENDPOINTS}
    assert covered >= set(PERMISSIONS) - {"score", "feedback.write", "predictions.read", "monitoring.run", "batch.score",  # endpoints of later stages
                                          "features.read", "features.materialize", "subject.access",
                                          "pii.rekey"}  # CLI commands only


async def test_role_by_endpoint_matrix(app_and_keys):
    client, keys = app_and_keys
    for method, path, body, action in ENDPOINTS:
        r = await client.request(method, path, json=body)
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"]["code"] == "unauthenticated"
        for role in ROLES:
            payload = {k: (v.format(role=role) if isinstance(v, str) else v) for k, v in body.items()} if body else None
            r = await client.request(method, path, json=payload, headers={"Authorization": f"Bearer {keys[role]}"})
            if may_role(role, action):
                assert r.status_code not in (401, 403), (role, method, path, r.status_code, r.text)
                assert r.status_code < 500, (role, method, path, r.text)
            else:
                assert r.status_code == 403, (role, method, path, r.status_code, r.text)
                assert r.json()["error"]["code"] == "forbidden"


def may_role(role, action):
    from sira.core.auth import Identity

    return may(Identity("x", frozenset({role})), action)


async def test_http_changes_are_audited_with_the_source_address(app_and_keys, clean_db):
    client, keys = app_and_keys
    r = await client.post("/v1/models", json={"name": "churn", "model_type": "churn"},
                          headers={"Authorization": f"Bearer {keys['data_scientist']}"})
    assert r.status_code == 201
    row = await clean_db.fetchrow("SELECT actor, source_address FROM sira_audit_log WHERE action = 'model.create'")
    assert row["actor"] == "as-data_scientist" and row["source_address"] == "127.0.0.1"


async def test_refused_attempts_are_audited(app_and_keys, clean_db):
    client, keys = app_and_keys
    r = await client.post("/v1/models/fraud/rollback", json={"reason": "x"},
                          headers={"Authorization": f"Bearer {keys['viewer']}"})
    assert r.status_code == 403
    row = await clean_db.fetchrow("SELECT actor, action, outcome, source_address FROM sira_audit_log"
                                  " WHERE outcome = 'denied'")
    assert (row["actor"], row["action"], row["outcome"], row["source_address"]) == (
        "as-viewer", "rollback", "denied", "127.0.0.1")


async def test_refusals_inside_an_operation_are_audited_too(app_and_keys, clean_db):
    """The route's role check audited its refusals; one raised inside the operation (here: governance settings
    without admin; a self-approval alike) rolled back with its transaction and left no trace over HTTP."""
    client, keys = app_and_keys
    r = await client.post("/v1/models", json={"name": "quiet", "required_approvals": 0},
                          headers={"Authorization": f"Bearer {keys['data_scientist']}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    row = await clean_db.fetchrow("SELECT actor, outcome FROM sira_audit_log WHERE outcome = 'denied'")
    assert row is not None and row["actor"] == "as-data_scientist"


async def test_the_audit_filters_take_names_literally(app_and_keys):
    """`_` in a model name matched any character (LIKE): the log of fraud_eu showed fraud-eu's entries too."""
    client, keys = app_and_keys
    for name in ("fraud_eu", "fraud-eu"):
        r = await client.post("/v1/models", json={"name": name}, headers={"Authorization": f"Bearer {keys['admin']}"})
        assert r.status_code == 201, r.text
    r = await client.get("/v1/audit", params={"target": "fraud_eu"}, headers={"Authorization": f"Bearer {keys['admin']}"})
    assert r.status_code == 200 and {e["target_id"] for e in r.json()["entries"]} == {"fraud_eu"}
    r = await client.get("/v1/audit", params={"action": "model_"}, headers={"Authorization": f"Bearer {keys['admin']}"})
    assert r.status_code == 200 and r.json()["entries"] == []  # no action starts with "model_"


async def test_the_audit_log_pages_back_with_a_keyset_cursor_and_says_when_it_is_cut(app_and_keys):
    """The UI read the newest 200 entries with no way back: `before=<an entry's id>` reads the older ones, and
    `next_before` says whether older entries were cut off (null: the page reaches the oldest that match)."""
    client, keys = app_and_keys
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    for k in range(5):
        r = await client.post("/v1/models", json={"name": f"paged-{k}"}, headers=admin)
        assert r.status_code == 201, r.text
    everything = (await client.get("/v1/audit", params={"action": "model", "limit": 100}, headers=admin)).json()
    ids = [e["id"] for e in everything["entries"]]
    assert len(ids) == 5 and ids == sorted(ids, reverse=True) and everything["next_before"] is None
    seen, before = [], None
    while True:
        params = {"action": "model", "limit": 2, **({"before": before} if before is not None else {})}
        page = (await client.get("/v1/audit", params=params, headers=admin)).json()
        seen += [e["id"] for e in page["entries"]]
        assert page["next_before"] in (None, seen[-1])
        if (before := page["next_before"]) is None:
            break
    assert seen == ids  # each entry once, newest first, none skipped
    exact = (await client.get("/v1/audit", params={"action": "model", "limit": 5}, headers=admin)).json()
    assert exact["next_before"] is None  # as many as the limit, none older: not cut
    for bad in ("abc", "0", "-3", "1.5", "99999999999999999999", ""):
        r = await client.get("/v1/audit", params={"before": bad}, headers=admin)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor", (bad, r.text)
        assert r.json()["error"]["details"] == {"field": "before"}


async def test_refusals_on_the_command_line_are_audited_as_over_http(app_and_keys, clean_db, settings, monkeypatch,
                                                                     capsys):
    """Most commands checked the role and left no trace of a refusal (only the registry's did): a viewer's
    `sira drift`, `sira keys list` or `sira keys create` was refused and never audited."""
    import asyncio

    from tests.conftest import cli_in_process

    _client, keys = app_and_keys
    env = {"SIRA_DATABASE_URL": settings.database_url.get_secret_value(), "SIRA_WORKSPACE": str(settings.workspace),
           "SIRA_API_KEY": keys["viewer"]}
    for args in (["drift", "--model", "fraud"], ["keys", "list"], ["keys", "create", "--name", "mine", "--role",
                                                                   "admin"]):
        done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, *args)
        assert done.returncode == 2 and done.stderr.startswith("error: forbidden"), (args, done.stderr)
    rows = await clean_db.fetch("SELECT actor, action FROM sira_audit_log WHERE outcome = 'denied' ORDER BY id")
    assert [(r["actor"], r["action"]) for r in rows] == [("as-viewer", "monitoring.run"), ("as-viewer", "keys.manage"),
                                                         ("as-viewer", "keys.manage")]


async def test_me_says_who_the_credentials_are_and_what_they_may_do(app_and_keys):
    client, keys = app_and_keys
    assert (await client.get("/v1/me")).status_code == 401
    for role in ROLES:
        r = await client.get("/v1/me", headers={"Authorization": f"Bearer {keys[role]}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["name"], body["roles"], body["kind"]) == (f"as-{role}", [role], "api_key")
        assert body["may"] == {action: may_role(role, action) for action in PERMISSIONS}


async def test_a_key_created_over_http_takes_the_expiry_the_cli_takes(app_and_keys):
    """POST /v1/keys ignored `expires` (and `expires_at`): a key asked to expire in 2020 was created, never to
    expire. It takes ISO 8601 as `sira keys create --expires` does, refuses the past and nonsense with the
    CLI's code, and refuses fields it does not know."""
    client, keys = app_and_keys
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    for expires in ("2020-01-01", "tomorrow", "2099-13-01"):
        r = await client.post("/v1/keys", json={"name": "tmp2", "roles": ["viewer"], "expires": expires}, headers=admin)
        assert r.status_code == 422, (expires, r.text)
        assert r.json()["error"]["code"] == "invalid_input" and r.json()["error"]["details"] == {"field": "expires"}
    r = await client.post("/v1/keys", json={"name": "tmp2", "roles": ["viewer"], "expires_at": "2020-01-01"},
                          headers=admin)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input", r.text
    r = await client.post("/v1/keys", json={"name": "tmp2", "roles": ["viewer"], "expiry": "2099-01-01"}, headers=admin)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_field", r.text
    assert r.json()["error"]["details"]["field"] == "expiry" and r.json()["error"]["details"]["unknown"] == ["expiry"]
    for name, field, given in (("tmp3", "expires", "2099-01-01T02:00:00+02:00"), ("tmp4", "expires_at", "2099-01-01")):
        r = await client.post("/v1/keys", json={"name": name, "roles": ["viewer"], field: given}, headers=admin)
        assert r.status_code == 201, r.text
    listed = {k["name"]: k["expires_at"] for k in (await client.get("/v1/keys", headers=admin)).json()["keys"]}
    assert listed["tmp3"] == listed["tmp4"] == "2099-01-01T00:00:00+00:00" and "tmp2" not in listed


async def test_the_last_admin_key_cannot_be_revoked_over_http(app_and_keys):
    client, keys = app_and_keys
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    assert (await client.delete("/v1/keys/root", headers=admin)).status_code == 200  # as-admin remains
    r = await client.delete("/v1/keys/as-admin", headers=admin)
    assert r.status_code == 409 and r.json()["error"]["code"] == "last_admin", r.text
    assert (await client.get("/v1/keys", headers=admin)).status_code == 200  # the key still works


async def test_a_refused_explanation_names_the_permission_it_needs(app_and_keys, settings, monkeypatch, capsys):
    """A viewer refused an explanation was told it may not *score* and needs admin or service: the roles of
    the summary a service key gets, not of the report. The refusal names predictions.read and its roles."""
    import asyncio

    from tests.conftest import cli_in_process

    client, keys = app_and_keys
    path = "/v1/predictions/00000000-0000-4000-8000-000000000000/explanation"
    r = await client.get(path, headers={"Authorization": f"Bearer {keys['viewer']}"})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["message"] == ("as-viewer may not predictions.read: it needs one of the roles admin, "
                                            "analyst")
    assert r.json()["error"]["details"] == {"action": "predictions.read", "roles": ["admin", "analyst"]}
    for role in ("service", "analyst"):  # the summary, the whole report: past the role check (no such prediction)
        r = await client.get(path, headers={"Authorization": f"Bearer {keys[role]}"})
        assert r.status_code == 404, (role, r.text)
    env = {"SIRA_DATABASE_URL": settings.database_url.get_secret_value(), "SIRA_WORKSPACE": str(settings.workspace),
           "SIRA_API_KEY": keys["viewer"]}
    done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "explain", "--prediction",
                                   "00000000-0000-4000-8000-000000000000")
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: forbidden: as-viewer may not predictions.read: it needs one of the roles admin, analyst"), done.stderr



async def test_prometheus_metrics_are_open_without_a_key(app_and_keys):
    """CONVENTIONS: Prometheus metrics are open without a key (no personal data in them); GET /metrics answered
    401 without one. A key sent, any role's or none that works, changes nothing (a scrape config with one)."""
    client, keys = app_and_keys
    anonymous = await client.get("/metrics")
    assert anonymous.status_code == 200, anonymous.text
    assert anonymous.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "sira_events_stored" in anonymous.text
    for key in (keys["viewer"], keys["service"], "sira_000000000000_not-a-key-at-all-not-a-key-at-all-x"):
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.text == anonymous.text  # one read per period: the same answer


def _sira_api(settings, port: int, **env: str):
    """`sira api --no-scoring` on 127.0.0.1:``port``, a process of its own (uvicorn as the command starts it)."""
    import os
    import subprocess
    import sys

    from tests.conftest import wait_until

    environ = {k: v for k, v in os.environ.items() if not k.startswith("SIRA_") and k != "FORWARDED_ALLOW_IPS"}
    environ.update({"SIRA_DATABASE_URL": settings.database_url.get_secret_value(),
                    "SIRA_WORKSPACE": str(settings.workspace), **env})
    server = subprocess.Popen([sys.executable, "-m", "sira", "api", "--no-scoring", "--port", str(port)],
                              env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def ready() -> bool:
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout=60, what="sira api to answer")
    return server


async def test_a_clients_forwarded_for_reaches_the_audit_log_only_through_a_trusted_proxy(clean_db, settings):
    """`sira api` (uvicorn's defaults) honoured X-Forwarded-For from 127.0.0.1, so a local client (or one behind a
    local proxy that passes the header on, as Serve's HAProxy does) set the source address the audit log keeps.
    Forwarding headers are honoured only from the proxies SIRA_TRUSTED_PROXIES names (none by default)."""
    from sira.core.auth import authenticate
    from tests.conftest import ephemeral_port

    pepper = settings.secret("auth_secret")
    async with db.transaction(clean_db) as conn:
        root_key, _ = await create_key(conn, name="root", roles=["admin"], pepper=pepper, creator=None)
        root = await authenticate(conn, root_key, pepper=pepper)
        operator, _ = await create_key(conn, name="ops", roles=["operator"], pepper=pepper, creator=root)
    sent = {"Authorization": f"Bearer {operator}", "X-Forwarded-For": "6.6.6.6"}
    for n, (trusted, expected) in enumerate(((None, "127.0.0.1"), ("127.0.0.1,10.0.0.0/8", "6.6.6.6"))):
        port = ephemeral_port()
        server = _sira_api(settings, port, **({"SIRA_TRUSTED_PROXIES": trusted} if trusted else {}))
        try:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/serving/reload", json={"reason": f"proxies {n}"},
                           headers=sent, timeout=30)
            assert r.status_code == 200, r.text
        finally:
            server.terminate()
            server.wait(timeout=30)
        stored = await clean_db.fetchval("SELECT source_address FROM sira_audit_log WHERE action = 'serving.reload' "
                                         "AND details->>'reason' = $1", f"proxies {n}")  # (an IP in a reason is redacted)
        assert stored == expected, (trusted, stored)


async def test_an_operator_reloads_every_serving_replica(app_and_keys, clean_db, settings, monkeypatch, capsys):
    """`serving.reload` (operator) had no route nor command: POST /v1/serving/reload and `sira serve reload`
    tell every replica (a notification on the registry channel they listen to), audited."""
    import asyncio
    import json

    from tests.conftest import cli_in_process

    client, keys = app_and_keys
    heard: asyncio.Queue = asyncio.Queue()
    listener = await db.connect(settings.database_url.get_secret_value())
    try:
        await listener.add_listener("sira_registry", lambda *args: heard.put_nowait(args[-1]))
        r = await client.post("/v1/serving/reload", json={"reason": "v3 stuck on replica 2"},
                              headers={"Authorization": f"Bearer {keys['operator']}"})
        assert r.status_code == 200 and r.json() == {"notified": True, "serving": None}, r.text  # serves nothing
        assert json.loads(await asyncio.wait_for(heard.get(), 30)) == {"reload": True, "by": "as-operator"}
        r = await client.post("/v1/serving/reload", json={"because": "x"},
                              headers={"Authorization": f"Bearer {keys['operator']}"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_field", r.text
        env = {"SIRA_DATABASE_URL": settings.database_url.get_secret_value(),
               "SIRA_WORKSPACE": str(settings.workspace), "SIRA_API_KEY": keys["admin"]}
        done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, env, "serve", "reload", "--json")
        assert done.returncode == 0 and json.loads(done.stdout) == {"notified": True}, done.stderr
        assert json.loads(await asyncio.wait_for(heard.get(), 30)) == {"reload": True, "by": "as-admin"}
        done = await asyncio.to_thread(cli_in_process, monkeypatch, capsys, {**env, "SIRA_API_KEY": keys["viewer"]},
                                       "serve", "reload")
        assert done.returncode == 2 and done.stderr.startswith("error: forbidden: as-viewer may not serving.reload")
    finally:
        await listener.close()
    rows = await clean_db.fetch("SELECT actor, target_type, outcome, details FROM sira_audit_log "
                                "WHERE action = 'serving.reload' ORDER BY id")
    assert [(r["actor"], r["target_type"], r["outcome"]) for r in rows] == [
        ("as-operator", "serving", "success"), ("as-admin", "serving", "success"), ("as-viewer", None, "denied")]
    assert {k: v for k, v in rows[0]["details"].items() if k != "request_id"} == {"reason": "v3 stuck on replica 2"}
    assert rows[0]["details"]["request_id"] and "request_id" not in rows[1]["details"]  # over HTTP, then the CLI


async def test_the_replica_that_answers_a_reload_rereads_the_registry_before_answering(clean_db, settings, tmp_path):
    """The answering replica does not wait for the notification (nor its poll): it re-reads the registry, and
    says what it serves then."""
    from sira.core.auth import authenticate
    from sira.serving.config import ServingConfig
    from sira.serving.service import ScoringService

    pepper = settings.secret("auth_secret")
    async with db.transaction(clean_db) as conn:
        root_key, _ = await create_key(conn, name="root", roles=["admin"], pepper=pepper, creator=None)
        operator_key, _ = await create_key(conn, name="ops", roles=["operator"], pepper=pepper,
                                           creator=await authenticate(conn, root_key, pepper=pepper))
    # polling once an hour: within the test, only a notification or the reload itself re-reads the registry
    service = ScoringService(settings, ServingConfig(models=["fraud", "churn"], spool_dir=tmp_path / "spool",
                                                     poll_interval_s=3600.0))
    app = create_app(settings, scoring=service)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sira") as client:
            assert service.slots == {}  # neither model is registered yet
            # a model row notifies nobody (the registry's trigger is on versions): only the reload can see it
            await clean_db.execute("INSERT INTO sira_models (name, model_type, created_by) VALUES ('fraud', "
                                   "'fraud_detection', 'root')")
            r = await client.post("/v1/serving/reload", headers={"Authorization": f"Bearer {operator_key}"})
            assert r.status_code == 200, r.text
            assert r.json() == {"notified": True, "serving": {"fraud": {"production": None, "shadow": None}}}
